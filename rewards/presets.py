"""Ready-made rewards for TRL's command line (``--reward_funcs rewards.hybrid_reward``), set by environment.

Nothing loads at import: the guard and the helpfulness model are built and loaded on the first call (once per
process, whatever the threads). Every field of `rewards.arguments`' `GuardArguments`, `HelpfulnessArguments` and
`RewardArguments` is read from its ``SAFE_RL_<FIELD>`` variable (`rewards.arguments.from_env`), with the same
defaults as every ``safe-rl`` command; a value that cannot be used raises `rewards.arguments.SettingError` naming
the variable. The main ones:

| variable | default | meaning |
|---|---|---|
| ``SAFE_RL_GUARD_MODEL`` | ``Qwen/Qwen3Guard-Gen-4B`` | guard hub id, folder or ``toy:guard`` (served name with a base URL) |
| ``SAFE_RL_GUARD_BASE_URL`` | unset (in-process) | OpenAI-compatible server, e.g. ``http://localhost:8000/v1`` |
| ``SAFE_RL_GUARD_API_KEY`` | unset | bearer token for the server |
| ``SAFE_RL_GUARD_DEVICE`` / ``SAFE_RL_GUARD_BATCH_SIZE`` | auto / 32 | in-process guard |
| ``SAFE_RL_GUARD_MAX_CONCURRENCY`` | 64 | guard server requests in flight at once |
| ``SAFE_RL_HELPFULNESS_MODEL`` | ``Skywork/Skywork-Reward-V2-Qwen3-8B`` | helpfulness reward model (hybrid) |
| ``SAFE_RL_REWARD_STRICTNESS`` | ``strict`` | ``strict`` or ``loose`` (Controversial counted as unsafe or safe) |
| ``SAFE_RL_REWARD_UNSAFE_CAP`` / ``SAFE_RL_REWARD_REFUSAL_CAP`` | -10 / -5 | hybrid caps |
| ``SAFE_RL_REWARD_JUDGE_THINKING`` | 1 | judge the thinking too (0 to skip) |
| ``SAFE_RL_REWARD_SAFETY_SCORE`` | ``label`` | ``label`` (0/1, paper) or ``probability`` (in-process guard only) |
| ``SAFE_RL_REWARD_UNJUDGED_LIMIT`` / ``..._PATIENCE`` | 0.5 / 3 | the circuit breaker (``off`` turns it off) |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from rewards.arguments import (
    REWARD_KINDS,
    GuardArguments,
    HelpfulnessArguments,
    RewardArguments,
    SettingError,
    from_env,
)
from rewards.loading import LOAD_LOCK, load_once

KINDS = REWARD_KINDS


def _fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def reward_from_env(kind: str, *, guard: Any = None, helpfulness: Any = None, **overrides: Any) -> Any:
    """Build the ``kind`` ("guard_only" or "hybrid") reward from the ``SAFE_RL_*`` variables. ``guard`` and
    ``helpfulness`` (objects) take the place of the configured models; ``overrides`` are field values of the
    argument dataclasses (e.g. ``guard_base_url=``) and win over the variables where not None. Nothing loads here.

    Example:
        >>> reward_from_env("guard_only", guard_model="some/guard").guard.model
        'some/guard'
    """
    if kind not in KINDS:
        raise SettingError(f"reward must be one of {list(KINDS)}, got {kind!r}")
    unknown = set(overrides) - {f.name for cls in (GuardArguments, HelpfulnessArguments, RewardArguments)
                                for f in fields(cls)}  # fmt: skip
    if unknown:
        raise TypeError(f"unknown reward settings {sorted(unknown)}")
    settings = from_env(RewardArguments, **_fields_of(RewardArguments, overrides), reward_kind=kind)
    # every variable is checked, also those of a model passed as an object: a typo never waits for another run
    guard_args = from_env(GuardArguments, **_fields_of(GuardArguments, overrides))
    helpfulness_args = from_env(HelpfulnessArguments, **_fields_of(HelpfulnessArguments, overrides))
    if guard is None:
        guard = guard_args.build()
    if kind == "hybrid" and helpfulness is None:
        helpfulness = helpfulness_args.build()
    return settings.build(guard, helpfulness)


_SHARED: dict[str, Any] = {}


def shared_reward(kind: str) -> Any:
    """The process's one ``kind`` reward built from the ``SAFE_RL_*`` variables, models loaded: what the TRL dotted
    paths (``rewards.hybrid_reward`` and its async form) and the verl and OpenRLHF adapters all use. Built once per
    process whatever the threads; the guard-only and the hybrid reward share one guard.

    Example:
        >>> shared_reward("judge")
        Traceback (most recent call last):
        ...
        rewards.arguments.SettingError: reward must be one of ['hybrid', 'guard_only'], got 'judge'
    """
    if kind not in KINDS:
        raise SettingError(f"reward must be one of {list(KINDS)}, got {kind!r}")
    if kind not in _SHARED:
        with LOAD_LOCK:
            if kind not in _SHARED:
                from rewards.warmup import load_reward_models

                built = next(iter(_SHARED.values()), None)
                reward = reward_from_env(kind, guard=built.guard if built is not None else None)
                reward.__name__ = f"{kind}_reward"
                _SHARED[kind] = load_reward_models(reward)
    return _SHARED[kind]


class EnvReward:
    """A reward built from the environment on its first call; picklable, with a stable ``__name__``.

    The first call builds the reward and loads its models, once per process whatever the threads
    (`rewards.loading.load_once`); a model that cannot load raises `rewards.loading.ModelLoadError` from that call.

    Example:
        >>> from rewards import hybrid_reward
        >>> hybrid_reward.__name__
        'hybrid_reward'
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.__name__ = f"{kind}_reward"
        self._reward: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reward": None}

    @property
    def reward(self) -> Any:
        """The reward, built and loaded on first use: once per process, whatever the threads."""
        return load_once(self, "_reward", self._build)

    def _build(self) -> Any:
        return shared_reward(self.kind)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return self.reward(prompts, completions, **kwargs)


class AsyncEnvReward(EnvReward):
    """`EnvReward` as an async callable (for a guard behind ``SAFE_RL_GUARD_BASE_URL``)."""

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        import asyncio

        reward = self._reward if self._reward is not None else await asyncio.to_thread(lambda: self.reward)
        return await reward.as_async()(prompts, completions, **kwargs)


guard_only_reward = EnvReward("guard_only")
hybrid_reward = EnvReward("hybrid")
guard_only_reward_async = AsyncEnvReward("guard_only")
hybrid_reward_async = AsyncEnvReward("hybrid")
