"""Exact greedy decoding of guard verdicts, several tokens per forward pass: the format proposes, the model checks.

A Qwen3Guard-Gen verdict is mostly fixed text: ``Safety:``, a label, ``\\nCategories:``, a category, ``\\nRefusal:``,
Yes/No, end of turn. After the model's own next token, the decoder appends the tokens the format then fixes (a
draft, read off a token trie of every well-formed verdict), runs them in the same forward pass, and keeps each
only while it is the model's greedy choice at its position: speculative decoding whose draft model is the format.
The output is token for token that of greedy decoding; a response verdict takes 4 forward passes (the input with
``Safety:``, then label + ``\\nCategories:``, category + ``\\nRefusal:``, Yes/No) instead of about 13. A rejected
draft token stays in the cache as a masked slot (`RowsKV.drop_last_slots`); a model that leaves the format simply
gets no more drafts and is decoded one token per pass.

Rows stop by `rewards.engine.verdict_format.VerdictFormat.stop` (as `rewards.engine.GenerateEngine` stops them) and
leave their batch. With ``safety_only`` the first pass already reads the label when the guard starts with
``Safety:``, as it always does: one forward pass per input.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rewards.engine.interface import Stats, tally
from rewards.engine.rows import qwen3_forward
from rewards.engine.rows.kv_cache import RowsKV
from rewards.engine.verdict_format import VerdictFormat, encode, verdict_texts

Trie = dict[int, "Trie"]


class VerdictDrafter:
    """A token trie of `rewards.engine.verdict_format.verdict_texts`; `draft` gives the tokens the format fixes
    after what was generated.

    Example:
        >>> class Chars:  # a stand-in tokenizer: one id per character
        ...     def __call__(self, text, add_special_tokens=True):
        ...         return {"input_ids": [ord(c) for c in text]}
        >>> drafter = VerdictDrafter(Chars(), response=False)
        >>> "".join(map(chr, drafter.draft([]))), "".join(map(chr, drafter.draft([ord(c) for c in "Safety: U"])))
        ('Safety: ', 'nsafe\\nCategories: ')
    """

    def __init__(self, tokenizer: Any, *, response: bool):
        self.root: Trie = {}
        for text in verdict_texts(response):
            node = self.root
            for t in encode(tokenizer, text):
                node = node.setdefault(t, {})

    def draft(self, generated: Sequence[int]) -> list[int]:
        node: Trie | None = self.root
        for t in generated:
            node = node.get(t) if node is not None else None
        if node is None:
            return []  # the model left the format: no guess
        out = []
        while len(node) == 1:
            ((t, node),) = node.items()
            out.append(t)
        return out


@dataclass
class RowState:
    """One guard input being decoded."""

    response: bool
    drafter: VerdictDrafter
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # chosen by the model, not yet run through it
    probs: dict[str, float] | None = None
    label: str | None = None
    done: bool = False


Batch = tuple[RowsKV | None, list[RowState], list[list[int]]]  # (prefix cache, rows, each row's input after it)


@dataclass
class _Live:
    """A batch being decoded: its cache, its rows, which of them are active, and their next drafts and feeds."""

    cache: RowsKV | None
    rows: list[RowState]
    active: list[int]
    drafts: list[list[int]]
    feeds: list[list[int]]


class DraftedDecoder:
    """Decodes `RowState` batches on top of `RowsKV` prefixes; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, fmt: VerdictFormat, *, pad_id: int):
        self.model = model
        self.format = fmt
        self.pad_id = pad_id
        self.drafters = {r: VerdictDrafter(tokenizer, response=r) for r in (False, True)}
        self.stats: defaultdict[str, float] = Stats(
            float
        )  # passes, fed/padded tokens, seconds in the first pass and the others

    def new_row(self, response: bool) -> RowState:
        return RowState(response=response, drafter=self.drafters[response])

    def run_batches(self, batches: Sequence[Batch], *, safety_only: bool, stats: defaultdict[str, float]) -> None:
        """Decode the rows of several ``(cache, rows, rest)`` batches to the end, side by side; ``rest[i]``
        (non-empty) is row i's input after what ``cache`` holds. ``stats`` gets the passes, fed and padded tokens,
        and the seconds of the first pass and of the others.

        Each pass runs every batch (short passes of all batches through one set of products, see
        `rewards.engine.rows.qwen3_forward.extend_batches`); the positions they read go through the LM head in one call.
        """
        stats["batches"] += len(batches)
        live = []
        for cache, rows, rest in batches:
            drafts = [row.drafter.draft([]) for row in rows]
            feeds = [rest[i] + drafts[i] for i in range(len(rows))]
            live.append(_Live(cache, rows, list(range(len(rows))), drafts, feeds))
        labels = self.format.labels
        phase = "prefill"
        while live:
            t0 = time.perf_counter()
            scores = self._scores(live)
            greedy = scores.argmax(-1).tolist()
            tally(
                stats,
                {
                    "passes": 1,
                    "forwards": len(live),
                    "fed_tokens": sum(len(f) for b in live for f in b.feeds),
                    f"{phase}_padded_tokens": sum(len(b.feeds) * max(map(len, b.feeds)) for b in live),
                    f"{phase}_s": time.perf_counter() - t0,  # the argmax list above waits for the device
                },
            )
            phase = "steps"
            at_label: list[tuple[RowState, int]] = []
            pos = 0  # where a row's first read position is in ``greedy`` (batches and rows in order)
            for b in live:
                survivors = []
                for n, i in enumerate(b.active):
                    row, draft = b.rows[i], b.drafts[n]
                    j = 0
                    while True:
                        if labels is not None and labels.at_label(row.generated):
                            at_label.append((row, pos + j))
                        t = greedy[pos + j]
                        row.generated.append(t)
                        row.done, row.label = self.format.stop(
                            row.generated, response=row.response, safety_only=safety_only
                        )
                        if row.done:
                            break
                        if j < len(draft) and t == draft[j]:
                            j += 1
                            continue
                        row.pending = t
                        break
                    pos += len(draft) + 1
                    if not row.done:
                        assert b.cache is not None
                        b.cache.drop_last_slots(n, len(draft) - j)
                        survivors.append(n)
                if len(survivors) < len(b.active) and survivors:
                    assert b.cache is not None
                    b.cache = b.cache.select(survivors)
                b.active = [b.active[n] for n in survivors]
                b.drafts = [b.rows[i].drafter.draft(b.rows[i].generated) for i in b.active]
                b.feeds = [[b.rows[i].pending, *b.drafts[n]] for n, i in enumerate(b.active)]  # type: ignore[list-item]
            if at_label and labels is not None:
                probs = labels.batch_probs(scores[torch.tensor([k for _, k in at_label], device=scores.device)])
                for (row, _), p in zip(at_label, probs, strict=True):
                    row.probs = p
            live = [b for b in live if b.active]

    def _scores(self, live: list[_Live]) -> torch.Tensor:
        """Next-token scores at every position the live rows read in this pass (each row's last ``len(draft) + 1``
        positions, batches and rows in order): one pass of every batch, then the LM head in one call."""
        return self.model.get_output_embeddings()(self._pass(live))

    def _pass(self, live: list[_Live]) -> torch.Tensor:
        """One pass of every batch; returns the final hidden states at what they read: each row's last
        ``len(draft) + 1`` positions, in order."""
        keeps = [max(len(d) for d in b.drafts) + 1 for b in live]
        groups = (
            [list(range(len(live)))]
            if qwen3_forward.fits([b.feeds for b in live])
            else [[i] for i in range(len(live))]
        )
        outs: list[torch.Tensor] = [torch.empty(0)] * len(live)
        for group in groups:
            caches, hidden = qwen3_forward.extend_batches(
                self.model,
                [live[i].cache for i in group],
                [live[i].feeds for i in group],
                [keeps[i] for i in group],
                pad_id=self.pad_id,
            )
            for i, cache, out in zip(group, caches, hidden, strict=True):
                live[i].cache, outs[i] = cache, out
        return torch.cat(
            [
                out[n, keep - len(d) - 1 :]
                for b, out, keep in zip(live, outs, keeps, strict=True)
                for n, d in enumerate(b.drafts)
            ]
        )
