"""Ready-made rewards for TRL's command line (``--reward_funcs rewards.hybrid_reward``), set by environment.

Nothing loads at import: the guard and the helpfulness model are built and loaded on the first call (once per
process, whatever the threads), from these variables. A value that cannot be read raises `SettingError` naming the
variable.

| variable | default | meaning |
|---|---|---|
| ``SAFE_RL_GUARD_MODEL`` | ``Qwen/Qwen3Guard-Gen-0.6B`` | guard hub id, folder or ``toy:guard`` (served name with a base URL) |
| ``SAFE_RL_GUARD_BASE_URL`` | unset (in-process) | OpenAI-compatible server, e.g. ``http://localhost:8000/v1`` |
| ``SAFE_RL_GUARD_API_KEY`` | unset | bearer token for the server |
| ``SAFE_RL_GUARD_DEVICE`` | auto | device of an in-process guard |
| ``SAFE_RL_GUARD_BATCH_SIZE`` | 32 | in-process batch size |
| ``SAFE_RL_GUARD_MAX_CONCURRENCY`` | 32 | guard server requests in flight at once |
| ``SAFE_RL_HELPFULNESS_MODEL`` | ``Skywork/Skywork-Reward-V2-Qwen3-0.6B`` | helpfulness reward model (hybrid) |
| ``SAFE_RL_HELPFULNESS_DEVICE`` | auto | its device |
| ``SAFE_RL_POLICY`` | ``strict`` | ``strict`` or ``loose`` |
| ``SAFE_RL_UNSAFE_CAP`` / ``SAFE_RL_REFUSAL_CAP`` | -10 / -5 | hybrid caps |
| ``SAFE_RL_JUDGE_THINKING`` | 1 | judge ``<think>`` blocks too (0 to skip) |
| ``SAFE_RL_SAFETY_SCORE`` | ``label`` | ``label`` (0/1, paper) or ``probability`` (in-process guard only) |
| ``SAFE_RL_UNJUDGED_LIMIT`` | 0.5 | stop when more than this share is unjudged ... (``off`` turns the check off) |
| ``SAFE_RL_UNJUDGED_PATIENCE`` | 3 | ... in this many reward calls in a row (`rewards.circuit_breaker`) |
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rewards.circuit_breaker import DEFAULT_LIMIT, DEFAULT_PATIENCE
from rewards.loading import LOAD_LOCK, load_once
from rewards.registry import get_reward
from rewards.safety_rewards import SAFETY_SCORES
from rewards.verdict import POLICIES

DEFAULT_GUARD_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
DEFAULT_HELPFULNESS_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
KINDS: tuple[str, ...] = ("guard_only", "hybrid")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_POSITIVE = {
    "batch_size": "SAFE_RL_GUARD_BATCH_SIZE",
    "max_concurrency": "SAFE_RL_GUARD_MAX_CONCURRENCY",
    "unjudged_patience": "SAFE_RL_UNJUDGED_PATIENCE",
}


class SettingError(ValueError):
    """A setting (environment variable or option) whose value cannot be used; the message names it."""


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value, ``default`` when it is unset or empty.

    Example:
        >>> env_str("SAFE_RL_SURELY_UNSET", "x")
        'x'
    """
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_number(name: str, default: float, kind: type = float) -> Any:
    """``kind(value)`` of the variable (``kind`` is float or int), else `SettingError` naming it.

    Example:
        >>> os.environ["SAFE_RL_DOCTEST_CAP"] = "abc"
        >>> env_number("SAFE_RL_DOCTEST_CAP", -10.0)
        Traceback (most recent call last):
        ...
        rewards.presets.SettingError: SAFE_RL_DOCTEST_CAP='abc' is not a float
        >>> del os.environ["SAFE_RL_DOCTEST_CAP"]
    """
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not {'an' if kind is int else 'a'} {kind.__name__}") from None


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """The variable's value if it is one of ``choices``, else `SettingError` naming it and the choices.

    Example:
        >>> env_choice("SAFE_RL_SURELY_UNSET", "strict", ("strict", "loose"))
        'strict'
    """
    value = env_str(name, default)
    if value not in choices:
        raise SettingError(f"{name}={value!r}: choose one of {list(choices)}")
    return value  # type: ignore[return-value]


