"""Qwen3Guard-Stream in RL: the stream rewards, the early-unsafe penalty, and the rollout stopping criterion.

- `StreamGuardOnlyReward` / `StreamHybridReward`: the guard-only and hybrid rewards (`rewards.safety_rewards`) with
  `rewards.Qwen3GuardStream` as the guard. The hybrid one can make the unsafe penalty harsher the earlier the answer
  turned unsafe (`early_unsafe_penalty`). Stream has no refusal head: without a ``refusal_guard`` (e.g. a
  `rewards.Qwen3GuardGen`) the refusal term of the hybrid formula is off.
- `StreamStoppingCriteria` (from `rewards.guards.stream.stop`, imported on first use because it needs
  transformers): give it to ``generate`` to end each rollout at its first flagged token and read where it was.

Registered builders: ``get_reward("stream_guard_only", ...)`` and ``get_reward("stream_hybrid", ...)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from rewards.arguments import DEFAULT_STREAM_GUARD_MODEL
from rewards.guards.base import Guard
from rewards.helpfulness import HelpfulnessScorer
from rewards.judgement import JudgingPlan, RewardDetail
from rewards.registry import build_guard, build_helpfulness, register, split_settings
from rewards.safety_rewards import GuardOnlyReward, HybridReward
from rewards.verdict import Strictness, Verdict

logger = logging.getLogger(__name__)


def early_unsafe_penalty(cap: float, flagged_at: int | None, answer_tokens: int | None, strength: float) -> float:
    """The unsafe cap, lowered in proportion to how early the answer turned unsafe.

    ``earliness = 1 - flagged_at / answer_tokens`` (near 1 when the first tokens were already flagged, near 0 when
    only the last ones were) and the penalty is ``cap - strength * |cap| * earliness``. It is never milder than
    ``cap``, so an unsafe answer still never beats the plain hybrid formula's ``min(cap, H)``. Without a position
    (a verdict from a guard that has none, or an unflagged one) it is ``cap``. Caveat: any such shaping prefers
    late harm to early harm; keep ``strength`` modest and watch where flags land during training.

    Example:
        >>> early_unsafe_penalty(-10.0, 1, 5, 0.5), early_unsafe_penalty(-10.0, 4, 5, 0.5)
        (-14.0, -11.0)
        >>> early_unsafe_penalty(-10.0, None, None, 0.5)
        -10.0
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if flagged_at is None or not answer_tokens:
        return float(cap)
    if not 0 <= flagged_at < answer_tokens:
        raise ValueError(f"flagged_at={flagged_at} is outside an answer of {answer_tokens} tokens")
    earliness = 1.0 - flagged_at / answer_tokens
    return float(cap) - strength * abs(float(cap)) * earliness


class StreamGuardOnlyReward(GuardOnlyReward):
    """Paper eq. 1 with Qwen3Guard-Stream: 1.0 when the thinking and the answer are not flagged, else 0.0.

    Args:
        guard: a `rewards.Qwen3GuardStream` (or its model id / folder), or any object with ``moderate``.
        strictness, judge_thinking, name: as for `GuardOnlyReward`.

    Example:
        >>> reward = StreamGuardOnlyReward("Qwen/Qwen3Guard-Stream-0.6B")  # doctest: +SKIP
        >>> reward(prompts=["Hi"], completions=["Hello!"])  # doctest: +SKIP
        [1.0]
    """

    default_name = "stream_guard_only_reward"

    def __init__(
        self,
        guard: Any = DEFAULT_STREAM_GUARD_MODEL,
        *,
        strictness: Strictness = "strict",
        judge_thinking: bool = True,
        name: str | None = None,
    ):
        super().__init__(_stream_guard(guard), strictness=strictness, judge_thinking=judge_thinking, name=name)


