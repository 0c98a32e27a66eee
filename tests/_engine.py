"""Helpers for comparing the engines: guard requests as the in-process guard makes them, and one transformers
``LogitsProcessor`` applied identically by both engines (to impose the verdict format on a random-weight model,
or a fixed verdict in the benchmarks).

`GenerateEngine` gets the processor through a wrapper on the model object's ``generate``; `RowsEngine` through a
subclass of its decoder that applies it to the scores of every position a pass reads, with the ids ``generate``
would pass there cut to the generated part (the processors used here read nothing before it). Neither is a
production option: production code has no hook for this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList

from rewards.engine import FallbackEngine, VerdictRequest
from rewards.engine.batching import left_pad
from rewards.engine.rows.drafted_decoding import DraftedDecoder
from rewards.guards.gen.local import LocalGenBackend, group_key

PROCESSOR_ROWS = 32  # positions per processor call


class ProcessedDecoder(DraftedDecoder):
    """A `DraftedDecoder` whose next-token scores go through ``processor`` first, as ``generate`` applies it."""

    processor: Any = None

    def _scores(self, live: list[Any]) -> torch.Tensor:
        scores = super()._scores(live).float()
        contexts = [
            b.rows[i].generated + b.drafts[n][:j]
            for b in live
            for n, i in enumerate(b.active)
            for j in range(len(b.drafts[n]) + 1)
        ]
        for start in range(0, len(contexts), PROCESSOR_ROWS):
            part = slice(start, start + PROCESSOR_ROWS)
            ids, _ = left_pad(contexts[part], self.pad_id, scores.device)
            scores[part] = self.processor(ids, scores[part])
        return scores


def rows_engine(engine: Any) -> Any:
    """The `RowsEngine` inside ``engine`` (a `FallbackEngine` holds it as its fast path)."""
    return engine.fast if isinstance(engine, FallbackEngine) else engine


def apply_processor(engine: Any, processor: Any) -> None:
    """Make ``engine`` (a `RowsEngine`, `GenerateEngine` or `FallbackEngine`) apply ``processor``."""
    if isinstance(engine, FallbackEngine):
        apply_processor(engine.fast, processor)
        apply_processor(engine.fallback, processor)
    elif hasattr(engine, "decoder"):
        engine.decoder.__class__ = ProcessedDecoder
        engine.decoder.processor = processor
    else:
        generate_with(engine.model, processor)


def generate_with(model: Any, processor: Any) -> None:
    """``model.generate`` applies ``processor`` before any processor its caller passes (a wrapper on this object)."""
    original = type(model).generate

    def generate(*args: Any, logits_processor: Any = None, **kwargs: Any) -> Any:
        processors = LogitsProcessorList([processor, *(logits_processor or [])])
        return original(model, *args, logits_processor=processors, **kwargs)

    model.generate = generate


def requests(backend: LocalGenBackend, conversations: Sequence[Any]) -> list[VerdictRequest]:
    """The engine requests `LocalGenBackend.moderate` makes for ``conversations`` (all of them preparable)."""
    out = []
    for i, prepared in enumerate(backend.prompt.prepare_many(conversations)):
        assert not isinstance(prepared, Exception), prepared
        out.append(VerdictRequest(ids=prepared.input_ids, response=prepared.response, group=group_key(i, prepared)))
    return out
