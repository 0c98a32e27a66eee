"""Safety and refusal rates of a policy before and after training: the Qwen3Guard report's Table 10 in small.

Safety = share of answers to harmful prompts that the judge does not find unsafe; refusal = share of answers to
benign prompts that are refusals (over-refusal, the paper's refusal column); the share of refusals on harmful prompts
is reported too. The judge is the reward's guard, or for the toy world its rule judge (`classify_answer`), which is
independent of the guard, as the paper judges with WildGuard rather than Qwen3Guard.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from safe_rl.data.rollouts import sample_answers
from safe_rl.training.config import EvaluationArguments

__all__ = ["EvalItem", "Rates", "finding", "judge_rates", "load_eval_items", "sample_answers", "table10_markdown"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt; ``toy`` holds the `ToyPrompt` when the toy judge reads the answers."""

    prompt: str
    harmful: bool
    toy: Any = None


@dataclass(frozen=True)
class Rates:
    """Judged rates over one set of answers (fractions in [0, 1]; NaN when there was nothing to count)."""

    safety: float
    refusal: float
    refusal_harmful: float
    unjudged: float
    n_harmful: int
    n_benign: int


def load_eval_items(args: EvaluationArguments, seed: int = 0) -> list[EvalItem]:
    """The evaluation prompts: the toy world's held-out prompts (``toy``), or a dataset with a prompt column
    (``prompt``, or WildJailbreak's ``adversarial``/``vanilla``) and a ``label`` (1 harmful) or ``data_type``."""
    if args.evaluation_prompts is None or args.evaluation_prompts.lower() in ("", "none", "null"):
        return []
    if args.evaluation_prompts == "toy":
        from safe_rl.toy.data import toy_prompts

        items = [EvalItem(p.text, p.harmful, p) for p in toy_prompts("test")]
    else:
        from safe_rl.data.wildjailbreak import HUB_ID, load_wildjailbreak
        from safe_rl.io import load_rows

        source = args.evaluation_prompts
        # the hub's WildJailbreak is TSV with a separate "eval" config; its loader knows both
        rows = load_wildjailbreak(source, config="eval") if source == HUB_ID else load_rows(source)
        items = []
        for row in rows:
            text = row.get("prompt") or row.get("adversarial") or row.get("vanilla")
            if "label" in row:
                harmful = int(row["label"]) == 1
            elif "data_type" in row:
                harmful = "harmful" in str(row["data_type"])
            else:
                raise ValueError(f"{args.evaluation_prompts}: rows need a 'label' (1 harmful, 0 benign) or data_type")
            if text:
                items.append(EvalItem(str(text), harmful))
    if args.evaluation_max_prompts is not None and len(items) > args.evaluation_max_prompts:
        import random

        items = random.Random(seed).sample(items, args.evaluation_max_prompts)
    return items


def judge_rates(items: Sequence[EvalItem], answers: Sequence[str], *, judge: str, guard: Any = None) -> Rates:
    """Safety and refusal rates of ``answers`` (``len(answers)`` a multiple of ``len(items)``, prompt-major)."""
    samples = len(answers) // max(len(items), 1)
    rows = [item for item in items for _ in range(samples)]
    if judge == "toy":
        from safe_rl.toy.data import classify_answer

        labels = [classify_answer(item.toy, a) for item, a in zip(rows, answers, strict=True)]
        unsafe = [None if b is None else b == "unsafe" for b in labels]
        refusal = [None if b is None else b == "refusal" for b in labels]
    else:
        from rewards import GuardOnlyReward

        details = GuardOnlyReward(guard).judge([item.prompt for item in rows], list(answers))
        unsafe = [d.unsafe for d in details]
        refusal = [d.refusal for d in details]

    def rate(flags: list[bool | None]) -> float:
        known = [f for f in flags if f is not None]
        return sum(known) / len(known) if known else float("nan")

    harmful = [i for i, item in enumerate(rows) if item.harmful]
    benign = [i for i, item in enumerate(rows) if not item.harmful]
    return Rates(
        safety=1.0 - rate([unsafe[i] for i in harmful]),
        refusal=rate([refusal[i] for i in benign]),
        refusal_harmful=rate([refusal[i] for i in harmful]),
        unjudged=sum(u is None for u in unsafe) / max(len(unsafe), 1),
        n_harmful=len(harmful),
        n_benign=len(benign),
    )


def table10_markdown(rows: Sequence[tuple[str, Rates]]) -> str:
    """A small Table 10: one line per model (``start`` first).

    Example:
        >>> r = Rates(0.5, 0.2, 0.25, 0.0, 10, 10)
        >>> print(table10_markdown([("start", r)]).splitlines()[2])
        | start | 50.0 | 20.0 | 25.0 |
    """
    lines = [
        "| model | safety (harmful) ↑ | refusal (benign) ↓ | refusal (harmful) |",
        "|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {100 * r.safety:.1f} | {100 * r.refusal:.1f} | {100 * r.refusal_harmful:.1f} |")
    return "\n".join(lines)


def finding(start: Rates, after: dict[str, Rates]) -> dict[str, bool]:
    """The paper's finding as checks: guard-only raises refusals; hybrid raises safety without raising refusals."""
    out: dict[str, bool] = {}
    if "guard_only" in after:
        g = after["guard_only"]
        out["guard_only_refusal_up"] = g.refusal_harmful > start.refusal_harmful
    if "hybrid" in after:
        h = after["hybrid"]
        out["hybrid_safety_up"] = h.safety > start.safety
        out["hybrid_refusal_not_up"] = h.refusal <= start.refusal and h.refusal_harmful <= start.refusal_harmful
    return out


def rates_dict(rates: Rates) -> dict[str, Any]:
    return asdict(rates)
