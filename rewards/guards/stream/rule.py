"""The Qwen3Guard-Stream flag rule, on per-token labels, whole or as they arrive. Pure Python (no torch).

Rule (official evaluation, QwenLM/Qwen3Guard ``eval/eval_stream.py``): an answer is flagged at token i when tokens
i-1 and i are both Unsafe; only if no such pair exists anywhere, the same test is made for two Controversial tokens.
A mixed pair (Unsafe, Controversial) flags nothing. The category of the flagged token i names the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rewards.verdict import Strictness, Verdict, check_strictness


def first_flag(labels: Sequence[str]) -> tuple[str, int | None]:
    """The answer's safety and the index of its first flagged token under the official pair rule.

    Example:
        >>> first_flag(["Safe", "Unsafe", "Unsafe", "Safe"])
        ('Unsafe', 2)
        >>> first_flag(["Controversial", "Controversial", "Unsafe", "Unsafe"])
        ('Unsafe', 3)
        >>> first_flag(["Unsafe", "Controversial", "Unsafe"])
        ('Safe', None)
    """
    tracker = FlagTracker()
    for label in labels:
        tracker.push(label)
    return tracker.safety, tracker.flagged_at


@dataclass
class _Mark:
    index: int
    category: str | None
    probs: Mapping[str, float] | None


@dataclass
class FlagTracker:
    """Applies the pair rule to one answer's token labels as they arrive.

    Feeding tokens one at a time or all at once gives the same result as `first_flag`. ``flagged(strictness)`` says when
    the answer can no longer end up safe under ``strictness`` (strict: any flagged pair; loose: an Unsafe pair), which is
    when a streaming consumer may stop.

    Example:
        >>> t = FlagTracker()
        >>> for label in ["Safe", "Controversial", "Controversial"]:
        ...     t.push(label)
        >>> t.safety, t.flagged_at, t.flagged("strict"), t.flagged("loose")
        ('Controversial', 2, True, False)
    """

    count: int = 0
    previous: str | None = None
    unsafe: _Mark | None = None
    controversial: _Mark | None = None
    last: _Mark | None = field(default=None, repr=False)

    def push(self, label: str, category: str | None = None, probs: Mapping[str, float] | None = None) -> None:
        """Add the next answer token's label (and its category and label distribution, kept for the verdict)."""
        mark = _Mark(self.count, category, probs)
        if label == self.previous == "Unsafe" and self.unsafe is None:
            self.unsafe = mark
        elif label == self.previous == "Controversial" and self.controversial is None:
            self.controversial = mark
        self.previous = label
        self.last = mark
        self.count += 1

    @property
    def _deciding(self) -> _Mark | None:
        return self.unsafe or self.controversial

    @property
    def safety(self) -> str:
        if self.unsafe is not None:
            return "Unsafe"
        return "Controversial" if self.controversial is not None else "Safe"

    @property
    def flagged_at(self) -> int | None:
        mark = self._deciding
        return None if mark is None else mark.index

    def flagged(self, strictness: Strictness = "strict") -> bool:
        """True once the answer is unsafe under ``strictness`` whatever comes next."""
        check_strictness(strictness)
        return self.unsafe is not None or (strictness == "strict" and self.controversial is not None)

    def verdict(self, *, truncated: bool = False) -> Verdict:
        """The answer verdict so far: category and ``probs`` from the flagged token (the last token if none)."""
        mark = self._deciding
        shown = mark or self.last
        category = mark.category if mark is not None else None
        return Verdict(
            safety=self.safety,  # type: ignore[arg-type]
            category=category,
            categories=(category,) if category else (),
            probs=dict(shown.probs) if shown is not None and shown.probs is not None else None,
            truncated=truncated,
            flagged_at=self.flagged_at,
            answer_tokens=self.count,
        )


def query_verdict(
    label: str, category: str | None, probs: Mapping[str, float] | None = None, *, truncated: bool = False
) -> Verdict:
    """The prompt verdict read at the ``<|im_end|>`` closing the last user turn (no category when Safe).

    Example:
        >>> query_verdict("Unsafe", "Jailbreak").category
        'Jailbreak'
    """
    category = None if label == "Safe" else category
    return Verdict(
        safety=label,  # type: ignore[arg-type]
        category=category,
        categories=(category,) if category else (),
        probs=dict(probs) if probs is not None else None,
        truncated=truncated,
    )
