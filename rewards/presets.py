"""Ready-made rewards for TRL's command line (``--reward_funcs rewards.hybrid_reward``), set by environment.

Nothing loads at import: the guard and the helpfulness model are built on the first call, from these variables.

| variable | default | meaning |
|---|---|---|
| ``SAFE_RL_GUARD_MODEL`` | ``Qwen/Qwen3Guard-Gen-0.6B`` | guard hub id or folder (served model name with a base URL) |
| ``SAFE_RL_GUARD_BASE_URL`` | unset (in-process) | OpenAI-compatible server, e.g. ``http://localhost:8000/v1`` |
| ``SAFE_RL_GUARD_API_KEY`` | unset | bearer token for the server |
| ``SAFE_RL_GUARD_DEVICE`` | auto | device of an in-process guard |
| ``SAFE_RL_GUARD_BATCH_SIZE`` | 32 | in-process batch size |
| ``SAFE_RL_HELPFULNESS_MODEL`` | ``Skywork/Skywork-Reward-V2-Qwen3-0.6B`` | helpfulness reward model (hybrid) |
| ``SAFE_RL_HELPFULNESS_DEVICE`` | auto | its device |
| ``SAFE_RL_POLICY`` | ``strict`` | ``strict`` or ``loose`` |
| ``SAFE_RL_UNSAFE_CAP`` / ``SAFE_RL_REFUSAL_CAP`` | -10 / -5 | hybrid caps |
| ``SAFE_RL_JUDGE_THINKING`` | 1 | judge ``<think>`` blocks too (0 to skip) |
| ``SAFE_RL_SAFETY_SCORE`` | ``label`` | ``label`` (0/1, paper) or ``probability`` (in-process guard only) |
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rewards.loading import load_once
from rewards.registry import get_reward


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def reward_from_env(kind: str) -> Any:
    """Build the ``kind`` ("guard_only" or "hybrid") reward from the ``SAFE_RL_*`` variables."""
    guard_kwargs: dict[str, Any] = {
        "guard_model": _env("SAFE_RL_GUARD_MODEL", "Qwen/Qwen3Guard-Gen-0.6B"),
        "guard_base_url": _env("SAFE_RL_GUARD_BASE_URL"),
        "api_key": _env("SAFE_RL_GUARD_API_KEY"),
        "device": _env("SAFE_RL_GUARD_DEVICE"),
        "batch_size": int(_env("SAFE_RL_GUARD_BATCH_SIZE", "32")),  # type: ignore[arg-type]
    }
    common = {
        "policy": _env("SAFE_RL_POLICY", "strict"),
        "judge_thinking": _env("SAFE_RL_JUDGE_THINKING", "1") not in ("0", "false", "False"),
        "safety_score": _env("SAFE_RL_SAFETY_SCORE", "label"),
    }
    if kind == "hybrid":
        return get_reward(
            "hybrid",
            helpfulness_model=_env("SAFE_RL_HELPFULNESS_MODEL", "Skywork/Skywork-Reward-V2-Qwen3-0.6B"),
            helpfulness_kwargs={"device": _env("SAFE_RL_HELPFULNESS_DEVICE")},
            unsafe_cap=float(_env("SAFE_RL_UNSAFE_CAP", "-10")),  # type: ignore[arg-type]
            refusal_cap=float(_env("SAFE_RL_REFUSAL_CAP", "-5")),  # type: ignore[arg-type]
            **common,
            **guard_kwargs,
        )
    return get_reward(kind, **common, **guard_kwargs)


class EnvReward:
    """A reward built from the environment on its first call; picklable, with a stable ``__name__``.

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
        """The reward, built on first use: once per process, whatever the threads (`rewards.loading.load_once`)."""
        return load_once(self, "_reward", self._build)

    def _build(self) -> Any:
        reward = reward_from_env(self.kind)
        reward.__name__ = self.__name__
        return reward

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return self.reward(prompts, completions, **kwargs)


class AsyncEnvReward(EnvReward):
    """`EnvReward` as an async callable (for a guard behind ``SAFE_RL_GUARD_BASE_URL``)."""

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:  # type: ignore[override]
        return await self.reward.as_async()(prompts, completions, **kwargs)


guard_only_reward = EnvReward("guard_only")
hybrid_reward = EnvReward("hybrid")
guard_only_reward_async = AsyncEnvReward("guard_only")
hybrid_reward_async = AsyncEnvReward("hybrid")
