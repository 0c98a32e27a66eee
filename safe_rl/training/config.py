"""The training configuration: every `trl.GRPOConfig` / `trl.ModelConfig` field plus our own sections.

One YAML file holds it all. Top-level keys are TRL's (parsed by TRL's own `TrlParser`, so any TRL flag works);
five sections are ours and are flattened with their name as prefix, so that they are flags too
(`safe_rl.command_line`):

    guard:       {model: Qwen/Qwen3Guard-Gen-4B, base_url: ...}  ->  --guard_model, --guard_base_url, ...
    helpfulness: {model: Skywork/Skywork-Reward-V2-Qwen3-8B}     ->  --helpfulness_model, ...
    reward:      {kind: hybrid, compare: [guard_only, hybrid]}   ->  --reward_kind, --reward_compare, ...
    data:        {source: allenai/wildjailbreak, think: false}   ->  --data_source, --data_think, ...
    evaluation:  {prompts: toy, samples: 1, judge: toy}          ->  --evaluation_prompts, ...

``guard``, ``helpfulness`` and the reward's formula (``reward``) are `rewards.arguments`' dataclasses, the same
every command and the ``SAFE_RL_*`` variables use. Command-line flags override the file. An ``env:`` mapping sets
environment variables (as in TRL; its ``OMP_NUM_THREADS`` also sets torch's thread count for the run, torch being
imported by then). Model names may be hub ids, folders or ``toy:policy``/``toy:guard``/``toy:helpfulness``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from rewards.arguments import REWARD_KINDS, GuardArguments, HelpfulnessArguments, RewardArguments
from safe_rl.data.arguments import DataArguments

SECTIONS: tuple[str, ...] = ("guard", "helpfulness", "reward", "data", "evaluation")
EVALUATION_JUDGES: tuple[str, ...] = ("guard", "toy")


@dataclass
class RewardRunArguments:
    """The ``reward`` section's training settings (the formula's are `rewards.arguments.RewardArguments`)."""

    reward_compare: list[str] | None = field(
        default=None,
        metadata={"help": "Train once per reward kind listed, each from the same start (e.g. guard_only hybrid)."},
    )
    reward_async: bool | None = field(
        default=None,
        metadata={
            "help": "Async reward (concurrent guard calls); default: when the guard is remote.",
            "nargs": "?",
            "const": True,
        },  # fmt: skip
    )

    def __post_init__(self) -> None:
        for kind in self.reward_compare or []:
            if kind not in REWARD_KINDS:
                raise ValueError(f"reward_compare: each kind must be one of {REWARD_KINDS}, got {kind!r}")


@dataclass
class EvaluationArguments:
    """The ``evaluation`` section: safety and refusal rates before and after training (a small Table 10), by the
    same code as `safe-rl eval` (each pass is an eval run folder under ``output_dir/eval/``)."""

    evaluation_prompts: str | None = field(
        default=None,
        metadata={
            "help": "A benchmark as `safe-rl eval --benchmark` takes it (toy, wildjailbreak, a file); unset: skip."
        },
    )
    evaluation_samples: int = field(default=1, metadata={"help": "Answers sampled per evaluation prompt."})
    evaluation_judge: str = field(
        default="guard", metadata={"help": "guard (the reward's guard) or toy (the toy world's rule judge)."}
    )
    evaluation_max_prompts: int | None = field(default=None, metadata={"help": "Cap on evaluation prompts."})

    def __post_init__(self) -> None:
        if self.evaluation_judge not in EVALUATION_JUDGES:
            raise ValueError(f"evaluation_judge must be one of {EVALUATION_JUDGES}, got {self.evaluation_judge!r}")
        if self.evaluation_samples < 1:
            raise ValueError("evaluation_samples must be positive")
        if self.evaluation_max_prompts is not None and self.evaluation_max_prompts < 1:
            raise ValueError("evaluation_max_prompts must be positive")
        if self.evaluation_prompts is not None and self.evaluation_prompts.lower() in ("", "none", "null"):
            self.evaluation_prompts = None


@dataclass
class TrainOptions:
    """How `safe-rl train` treats the run: describe it only, continue it, or start it again."""

    dry_run: bool = field(
        default=False, metadata={"help": "Print the resolved config, the models and the GPUs, check the data; exit."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in output_dir."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an earlier run in output_dir and start again."})

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in output_dir, --overwrite deletes it: pass one")


@dataclass
class TrainConfig:
    """Everything `safe-rl train` needs, resolved from YAML and flags."""

    guard: GuardArguments
    helpfulness: HelpfulnessArguments
    reward: RewardArguments
    run: RewardRunArguments
    data: DataArguments
    evaluation: EvaluationArguments
    grpo: Any  # trl.GRPOConfig
    model: Any  # trl.ModelConfig
    options: TrainOptions = field(default_factory=TrainOptions)
    config_path: str | None = None
    hardware_error: str | None = None  # set by a parse with check_hardware=False when this machine cannot run it

    @property
    def kinds(self) -> list[str]:
        """The reward kinds to train, in order (``reward.compare``, else ``reward.kind``)."""
        return list(self.run.reward_compare or [self.reward.reward_kind])

    @property
    def torch_threads(self) -> int | None:
        """Torch threads for the run: ``OMP_NUM_THREADS`` (e.g. from the file's ``env:``), read when the run starts,
        since torch was imported before the file set it."""
        value = os.environ.get("OMP_NUM_THREADS")
        return int(value) if value and value.isdigit() and int(value) > 0 else None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Our sections in full (keys left out), and the TRL fields that differ from TRL's defaults."""
        from trl import GRPOConfig, ModelConfig

        out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for section in (self.guard, self.helpfulness, self.reward, self.run, self.data, self.evaluation):
            for f in fields(section):
                name, key = f.name.split("_", 1)
                value = getattr(section, f.name)
                out[name][key] = "***" if key == "api_key" and value else value
        out["model"] = _non_default(self.model, ModelConfig)
        out["grpo"] = _non_default(self.grpo, GRPOConfig)
        return json.loads(json.dumps(out, default=str))  # plain types only (enums -> their values)


def _non_default(obj: Any, cls: type) -> dict[str, Any]:
    try:  # compare with a default instance, so that values normalised by __post_init__ do not show up as changes
        kwargs = {"output_dir": obj.output_dir, "use_cpu": True, "activation_checkpointing": True}
        reference: Any = cls(**(kwargs if hasattr(obj, "use_cpu") else {}))
    except Exception:  # noqa: BLE001 - fall back to the declared defaults
        reference = None
    changed = {}
    for f in fields(cls):
        if not f.init or f.name in ("logging_dir", "gradient_checkpointing", "gradient_checkpointing_kwargs"):
            continue
        if reference is not None:
            default = getattr(reference, f.name, None)
        else:
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        value = getattr(obj, f.name, None)
        if value != default:
            changed[f.name] = (
                value if isinstance(value, (bool, int, float, str, list, dict, type(None))) else str(value)
            )
    return changed


def argument_types() -> tuple[type, ...]:
    """The dataclasses `safe-rl train` parses, in `TrainConfig`'s order."""
    from trl import GRPOConfig, ModelConfig

    return (GuardArguments, HelpfulnessArguments, RewardArguments, RewardRunArguments, DataArguments,
            EvaluationArguments, GRPOConfig, ModelConfig, TrainOptions)  # fmt: skip


# TrainingArguments' checks of the machine it is parsed on (bf16/fp16/tf32 need a suitable GPU; no GPU needs use_cpu).
_HARDWARE_ERROR = re.compile(r"bf16|fp16|tf32|gpu|cuda|use_cpu|npu|xpu|mps", re.IGNORECASE)


def load_train_config(
    config_path: str | os.PathLike | None = None, args: Sequence[str] = (), *, check_hardware: bool | None = None
) -> TrainConfig:
    """Read ``config_path`` (YAML) and apply command-line ``args`` (TRL-style flags) on top.

    ``check_hardware=False`` (``--dry-run``) resolves a config written for other hardware, e.g. a bf16 GPU config on
    a CPU-only machine: when `transformers.TrainingArguments` rejects it for this machine only, it is parsed again
    as if ``use_cpu`` were set, ``use_cpu`` is put back to the configured value, and the rejection is kept in
    ``hardware_error``. Any other invalid value still raises. By default the hardware is checked unless the
    arguments ask for ``--dry-run``.

    Example:
        >>> flags = ["--model_name_or_path", "Qwen/Qwen3-4B", "--reward_kind", "guard_only", "--use_cpu"]
        >>> cfg = load_train_config(None, [*flags, "--output_dir", "/tmp/x", "--guard_model", "toy:guard"])
        >>> cfg.reward.reward_kind, cfg.guard.guard_model, cfg.grpo.use_cpu
        ('guard_only', 'toy:guard', True)
    """
    from safe_rl.command_line import UsageError, make_parser, parse_arguments

    types = argument_types()
    if check_hardware is None:
        check_hardware = not any(a in ("--dry-run", "--dry_run") for a in args)

    def parse(extra: Sequence[str] = ()) -> tuple[Any, ...]:
        parser = make_parser(types, "safe-rl train")
        with warnings.catch_warnings():
            # TRL's configs default the deprecated `gradient_checkpointing` to True, so that transformers (which maps
            # it to `activation_checkpointing`) warns on every parse, whatever the user wrote.
            warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
            return parse_arguments(types, [*args, *extra], prog="safe-rl train", sections=SECTIONS,
                                   config_path=config_path, parser=parser)  # fmt: skip

    hardware_error = None
    try:
        parsed = parse()
    except UsageError as exc:
        if check_hardware or not _HARDWARE_ERROR.search(str(exc)) or "--use_cpu" in args:
            raise
        hardware_error = str(exc)
        parsed = parse(["--use_cpu", "true"])
        parsed[6].use_cpu = False  # the configured value: a dry run describes the config as written
    guard, helpfulness, reward, run, data, evaluation, grpo, model, options = parsed
    # The chat template's thinking switch (Qwen3 templates read `enable_thinking`; others ignore it).
    grpo.chat_template_kwargs = {**(grpo.chat_template_kwargs or {}), "enable_thinking": bool(data.data_think)}
    if model.model_name_or_path is None:
        raise UsageError("model_name_or_path is required (the policy to train), e.g. Qwen/Qwen3-4B or toy:policy")
    if config_path is None and "--config" in args:  # the file `safe-rl train --config FILE` read
        config_path = args[list(args).index("--config") + 1]
    path = None if config_path is None else str(config_path)
    return TrainConfig(guard, helpfulness, reward, run, data, evaluation, grpo, model, options, path, hardware_error)
