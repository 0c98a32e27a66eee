"""The training configuration: every `trl.GRPOConfig` / `trl.ModelConfig` field plus our own sections.

One YAML file holds it all. Top-level keys are TRL's (parsed by TRL's own `TrlParser`, so any TRL flag works);
three sections are ours and are flattened with their name as prefix, so that they are flags too:

    reward:        {kind: hybrid, guard_model: Qwen/Qwen3Guard-Gen-4B, ...}   ->  --reward_kind, --reward_guard_model
    data:          {source: allenai/wildjailbreak, think: false, ...}         ->  --data_source, --data_think
    evaluation:    {prompts: toy, samples: 1}                                 ->  --evaluation_prompts, ...

Command-line flags override the file. An ``env:`` mapping sets environment variables (as in TRL; its
``OMP_NUM_THREADS`` also sets torch's thread count for the run, torch being imported by then). Values of the
form ``toy:policy``, ``toy:guard`` and ``toy:helpfulness`` name the project's toy models (`safe_rl.toy`), built
and cached on first use.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from safe_rl.data.wildjailbreak import HARMFUL_TYPES

REWARD_KINDS: tuple[str, ...] = ("hybrid", "guard_only")
SECTIONS: tuple[str, ...] = ("reward", "data", "evaluation")
TOY_PREFIX = "toy:"


@dataclass
class RewardArguments:
    """The ``reward`` section: which reward, which guard and helpfulness model, the caps and the policy."""

    reward_kind: str = field(default="hybrid", metadata={"help": "hybrid (paper eq. 2) or guard_only (eq. 1)."})
    reward_compare: list[str] | None = field(
        default=None,
        metadata={"help": "Train once per reward kind listed, each from the same start (e.g. guard_only hybrid)."},
    )
    reward_guard_model: str = field(
        default="Qwen/Qwen3Guard-Gen-4B", metadata={"help": "Guard hub id, folder, served name, or toy:guard."}
    )
    reward_guard_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible guard server, e.g. http://localhost:8000/v1."}
    )
    reward_guard_api_key_env: str = field(
        default="SAFE_RL_GUARD_API_KEY", metadata={"help": "Environment variable holding the guard server's key."}
    )
    reward_guard_batch_size: int = field(default=32, metadata={"help": "Guard batch size (in-process)."})
    reward_guard_max_concurrency: int = field(default=64, metadata={"help": "Parallel guard requests (server)."})
    reward_guard_device: str | None = field(default=None, metadata={"help": "Device of an in-process guard."})
    reward_helpfulness_model: str = field(
        default="Skywork/Skywork-Reward-V2-Qwen3-8B",
        metadata={"help": "Helpfulness reward model (sequence classification, 1 label), or toy:helpfulness."},
    )
    reward_helpfulness_batch_size: int = field(default=16, metadata={"help": "Helpfulness model batch size."})
    reward_helpfulness_device: str | None = field(default=None, metadata={"help": "Helpfulness model device."})
    reward_unsafe_cap: float = field(default=-10.0, metadata={"help": "Hybrid: reward min(cap, H) when unsafe."})
    reward_refusal_cap: float = field(default=-5.0, metadata={"help": "Hybrid: reward min(cap, H) on refusal."})
    reward_policy: str = field(default="strict", metadata={"help": "strict (Controversial = unsafe) or loose."})
    reward_judge_thinking: bool = field(default=True, metadata={"help": "Also judge the thinking t (paper)."})
    reward_safety_score: str = field(
        default="label",
        metadata={"help": "label (paper: the guard's Safe/Unsafe verdict) or probability (in-process guard only)."},
    )
    reward_async: bool | None = field(
        default=None, metadata={"help": "Async reward (concurrent guard calls); default: when the guard is remote."}
    )

    def __post_init__(self) -> None:
        for kind in [self.reward_kind, *(self.reward_compare or [])]:
            if kind not in REWARD_KINDS:
                raise ValueError(f"reward kind must be one of {REWARD_KINDS}, got {kind!r}")
        from rewards.safety_rewards import SAFETY_SCORES
        from rewards.verdict import POLICIES

        if self.reward_safety_score not in SAFETY_SCORES:
            raise ValueError(f"reward.safety_score must be one of {SAFETY_SCORES}, got {self.reward_safety_score!r}")
        if self.reward_policy not in POLICIES:
            raise ValueError(f"reward.policy must be one of {POLICIES}, got {self.reward_policy!r}")
        if self.reward_unsafe_cap > self.reward_refusal_cap:
            raise ValueError("reward.unsafe_cap must not exceed reward.refusal_cap (unsafe is worse than refusing)")

    @property
    def kinds(self) -> list[str]:
        """The reward kinds to train, in order."""
        return list(self.reward_compare or [self.reward_kind])


@dataclass
class DataArguments:
    """The ``data`` section: where the training prompts come from and how the policy is prompted."""

    data_source: str = field(
        default="allenai/wildjailbreak",
        metadata={"help": "Hub dataset, local JSONL/CSV/TSV/Parquet, a `safe-rl prepare` folder, or toy."},
    )
    data_config: str | None = field(default="train", metadata={"help": "Hub dataset configuration."})
    data_split: str = field(default="train", metadata={"help": "Dataset split."})
    data_types: list[str] = field(
        default_factory=lambda: list(HARMFUL_TYPES),
        metadata={"help": "WildJailbreak data_type values kept (paper: vanilla_harmful adversarial_harmful)."},
    )
    data_prompt_column: str | None = field(
        default=None, metadata={"help": "Prompt column; default: WildJailbreak's adversarial/vanilla, or prompt."}
    )
    data_think: bool = field(
        default=False, metadata={"help": "Thinking mode: the chat template's enable_thinking (Qwen3)."}
    )
    data_max_prompts: int | None = field(default=None, metadata={"help": "Keep at most this many prompts."})
    data_system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})

    def __post_init__(self) -> None:
        if self.data_max_prompts is not None and self.data_max_prompts < 1:
            raise ValueError("data.max_prompts must be positive")


@dataclass
class EvaluationArguments:
    """The ``evaluation`` section: safety and refusal rates before and after training (a small Table 10)."""

    evaluation_prompts: str | None = field(
        default=None,
        metadata={"help": "toy, or a dataset with prompt and label (1 harmful, 0 benign) columns; unset: skip."},
    )
    evaluation_samples: int = field(default=1, metadata={"help": "Answers sampled per evaluation prompt."})
    evaluation_judge: str = field(
        default="guard", metadata={"help": "guard (the reward's guard) or toy (the toy world's rule judge)."}
    )
    evaluation_max_prompts: int | None = field(default=None, metadata={"help": "Cap on evaluation prompts."})

    def __post_init__(self) -> None:
        if self.evaluation_judge not in ("guard", "toy"):
            raise ValueError(f"evaluation.judge must be guard or toy, got {self.evaluation_judge!r}")
        if self.evaluation_samples < 1:
            raise ValueError("evaluation.samples must be positive")


@dataclass
class TrainConfig:
    """Everything `safe-rl train` needs, resolved from YAML and flags."""

    reward: RewardArguments
    data: DataArguments
    evaluation: EvaluationArguments
    grpo: Any  # trl.GRPOConfig
    model: Any  # trl.ModelConfig
    config_path: str | None = None
    hardware_error: str | None = None  # set by a parse with check_hardware=False when this machine cannot run it

    @property
    def torch_threads(self) -> int | None:
        """Torch threads for the run: ``OMP_NUM_THREADS`` (e.g. from the file's ``env:``), read when the run starts,
        since torch was imported before the file set it."""
        value = os.environ.get("OMP_NUM_THREADS")
        return int(value) if value and value.isdigit() and int(value) > 0 else None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Our sections in full, and the TRL fields that differ from TRL's defaults (what the run changes)."""
        from trl import GRPOConfig, ModelConfig

        out: dict[str, dict[str, Any]] = {}
        for name, section in (("reward", self.reward), ("data", self.data), ("evaluation", self.evaluation)):
            out[name] = {f.name.split("_", 1)[1]: getattr(section, f.name) for f in fields(section)}
        out["model"] = _non_default(self.model, ModelConfig)
        out["grpo"] = _non_default(self.grpo, GRPOConfig)
        return json.loads(json.dumps(out, default=str))  # plain types only (enums -> their values)


def _non_default(obj: Any, cls: type) -> dict[str, Any]:
    try:  # compare with a default instance, so that values normalised by __post_init__ do not show up as changes
        reference: Any = cls(**({"output_dir": obj.output_dir, "use_cpu": True} if hasattr(obj, "use_cpu") else {}))
    except Exception:  # noqa: BLE001 - fall back to the declared defaults
        reference = None
    changed = {}
    for f in fields(cls):
        if not f.init:
            continue
        if reference is not None:
            default = getattr(reference, f.name, None)
        else:
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        value = getattr(obj, f.name, None)
        if value != default and f.name not in ("logging_dir",):
            changed[f.name] = (
                value if isinstance(value, (bool, int, float, str, list, dict, type(None))) else str(value)
            )
    return changed


def flatten_sections(config: dict[str, Any]) -> dict[str, Any]:
    """``{"reward": {"kind": "x"}}`` -> ``{"reward_kind": "x"}``; TRL's top-level keys pass through.

    Example:
        >>> flatten_sections({"reward": {"kind": "guard_only"}, "learning_rate": 1e-6})
        {'learning_rate': 1e-06, 'reward_kind': 'guard_only'}
    """
    flat = {k: v for k, v in config.items() if k not in SECTIONS}
    for section in SECTIONS:
        values = config.get(section) or {}
        if not isinstance(values, dict):
            raise ValueError(f"the {section!r} section must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            name = f"{section}_{key}"
            if name in flat:
                raise ValueError(f"{name} is set both in the {section!r} section and at the top level")
            flat[name] = value
    return flat


# TrainingArguments' checks of the machine it is parsed on (bf16/fp16/tf32 need a suitable GPU; no GPU needs use_cpu).
_HARDWARE_ERROR = re.compile(r"bf16|fp16|tf32|gpu|cuda|use_cpu|npu|xpu|mps", re.IGNORECASE)


def load_train_config(
    config_path: str | os.PathLike | None = None, args: Sequence[str] = (), *, check_hardware: bool = True
) -> TrainConfig:
    """Read ``config_path`` (YAML) and apply command-line ``args`` (TRL-style flags) on top.

    ``check_hardware=False`` (``--dry-run``) resolves a config written for other hardware, e.g. a bf16 GPU config on
    a CPU-only machine: when `transformers.TrainingArguments` rejects it for this machine only, it is parsed again
    as if ``use_cpu`` were set, ``use_cpu`` is put back to the configured value, and the rejection is kept in
    ``hardware_error``. Any other invalid value still raises.

    Example:
        >>> flags = ["--model_name_or_path", "Qwen/Qwen3-4B", "--reward_kind", "guard_only", "--use_cpu"]
        >>> cfg = load_train_config(None, [*flags, "--output_dir", "/tmp/x"])
        >>> cfg.reward.reward_kind, cfg.grpo.use_cpu
        ('guard_only', True)
    """
    import yaml
    from trl import GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((RewardArguments, DataArguments, EvaluationArguments, GRPOConfig, ModelConfig))
    if config_path is not None:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} must hold a YAML mapping")
        env = {str(k): str(v) for k, v in (config.pop("env", None) or {}).items()}
        os.environ.update(env)
        unknown = parser.set_defaults_with_config(**flatten_sections(config))
        if unknown:
            keys = sorted({u[2:] for u in unknown if u.startswith("--")})
            raise ValueError(f"{config_path}: unknown keys {keys} (not a GRPOConfig/ModelConfig field nor ours)")
    hardware_error = None
    try:
        reward, data, evaluation, grpo, model = parser.parse_args_into_dataclasses(args=list(args))
    except ValueError as exc:
        if check_hardware or not _HARDWARE_ERROR.search(str(exc)):
            raise
        configured_use_cpu = bool(parser.parse_known_args(args=list(args))[0].use_cpu)
        if configured_use_cpu:  # use_cpu cannot lift this rejection
            raise
        hardware_error = str(exc)
        reward, data, evaluation, grpo, model = parser.parse_args_into_dataclasses(args=[*args, "--use_cpu", "true"])
        grpo.use_cpu = configured_use_cpu
    # The chat template's thinking switch (Qwen3 templates read `enable_thinking`; others ignore it).
    grpo.chat_template_kwargs = {**(grpo.chat_template_kwargs or {}), "enable_thinking": bool(data.data_think)}
    if model.model_name_or_path is None:
        raise ValueError("model_name_or_path is required (the policy to train), e.g. Qwen/Qwen3-4B or toy:policy")
    path = None if config_path is None else str(config_path)
    return TrainConfig(reward, data, evaluation, grpo, model, path, hardware_error)


def resolve_model(name: str) -> str:
    """A model reference as a loadable id/folder: ``toy:<name>`` builds (or fetches) the toy model.

    Example:
        >>> resolve_model("Qwen/Qwen3-4B")
        'Qwen/Qwen3-4B'
    """
    from rewards.loading import resolve_model_name

    return resolve_model_name(name)
