"""A tiny registry of reward builders by name (as verl's reward registry), for configs and command lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def split_settings(settings: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``settings`` split into those named ``<prefix>...`` (fields of an argument dataclass) and the rest.

    Example:
        >>> split_settings({"guard_model": "g", "strictness": "loose"}, "guard_")
        ({'guard_model': 'g'}, {'strictness': 'loose'})
    """
    mine = {k: v for k, v in settings.items() if k.startswith(prefix)}
    return mine, {k: v for k, v in settings.items() if k not in mine}


def build_guard(guard: Any = None, **guard_args: Any) -> Any:
    """``guard`` itself, else the guard of `rewards.arguments.GuardArguments` ``(**guard_args)``.

    Example:
        >>> build_guard(guard_model="Qwen/Qwen3Guard-Gen-0.6B", guard_base_url="http://localhost:8000/v1")
        Qwen3GuardGen(model='Qwen/Qwen3Guard-Gen-0.6B', backend='http://localhost:8000/v1')
    """
    if guard is not None:
        return guard
    from rewards.arguments import GuardArguments

    return GuardArguments(**guard_args).build()


def build_helpfulness(helpfulness: Any = None, **helpfulness_args: Any) -> Any:
    """``helpfulness`` itself, else the model of `rewards.arguments.HelpfulnessArguments` ``(**helpfulness_args)``.

    Example:
        >>> build_helpfulness(helpfulness_model="toy:helpfulness")
        HelpfulnessRM(model='toy:helpfulness')
    """
    if helpfulness is not None:
        return helpfulness
    from rewards.arguments import HelpfulnessArguments

    return HelpfulnessArguments(**helpfulness_args).build()


@register("guard_only")
def build_guard_only(*, guard: Any = None, **settings: Any) -> Any:
    """`GuardOnlyReward` from a guard object or `rewards.arguments.GuardArguments` fields (``guard_model``,
    ``guard_base_url``, ...); the other settings are `GuardOnlyReward`'s (``strictness``, ``safety_score``, ...).

    Example:
        >>> from rewards.verdict import Verdict
        >>> class FixedGuard:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Controversial") for _ in conversations]
        >>> build_guard_only(guard=FixedGuard(), strictness="loose")(prompts=["Hi"], completions=["..."])
        [1.0]
    """
    from rewards.safety_rewards import GuardOnlyReward

    guard_args, rest = split_settings(settings, "guard_")
    return GuardOnlyReward(build_guard(guard, **guard_args), **rest)


@register("hybrid")
def build_hybrid(*, guard: Any = None, helpfulness: Any = None, **settings: Any) -> Any:
    """`HybridReward` from objects or argument fields (``guard_*`` as for ``guard_only``, ``helpfulness_*`` of
    `rewards.arguments.HelpfulnessArguments`); the other settings are `HybridReward`'s (``unsafe_cap``, ...).

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
    from rewards.safety_rewards import HybridReward

    guard_args, rest = split_settings(settings, "guard_")
    helpfulness_args, rest = split_settings(rest, "helpfulness_")
    return HybridReward(build_guard(guard, **guard_args), build_helpfulness(helpfulness, **helpfulness_args), **rest)
