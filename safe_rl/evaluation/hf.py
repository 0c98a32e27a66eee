"""transformers helpers shared by the local policy and the local WildGuard judge (imported lazily: torch)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

from rewards.devices import resolve_device, resolve_dtype
from rewards.engine.batching import left_pad as left_pad  # the one padding helper; re-exported for the evaluation code

logger = logging.getLogger(__name__)


def load_causal_lm(
    model: str, *, device: str | None, dtype: str, model_kwargs: dict[str, Any] | None = None
) -> tuple[Any, Any, torch.device]:
    """(model in eval mode, left-padding tokenizer, device) from a hub id or local folder."""
    where = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=resolve_dtype(dtype, where), **(model_kwargs or {}))
    lm.to(where).eval()
    return lm, tokenizer, where


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (then UNK) for tokenizers that have none."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has no pad, eos or unk token to pad with")


class LinesComplete(StoppingCriteria):
    """Stops a row once its new text holds ``lines`` complete lines (the start of one more line is seen).

    WildGuard's answer is three lines; the official usage decodes up to 128 tokens regardless, but nothing after
    the third line is read, so stopping there changes no verdict and saves most of the decoding.
    """

    def __init__(self, tokenizer: Any, prompt_width: int, lines: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.lines = lines

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = []
        for row in input_ids[:, self.prompt_width :].tolist():
            text = self.tokenizer.decode(row, skip_special_tokens=True).lstrip()
            done.append(text.count("\n") >= self.lines)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def release_memory() -> None:
    """Return freed accelerator memory (call after dropping the last reference to the policy, before the judge)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
