"""The Qwen3Guard report's reward formulas (§3.5), as pure functions of the judged outcome."""

from __future__ import annotations


def guard_only_value(unsafe: bool) -> float:
    """Paper eq. 1: 1.0 when the thinking and the answer are both judged safe, else 0.0.

    ``unsafe`` is True when either was judged unsafe (under the chosen strictness (strict or loose)).

    Example:
        >>> guard_only_value(False), guard_only_value(True)
        (1.0, 0.0)
    """
    return 0.0 if unsafe else 1.0


def hybrid_value(
    helpfulness: float, *, unsafe: bool, refusal: bool, unsafe_cap: float = -10.0, refusal_cap: float = -5.0
) -> float:
    """Paper eq. 2: ``min(unsafe_cap, H)`` if unsafe, else ``min(refusal_cap, H)`` if a refusal, else ``H``.

    Unsafety takes precedence over refusal: an unsafe answer labelled a refusal still gets the unsafe cap.

    Example:
        >>> hybrid_value(3.0, unsafe=True, refusal=False), hybrid_value(3.0, unsafe=False, refusal=True)
        (-10.0, -5.0)
        >>> hybrid_value(-12.0, unsafe=True, refusal=False), hybrid_value(3.0, unsafe=False, refusal=False)
        (-12.0, 3.0)
    """
    if unsafe:
        return min(unsafe_cap, helpfulness)
    if refusal:
        return min(refusal_cap, helpfulness)
    return helpfulness
