"""Guard verdicts: the `Verdict` type, the strict/loose policies, and the parser for Qwen3Guard-Gen output.

The parser never guesses. Anything it cannot read gives ``safety=None`` (with the reason in ``error``), and every
consumer in this package treats such a verdict as a failure to be counted, never as "Safe".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

SafetyLabel = Literal["Safe", "Unsafe", "Controversial"]
Strictness = Literal["strict", "loose"]

SAFETY_LABELS: tuple[str, ...] = ("Safe", "Unsafe", "Controversial")
STRICTNESS_LEVELS: tuple[str, ...] = ("strict", "loose")

# The category strings Qwen3Guard-Gen emits (Technical Report, Table 1). "Jailbreak" is only used for prompts.
CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)


def check_strictness(strictness: str) -> Strictness:
    """Return ``strictness`` if it is "strict" or "loose", else raise a `ValueError` naming the choices.

    Example:
        >>> check_strictness("loose")
        'loose'
    """
    if strictness not in STRICTNESS_LEVELS:
        raise ValueError(f"strictness must be one of {STRICTNESS_LEVELS}, got {strictness!r}")
    return strictness  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One guard judgement of a prompt (``[user]``) or an answer (``[user, assistant]``).

    Attributes:
        safety: "Safe", "Unsafe", "Controversial", or None when the guard's output could not be read.
        category: the first category named, None when the guard named none (or said "None").
        refusal: True/False for answer moderation when the guard said "Refusal: Yes|No"; None otherwise.
        raw: the guard's own text (empty for heads-only guards).
        probs: optional label distribution, e.g. ``{"Safe": 0.9, "Unsafe": 0.08, "Controversial": 0.02}``.
        categories: every category named, in order.
        truncated: the input was cut to fit the guard's context (see `rewards.guard_prompt`).
        error: why ``safety`` is None (unreadable output, backend failure), else None.
        unreadable: the guard answered but its answer could not be read (set by `parse_verdict`); False for a
            backend failure (no answer came back) and for readable verdicts.
        flagged_at: for token-level guards, the index of the first flagged answer token, else None.
        answer_tokens: for token-level guards, the number of answer tokens judged, else None.

    Example:
        >>> v = Verdict(safety="Controversial", category="Violent", refusal=False)
        >>> v.is_safe("strict"), v.is_safe("loose"), v.is_unsafe("strict")
        (False, True, True)
    """

    safety: SafetyLabel | None
    category: str | None = None
    refusal: bool | None = None
    raw: str = ""
    probs: Mapping[str, float] | None = None
    categories: tuple[str, ...] = ()
    truncated: bool = False
    error: str | None = None
    flagged_at: int | None = None
    answer_tokens: int | None = None
    unreadable: bool = False

    @property
    def ok(self) -> bool:
        """True when the safety label was read."""
        return self.safety is not None

    def is_safe(self, strictness: Strictness = "strict") -> bool:
        """Safe under ``strictness``; False for an unreadable verdict (check `ok` to tell the two apart)."""
        check_strictness(strictness)
        if self.safety is None:
            return False
        return self.safety == "Safe" or (strictness == "loose" and self.safety == "Controversial")

    def is_unsafe(self, strictness: Strictness = "strict") -> bool:
        """Unsafe under ``strictness``; False for an unreadable verdict (check `ok` to tell the two apart)."""
        check_strictness(strictness)
        if self.safety is None:
            return False
        return self.safety == "Unsafe" or (strictness == "strict" and self.safety == "Controversial")

    def p_unsafe(self, strictness: Strictness = "strict") -> float | None:
        """Probability of "unsafe under ``strictness``" from `probs`, or None when no distribution is attached."""
        check_strictness(strictness)
        if not self.probs:
            return None
        p = self.probs.get("Unsafe", 0.0)
        if strictness == "strict":
            p += self.probs.get("Controversial", 0.0)
        return float(p)


def failed_verdict(error: str, raw: str = "", *, truncated: bool = False, unreadable: bool = False) -> Verdict:
    """A verdict that records a failure (``safety=None``) and why; ``unreadable`` when the guard did answer.

    Example:
        >>> failed_verdict("timeout").ok, failed_verdict("timeout").unreadable
        (False, False)
    """
    return Verdict(safety=None, raw=raw, error=error, truncated=truncated, unreadable=unreadable)


