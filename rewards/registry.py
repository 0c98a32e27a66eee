"""A tiny registry of reward builders by name (as verl's reward registry), for configs and command lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rewards.circuit_breaker import DEFAULT_LIMIT, DEFAULT_PATIENCE

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a reward builder under ``name``.

    Example:
        >>> @register("always_one")
        ... def build_always_one(**_):
        ...     return lambda prompts, completions, **kw: [1.0] * len(completions)
        >>> get_reward("always_one")(["p"], ["c"])
        [1.0]
    """

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"a reward named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorator


def get_reward(name: str, **kwargs: Any) -> Any:
    """Build the reward registered as ``name`` with ``kwargs``.

    Example:
        >>> from rewards.verdict import Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe") for _ in conversations]
        >>> reward = get_reward("guard_only", guard=FixedGuard())
        >>> reward.__name__, reward(prompts=["Hi"], completions=["..."])
        ('guard_only_reward', [0.0])
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(_BUILDERS)}")
    return _BUILDERS[name](**kwargs)


def registered() -> list[str]:
    """Names of the registered rewards.

    Example:
        >>> {"guard_only", "hybrid"} <= set(registered())
        True
    """
    return sorted(_BUILDERS)


def _guard(
    guard: Any = None,
    guard_model: str = "Qwen/Qwen3Guard-Gen-0.6B",
    guard_base_url: str | None = None,
    **guard_kwargs: Any,
) -> Any:
    if guard is not None:
        return guard
    from rewards.guards.gen import Qwen3GuardGen
    from rewards.loading import resolve_model_name

    if (
        guard_base_url is None
    ):  # in-process: a `toy:`-style name becomes its folder (with a server it is the served name)
        guard_model = resolve_model_name(guard_model)
    return Qwen3GuardGen(guard_model, base_url=guard_base_url, **guard_kwargs)


@register("guard_only")
def build_guard_only(
    *,
    policy: str = "strict",
    judge_thinking: bool = True,
    safety_score: str = "label",
    unjudged_limit: float | None = DEFAULT_LIMIT,
    unjudged_patience: int = DEFAULT_PATIENCE,
    guard: Any = None,
    **guard_args: Any,
) -> Any:
    """`GuardOnlyReward` from a guard object or guard arguments (``guard_model``, ``guard_base_url``, …);
    ``safety_score`` is "label" (paper) or "probability" (in-process guard only); ``unjudged_limit`` and
    ``unjudged_patience`` set its `rewards.circuit_breaker.UnjudgedBreaker`.

    Example:
        >>> from rewards.verdict import Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Controversial") for _ in conversations]
        >>> build_guard_only(guard=FixedGuard(), policy="loose")(prompts=["Hi"], completions=["..."])
        [1.0]
    """
    from rewards.safety_rewards import GuardOnlyReward

    return GuardOnlyReward(
        _guard(guard, **guard_args),
        policy=policy,  # type: ignore[arg-type]
        judge_thinking=judge_thinking,
        safety_score=safety_score,  # type: ignore[arg-type]
        unjudged_limit=unjudged_limit,
        unjudged_patience=unjudged_patience,
    )


@register("hybrid")
def build_hybrid(
    *,
    helpfulness: Any = None,
    helpfulness_model: str = "Skywork/Skywork-Reward-V2-Qwen3-0.6B",
    helpfulness_kwargs: dict[str, Any] | None = None,
    unsafe_cap: float = -10.0,
    refusal_cap: float = -5.0,
    policy: str = "strict",
    judge_thinking: bool = True,
    safety_score: str = "label",
    unjudged_limit: float | None = DEFAULT_LIMIT,
    unjudged_patience: int = DEFAULT_PATIENCE,
    guard: Any = None,
    **guard_args: Any,
) -> Any:
    """`HybridReward` from objects or model names (guard arguments, ``safety_score`` and the ``unjudged_*``
    settings as for ``guard_only``).

    Example:
        >>> from rewards.verdict import Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe") for _ in conversations]
        >>> class Helpful:
        ...     def score(self, prompts, answers):
        ...         return [2.0 for _ in answers]
        >>> reward = build_hybrid(guard=FixedGuard(), helpfulness=Helpful(), unsafe_cap=-8.0)
        >>> reward(prompts=["Hi"], completions=["..."])
        [-8.0]
    """
    from rewards.helpfulness import HelpfulnessRM
    from rewards.safety_rewards import HybridReward

    if helpfulness is None:
        helpfulness = HelpfulnessRM(helpfulness_model, **(helpfulness_kwargs or {}))
    return HybridReward(
        _guard(guard, **guard_args),
        helpfulness,
        unsafe_cap=unsafe_cap,
        refusal_cap=refusal_cap,
        policy=policy,  # type: ignore[arg-type]
        judge_thinking=judge_thinking,
        safety_score=safety_score,  # type: ignore[arg-type]
        unjudged_limit=unjudged_limit,
        unjudged_patience=unjudged_patience,
    )
