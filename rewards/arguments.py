"""One way to name and build the models of a reward: `GuardArguments`, `HelpfulnessArguments`, the defaults.

Every entry point builds its guard and its helpfulness model from these dataclasses: the training config's
``guard:`` and ``helpfulness:`` sections, ``safe-rl score``/``eval``/``prepare``/``serve-reward``, the ``SAFE_RL_*``
variables of the TRL dotted-path rewards, and the verl/OpenRLHF adapters. A model is named the same way everywhere:
a hub id, a local folder, or a registered ``<source>:<name>`` such as ``toy:guard`` (`rewards.loading`); with a
``base_url`` the guard's name is the model name the server serves.

Field names carry their section's prefix (``guard_model``, ``helpfulness_batch_size``), so that they are flags as
they are (``--guard_model``), YAML keys inside their section (``guard: {model: ...}``) and environment variables
(``SAFE_RL_GUARD_MODEL``, see `from_env`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

DEFAULT_GUARD_MODEL = "Qwen/Qwen3Guard-Gen-4B"
DEFAULT_STREAM_GUARD_MODEL = "Qwen/Qwen3Guard-Stream-4B"
DEFAULT_HELPFULNESS_MODEL = "Skywork/Skywork-Reward-V2-Qwen3-8B"
ENV_PREFIX = "SAFE_RL_"
GUARD_KINDS: tuple[str, ...] = ("gen", "stream")

A = TypeVar("A")

# Variables of earlier releases: setting one is an error that names its successor, never silently ignored.
RENAMED_VARIABLES = {
    "SAFE_RL_POLICY": "SAFE_RL_REWARD_STRICTNESS",
    "SAFE_RL_UNSAFE_CAP": "SAFE_RL_REWARD_UNSAFE_CAP",
    "SAFE_RL_REFUSAL_CAP": "SAFE_RL_REWARD_REFUSAL_CAP",
    "SAFE_RL_JUDGE_THINKING": "SAFE_RL_REWARD_JUDGE_THINKING",
    "SAFE_RL_SAFETY_SCORE": "SAFE_RL_REWARD_SAFETY_SCORE",
    "SAFE_RL_UNJUDGED_LIMIT": "SAFE_RL_REWARD_UNJUDGED_LIMIT",
    "SAFE_RL_UNJUDGED_PATIENCE": "SAFE_RL_REWARD_UNJUDGED_PATIENCE",
}


class SettingError(ValueError):
    """A setting (environment variable, flag or config key) whose value cannot be used; the message names it."""


@dataclass
class GuardArguments:
    """Which guard judges the rollouts, and how it runs (in-process, or behind an OpenAI-compatible server).

    Example:
        >>> args = GuardArguments(guard_model="Qwen/Qwen3Guard-Gen-0.6B", guard_base_url="http://localhost:8000/v1")
        >>> args.build()
        Qwen3GuardGen(model='Qwen/Qwen3Guard-Gen-0.6B', backend='http://localhost:8000/v1')
    """

    guard_model: str = field(
        default=DEFAULT_GUARD_MODEL,
        metadata={"help": "Guard hub id, local folder or toy:guard (with guard_base_url: the served model name)."},
    )
    guard_kind: str = field(
        default="gen", metadata={"help": "gen (Qwen3Guard-Gen, generative verdicts) or stream (Qwen3Guard-Stream)."}
    )
    guard_base_url: str | None = field(
        default=None,
        metadata={"help": "OpenAI-compatible guard server, e.g. http://localhost:8000/v1; unset: in-process."},
    )
    guard_api_key: str | None = field(
        default=None,
        metadata={"help": "Bearer token of the guard server (better: the SAFE_RL_GUARD_API_KEY variable)."},
    )
    guard_tokenizer: str | None = field(
        default=None,
        metadata={"help": "Guard tokenizer hub id or folder, if not the model's own (server: exact escaping)."},
    )
    guard_device: str | None = field(
        default=None, metadata={"help": "Device of an in-process guard (default: cuda if any)."}
    )
    guard_dtype: str = field(
        default="auto", metadata={"help": "dtype of an in-process guard (auto: bf16 on GPU, fp32 on CPU)."}
    )
    guard_batch_size: int = field(default=32, metadata={"help": "Conversations per forward batch (in-process)."})
    guard_max_input_tokens: int = field(default=8192, metadata={"help": "Longest guard input; longer content is cut."})
    guard_max_concurrency: int = field(default=64, metadata={"help": "Guard requests in flight at once (server)."})
    guard_timeout: float = field(default=120.0, metadata={"help": "Seconds a guard request may take (server)."})
    guard_max_retries: int = field(default=3, metadata={"help": "Retries of a failed guard request (server)."})

    def __post_init__(self) -> None:
        if self.guard_kind not in GUARD_KINDS:
            raise ValueError(f"guard_kind must be one of {GUARD_KINDS}, got {self.guard_kind!r}")
        if not self.guard_model:
            raise ValueError("guard_model must name a guard (hub id, folder, toy:guard or the served name)")
        for name in ("guard_batch_size", "guard_max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.guard_max_retries < 0:
            raise ValueError(f"guard_max_retries must not be negative, got {self.guard_max_retries}")
        if self.guard_timeout <= 0:
            raise ValueError(f"guard_timeout must be positive, got {self.guard_timeout}")
        if self.guard_base_url is not None and not self.guard_base_url.startswith(("http://", "https://")):
            raise ValueError(f"guard_base_url must start with http:// or https://, got {self.guard_base_url!r}")
        if self.guard_kind == "stream" and self.guard_base_url is not None:
            raise ValueError("Qwen3Guard-Stream runs in-process only; leave guard_base_url unset")

    @property
    def is_remote(self) -> bool:
        return self.guard_base_url is not None

    @property
    def api_key(self) -> str | None:
        """``guard_api_key``, else the ``SAFE_RL_GUARD_API_KEY`` variable (unset: no key)."""
        return self.guard_api_key or os.environ.get(env_name("guard_api_key")) or None

    def build(self, tokenizer: Any = None) -> Any:
        """The guard (`rewards.Qwen3GuardGen` or `rewards.Qwen3GuardStream`); models load on first use.

        An in-process guard's model and tokenizer names are resolved first (`rewards.loading.resolve_model_name`),
        so a ``toy:`` name works here as everywhere; a served guard keeps the name the server serves. ``tokenizer``
        (a loaded guard tokenizer) takes the place of ``guard_tokenizer``.
        """
        from rewards.loading import resolve_model_name

        model = self.guard_model if self.is_remote else resolve_model_name(self.guard_model)
        if tokenizer is None and self.guard_tokenizer:
            tokenizer = resolve_model_name(self.guard_tokenizer)
        if self.guard_kind == "stream":
            from rewards.guards.stream import Qwen3GuardStream

            return Qwen3GuardStream(
                model,
                tokenizer=tokenizer,
                device=self.guard_device,
                dtype=self.guard_dtype,
                batch_size=self.guard_batch_size,
                max_input_tokens=self.guard_max_input_tokens,
            )
        from rewards.guards.gen import Qwen3GuardGen

        return Qwen3GuardGen(
            model,
            base_url=self.guard_base_url,
            api_key=self.api_key,
            tokenizer=tokenizer,
            device=self.guard_device,
            dtype=self.guard_dtype,
            batch_size=self.guard_batch_size,
            max_input_tokens=self.guard_max_input_tokens,
            max_concurrency=self.guard_max_concurrency,
            timeout=self.guard_timeout,
            max_retries=self.guard_max_retries,
        )

    def describe(self) -> str:
        """One line: which guard, where.

        Example:
            >>> GuardArguments(guard_model="toy:guard", guard_device="cpu").describe()
            'toy:guard (gen) in-process on cpu'
        """
        where = (
            f"served at {self.guard_base_url}" if self.is_remote else f"in-process on {self.guard_device or 'auto'}"
        )
        return f"{self.guard_model} ({self.guard_kind}) {where}"


@dataclass
class HelpfulnessArguments:
    """The helpfulness reward model H of the hybrid reward (a sequence classifier with one output).

    Example:
        >>> HelpfulnessArguments(helpfulness_model="toy:helpfulness").build()
        HelpfulnessRM(model='toy:helpfulness')
    """

    helpfulness_model: str = field(
        default=DEFAULT_HELPFULNESS_MODEL,
        metadata={"help": "Helpfulness reward model hub id, folder or toy:helpfulness (sequence classification)."},
    )
    helpfulness_device: str | None = field(default=None, metadata={"help": "Its device (default: cuda if any)."})
    helpfulness_dtype: str = field(default="auto", metadata={"help": "Its dtype (auto: bf16 on GPU, fp32 on CPU)."})
    helpfulness_batch_size: int = field(default=16, metadata={"help": "Pairs per forward batch."})
    helpfulness_max_length: int = field(
        default=4096, metadata={"help": "Longest input; longer ones lose their start."}
    )

    def __post_init__(self) -> None:
        if not self.helpfulness_model:
            raise ValueError("helpfulness_model must name a reward model")
        if self.helpfulness_batch_size < 1:
            raise ValueError(f"helpfulness_batch_size must be positive, got {self.helpfulness_batch_size}")
        if self.helpfulness_max_length < 16:
            raise ValueError(f"helpfulness_max_length must be at least 16, got {self.helpfulness_max_length}")

    def build(self) -> Any:
        """The `rewards.HelpfulnessRM` (loads on first use)."""
        from rewards.helpfulness import HelpfulnessRM

        return HelpfulnessRM(
            self.helpfulness_model,
            device=self.helpfulness_device,
            dtype=self.helpfulness_dtype,
            batch_size=self.helpfulness_batch_size,
            max_length=self.helpfulness_max_length,
        )


REWARD_KINDS: tuple[str, ...] = ("hybrid", "guard_only")


@dataclass
class RewardArguments:
    """Which reward, and its settings (the paper's eq. 1 and eq. 2; see `rewards.safety_rewards`).

    Example:
        >>> from rewards.verdict import Verdict
        >>> class Unsafe:
        ...     def moderate(self, conversations):
        ...         return [Verdict(safety="Unsafe") for _ in conversations]
        >>> RewardArguments(reward_kind="guard_only").build(Unsafe())(prompts=["Hi"], completions=["..."])
        [0.0]
    """

    reward_kind: str = field(default="hybrid", metadata={"help": "hybrid (paper eq. 2) or guard_only (eq. 1)."})
    reward_strictness: str = field(default="strict", metadata={"help": "strict (Controversial = unsafe) or loose."})
    reward_unsafe_cap: float = field(default=-10.0, metadata={"help": "Hybrid: reward min(cap, H) when unsafe."})
    reward_refusal_cap: float = field(default=-5.0, metadata={"help": "Hybrid: reward min(cap, H) on a refusal."})
    reward_judge_thinking: bool = field(default=True, metadata={"help": "Also judge the thinking t (paper)."})
    reward_safety_score: str = field(
        default="label",
        metadata={"help": "label (paper: the guard's Safe/Unsafe verdict) or probability (in-process guard only)."},
    )
    reward_unjudged_limit: float | None = field(
        default=0.5,
        metadata={"help": "Stop when more than this share of the samples is unjudged in `unjudged_patience` reward "
                  "calls in a row (rewards.circuit_breaker); none/off turns the check off."},
    )  # fmt: skip
    reward_unjudged_patience: int = field(default=3, metadata={"help": "Reward calls in a row, see unjudged_limit."})

    def __post_init__(self) -> None:
        from rewards.safety_rewards import SAFETY_SCORES
        from rewards.verdict import STRICTNESS_LEVELS

        if self.reward_kind not in REWARD_KINDS:
            raise ValueError(f"reward_kind must be one of {REWARD_KINDS}, got {self.reward_kind!r}")
        if self.reward_strictness not in STRICTNESS_LEVELS:
            raise ValueError(f"reward_strictness must be one of {STRICTNESS_LEVELS}, got {self.reward_strictness!r}")
        if self.reward_safety_score not in SAFETY_SCORES:
            raise ValueError(f"reward_safety_score must be one of {SAFETY_SCORES}, got {self.reward_safety_score!r}")
        if self.reward_unsafe_cap > self.reward_refusal_cap:
            raise ValueError("reward_unsafe_cap must not exceed reward_refusal_cap (unsafe is worse than refusing)")
        if self.reward_unjudged_limit is not None and not 0.0 <= self.reward_unjudged_limit < 1.0:
            raise ValueError(f"reward_unjudged_limit must be in [0, 1) or none, got {self.reward_unjudged_limit}")
        if self.reward_unjudged_patience < 1:
            raise ValueError(f"reward_unjudged_patience must be at least 1, got {self.reward_unjudged_patience}")

    def build(self, guard: Any, helpfulness: Any = None, kind: str | None = None) -> Any:
        """The reward of ``kind`` (default ``reward_kind``) on ``guard`` (and ``helpfulness`` for the hybrid)."""
        from rewards.registry import get_reward

        kind = kind or self.reward_kind
        common = {
            "guard": guard,
            "strictness": self.reward_strictness,
            "judge_thinking": self.reward_judge_thinking,
            "safety_score": self.reward_safety_score,
            "unjudged_limit": self.reward_unjudged_limit,
            "unjudged_patience": self.reward_unjudged_patience,
        }
        if kind == "hybrid":
            if helpfulness is None:
                raise ValueError("the hybrid reward needs a helpfulness model")
            return get_reward(
                "hybrid",
                helpfulness=helpfulness,
                unsafe_cap=self.reward_unsafe_cap,
                refusal_cap=self.reward_refusal_cap,
                **common,
            )
        return get_reward(kind, **common)


def env_name(field_name: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable of a field: ``guard_model`` -> ``SAFE_RL_GUARD_MODEL``.

    Example:
        >>> env_name("helpfulness_batch_size")
        'SAFE_RL_HELPFULNESS_BATCH_SIZE'
    """
    return prefix + field_name.upper()


def parse_value(text: str, annotation: Any, *, name: str) -> Any:
    """``text`` converted to the field type ``annotation`` (str, int, float, bool, their optionals: ``none`` or
    ``off`` is None there); a value that does not convert raises `SettingError` naming ``name``.

    Example:
        >>> parse_value("8", int, name="SAFE_RL_GUARD_BATCH_SIZE"), parse_value("no", bool, name="X")
        (8, False)
        >>> parse_value("off", float | None, name="SAFE_RL_REWARD_UNJUDGED_LIMIT") is None
        True
        >>> parse_value("abc", float, name="SAFE_RL_REWARD_UNSAFE_CAP")
        Traceback (most recent call last):
        ...
        rewards.arguments.SettingError: SAFE_RL_REWARD_UNSAFE_CAP='abc' is not a valid float
    """
    optional = _is_union(annotation) and type(None) in typing.get_args(annotation)
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    kind = kinds[0] if len(kinds) == 1 else str
    if optional and text.strip().lower() in ("none", "off", "null"):
        return None
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingError(f"{name}={text!r} is not a valid boolean (1/0, true/false, yes/no)")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise SettingError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    return text


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def env_values(cls: type, environ: typing.Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of the dataclass ``cls`` set by ``SAFE_RL_<FIELD>`` variables (unset or empty ones left out),
    converted to their types; a renamed variable of an earlier release is a `SettingError` naming its successor.

    Example:
        >>> env_values(HelpfulnessArguments, {"SAFE_RL_HELPFULNESS_BATCH_SIZE": "4", "OTHER": "x"})
        {'helpfulness_batch_size': 4}
        >>> env_values(RewardArguments, {"SAFE_RL_POLICY": "loose"})
        Traceback (most recent call last):
        ...
        rewards.arguments.SettingError: SAFE_RL_POLICY was renamed SAFE_RL_REWARD_STRICTNESS
    """
    environ = os.environ if environ is None else environ
    for old, new in RENAMED_VARIABLES.items():
        if environ.get(old) not in (None, ""):
            raise SettingError(f"{old} was renamed {new}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        text = environ.get(env_name(f.name))
        if f.init and text not in (None, ""):
            values[f.name] = parse_value(str(text), hints[f.name], name=env_name(f.name))
    return values


def from_env(cls: type[A], environ: typing.Mapping[str, str] | None = None, **overrides: Any) -> A:
    """An instance of the dataclass ``cls`` whose fields are read from ``SAFE_RL_<FIELD>`` variables where set.

    Unset or empty variables keep the field's default; ``overrides`` (other than None) win over both. A value that
    does not convert, or that the dataclass rejects, raises `SettingError` naming the variable and its value.

    Example:
        >>> args = from_env(GuardArguments, {"SAFE_RL_GUARD_MODEL": "toy:guard", "SAFE_RL_GUARD_BATCH_SIZE": "8"})
        >>> args.guard_model, args.guard_batch_size
        ('toy:guard', 8)
        >>> from_env(GuardArguments, {"SAFE_RL_GUARD_BATCH_SIZE": "0"})
        Traceback (most recent call last):
        ...
        rewards.arguments.SettingError: SAFE_RL_GUARD_BATCH_SIZE='0': guard_batch_size must be positive, got 0
    """
    environ = os.environ if environ is None else environ
    values = env_values(cls, environ)
    from_variables = set(values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except ValueError as exc:
        named = [k for k in from_variables - {k for k, v in overrides.items() if v is not None} if k in str(exc)]
        if named:
            raise SettingError(f"{env_name(named[0])}={environ[env_name(named[0])]!r}: {exc}") from None
        raise SettingError(str(exc)) from None
