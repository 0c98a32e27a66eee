"""What one reward call judges and what it found: the guard inputs of a batch of samples (`JudgingPlan`, built
by `plan_samples` by the rule of `rewards.conversation`) and, per sample, the verdicts and the reward they give
(`RewardDetail`). The rewards (`rewards.safety_rewards`), their metrics (`rewards.step_metrics`) and the adapters
read these records; this module depends on none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.conversation import Conversation, completion_text_of_ids, read_completion, response_conversation
from rewards.verdict import Verdict


@dataclass(frozen=True)
class RewardDetail:
    """Why a sample got its reward: the verdicts, the outcome they imply, and H for the hybrid reward.

    Example:
        >>> from rewards import GuardOnlyReward
        >>> from rewards.verdict import Verdict
        >>> class ThinkingFlagged:  # flags the thinking, passes the answer
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe" if c[-1]["content"] == "plan" else "Safe") for c in conversations]
        >>> detail = GuardOnlyReward(ThinkingFlagged()).judge(["Hi"], ["<think>plan</think>Hello!"])[0]
        >>> detail.reward, detail.unsafe, detail.answer.safety, detail.thinking.safety
        (0.0, True, 'Safe', 'Unsafe')
    """

    reward: float | None
    unsafe: bool | None = None
    refusal: bool | None = None
    failure: str | None = None
    helpfulness: float | None = None
    answer: Verdict | None = None
    thinking: Verdict | None = None

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return tuple(v for v in (self.answer, self.thinking) if v is not None)


@dataclass
class JudgingPlan:
    """The guard inputs for a batch of samples and where each sample's verdicts will be."""

    conversations: list[Conversation] = field(default_factory=list)
    answer_at: list[int | None] = field(default_factory=list)
    thinking_at: list[int | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    prompts: list[Any] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


def plan_samples(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Any] | None = None,
    *,
    judge_thinking: bool = True,
    tokenizer: Any = None,
) -> JudgingPlan:
    """The guard conversations of each sample: its answer, and its thinking when ``judge_thinking``; a sample that
    cannot be read gets its error instead (counted, never judged as empty). With ``tokenizer`` (the policy's), a
    chat-format completion is read from its ``completion_ids``.

    Example:
        >>> plan = plan_samples(["Hi"], ["<think>plan</think>Hello!"])
        >>> [c[-1]["content"] for c in plan.conversations], plan.answer_at, plan.thinking_at
        (['Hello!', 'plan'], [0], [1])
    """
    if completion_ids is None or tokenizer is None:
        completion_ids = [None] * len(completions)
    plan = JudgingPlan()
    for prompt, completion, ids in zip(prompts, completions, completion_ids, strict=True):
        answer_at = thinking_at = error = None
        answer = ""
        try:
            if ids is not None and not isinstance(completion, str):  # TRL's parsed messages: read the tokens
                completion = completion_text_of_ids(ids, tokenizer)
            split = read_completion(completion)  # the rule of what is judged: rewards.conversation
            answer_turn = response_conversation(prompt, split.answer)
            thinking_turn = response_conversation(prompt, split.thinking) if split.thinking else None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            error = f"bad sample: {exc}"
        else:
            answer = split.answer  # the helpfulness model scores the very answer the guard judges
            plan.conversations.append(answer_turn)
            answer_at = len(plan.conversations) - 1
            if judge_thinking and thinking_turn is not None:
                plan.conversations.append(thinking_turn)
                thinking_at = len(plan.conversations) - 1
        plan.answer_at.append(answer_at)
        plan.thinking_at.append(thinking_at)
        plan.errors.append(error)
        plan.prompts.append(prompt)
        plan.answers.append(answer)
    return plan