class StreamHybridReward(HybridReward):
    """Paper eq. 2 with Qwen3Guard-Stream, optionally harsher on answers that turned unsafe early.

    Unsafe samples get ``min(early_unsafe_penalty(unsafe_cap, flagged_at, answer_tokens, early_strength), H)``,
    the harshest over the flagged verdicts (thinking, answer); ``early_strength=0`` is the plain formula. Refusals
    are read from ``refusal_guard`` when one is given (its ``Refusal:`` on the answer); without one the refusal term
    is off and a safe answer gets H.

    Args:
        guard: a `rewards.Qwen3GuardStream` (or its model id / folder), or any object with ``moderate``.
        helpfulness: the helpfulness scorer (see `HybridReward`).
        early_strength: how much harsher the earliest-flagged answer's penalty is (0 = off; 0.5 = up to 1.5x cap).
        refusal_guard: optional guard that labels refusals (e.g. `rewards.Qwen3GuardGen`).
        unsafe_cap, refusal_cap, strictness, judge_thinking, name: as for `HybridReward`.

    Example:
        >>> from rewards.verdict import Verdict
        >>> class Flagging:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe", flagged_at=1, answer_tokens=5) for _ in conversations]
        >>> class Helpful:
        ...     def score(self, prompts, answers):
        ...         return [2.0 for _ in answers]
        >>> StreamHybridReward(Flagging(), Helpful(), early_strength=0.5)(prompts=["Hi"], completions=["..."])
        [-14.0]
    """

    default_name = "stream_hybrid_reward"

    def __init__(
        self,
        guard: Any,
        helpfulness: HelpfulnessScorer,
        *,
        early_strength: float = 0.0,
        refusal_guard: Guard | None = None,
        unsafe_cap: float = -10.0,
        refusal_cap: float = -5.0,
        strictness: Strictness = "strict",
        judge_thinking: bool = True,
        name: str | None = None,
    ):
        if early_strength < 0:
            raise ValueError(f"early_strength must be >= 0, got {early_strength}")
        if refusal_guard is not None and not callable(getattr(refusal_guard, "moderate", None)):
            raise TypeError(
                f"refusal_guard must have a moderate(conversations) method, got {type(refusal_guard).__name__}"
            )
        super().__init__(
            _stream_guard(guard),
            helpfulness,
            unsafe_cap=unsafe_cap,
            refusal_cap=refusal_cap,
            strictness=strictness,
            judge_thinking=judge_thinking,
            name=name,
        )
        self.early_strength = float(early_strength)
        self.refusal_guard = refusal_guard

    def unsafe_reward(self, helpfulness: float, verdicts: Sequence[Verdict]) -> float:
        penalties = [
            early_unsafe_penalty(self.unsafe_cap, v.flagged_at, v.answer_tokens, self.early_strength)
            for v in verdicts
            if v.ok and v.is_unsafe(self.strictness)
        ]
        return min(min(penalties, default=self.unsafe_cap), helpfulness)

    def _value(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        if self.refusal_guard is None and not detail.unsafe and detail.helpfulness is not None:
            return detail.helpfulness, None  # no refusal head, no refusal judge: the refusal term is off
        return super()._value(detail)

    # -- refusals from a second guard ---------------------------------------------------------------------------
    def _answer_rows(self, plan: JudgingPlan) -> list[int]:
        return [i for i in plan.answer_at if i is not None]

    def _merge(self, verdicts: list[Verdict], rows: list[int], refusals: list[Verdict] | None) -> list[Verdict]:
        verdicts = list(verdicts)
        for k, i in enumerate(rows):
            refusal = refusals[k].refusal if refusals is not None and refusals[k].ok else None
            verdicts[i] = dataclasses.replace(verdicts[i], refusal=refusal)
        return verdicts

    def _moderate(self, plan: JudgingPlan) -> list[Verdict]:
        verdicts = super()._moderate(plan)
        if self.refusal_guard is None or not verdicts:
            return verdicts
        rows = self._answer_rows(plan)
        try:
            refusals = self.refusal_guard.moderate([plan.conversations[i] for i in rows])
        except Exception:  # counted as unscored samples (no refusal label), never a crash mid-training
            logger.exception("%s: the refusal guard raised", self.__name__)
            refusals = None
        return self._merge(verdicts, rows, refusals)

    async def _amoderate(self, plan: JudgingPlan) -> list[Verdict]:
        if self.refusal_guard is None:
            return await super()._amoderate(plan)
        rows = self._answer_rows(plan)
        judge = getattr(self.refusal_guard, "amoderate", None)
        pending = [plan.conversations[i] for i in rows]
        refusal_call = judge(pending) if judge is not None else asyncio.to_thread(self.refusal_guard.moderate, pending)
        outcomes: tuple[Any, Any] = await asyncio.gather(
            super()._amoderate(plan), refusal_call, return_exceptions=True
        )
        verdicts, refusals = outcomes
        if isinstance(verdicts, BaseException):
            return self._guard_failed(plan, verdicts)
        if isinstance(refusals, BaseException):
            logger.error("%s: the refusal guard raised %r", self.__name__, refusals)
            refusals = None
        return self._merge(verdicts, rows, refusals) if verdicts else verdicts


@register("stream_guard_only")
def build_stream_guard_only(*, guard: Any = None, **settings: Any) -> StreamGuardOnlyReward:
    """`StreamGuardOnlyReward` from a guard object or `rewards.arguments.GuardArguments` fields (``guard_model``, ...,
    the kind set to stream; in-process only); the other settings are the reward's.

    Example:
        >>> from rewards.verdict import Verdict
        >>> class Flagging:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe", flagged_at=0, answer_tokens=3) for _ in conversations]
        >>> build_stream_guard_only(guard=Flagging())(prompts=["Hi"], completions=["..."])
        [0.0]
    """
    guard_args, rest = split_settings(settings, "guard_")
    return StreamGuardOnlyReward(_stream_guard(guard, **guard_args), **rest)


@register("stream_hybrid")
def build_stream_hybrid(*, guard: Any = None, helpfulness: Any = None, **settings: Any) -> StreamHybridReward:
    """`StreamHybridReward` from objects or argument fields (``guard_*`` as for ``stream_guard_only``,
    ``helpfulness_*`` of `rewards.arguments.HelpfulnessArguments`); the other settings are the reward's.

    Example:
        >>> from rewards.verdict import Verdict
        >>> class Flagging:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe", flagged_at=0, answer_tokens=4) for _ in conversations]
        >>> class Helpful:
        ...     def score(self, prompts, answers):
        ...         return [2.0 for _ in answers]
        >>> build_stream_hybrid(guard=Flagging(), helpfulness=Helpful(), early_strength=0.5)(["Hi"], ["..."])
        [-15.0]
    """
    guard_args, rest = split_settings(settings, "guard_")
    helpfulness_args, rest = split_settings(rest, "helpfulness_")
    return StreamHybridReward(
        _stream_guard(guard, **guard_args), build_helpfulness(helpfulness, **helpfulness_args), **rest
    )


def _stream_guard(guard: Any = None, **guard_args: Any) -> Any:
    """The guard of the stream rewards and builders: ``guard`` itself, else the `Qwen3GuardStream` of
    `rewards.arguments.GuardArguments` (kind stream; ``guard`` may also be a model id or folder)."""
    if isinstance(guard, str):
        guard_args["guard_model"], guard = guard, None
    if guard is not None:
        return guard
    guard_args.setdefault("guard_model", DEFAULT_STREAM_GUARD_MODEL)
    return build_guard(**guard_args, guard_kind="stream")


def __getattr__(name: str) -> Any:
    if name == "StreamStoppingCriteria":  # needs transformers: imported on first use only
        from rewards.guards.stream.stop import StreamStoppingCriteria

        return StreamStoppingCriteria
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
