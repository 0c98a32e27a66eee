"""The training prompts' settings: the ``data`` section of a training config, and `safe-rl prepare`'s data flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from safe_rl.data.wildjailbreak import HARMFUL_TYPES


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
    data_max_prompts: int | None = field(
        default=None, metadata={"help": "Keep a seeded random sample of this many prompts."}
    )
    data_system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})

    def __post_init__(self) -> None:
        if self.data_max_prompts is not None and self.data_max_prompts < 1:
            raise ValueError("data_max_prompts must be positive")
