"""Judges behind one interface (`Judge`): WildGuard, Qwen3Guard-Gen (not independent of training), an LLM, and the
toy world's rule judge."""

from __future__ import annotations

from typing import Any

from safe_rl.evaluation.judges.base import Judge, JudgeItem, Judgement

JUDGES: tuple[str, ...] = ("wildguard", "qwen3guard", "llm", "toy")

__all__ = ["JUDGES", "Judge", "JudgeItem", "Judgement", "judge_label", "make_judge"]


def make_judge(name: str, model: str | None = None, **kwargs: Any) -> Judge:
    """Build the judge ``name`` (one of `JUDGES`); ``model`` None picks its default model.

    Example:
        >>> make_judge("llm", "Qwen/Qwen3-235B-A22B", base_url="http://localhost:8000/v1").label
        'Qwen3-235B-A22B judge'
    """
    if name == "wildguard":
        from safe_rl.evaluation.judges.wildguard import DEFAULT_MODEL, WildGuardJudge

        return WildGuardJudge(model or DEFAULT_MODEL, **kwargs)
    if name == "qwen3guard":
        from safe_rl.evaluation.judges.qwen3guard import DEFAULT_MODEL, Qwen3GuardJudge

        return Qwen3GuardJudge(model or DEFAULT_MODEL, **kwargs)
    if name == "llm":
        from safe_rl.evaluation.judges.llm import LLMJudge

        return LLMJudge(model or "", **kwargs)
    if name == "toy":
        from safe_rl.evaluation.judges.toy import ToyJudge

        return ToyJudge()
    raise ValueError(f"unknown judge {name!r}; choose one of {JUDGES}")


def judge_label(name: str, model: str) -> str:
    """The report column of judge ``name`` on ``model``, as that judge labels itself, without building it (a run
    folder records only the judge's name and model). A name not in `JUDGES` gets the LLM judge's form.

    Example:
        >>> judge_label("wildguard", "allenai/wildguard"), judge_label("llm", "Qwen/Qwen3-235B-A22B")
        ('WildGuard', 'Qwen3-235B-A22B judge')
    """
    if name == "wildguard":
        from safe_rl.evaluation.judges.wildguard import WildGuardJudge

        return WildGuardJudge.label
    if name == "qwen3guard":
        from safe_rl.evaluation.judges.qwen3guard import Qwen3GuardJudge

        return Qwen3GuardJudge.label
    if name == "toy":
        from safe_rl.evaluation.judges.toy import ToyJudge

        return ToyJudge.label
    from safe_rl.evaluation.judges.llm import llm_judge_label

    return llm_judge_label(model)
