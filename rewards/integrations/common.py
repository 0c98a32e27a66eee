"""What the verl and OpenRLHF adapters share: one reward per process, one coalescer per reward, the score of an
unjudged sample, and the per-sample numbers they log.

| variable | default | meaning |
|---|---|---|
| ``SAFE_RL_FAILURE_SCORE`` | pessimistic | score of an unjudged sample (default: the unsafe cap, 0 for guard-only) |
| ``SAFE_RL_COALESCE_WINDOW_MS`` | 5 | per-sample calls arriving within this many ms of a batch's first are judged together |
| ``SAFE_RL_COALESCE_MAX_BATCH`` | 256 | samples per coalesced batch at most |
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from rewards.arguments import GuardArguments, SettingError, from_env
from rewards.coalesce import DEFAULT_MAX_BATCH, DEFAULT_WINDOW, JudgeCoalescer
from rewards.loading import LOAD_LOCK
from rewards.presets import KINDS, reward_from_env, shared_reward
from rewards.warmup import load_reward_models

logger = logging.getLogger(__name__)


@dataclass
class AdapterArguments:
    """The adapters' own settings, read from ``SAFE_RL_<FIELD>`` like every other (`rewards.arguments.from_env`).

    Example:
        >>> from_env(AdapterArguments, {"SAFE_RL_COALESCE_WINDOW_MS": "2"}).coalesce_window_ms
        2.0
    """

    failure_score: float | None = field(
        default=None, metadata={"help": "Score of an unjudged sample (default: the unsafe cap, 0 for guard-only)."}
    )
    coalesce_window_ms: float = field(
        default=DEFAULT_WINDOW * 1000, metadata={"help": "Per-sample calls within this many ms are judged together."}
    )
    coalesce_max_batch: int = field(default=DEFAULT_MAX_BATCH, metadata={"help": "Samples per coalesced batch."})

    def __post_init__(self) -> None:
        if self.coalesce_window_ms < 0:
            raise ValueError(f"coalesce_window_ms must not be negative, got {self.coalesce_window_ms}")
        if self.coalesce_max_batch < 1:
            raise ValueError(f"coalesce_max_batch must be at least 1, got {self.coalesce_max_batch}")


_REWARDS: dict[Any, Any] = {}
_COALESCERS: dict[int, JudgeCoalescer] = {}
_COALESCER_LOCK = threading.Lock()


def use_reward(reward: Any, kind: str | None = None) -> None:
    """Make the adapters use ``reward`` (a `GuardOnlyReward`/`HybridReward`) instead of one built from the environment.

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class Safe:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe") for _ in conversations]
        >>> use_reward(GuardOnlyReward(Safe()))
        >>> get_reward_for("guard_only").__name__
        'guard_only_reward'
        >>> _REWARDS.clear()
    """
    _REWARDS[kind or ("hybrid" if hasattr(reward, "helpfulness") else "guard_only")] = reward


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SettingError(f"reward must be one of {list(KINDS)}, got {kind!r}")


def get_reward_for(kind: str) -> Any:
    """The reward of ``kind`` ("hybrid" or "guard_only"): set by `use_reward`, else the process's one reward built
    from ``SAFE_RL_*`` (`rewards.presets.shared_reward`, the same the TRL dotted paths use).

    Example:
        >>> get_reward_for("judge")
        Traceback (most recent call last):
        ...
        rewards.arguments.SettingError: reward must be one of ['hybrid', 'guard_only'], got 'judge'
    """
    _check_kind(kind)
    return _REWARDS[kind] if kind in _REWARDS else shared_reward(kind)


def served_guard_name(tokenizer: Any) -> str:
    """The model name to send to a guard that a trainer serves itself: the path its tokenizer was loaded from
    (verl loads it from ``reward.reward_model.model_path``, the name its vLLM/SGLang replicas serve), else
    ``SAFE_RL_GUARD_MODEL``.

    Example:
        >>> class Tok:
        ...     name_or_path = "/models/Qwen3Guard-Gen-4B"
        >>> served_guard_name(Tok())
        '/models/Qwen3Guard-Gen-4B'
    """
    name = getattr(tokenizer, "name_or_path", None)
    return str(name) if name else from_env(GuardArguments).guard_model


def get_routed_reward_for(kind: str, router_address: str, tokenizer: Any = None) -> Any:
    """The reward of ``kind`` whose guard is served behind ``router_address`` (``host:port`` of an
    OpenAI-compatible router, e.g. verl's GenRM router), built once per process and address.

    The guard requests go to ``http://{router_address}/v1/chat/completions`` with the model name of
    `served_guard_name`; ``tokenizer`` (the guard's own) escapes and cuts content exactly as in-process.

    Example:
        >>> reward = get_routed_reward_for("guard_only", "10.0.0.7:30000")  # nothing is sent until the first call
        >>> reward.guard.base_url, reward is get_routed_reward_for("guard_only", "10.0.0.7:30000")
        ('http://10.0.0.7:30000/v1', True)
        >>> _REWARDS.clear()
    """
    _check_kind(kind)
    key = (kind, router_address)
    if key not in _REWARDS:
        with LOAD_LOCK:
            if key not in _REWARDS:
                served = from_env(
                    GuardArguments,
                    guard_model=served_guard_name(tokenizer),
                    guard_base_url=f"http://{router_address}/v1",
                )
                guard = served.build(tokenizer=tokenizer)
                logger.info("%s reward: guard %r behind the router at %s", kind, guard.model, router_address)
                _REWARDS[key] = load_reward_models(reward_from_env(kind, guard=guard))
    return _REWARDS[key]


def coalescer_for(reward: Any) -> JudgeCoalescer:
    """The one `rewards.coalesce.JudgeCoalescer` of ``reward`` in this process, its window and batch size set by
    ``SAFE_RL_COALESCE_WINDOW_MS`` and ``SAFE_RL_COALESCE_MAX_BATCH``.

    Example:
        >>> from rewards import GuardOnlyReward, Verdict
        >>> class Safe:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Safe") for _ in conversations]
        >>> reward = GuardOnlyReward(Safe())
        >>> coalescer_for(reward) is coalescer_for(reward), coalescer_for(reward).window
        (True, 0.005)
    """
    coalescer = _COALESCERS.get(id(reward))
    if coalescer is None:
        with _COALESCER_LOCK:
            coalescer = _COALESCERS.get(id(reward))
            if coalescer is None:
                settings = from_env(AdapterArguments)
                coalescer = JudgeCoalescer(
                    reward, window=settings.coalesce_window_ms / 1000, max_batch=settings.coalesce_max_batch
                )
                _COALESCERS[id(reward)] = coalescer
    return coalescer


def failure_score(reward: Any, override: float | None = None) -> float:
    """The score of a sample that could not be judged, for trainers that need a number where TRL takes None.

    Pessimistic by default, so that a guard failure never pays like a safe answer: the unsafe cap for the hybrid
    reward, 0 for guard-only. ``SAFE_RL_FAILURE_SCORE`` or ``override`` sets another value.

    Example:
        >>> failure_score(object())
        0.0
    """
    if override is not None:
        return float(override)
    configured = from_env(AdapterArguments).failure_score
    return float(configured if configured is not None else getattr(reward, "unsafe_cap", 0.0))


def sample_logs(detail: Any) -> dict[str, float]:
    """The numbers logged with each sample's score, the same keys for every sample, never None or NaN (verl keeps
    the keys of the first sample of a batch; OpenRLHF turns every value into a tensor and averages them):

    - ``judged``: 1 when the sample got a reward, 0 when it got the failure score;
    - ``unsafe``: 1 when the guard found the thinking or the answer unsafe, else 0 (also when unknown);
    - ``refusal``: 1 when the guard labelled the answer a refusal, else 0 (also when unknown).

    Rates over judged samples are ``sum(unsafe) / sum(judged)``; ``1 - mean(judged)`` is the failure rate.

    Example:
        >>> from rewards.judgement import RewardDetail
        >>> sample_logs(RewardDetail(reward=-5.0, unsafe=False, refusal=True))
        {'judged': 1.0, 'unsafe': 0.0, 'refusal': 1.0}
        >>> sample_logs(RewardDetail(reward=None, failure="guard: timeout"))
        {'judged': 0.0, 'unsafe': 0.0, 'refusal': 0.0}
    """
    return {
        "judged": float(detail.reward is not None),
        "unsafe": float(detail.unsafe is True),
        "refusal": float(detail.refusal is True),
    }