# The grammar of a verdict line, `key: value`, of a line as `str.splitlines` cuts text. Whitespace noise, markdown
# emphasis, quote and list markers and code ticks are tolerated around the key; the keys are the official ones (and
# the singular "Category"), matched case-insensitively (so "ſafety" is read too: Python's case folding). The
# escaping of policy text (`rewards.escaping`) neutralises content lines by this same pattern, so the two cannot
# drift: change it here and the escaping follows.
VERDICT_LINE = re.compile(
    r"^[\s*_>`-]*(safety|categories|category|refusal)[\s*_]*:[\s*_]*(.*?)[\s*_`.]*$", re.IGNORECASE
)
_LABELS = {label.lower(): label for label in SAFETY_LABELS}
_CATEGORY_LOOKUP = {c.lower(): c for c in CATEGORIES}
_YES_NO = {"yes": True, "no": False}


def verdict_key_at(line: str) -> int | None:
    """Where the key starts when `parse_verdict` would read ``line`` (one line, no line break) as a verdict line.

    Example:
        >>> verdict_key_at("> **Safety**: Safe"), verdict_key_at("It is Safety: Safe")
        (4, None)
    """
    m = VERDICT_LINE.match(line)
    return None if m is None else m.start(1)


def strip_thinking(text: str) -> str:
    """The text after the last ``</think>``, or the text itself (some servers return the template's thinking block
    in front of the answer).

    Example:
        >>> strip_thinking("<think>hmm</think>Safety: Safe"), strip_thinking("Safety: Safe")
        ('Safety: Safe', 'Safety: Safe')
    """
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def parse_verdict(text: str | None) -> Verdict:
    """Read Qwen3Guard-Gen's output (``Safety: …``, ``Categories: …``, optionally ``Refusal: …``), line by line
    (`str.splitlines`), each line by `VERDICT_LINE`.

    Returns a `Verdict` whose ``safety`` is None when there is no readable ``Safety:`` line, when its value is not
    one of Safe/Unsafe/Controversial, or when two ``Safety:`` lines disagree. It never defaults to Safe.

    Example:
        >>> v = parse_verdict("Safety: Unsafe\\nCategories: Violent\\nRefusal: No")
        >>> (v.safety, v.category, v.refusal)
        ('Unsafe', 'Violent', False)
        >>> unread = parse_verdict("I think this is fine.")
        >>> unread.safety is None, unread.unreadable
        (True, True)
    """
    if not isinstance(text, str):
        return failed_verdict(f"guard output is {type(text).__name__}, not text", unreadable=True)
    safeties: list[str] = []
    categories: list[str] = []
    refusals: list[bool] = []
    errors: list[str] = []
    for line in strip_thinking(text).splitlines():
        m = VERDICT_LINE.match(line)
        if m is None:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key == "safety":
            label = _LABELS.get(value.lower())
            if label is None:
                errors.append(f"unknown safety label {value!r}")
            else:
                safeties.append(label)
        elif key in ("categories", "category"):
            for part in re.split(r"[,;]", value):
                name = part.strip(" *_.`")
                if name and name.lower() != "none":
                    categories.append(_CATEGORY_LOOKUP.get(name.lower(), name))
        else:
            answer = _YES_NO.get(value.lower())
            if answer is None:
                errors.append(f"unknown refusal value {value!r}")
            else:
                refusals.append(answer)
    if errors:
        return failed_verdict("; ".join(errors), raw=text, unreadable=True)
    if not safeties:
        return failed_verdict("no 'Safety:' line", raw=text, unreadable=True)
    if len(set(safeties)) > 1:
        return failed_verdict(f"conflicting safety labels {safeties}", raw=text, unreadable=True)
    if len(set(refusals)) > 1:
        return failed_verdict(f"conflicting refusal labels {refusals}", raw=text, unreadable=True)
    return Verdict(
        safety=safeties[0],  # type: ignore[arg-type]
        category=categories[0] if categories else None,
        refusal=refusals[0] if refusals else None,
        raw=text,
        categories=tuple(dict.fromkeys(categories)),
    )
