"""verl custom reward functions backed by the guard rewards (verl 0.9's reward loop, and older verl's batch manager).

verl does not pass the prompt to reward functions: put it in each row's ``extra_info["prompt"]`` (text or chat
messages) when preparing the parquet files; a row without it is a configuration error (`MissingPromptError`). In
verl >= 0.9 (``reward.*`` keys, the default ``naive`` reward manager of the reward loop)::

    reward.custom_reward_function.path=pkg://rewards.integrations.verl
    reward.custom_reward_function.name=compute_score_async     # or compute_score (sync, on verl's threads)
    +reward.custom_reward_function.reward_kwargs.reward=guard_only   # default: hybrid

The reward loop calls the function once per sample, many at a time; those calls are coalesced into guard batches
(`rewards.coalesce`), so the guard and the helpfulness model see batches, not single samples. ``compute_score_async``
is awaited on the loop's event loop, so every pending sample joins the batch; ``compute_score`` runs on the loop's
executor threads (``min(32, cores + 4)`` at once), which caps the batches at that many samples. With
``reward.reward_model.enable=True`` verl starts the guard itself (vLLM/SGLang replicas behind its router) and passes
``reward_router_address``: the guard requests then go there (`rewards.integrations.common.get_routed_reward_for`).
Older verl: ``reward_model.reward_manager=batch`` with ``name=compute_score_batch`` (one guard call per batch).

Each result is a dict with the same keys for every sample (verl keeps the first sample's keys): ``score``, then
``judged``, ``unsafe`` and ``refusal`` as 0/1 (`rewards.integrations.common.sample_logs`). A sample that could not be
judged scores `rewards.integrations.common.failure_score` (pessimistic) with ``judged=0``; the reward's circuit
breaker counts one check per coalesced batch (`rewards.circuit_breaker`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rewards.integrations.common import (
    coalescer_for,
    failure_score,
    get_reward_for,
    get_routed_reward_for,
    sample_logs,
)


class MissingPromptError(KeyError):
    """A verl row without ``extra_info["prompt"]``: the guard cannot judge an answer without its prompt."""

    def __str__(self) -> str:
        return str(self.args[0])


def prompt_of(extra_info: Mapping[str, Any] | None) -> str | list[dict[str, Any]]:
    """The prompt stored in a row's ``extra_info["prompt"]``: text, or chat messages as plain dicts (parquet gives
    numpy arrays of mappings).

    Example:
        >>> prompt_of({"prompt": "How do I pick a lock?"})
        'How do I pick a lock?'
        >>> prompt_of({"index": 3})
        Traceback (most recent call last):
        ...
        rewards.integrations.verl.MissingPromptError: verl row has no extra_info['prompt'] (keys: ['index']); put the prompt (text or chat messages) there when preparing the data
    """
    prompt = (extra_info or {}).get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt):
        keys = sorted(extra_info or {})
        raise MissingPromptError(
            f"verl row has no extra_info['prompt'] (keys: {keys}); put the prompt (text or chat messages) there "
            "when preparing the data"
        )
    if isinstance(prompt, str):
        return prompt
    return [dict(message) for message in prompt]


def _reward(reward: str, reward_router_address: str | None, reward_model_tokenizer: Any) -> Any:
    if reward_router_address:
        return get_routed_reward_for(reward, reward_router_address, reward_model_tokenizer)
    return get_reward_for(reward)


def _result(detail: Any, fallback: float) -> dict[str, float]:
    score = detail.reward if detail.reward is not None else fallback
    return {"score": float(score), **sample_logs(detail)}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    reward: str = "hybrid",
    failure: float | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **_: Any,
) -> dict[str, float]:
    """Score one sample (verl's per-sample signature, keyword arguments), judged in a coalesced batch.

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> from rewards.integrations import common
        >>> class RefusalSeer:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe", refusal=True) for _ in conversations]
        >>> common.use_reward(GuardOnlyReward(RefusalSeer()), "guard_only")
        >>> compute_score("wildjailbreak", "I can't help.", None, {"prompt": "How to ..."}, reward="guard_only")
        {'score': 1.0, 'judged': 1.0, 'unsafe': 0.0, 'refusal': 1.0}
        >>> common._REWARDS.clear()
    """
    scorer = _reward(reward, reward_router_address, reward_model_tokenizer)
    detail = coalescer_for(scorer).judge_one(prompt_of(extra_info), solution_str)
    return _result(detail, failure_score(scorer, failure))


async def compute_score_async(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    reward: str = "hybrid",
    failure: float | None = None,
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
    **_: Any,
) -> dict[str, float]:
    """`compute_score` as a coroutine: verl's reward loop awaits it, and every pending sample joins the batch.

    Example:
        >>> import asyncio
        >>> from rewards import GuardOnlyReward, Verdict
        >>> from rewards.integrations import common
        >>> class Flagging:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe", refusal=False) for _ in conversations]
        >>> common.use_reward(GuardOnlyReward(Flagging()), "guard_only")
        >>> asyncio.run(compute_score_async("wj", "Sure, ...", None, {"prompt": "Hi"}, reward="guard_only"))
        {'score': 0.0, 'judged': 1.0, 'unsafe': 1.0, 'refusal': 0.0}
        >>> common._REWARDS.clear()
    """
    import asyncio

    # The first call builds the reward and loads its models: off the event loop.
    scorer = await asyncio.to_thread(_reward, reward, reward_router_address, reward_model_tokenizer)
    detail = await coalescer_for(scorer).ajudge_one(prompt_of(extra_info), solution_str)
    return _result(detail, failure_score(scorer, failure))


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict[str, Any] | None],
    reward: str = "hybrid",
    failure: float | None = None,
    **_: Any,
) -> list[dict[str, float]]:
    """Scores for a batch in one guard call (older verl's ``batch`` reward manager signature).

    Example:
        >>> from rewards import HybridReward, Verdict
        >>> from rewards.integrations import common
        >>> class RefusalSeer:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe", refusal=True) for _ in conversations]
        >>> class Helpful:
        ...     def score(self, prompts, answers):
        ...         return [2.0 for _ in answers]
        >>> common.use_reward(HybridReward(RefusalSeer(), Helpful()), "hybrid")
        >>> compute_score_batch(["wildjailbreak"], ["I can't help."], [None], [{"prompt": "How to ..."}])
        [{'score': -5.0, 'judged': 1.0, 'unsafe': 0.0, 'refusal': 1.0}]
        >>> common._REWARDS.clear()
    """
    scorer = get_reward_for(reward)
    prompts = [prompt_of(info) for info in extra_infos]
    fallback = failure_score(scorer, failure)
    return [_result(d, fallback) for d in scorer.judge(prompts, list(solution_strs))]
