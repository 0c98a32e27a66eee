"""No training on nothing: stop a run whose reward keeps coming back unjudged.

A sample the reward could not judge gets ``None`` (TRL leaves it out) or a pessimistic score (verl, OpenRLHF). One
such sample is noise; a guard that is down, a helpfulness model that fails every batch, or a dataset without prompts
makes every step's rewards unjudged, and the run would "complete" having learned nothing (or having learned from
failure scores). `UnjudgedBreaker` watches the share of unjudged samples per reward call and raises
`TrainingOnNothingError`, naming the most frequent failure reasons, when that share stays above ``limit`` for
``patience`` checks in a row.

What a check is: one reward call (a TRL step's batch, a verl batch, one coalesced batch of per-sample calls), except
that calls with fewer than ``min_samples`` samples are pooled with the following ones until they reach it; a trickle
of single-sample calls (verl's streaming reward, OpenRLHF's one-sample requests) is therefore judged by groups of
``min_samples``, not by three unlucky samples in a row. Once tripped the breaker stays tripped: every later call
raises the same error.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

DEFAULT_LIMIT = 0.5  # share of unjudged samples a check may reach without counting as failed
DEFAULT_PATIENCE = 3  # failed checks in a row that stop the run
DEFAULT_MIN_SAMPLES = 8  # samples pooled into one check at least


class TrainingOnNothingError(RuntimeError):
    """The reward kept coming back unjudged: training on would learn from nothing (see `UnjudgedBreaker`)."""


class UnjudgedBreaker:
    """Counts unjudged samples per check and raises `TrainingOnNothingError` after ``patience`` bad checks in a row.

    Args:
        limit: a check fails when its unjudged share is above this (0 to 1); None turns the breaker off.
        patience: failed checks in a row that trip the breaker.
        min_samples: fewer samples than this are pooled with the next call's before the share is checked.
        name: what the error message calls the reward.

    Example:
        >>> breaker = UnjudgedBreaker(limit=0.5, patience=2, min_samples=1)
        >>> breaker.record(4, ["guard: timeout", "guard: timeout", "guard: timeout"])
        >>> breaker.record(4, ["guard: timeout"] * 4)
        Traceback (most recent call last):
        ...
        rewards.circuit_breaker.TrainingOnNothingError: reward: more than 50% of the samples were unjudged in 2 checks in a row (last: 4/4); most frequent reasons: 'guard: timeout' (4). Training would learn from nothing: fix the cause, or turn this check off (unjudged_limit=None, SAFE_RL_REWARD_UNJUDGED_LIMIT=off).
        >>> UnjudgedBreaker(limit=None).record(4, ["x"] * 4)  # off: never raises
    """

    def __init__(
        self,
        limit: float | None = DEFAULT_LIMIT,
        patience: int = DEFAULT_PATIENCE,
        *,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        name: str = "reward",
    ):
        if limit is not None and not 0.0 <= limit < 1.0:
            raise ValueError(f"unjudged_limit must be in [0, 1) or None (off), got {limit!r}")
        if patience < 1 or min_samples < 1:
            raise ValueError(f"unjudged_patience and min_samples must be at least 1, got {patience}, {min_samples}")
        self.limit = limit
        self.patience = patience
        self.min_samples = min_samples
        self.name = name
        self._lock = threading.Lock()
        self._pending_total = 0
        self._pending_reasons: list[str] = []
        self._streak = 0
        self._error: TrainingOnNothingError | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit is not None

    @property
    def tripped(self) -> TrainingOnNothingError | None:
        """The error this breaker raised, once it has tripped (it stays tripped), else None."""
        return self._error

    def check(self) -> None:
        """Raise the breaker's error if it has tripped."""
        if self._error is not None:
            raise self._error

    def record(self, total: int, failures: Iterable[str | None]) -> None:
        """Record one reward call: ``total`` samples, and the failure reason of each unjudged one."""
        if self.limit is None:
            return
        reasons = [str(f) for f in failures if f is not None]
        with self._lock:
            self.check()
            self._pending_total += total
            self._pending_reasons += reasons
            if self._pending_total < self.min_samples:
                return
            total, reasons = self._pending_total, self._pending_reasons
            self._pending_total, self._pending_reasons = 0, []
            if len(reasons) <= self.limit * total:
                self._streak = 0
                return
            self._streak += 1
            if self._streak >= self.patience:
                self._error = TrainingOnNothingError(self._message(total, reasons))
                raise self._error

    def _message(self, total: int, reasons: list[str]) -> str:
        common = "; ".join(f"{reason[:200]!r} ({n})" for reason, n in Counter(reasons).most_common(3))
        return (
            f"{self.name}: more than {self.limit:.0%} of the samples were unjudged in {self.patience} checks in a row "
            f"(last: {len(reasons)}/{total}); most frequent reasons: {common}. Training would learn from nothing: "
            "fix the cause, or turn this check off (unjudged_limit=None, SAFE_RL_REWARD_UNJUDGED_LIMIT=off)."
        )
