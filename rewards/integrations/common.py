"""What the adapters share: the reward they use and the score a sample gets when it could not be judged."""

from __future__ import annotations

import logging
import os
from typing import Any

from rewards.loading import LOAD_LOCK
from rewards.presets import reward_from_env

logger = logging.getLogger(__name__)

_REWARDS: dict[str, Any] = {}


def use_reward(reward: Any, kind: str | None = None) -> None:
    """Make the adapters use ``reward`` (a `GuardOnlyReward`/`HybridReward`) instead of one built from the environment."""
    _REWARDS[kind or ("hybrid" if hasattr(reward, "helpfulness") else "guard_only")] = reward


def get_reward_for(kind: str) -> Any:
    """The reward of ``kind`` ("hybrid" or "guard_only"): set by `use_reward`, else built once from ``SAFE_RL_*``."""
    if kind not in ("hybrid", "guard_only"):
        raise ValueError(f"reward must be 'hybrid' or 'guard_only', got {kind!r}")
    if kind not in _REWARDS:
        with LOAD_LOCK:  # one reward per process, even when the first calls come from many threads at once
            if kind not in _REWARDS:
                _REWARDS[kind] = reward_from_env(kind)
    return _REWARDS[kind]


def failure_score(reward: Any, override: float | None = None) -> float:
    """The score of a sample that could not be judged, for trainers that need a number where TRL takes None.

    Pessimistic by default, so that a guard failure never pays like a safe answer: the unsafe cap for the hybrid
    reward, 0 for guard-only. ``SAFE_RL_FAILURE_SCORE`` or ``override`` sets another value.

    Example:
        >>> failure_score(object())
        0.0
    """
    if override is not None:
        return float(override)
    env = os.environ.get("SAFE_RL_FAILURE_SCORE")
    if env:
        return float(env)
    return float(getattr(reward, "unsafe_cap", 0.0))


def flag(value: bool | None) -> float:
    """1.0 / 0.0 for a known boolean, NaN when unknown (for averaged metrics).

    Example:
        >>> flag(True), flag(False), flag(None)
        (1.0, 0.0, nan)
    """
    return float("nan") if value is None else float(value)
