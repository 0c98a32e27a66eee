"""The toy world: tiny guard, policy and helpfulness models built in seconds from the project's own data.

Folders for `rewards.Qwen3GuardGen`, TRL's GRPOTrainer and `rewards.HelpfulnessRM`. They let the whole safety-RL
loop (policy -> guard verdicts -> reward -> GRPO) run offline on a laptop CPU:

    >>> from safe_rl.toy import build_toy_models  # doctest: +SKIP
    >>> models = build_toy_models()  # doctest: +SKIP
    >>> models.guard, models.policy, models.helpfulness  # doctest: +SKIP

Builds are deterministic and cached (see `safe_rl.toy.cache`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safe_rl.toy.guard import build_toy_guard
from safe_rl.toy.helpfulness import build_toy_helpfulness
from safe_rl.toy.policy import CHAT_TEMPLATE_KWARGS, build_toy_policy

__all__ = [
    "CHAT_TEMPLATE_KWARGS",
    "ToyModels",
    "build_toy_guard",
    "build_toy_helpfulness",
    "build_toy_models",
    "build_toy_policy",
    "toy_model",
]


@dataclass(frozen=True)
class ToyModels:
    """Folders of the three toy models."""

    guard: Path
    policy: Path
    helpfulness: Path


def build_toy_models(cache_dir: str | os.PathLike | None = None) -> ToyModels:
    """Build (or fetch from the cache) the toy guard, policy and helpfulness model."""
    return ToyModels(
        guard=build_toy_guard(cache_dir),
        policy=build_toy_policy(cache_dir),
        helpfulness=build_toy_helpfulness(cache_dir),
    )


def toy_model(name: str) -> Path:
    """The folder of the toy model ``name`` ("guard", "policy" or "helpfulness"), built on first use.

    Registered as the ``toy`` model source (entry point group ``rewards.model_sources``), so ``toy:guard`` works
    wherever a model name is taken (`rewards.loading.resolve_model_name`).

    Example:
        >>> toy_model("judge")
        Traceback (most recent call last):
        ...
        ValueError: unknown toy model 'judge'; choose from ['toy:guard', 'toy:policy', 'toy:helpfulness']
    """
    builders = {"guard": build_toy_guard, "policy": build_toy_policy, "helpfulness": build_toy_helpfulness}
    if name not in builders:
        raise ValueError(f"unknown toy model {name!r}; choose from {['toy:' + k for k in builders]}")
    return builders[name]()
