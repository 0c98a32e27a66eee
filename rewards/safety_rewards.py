"""The guard-only and hybrid rewards as TRL reward functions (and plain callables for any other trainer).

Both judge the thinking ``t`` and the answer ``y`` of each completion separately (a completion is safe only if
both are), in one batched guard call per step. A sample whose outcome the guard could not establish gets ``None``
(TRL leaves it out of the advantage) and is counted; it never passes for safe.

``safety_score="probability"`` replaces the guard's safety labels by its label probabilities (`Verdict.probs`, read
after ``Safety:`` by the in-process guard), which gives a reward that varies continuously with the guard's
confidence; the exact formulas are in each class's docstring.

Every reward call (``judge``, ``ajudge``, calling the reward) is counted by an `UnjudgedBreaker`: when more than
``unjudged_limit`` of the samples stay unjudged for ``unjudged_patience`` calls in a row, the reward raises
`TrainingOnNothingError` naming the most frequent failure reasons (``unjudged_limit=None`` turns it off).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

from rewards.circuit_breaker import DEFAULT_LIMIT, DEFAULT_PATIENCE, UnjudgedBreaker
from rewards.formulas import guard_only_value, hybrid_value
from rewards.guards.base import Guard
from rewards.helpfulness import HelpfulnessScorer
from rewards.judgement import JudgingPlan, RewardDetail, plan_samples
from rewards.loading import ModelLoadError
from rewards.step_metrics import log_step_metrics
from rewards.verdict import Strictness, Verdict, check_strictness, failed_verdict

logger = logging.getLogger(__name__)

SafetyScore = Literal["label", "probability"]
SAFETY_SCORES: tuple[str, ...] = ("label", "probability")


class SafetyReward:
    """Shared machinery of the guard-based rewards; see `GuardOnlyReward` and `HybridReward`."""

    default_name = "safety_reward"

    labels_only = False  # True when the reward reads nothing but the safety label (then `moderate_safety` may do)

    def __init__(
        self,
        guard: Guard,
        *,
        strictness: Strictness = "strict",
        judge_thinking: bool = True,
        name: str | None = None,
        safety_score: SafetyScore = "label",
        policy_tokenizer: Any = None,
        unjudged_limit: float | None = DEFAULT_LIMIT,
        unjudged_patience: int = DEFAULT_PATIENCE,
    ):
        if not callable(getattr(guard, "moderate", None)):
            raise TypeError(f"guard must have a moderate(conversations) method, got {type(guard).__name__}")
        if safety_score not in SAFETY_SCORES:
            raise ValueError(f"safety_score must be one of {SAFETY_SCORES}, got {safety_score!r}")
        # A guard that says it has no probabilities (Qwen3GuardGen over a server) is refused here, not per sample.
        if safety_score == "probability" and getattr(guard, "label_probabilities", True) is False:
            raise ValueError(
                "safety_score='probability' needs the guard's label probabilities (Verdict.probs), which the "
                "server backend does not return; use an in-process Qwen3GuardGen or safety_score='label'"
            )
        self.guard = guard
        self.strictness = check_strictness(strictness)
        self.judge_thinking = judge_thinking
        self.safety_score = safety_score
        self.policy_tokenizer = policy_tokenizer
        self._warned_parsed = False
        self.__name__ = name or self.default_name  # TRL logs rewards under this name
        self.breaker = UnjudgedBreaker(unjudged_limit, unjudged_patience, name=self.__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(guard={self.guard!r}, strictness={self.strictness!r})"

    # -- planning ---------------------------------------------------------------------------------------------
    def _plan(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None) -> JudgingPlan:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if completion_ids is not None and self.policy_tokenizer is None and not self._warned_parsed:
            if any(not isinstance(c, str) for c in completions):
                self._warned_parsed = True
                logger.warning(
                    "%s: chat-format completions come with their token ids but the reward has no policy_tokenizer: "
                    "only the parsed messages are judged, and TRL's response parsers drop text they do not expect "
                    "(e.g. before <think>). Pass policy_tokenizer= the policy's tokenizer to judge every token.",
                    self.__name__,
                )
        if completion_ids is None or self.policy_tokenizer is None:
            completion_ids = [None] * len(completions)
        return plan_samples(
            prompts, completions, completion_ids, judge_thinking=self.judge_thinking, tokenizer=self.policy_tokenizer
        )

    def _guard_failed(self, plan: JudgingPlan, exc: BaseException) -> list[Verdict]:
        logger.exception("%s: the guard raised; %d samples get no reward", self.__name__, len(plan.answer_at))
        return [failed_verdict(f"guard raised {type(exc).__name__}: {exc}")] * len(plan.conversations)

    def _guard_calls(self) -> tuple[Any, Any]:
        """The guard's (sync, async or None) entry points: the label-only pair (``moderate_safety``) when this
        reward needs no more than label probabilities and the guard has it, else ``moderate``/``amoderate``."""
        if self.labels_only and self.safety_score == "probability":
            moderate_safety = getattr(self.guard, "moderate_safety", None)
            if callable(moderate_safety):
                return moderate_safety, getattr(self.guard, "amoderate_safety", None)
        return self.guard.moderate, getattr(self.guard, "amoderate", None)

    def _moderate(self, plan: JudgingPlan) -> list[Verdict]:
        if not plan.conversations:
            return []
        try:
            return self._guard_calls()[0](plan.conversations)
        except ModelLoadError:  # a configuration error: stop the run, do not train on failures
            raise
        except Exception as exc:  # never crash a training step on a guard fault; the samples are counted as failed
            return self._guard_failed(plan, exc)

    async def _amoderate(self, plan: JudgingPlan) -> list[Verdict]:
        if not plan.conversations:
            return []
        try:
            moderate, amoderate = self._guard_calls()
            if amoderate is not None:
                return await amoderate(plan.conversations)
            return await asyncio.to_thread(moderate, plan.conversations)
        except ModelLoadError:
            raise
        except Exception as exc:
            return self._guard_failed(plan, exc)

    # -- scoring ----------------------------------------------------------------------------------------------
    def _helpfulness(self, plan: JudgingPlan) -> list[float | None]:
        return [None] * len(plan.answer_at)

    def _outcome(self, answer: Verdict, thinking: Verdict | None) -> tuple[bool | None, str | None]:
        """(unsafe, failure): unsafe is known as soon as one readable verdict is unsafe."""
        verdicts = [v for v in (answer, thinking) if v is not None]
        if any(v.ok and v.is_unsafe(self.strictness) for v in verdicts):
            return True, None
        failed = [v for v in verdicts if not v.ok]
        if failed:
            return None, f"guard: {failed[0].error}"
        return False, None

    def _value(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        raise NotImplementedError

    def _p_unsafe(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        """P(t or y unsafe under the strictness) = 1 - prod over judged verdicts of (1 - P(unsafe)), or a failure."""
        p_safe = 1.0
        for verdict in detail.verdicts:
            p = verdict.p_unsafe(self.strictness) if verdict.ok else None
            if p is None:
                return None, "guard verdict has no label probabilities (safety_score='probability')"
            p_safe *= 1.0 - p
        return 1.0 - p_safe, None

    def _details(
        self, plan: JudgingPlan, verdicts: list[Verdict], helpfulness: list[float | None]
    ) -> list[RewardDetail]:
        details = []
        for i, error in enumerate(plan.errors):
            if error is not None:
                details.append(RewardDetail(reward=None, failure=error))
                continue
            answer_at, thinking_at = plan.answer_at[i], plan.thinking_at[i]
            assert answer_at is not None  # every readable sample has an answer conversation
            answer = verdicts[answer_at]
            thinking = verdicts[thinking_at] if thinking_at is not None else None
            unsafe, failure = self._outcome(answer, thinking)
            detail = RewardDetail(
                reward=None,
                unsafe=unsafe,
                refusal=answer.refusal if answer.ok else None,
                failure=failure,
                helpfulness=helpfulness[i],
                answer=answer,
                thinking=thinking,
            )
            reward, failure = self._value(detail) if failure is None else (None, failure)
            details.append(RewardDetail(**{**detail.__dict__, "reward": reward, "failure": failure}))
        failures = [d.failure for d in details if d.failure]
        if failures:
            logger.warning(
                "%s: %d/%d samples unscored (first: %s)", self.__name__, len(failures), len(details), failures[0]
            )
        return details

    def _counted(self, details: list[RewardDetail]) -> list[RewardDetail]:
        self.breaker.record(len(details), [d.failure if d.reward is None else None for d in details])
        return details

    def judge(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None
    ) -> list[RewardDetail]:
        """Rewards with their reasons, one `RewardDetail` per (prompt, completion); ``completion_ids`` (TRL passes
        them) are read instead of chat-format completions when the reward has a ``policy_tokenizer``.

        Raises `rewards.loading.ModelLoadError` when a model cannot load, and `TrainingOnNothingError` when the
        samples kept coming back unjudged (see `rewards.circuit_breaker`).
        """
        self.breaker.check()
        plan = self._plan(prompts, completions, completion_ids)
        return self._counted(self._details(plan, self._moderate(plan), self._helpfulness(plan)))

    async def ajudge(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None
    ) -> list[RewardDetail]:
        """`judge` with the guard awaited (and helpfulness scored meanwhile in a worker thread; models load one at a
        time under `rewards.loading.LOAD_LOCK`)."""
        self.breaker.check()
        plan = self._plan(prompts, completions, completion_ids)
        verdicts, helpfulness = await asyncio.gather(self._amoderate(plan), asyncio.to_thread(self._helpfulness, plan))
        return self._counted(self._details(plan, verdicts, helpfulness))

    def _report(self, details: list[RewardDetail], kwargs: dict[str, Any]) -> list[float | None]:
        log_step_metrics(details, kwargs.get("log_metric"))
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("guard_answer", [d.answer.safety if d.answer else None for d in details])
            log_extra("guard_refusal", [d.refusal for d in details])
        return [d.reward for d in details]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """TRL reward-function signature; extra dataset columns and trainer kwargs are accepted and ignored."""
        return self._report(self.judge(prompts, completions, kwargs.get("completion_ids")), kwargs)

    def as_async(self) -> AsyncSafetyReward:
        """The same reward as an ``async`` callable, which TRL runs concurrently with other async rewards."""
        return AsyncSafetyReward(self)


class AsyncSafetyReward:
    """Async view of a `SafetyReward` (use with a remote guard): ``await reward(prompts=..., completions=...)``.

    Example:
        >>> import asyncio
        >>> from rewards.verdict import Verdict
        >>> class SafeGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe") for _ in conversations]
        >>> reward = GuardOnlyReward(SafeGuard()).as_async()
        >>> reward.__name__, asyncio.run(reward(prompts=["Hi"], completions=["Hello!"]))
        ('guard_only_reward', [1.0])
    """

    def __init__(self, reward: SafetyReward):
        self.reward = reward
        self.__name__ = reward.__name__

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return self.reward._report(
            await self.reward.ajudge(prompts, completions, kwargs.get("completion_ids")), kwargs
        )


class GuardOnlyReward(SafetyReward):
    """Paper eq. 1: 1.0 when the guard judges both the thinking and the answer safe, else 0.0.

    With ``safety_score="probability"`` the reward is the probability that both are safe,
    ``r = (1 - p(y)) * (1 - p(t))``, where ``p(v)`` is the guard's probability that v is unsafe under ``strictness``
    (strict: P(Unsafe) + P(Controversial); loose: P(Unsafe)) from `Verdict.probs`, and the factor for t is left out
    when there is no thinking (or ``judge_thinking`` is False). A verdict without probabilities (unreadable, or a
    guard that gives none) makes the sample a counted failure (None), never safe. When the guard has
    ``moderate_safety`` (label and probabilities only, one forward pass per input), this mode uses it.

    Args:
        guard: any object with ``moderate(conversations) -> list[Verdict]`` (e.g. `rewards.Qwen3GuardGen`).
        strictness: "strict" (Controversial counts as unsafe, the paper's choice) or "loose".
        judge_thinking: judge the thinking (think blocks, ``reasoning_content``) as well as the answer. With False,
            what the policy writes in its thinking is judged by nobody: use it only where the thinking is never shown.
        name: the name TRL logs the reward under.
        safety_score: "label" (the paper's 0/1 reward, default) or "probability" (see above).
        policy_tokenizer: the policy's tokenizer. With it, a chat-format completion is read from the token ids TRL
            passes (``completion_ids``) rather than from its parsed messages: TRL's ``parse_response`` (the
            ``tools=`` path) drops text it does not expect, e.g. before ``<think>`` or before a tool call, which no
            judge would then read. In TRL's tool loop the ids hold the tools' replies too, which are then judged.
        unjudged_limit, unjudged_patience: the `rewards.circuit_breaker.UnjudgedBreaker` of this reward: more than
            ``unjudged_limit`` of the samples unjudged in ``unjudged_patience`` reward calls in a row raises
            `TrainingOnNothingError` (default 0.5 and 3; ``unjudged_limit=None`` turns it off).

    Example:
        >>> from rewards.verdict import parse_verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [parse_verdict("Safety: Safe\\nCategories: None\\nRefusal: No") for _ in conversations]
        >>> GuardOnlyReward(FixedGuard())(prompts=["Hi"], completions=["Hello!"])
        [1.0]
    """

    default_name = "guard_only_reward"
    labels_only = True

    def _value(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        if self.safety_score == "probability":
            p_unsafe, failure = self._p_unsafe(detail)
            return (None, failure) if p_unsafe is None else (1.0 - p_unsafe, None)
        return guard_only_value(bool(detail.unsafe)), None


class HybridReward(SafetyReward):
    """Paper eq. 2: ``min(unsafe_cap, H)`` if t or y is unsafe, ``min(refusal_cap, H)`` if y is a refusal, else H.

    Args:
        guard: any object with ``moderate(conversations) -> list[Verdict]``.
        helpfulness: any object with ``score(prompts, answers) -> list[float | None]`` (e.g. `rewards.HelpfulnessRM`);
            it scores the answer y, without the thinking.
        unsafe_cap, refusal_cap: the caps (paper: -10 and -5).
        strictness, judge_thinking, name, policy_tokenizer, unjudged_limit, unjudged_patience: as for `GuardOnlyReward`.
        safety_score: "label" (the paper's formula, default) or "probability": with ``q = 1 - (1 - p(y)) * (1 - p(t))``
            the probability that t or y is unsafe (``p`` as for `GuardOnlyReward`), the reward interpolates between
            the unsafe case and the safe one, ``r = q * min(unsafe_cap, H) + (1 - q) * s`` with
            ``s = min(refusal_cap, H)`` if y is labelled a refusal, else ``H`` (the refusal stays the guard's label;
            ``unsafe_reward`` shapes the first term as in label mode). A verdict without probabilities, or without a
            refusal label, makes the sample a counted failure (None).

    Example:
        >>> from rewards.verdict import parse_verdict
        >>> class RefusingGuard:
        ...     def moderate(self, conversations):
        ...         return [parse_verdict("Safety: Safe\\nCategories: None\\nRefusal: Yes") for _ in conversations]
        >>> class Helpful:
        ...     def score(self, prompts, answers):
        ...         return [2.0 for _ in answers]
        >>> HybridReward(RefusingGuard(), Helpful())(prompts=["Hi"], completions=["I can't help with that."])
        [-5.0]
    """

    default_name = "hybrid_reward"

    def __init__(
        self,
        guard: Guard,
        helpfulness: HelpfulnessScorer,
        *,
        unsafe_cap: float = -10.0,
        refusal_cap: float = -5.0,
        strictness: Strictness = "strict",
        judge_thinking: bool = True,
        name: str | None = None,
        safety_score: SafetyScore = "label",
        policy_tokenizer: Any = None,
        unjudged_limit: float | None = DEFAULT_LIMIT,
        unjudged_patience: int = DEFAULT_PATIENCE,
    ):
        super().__init__(
            guard,
            strictness=strictness,
            judge_thinking=judge_thinking,
            name=name,
            safety_score=safety_score,
            policy_tokenizer=policy_tokenizer,
            unjudged_limit=unjudged_limit,
            unjudged_patience=unjudged_patience,
        )
        if not callable(getattr(helpfulness, "score", None)):
            raise TypeError(
                f"helpfulness must have a score(prompts, answers) method, got {type(helpfulness).__name__}"
            )
        if unsafe_cap > refusal_cap:
            logger.warning(
                "unsafe_cap (%s) is above refusal_cap (%s): unsafe answers would beat refusals",
                unsafe_cap,
                refusal_cap,
            )
        self.helpfulness = helpfulness
        self.unsafe_cap = float(unsafe_cap)
        self.refusal_cap = float(refusal_cap)

    def _helpfulness(self, plan: JudgingPlan) -> list[float | None]:
        rows = [i for i, e in enumerate(plan.errors) if e is None]
        scores: list[float | None] = [None] * len(plan.errors)
        if not rows:
            return scores
        try:
            values = self.helpfulness.score([plan.prompts[i] for i in rows], [plan.answers[i] for i in rows])
        except ModelLoadError:
            raise
        except Exception:  # a scorer fault costs the samples it cannot score, not the step nor the run
            logger.exception(
                "%s: the helpfulness model raised on %d samples; scoring them one by one", self.__name__, len(rows)
            )
            values = [self._helpfulness_one(plan.prompts[i], plan.answers[i]) for i in rows]
        for i, value in zip(rows, values, strict=True):
            scores[i] = float(value) if value is not None and value == value else None
        return scores

    def _helpfulness_one(self, prompt: Any, answer: str) -> float | None:
        try:
            return self.helpfulness.score([prompt], [answer])[0]
        except ModelLoadError:
            raise
        except Exception:
            return None

    def unsafe_reward(self, helpfulness: float, verdicts: Sequence[Verdict]) -> float:
        """The reward of an unsafe sample; subclasses may shape it (e.g. by how early the answer turned unsafe)."""
        return min(self.unsafe_cap, helpfulness)

    def _value(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        if detail.helpfulness is None:
            return None, "helpfulness score unavailable"
        if self.safety_score == "probability":
            return self._expected_value(detail)
        if detail.unsafe:
            return self.unsafe_reward(detail.helpfulness, detail.verdicts), None
        if detail.refusal is None:
            return None, "guard gave no 'Refusal:' line"
        return hybrid_value(
            detail.helpfulness,
            unsafe=False,
            refusal=detail.refusal,
            unsafe_cap=self.unsafe_cap,
            refusal_cap=self.refusal_cap,
        ), None

    def _expected_value(self, detail: RewardDetail) -> tuple[float | None, str | None]:
        q, failure = self._p_unsafe(detail)
        if q is None:
            return None, failure
        if detail.refusal is None:
            return None, "guard gave no 'Refusal:' line"
        h = detail.helpfulness
        if h is None:
            return None, "helpfulness score unavailable"
        safe = hybrid_value(
            h, unsafe=False, refusal=detail.refusal, unsafe_cap=self.unsafe_cap, refusal_cap=self.refusal_cap
        )
        return q * self.unsafe_reward(h, detail.verdicts) + (1.0 - q) * safe, None
