"""`GenerateEngine`: verdicts with transformers' own ``generate``, public APIs only. The fallback and the oracle."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from rewards.engine.batching import left_pad, length_batches
from rewards.engine.interface import Stats, VerdictRequest, VerdictResult, tally
from rewards.engine.verdict_format import LabelTokens, VerdictFormat, greedy_config


class _StopAtVerdict(StoppingCriteria):
    """Ends each row by `VerdictFormat.stop` and records how many tokens it generated."""

    def __init__(self, fmt: VerdictFormat, responses: list[bool], width: int, safety_only: bool):
        self.format, self.responses, self.width, self.safety_only = fmt, responses, width, safety_only
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids[:, self.width :].tolist()
        for row, tokens in enumerate(generated):
            if row not in self.lengths:
                done, _ = self.format.stop(tokens, response=self.responses[row], safety_only=self.safety_only)
                if done:
                    self.lengths[row] = len(tokens)
        stopped = [row in self.lengths for row in range(len(generated))]
        return torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _ReadLabelProbs(LogitsProcessor):
    """Leaves the scores as they are; reads the label distribution of the rows that have just written ``Safety:``."""

    def __init__(self, labels: LabelTokens, width: int):
        self.labels, self.width = labels, width
        self.probs: dict[int, dict[str, float] | None] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.width == len(self.labels.prefix):
            prefix = torch.tensor(self.labels.prefix, device=input_ids.device)
            rows = (input_ids[:, self.width :] == prefix).all(1).nonzero().flatten().tolist()
            if rows:
                for row, p in zip(rows, self.labels.batch_probs(scores[rows]), strict=True):
                    self.probs[row] = p
        return scores


class GenerateEngine:
    """Greedy verdicts from ``model.generate``: requests sorted by length into left-padded batches, decoding stopped
    once each row's verdict lines are complete (`rewards.engine.verdict_format.VerdictFormat.stop`), the label
    distribution read from the scores after ``Safety:``. Shared prefixes are not reused: every row runs in full.

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer.
        max_new_tokens: upper bound on a verdict's tokens.
        batch_size: rows per ``generate`` call; ``max_batch_tokens``: bound on rows x padded length.

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> engine = GenerateEngine(AutoModelForCausalLM.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"),
        ...     AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"))  # doctest: +SKIP
        >>> engine.decode([VerdictRequest(ids=guard.encode(conversation), response=False)])[0].label  # doctest: +SKIP
        'Unsafe'
    """

    name = "generate"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 32,
        batch_size: int = 32,
        max_batch_tokens: int = 32768,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.format = VerdictFormat(model, tokenizer, max_new_tokens)
        self.generation_config = greedy_config(model, tokenizer, max_new_tokens)
        self.pad_id = int(self.generation_config.pad_token_id)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.stats: defaultdict[str, float] = Stats(float)

    @torch.inference_mode()
    def decode(self, requests: Sequence[VerdictRequest], *, safety_only: bool = False) -> list[VerdictResult]:
        """One result per request, in order (see `rewards.engine.VerdictEngine`)."""
        t0 = time.perf_counter()
        results: list[VerdictResult | None] = [None] * len(requests)
        lengths = [len(r.ids) for r in requests]
        for batch in length_batches(lengths, max_rows=self.batch_size, max_tokens=self.max_batch_tokens):
            rows = [requests[i] for i in batch]
            ids, mask = left_pad([r.ids for r in rows], self.pad_id, self.model.device)
            width = ids.shape[1]
            stop = _StopAtVerdict(self.format, [r.response for r in rows], width, safety_only)
            processors = LogitsProcessorList()
            reader = _ReadLabelProbs(self.format.labels, width) if self.format.labels is not None else None
            if reader is not None:
                processors.append(reader)
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=self.generation_config,
                stopping_criteria=StoppingCriteriaList([stop]),
                logits_processor=processors,
            )
            steps = out.shape[1] - width
            for row, i in enumerate(batch):
                generated = out[row, width : width + stop.lengths.get(row, steps)].tolist()
                probs = reader.probs.get(row) if reader is not None else None
                results[i] = VerdictResult(generated=generated, label=self.format.label(generated), probs=probs)
            tally(
                self.stats,
                {
                    "batches": 1,
                    "forwards": steps,
                    "input_tokens": sum(lengths[i] for i in batch),
                    "padded_tokens": ids.numel(),
                },
            )
        self.stats["decode_s"] += time.perf_counter() - t0
        return [r for r in results if r is not None]
