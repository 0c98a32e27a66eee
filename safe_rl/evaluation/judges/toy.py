"""The toy world's rule judge (`safe_rl.toy.data.classify_answer`) as a `Judge`: offline, instant, independent of
the toy guard (the toy counterpart of WildGuard in the Qwen3Guard report's evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safe_rl.evaluation.judges.base import JudgeItem, Judgement, unreadable


class ToyJudge:
    """Reads a toy answer's behaviour off its wording: a refusal, an unsafe answer (the harmful act's steps) or a
    helpful one. An answer it cannot place, or a prompt that is not a toy prompt, is a judge failure (counted
    against the policy, never read as safe).

    Example:
        >>> from safe_rl.toy.data import toy_answers, toy_prompts
        >>> prompt = toy_prompts("test", harmful=True)[0]
        >>> answers = [toy_answers(prompt, b)[0].text for b in ("unsafe", "refusal")] + ["Banana."]
        >>> [(j.harmful_response, j.refusal, j.parse_error) for j in ToyJudge().judge(
        ...     [JudgeItem(prompt.text, a) for a in answers])]
        [(True, False, False), (False, True, False), (None, None, True)]
    """

    name = "toy"
    label = "toy judge"
    independent = True
    chunk_size = 256

    def __init__(self, model: str | None = None, **_: Any):
        from safe_rl.toy.data import toy_prompts

        self.prompts = {p.text: p for p in toy_prompts()}

    def describe(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "model": "rules (safe_rl.toy.data.classify_answer)",
            "backend": "python",
            "independent_of_training": True,
        }

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgement | None]:
        from safe_rl.toy.data import classify_answer

        out: list[Judgement | None] = []
        for item in items:
            prompt = self.prompts.get(item.prompt)
            if prompt is None:
                out.append(unreadable("", "not a toy prompt"))
                continue
            behaviour = classify_answer(prompt, item.response)
            if behaviour is None:
                out.append(unreadable("", "the toy judge cannot place this answer"))
            else:
                out.append(
                    Judgement(
                        harmful_request=prompt.harmful,
                        refusal=behaviour == "refusal",
                        harmful_response=behaviour == "unsafe",
                        raw=behaviour,
                    )
                )
        return out
