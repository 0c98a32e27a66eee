"""verl custom reward functions backed by the guard rewards.

verl does not pass the prompt to reward functions; put it in each row's ``extra_info["prompt"]`` (text or chat
messages) when preparing the parquet files. In the verl config::

    custom_reward_function:
      path: <site-packages>/rewards/integrations/verl.py
      name: compute_score_batch          # with reward_model.reward_manager=batch (one guard call per batch)
      reward_kwargs: {reward: hybrid}    # or guard_only; models are set by the SAFE_RL_* variables
                                         # (SAFE_RL_SAFETY_SCORE=probability: guard label probabilities)

``compute_score`` is the per-sample form for verl's naive reward manager (correct but one guard call per sample).
Each result is a dict: ``score`` plus ``unsafe``, ``refusal`` and ``judged`` (1/0, NaN when unknown), which verl logs.
A sample that could not be judged scores `failure_score` (pessimistic) and has ``judged=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewards.integrations.common import failure_score, flag, get_reward_for


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict[str, Any] | None],
    reward: str = "hybrid",
    failure: float | None = None,
    **_: Any,
) -> list[dict[str, float]]:
    """Scores for a batch, in verl's batch reward-manager signature.

    Example:
        >>> compute_score_batch(["wildjailbreak"], ["I can't help."], [None], [{"prompt": "How to ..."}])  # doctest: +SKIP
        [{'score': -5.0, 'unsafe': 0.0, 'refusal': 1.0, 'judged': 1.0}]
    """
    scorer = get_reward_for(reward)
    fallback = failure_score(scorer, failure)
    prompts = [(info or {}).get("prompt") for info in extra_infos]
    rows = [i for i, p in enumerate(prompts) if p]
    results = [{"score": fallback, "unsafe": flag(None), "refusal": flag(None), "judged": 0.0} for _ in prompts]
    if not rows:
        return results
    details = scorer.judge([prompts[i] for i in rows], [solution_strs[i] for i in rows])
    for i, d in zip(rows, details, strict=True):
        judged = d.reward is not None
        results[i] = {
            "score": d.reward if judged else fallback,
            "unsafe": flag(d.unsafe),
            "refusal": flag(d.refusal),
            "judged": float(judged),
        }
    return results


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    reward: str = "hybrid",
    failure: float | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Score one sample, in verl's per-sample ``compute_score`` signature."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], reward, failure, **kwargs)[
        0
    ]
