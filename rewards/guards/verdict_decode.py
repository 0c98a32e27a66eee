"""Exact greedy decoding of guard verdicts, several tokens per forward pass: the format proposes, the model checks.

A Qwen3Guard-Gen verdict is mostly fixed text: ``Safety:``, a label, ``\\nCategories:``, a category, ``\\nRefusal:``,
Yes/No, end of turn. After the model's own next token, the decoder appends the tokens the format then fixes (a
draft, read off a token trie of every well-formed verdict), runs them in the same forward pass, and keeps each
only while it is the model's greedy choice at its position: speculative decoding whose draft model is the format.
The output is token for token that of greedy decoding; a response verdict takes 4 forward passes (the input with
``Safety:``, then label + ``\\nCategories:``, category + ``\\nRefusal:``, Yes/No) instead of about 13. A rejected
draft token stays in the cache as a masked slot (see `rewards.guards.prefix_cache`); a model that leaves the format
simply gets no more drafts and is decoded one token per pass.

Rows stop where ``generate`` with `VerdictComplete` stops them: at an end-of-turn token, when the lines their
verdict needs are complete, or after ``max_new_tokens`` tokens; finished rows leave the batch. With
``safety_only`` a row also stops at the first token of its label, which the first pass already reads when the
guard starts with ``Safety:`` as it always does: one forward pass per input. The label distribution after
``Safety:`` is kept on every row that gets there (`rewards.guards.label_probs`).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rewards.guards import last_layer, rows_forward
from rewards.guards.kv_rows import KVRows
from rewards.guards.label_probs import SAFETY_PREFIX, LabelTokens, encode
from rewards.guards.lm_head import head_logits
from rewards.guards.padding import left_pad
from rewards.guards.prefix_cache import extend
from rewards.guards.workspace import Workspace
from rewards.verdict import CATEGORIES, SAFETY_LABELS

PROMPT_LINES = 2  # Safety, Categories
RESPONSE_LINES = 3  # Safety, Categories, Refusal
# Positions per logits-processor call. A processor returns new [positions, vocabulary] scores; at 32 x 151k floats
# (19 MB) the allocator reuses that memory call after call, where one call over every read position (hundreds)
# mapped and zeroed fresh pages each pass (bench_reward's forcing processor: 130k of a full run's 500k page faults).
PROCESSOR_ROWS = 32


def verdict_texts(response: bool) -> list[str]:
    """Every well-formed verdict: 2 lines for a prompt, 3 for an answer (any label with any category or None)."""
    lines = [
        [f"{SAFETY_PREFIX} {label}" for label in SAFETY_LABELS],
        [f"Categories: {c}" for c in (*CATEGORIES, "None")],
    ]
    if response:
        lines.append(["Refusal: Yes", "Refusal: No"])
    return ["\n".join(parts) for parts in itertools.product(*lines)]


class VerdictDrafter:
    """A token trie of `verdict_texts`; `draft` gives the tokens the format fixes after what was generated.

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> drafter = VerdictDrafter(AutoTokenizer.from_pretrained("Qwen/Qwen3Guard-Gen-0.6B"), response=True)  # doctest: +SKIP
        >>> drafter.draft([])  # the ids of "Safety" ":"  # doctest: +SKIP
        [...]
    """

    def __init__(self, tokenizer: Any, *, response: bool):
        self.root: dict[int, dict] = {}
        for text in verdict_texts(response):
            node = self.root
            for t in encode(tokenizer, text):
                node = node.setdefault(t, {})

    def draft(self, generated: Sequence[int]) -> list[int]:
        node = self.root
        for t in generated:
            node = node.get(t)
            if node is None:
                return []  # the model left the format: no guess
        out = []
        while len(node) == 1:
            ((t, node),) = node.items()
            out.append(t)
        return out


def complete_lines(text: str) -> int:
    """Non-blank lines ended by a newline.

    Example:
        >>> complete_lines("Safety: Safe\\nCategories: None\\nRef")
        2
    """
    return sum(1 for line in text.split("\n")[:-1] if line.strip())


@dataclass
class RowState:
    """One guard input being decoded."""

    context: list[int]  # the guard input's token ids (logits processors see it, as in `generate`)
    needed_lines: int
    drafter: VerdictDrafter
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # chosen by the model, not yet run through it
    probs: dict[str, float] | None = None
    label: str | None = None  # set when stopped at the label's first token (safety_only)
    done: bool = False


Batch = tuple[KVRows | None, list[RowState], list[list[int]]]  # (prefix state, rows, each row's input after it)


@dataclass
class _Live:
    """A batch being decoded: its state, its rows, which of them are active, and their next drafts and feeds."""

    state: KVRows | None
    rows: list[RowState]
    active: list[int]
    drafts: list[list[int]]
    feeds: list[list[int]]


class VerdictDecoder:
    """Decodes `RowState` batches on top of `KVRows` prefixes; see the module docstring."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        newline_ids: set[int],
        pad_id: int,
        logits_processor: Any = None,
        processor_context: int | None = None,
        workspace: Workspace | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.eos_ids = set(eos_ids)
        self.newline_ids = newline_ids
        self.pad_id = pad_id
        self.logits_processor = logits_processor
        self.processor_context = processor_context  # input tokens a processor sees (None: all, as in `generate`)
        try:
            self.labels: LabelTokens | None = LabelTokens.from_tokenizer(tokenizer)
        except ValueError:
            self.labels = None  # no label distribution, no label-only stop; decoding itself is unaffected
        self.drafters = {r: VerdictDrafter(tokenizer, response=r) for r in (False, True)}
        self.split_head = last_layer.supports(model)  # layers per batch, one LM-head call for all batches
        # where rows' states are copied when some leave, and the LM head's scores go (none: plain allocations)
        self.workspace = workspace or Workspace(0)
        self._scores_buffer = functools.partial(self.workspace.scratch, "logits")  # valid until the next pass
        self.merged = rows_forward.supports(model)  # short passes of all batches through one set of products
        self.stats: Counter = Counter()  # forwards, fed/padded tokens, seconds in the first pass and in the others

    def new_row(self, context: list[int], response: bool) -> RowState:
        return RowState(
            context=context, needed_lines=RESPONSE_LINES if response else PROMPT_LINES, drafter=self.drafters[response]
        )

    def run_batches(self, batches: Sequence[Batch], *, safety_only: bool) -> None:
        """Decode the rows of several ``(state, rows, rest)`` batches to the end, side by side; ``rest[i]``
        (non-empty) is row i's input after what ``state`` holds.

        Each pass runs every batch's layers on its own state, then the positions all batches read go through the
        LM head in one call: with a 151k vocabulary the head's weights are read once per call, whatever the rows.
        """
        self.stats["batches"] += len(batches)
        live = []
        for state, rows, rest in batches:
            drafts = [row.drafter.draft([]) for row in rows]
            feeds = [rest[i] + drafts[i] for i in range(len(rows))]
            live.append(_Live(state, rows, list(range(len(rows))), drafts, feeds))
        phase = "prefill"
        while live:
            t0 = time.perf_counter()
            scores, greedy = self._scores(self._pass(live), live)
            self.stats.update(
                {
                    "forwards": len(live),
                    "fed_tokens": sum(len(f) for b in live for f in b.feeds),
                    f"{phase}_padded_tokens": sum(len(b.feeds) * max(map(len, b.feeds)) for b in live),
                    f"{phase}_s": time.perf_counter() - t0,  # the argmax list above waits for the device
                }
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
                        label_next = self.labels is not None and self.labels.at_label(row.generated)
                        if label_next:
                            at_label.append((row, pos + j))
                        t = greedy[pos + j]
                        row.generated.append(t)
                        if self._stops(row, t, safety_only and label_next):
                            row.done = True
                            break
                        if j < len(draft) and t == draft[j]:
                            j += 1
                            continue
                        row.pending = t
                        break
                    pos += len(draft) + 1
                    if not row.done:
                        b.state.drop_last_slots(n, len(draft) - j)
                        survivors.append(n)
                if len(survivors) < len(b.active) and survivors:
                    b.state = b.state.select(survivors, self.workspace.empty)
                b.active = [b.active[n] for n in survivors]
                b.drafts = [b.rows[i].drafter.draft(b.rows[i].generated) for i in b.active]
                b.feeds = [[b.rows[i].pending, *b.drafts[n]] for n, i in enumerate(b.active)]
            if at_label:
                probs = self.labels.batch_probs(scores[torch.tensor([k for _, k in at_label], device=scores.device)])
                for (row, _), p in zip(at_label, probs, strict=True):
                    row.probs = p
            live = [b for b in live if b.active]

    def _pass(self, live: list[_Live]) -> torch.Tensor:
        """One pass of every batch; returns what they read: each row's last ``len(draft) + 1`` positions, in order
        (hidden states where the LM head runs apart, else logits)."""
        keeps = [max(len(d) for d in b.drafts) + 1 for b in live]
        feeds = [b.feeds for b in live]
        if self.merged and rows_forward.fits(feeds):
            states, outs = rows_forward.extend_batches(
                self.model, [b.state for b in live], feeds, keeps, pad_id=self.pad_id
            )
            for b, state in zip(live, states, strict=True):
                b.state = state
        else:
            outs = []
            for b, keep in zip(live, keeps, strict=True):
                b.state, out = extend(
                    self.model, b.state, b.feeds, pad_id=self.pad_id, keep=keep, hidden=self.split_head
                )
                outs.append(out)
        return torch.cat(
            [
                out[n, keep - len(d) - 1 :]
                for b, out, keep in zip(live, outs, keeps, strict=True)
                for n, d in enumerate(b.drafts)
            ]
        )

    def _scores(self, reads: torch.Tensor, live: list[_Live]) -> tuple[torch.Tensor, list[int]]:
        """Next-token scores of every read position and their argmax.

        Without a logits processor these are the logits themselves. With one, every position a row may read this
        step is scored, `PROCESSOR_ROWS` positions per call, with the ids ``generate`` would pass there (input +
        generated + the draft so far; shorter rows padded on the left, as ``generate`` pads).
        """
        logits = head_logits(self.model, reads, self._scores_buffer) if self.split_head else reads
        self.stats["head_calls"] += 1
        if self.logits_processor is None:
            return logits, logits.argmax(-1).tolist()
        keep = self.processor_context
        contexts = [
            (b.rows[i].context[-keep:] if keep else b.rows[i].context) + b.rows[i].generated + b.drafts[n][:j]
            for b in live
            for n, i in enumerate(b.active)
            for j in range(len(b.drafts[n]) + 1)
        ]
        scores = logits.float()
        for start in range(0, len(contexts), PROCESSOR_ROWS):
            part = slice(start, start + PROCESSOR_ROWS)
            ids, _ = left_pad(contexts[part], self.pad_id, logits.device)
            scores[part] = self.logits_processor(ids, scores[part])
        return scores, scores.argmax(-1).tolist()

    def _stops(self, row: RowState, t: int, label_stop: bool) -> bool:
        """Whether ``row`` ends after its new token ``t``; ``label_stop``: ``t`` is the label's place (safety_only)."""
        if t in self.eos_ids or len(row.generated) >= self.max_new_tokens:
            return True
        if t in self.newline_ids:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            if complete_lines(text) >= row.needed_lines:
                return True
        if label_stop:
            row.label = self.labels.label_of(t)
            return row.label is not None
        return False
