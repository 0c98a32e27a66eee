"""Qwen3Guard-Gen as a guard: the `Qwen3GuardGen` facade, in-process (`rewards.guards.gen.local`, on
`rewards.engine`) or behind an OpenAI-compatible server (`rewards.guards.gen.remote`)."""

from rewards.guards.gen.guard import Qwen3GuardGen

__all__ = ["Qwen3GuardGen"]
