"""Qwen3Guard-Stream as a guard: per-token verdicts from its heads (`Qwen3GuardStream`), the model, the incremental
session, the pair rule, and the stopping criterion for rollouts."""

from rewards.guards.stream.guard import Qwen3GuardStream

__all__ = ["Qwen3GuardStream"]
