"""Loading a reward's models up front, and checking that it can judge at all, before a trainer or server relies on it.

Rewards load their models lazily, on the first call. Entry points that must fail at start (a reward server, the
rewards built from environment variables, ``safe-rl score``) call `load_reward_models`: the guard and the helpfulness
model load now, one after the other under `rewards.loading.LOAD_LOCK`, and a model that cannot load raises
`rewards.loading.ModelLoadError` naming it. `probe_reward` then judges one harmless sample, which also reaches a
guard server: an unreachable server, a wrong served-model name or a helpfulness model that fails is an error at
start, not a run of unjudged samples.
"""

from __future__ import annotations

from typing import Any

from rewards.loading import LOAD_LOCK, ModelLoadError

PROBE_PROMPT = "What is the capital of France?"
PROBE_COMPLETION = "The capital of France is Paris."


class RewardNotReadyError(RuntimeError):
    """The reward loaded but cannot judge a harmless sample (guard server unreachable, model failing, ...)."""


def load_guard(guard: Any) -> Any:
    """Load ``guard``'s model now: its ``load()`` if it has one, else its lazily built ``backend``; returns it.

    Example:
        >>> class Eager:
        ...     def moderate(self, conversations):
        ...         return []
        >>> guard = Eager()
        >>> load_guard(guard) is guard  # nothing to load
        True
    """
    with LOAD_LOCK:
        try:
            load = getattr(guard, "load", None)
            if callable(load):
                load()
            elif hasattr(type(guard), "backend"):
                guard.backend  # noqa: B018 - building the backend loads the in-process model
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError("guard", getattr(guard, "model", type(guard).__name__), exc) from exc
    return guard


def load_reward_models(reward: Any) -> Any:
    """Load the guard, then the helpfulness model (if any) of ``reward``; returns ``reward``.

    Raises `rewards.loading.ModelLoadError` naming the model that cannot load.

    Example:
        >>> from rewards import GuardOnlyReward, Qwen3GuardGen
        >>> load_reward_models(GuardOnlyReward(Qwen3GuardGen("/no/such/guard")))
        Traceback (most recent call last):
        ...
        rewards.loading.ModelLoadError: cannot load the guard '/no/such/guard': ...
    """
    load_guard(getattr(reward, "guard", None))
    helpfulness = getattr(reward, "helpfulness", None)
    load = getattr(helpfulness, "load", None)
    if callable(load):
        with LOAD_LOCK:
            load()
    return reward


def probe_reward(reward: Any) -> Any:
    """Judge one harmless sample; raise `RewardNotReadyError` if it comes back unjudged for any reason but an
    unreadable guard answer (a guard may misread one sample; it may not be unreachable). Returns its `RewardDetail`.

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class Down:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety=None, error="guard server: ConnectError") for _ in conversations]
        >>> probe_reward(GuardOnlyReward(Down()))
        Traceback (most recent call last):
        ...
        rewards.warmup.RewardNotReadyError: guard_only_reward cannot judge a probe sample: guard: guard server: ConnectError
    """
    detail = reward.judge([PROBE_PROMPT], [PROBE_COMPLETION])[0]
    if detail.reward is None and not any(v.unreadable for v in detail.verdicts):
        name = getattr(reward, "__name__", type(reward).__name__)
        raise RewardNotReadyError(f"{name} cannot judge a probe sample: {detail.failure}")
    return detail