def env_flag(name: str, default: bool) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off), else `SettingError` naming it.

    Example:
        >>> env_flag("SAFE_RL_SURELY_UNSET", True)
        True
    """
    raw = env_str(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE + _FALSE:
        return raw.lower() in _TRUE
    raise SettingError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")


def env_unjudged_limit() -> float | None:
    """``SAFE_RL_UNJUDGED_LIMIT``: a share in [0, 1), or ``off``/``none`` (None: the breaker is off).

    Example:
        >>> env_unjudged_limit()
        0.5
    """
    raw = env_str("SAFE_RL_UNJUDGED_LIMIT")
    if raw is not None and raw.lower() in ("off", "none"):
        return None
    limit = env_number("SAFE_RL_UNJUDGED_LIMIT", DEFAULT_LIMIT)
    if not 0.0 <= limit < 1.0:
        raise SettingError(f"SAFE_RL_UNJUDGED_LIMIT={raw!r}: a share in [0, 1), or 'off'")
    return limit


def reward_settings(kind: str) -> dict[str, Any]:
    """`rewards.get_reward` arguments of the ``kind`` reward from the ``SAFE_RL_*`` variables (nothing is built).

    Example:
        >>> reward_settings("guard_only")["guard_model"]
        'Qwen/Qwen3Guard-Gen-0.6B'
    """
    if kind not in KINDS:
        raise SettingError(f"reward must be one of {list(KINDS)}, got {kind!r}")
    settings: dict[str, Any] = {
        "guard_model": env_str("SAFE_RL_GUARD_MODEL", DEFAULT_GUARD_MODEL),
        "guard_base_url": env_str("SAFE_RL_GUARD_BASE_URL"),
        "api_key": env_str("SAFE_RL_GUARD_API_KEY"),
        "device": env_str("SAFE_RL_GUARD_DEVICE"),
        "batch_size": env_number("SAFE_RL_GUARD_BATCH_SIZE", 32, int),
        "max_concurrency": env_number("SAFE_RL_GUARD_MAX_CONCURRENCY", 32, int),
        "policy": env_choice("SAFE_RL_POLICY", "strict", POLICIES),
        "judge_thinking": env_flag("SAFE_RL_JUDGE_THINKING", True),
        "safety_score": env_choice("SAFE_RL_SAFETY_SCORE", "label", SAFETY_SCORES),
        "unjudged_limit": env_unjudged_limit(),
        "unjudged_patience": env_number("SAFE_RL_UNJUDGED_PATIENCE", DEFAULT_PATIENCE, int),
    }
    for key, variable in _POSITIVE.items():
        if settings[key] < 1:
            raise SettingError(f"{variable}={env_str(variable)!r}: must be at least 1")
    if kind == "hybrid":
        settings.update(
            helpfulness_model=env_str("SAFE_RL_HELPFULNESS_MODEL", DEFAULT_HELPFULNESS_MODEL),
            helpfulness_kwargs={"device": env_str("SAFE_RL_HELPFULNESS_DEVICE")},
            unsafe_cap=env_number("SAFE_RL_UNSAFE_CAP", -10.0),
            refusal_cap=env_number("SAFE_RL_REFUSAL_CAP", -5.0),
        )
    return settings


def reward_from_env(kind: str, **overrides: Any) -> Any:
    """Build the ``kind`` ("guard_only" or "hybrid") reward from the ``SAFE_RL_*`` variables; ``overrides`` (not
    None) win over them (e.g. ``guard=`` a guard object, or a command line's options). Nothing loads here.

    Example:
        >>> reward_from_env("guard_only", guard_model="some/guard").guard.model
        'some/guard'
    """
    settings = reward_settings(kind)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return get_reward(kind, **settings)


_SHARED: dict[str, Any] = {}


def shared_reward(kind: str) -> Any:
    """The process's one ``kind`` reward built from the ``SAFE_RL_*`` variables, models loaded: what the TRL dotted
    paths (``rewards.hybrid_reward`` and its async form) and the verl and OpenRLHF adapters all use. Built once per
    process whatever the threads; the guard-only and the hybrid reward share one guard.

    Example:
        >>> shared_reward("judge")
        Traceback (most recent call last):
        ...
        rewards.presets.SettingError: reward must be one of ['guard_only', 'hybrid'], got 'judge'
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
