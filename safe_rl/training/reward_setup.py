"""Building the guard, the helpfulness model and the TRL reward function from the ``reward`` section."""

from __future__ import annotations

import logging
import os
from typing import Any

from safe_rl.training.config import RewardArguments, resolve_model

logger = logging.getLogger(__name__)


def make_guard(args: RewardArguments) -> Any:
    """A `rewards.Qwen3GuardGen`: in-process, or a client of the server at ``reward.guard_base_url``."""
    from rewards import Qwen3GuardGen

    model = args.reward_guard_model if args.reward_guard_base_url else resolve_model(args.reward_guard_model)
    return Qwen3GuardGen(
        model,
        base_url=args.reward_guard_base_url,
        api_key=os.environ.get(args.reward_guard_api_key_env),
        batch_size=args.reward_guard_batch_size,
        max_concurrency=args.reward_guard_max_concurrency,
        device=args.reward_guard_device,
    )


def make_helpfulness(args: RewardArguments) -> Any:
    """A `rewards.HelpfulnessRM` for the hybrid reward's H."""
    from rewards import HelpfulnessRM

    return HelpfulnessRM(
        resolve_model(args.reward_helpfulness_model),
        batch_size=args.reward_helpfulness_batch_size,
        device=args.reward_helpfulness_device,
    )


def make_reward(args: RewardArguments, kind: str, *, guard: Any = None, helpfulness: Any = None) -> Any:
    """The TRL reward function of ``kind`` ("hybrid" or "guard_only"); pass ``guard``/``helpfulness`` to share them
    between runs. Async (concurrent guard calls) when ``reward.async`` says so, by default when the guard is remote.

    Example:
        >>> from safe_rl.training.config import RewardArguments
        >>> make_reward(RewardArguments(), "guard_only").__name__  # models load on first call
        'guard_only_reward'
    """
    from rewards import get_reward

    guard = guard if guard is not None else make_guard(args)
    common = {
        "guard": guard,
        "policy": args.reward_policy,
        "judge_thinking": args.reward_judge_thinking,
        "safety_score": args.reward_safety_score,
    }
    if kind == "guard_only":
        reward = get_reward("guard_only", **common)
    elif kind == "hybrid":
        reward = get_reward(
            "hybrid",
            helpfulness=helpfulness if helpfulness is not None else make_helpfulness(args),
            unsafe_cap=args.reward_unsafe_cap,
            refusal_cap=args.reward_refusal_cap,
            **common,
        )
    else:
        raise ValueError(f"unknown reward kind {kind!r}")
    use_async = args.reward_async if args.reward_async is not None else bool(args.reward_guard_base_url)
    return reward.as_async() if use_async else reward
