"""Key/value states that rows share: compute a common prefix once, copy it into every row that starts with it.

Every guard input starts with the same instruction text (the chat template before the first content), and in a
GRPO step the thinking and the answers of one prompt's rollouts also share the prompt. `KVRows` holds the keys and
values of a batch of token rows together with a slot mask and each row's next position, so that rows built from
different prefixes can be stacked: slots may hold padding anywhere (between a prefix and what follows, or where a
draft token was rejected), the mask hides them and explicit position ids keep the rotary positions those of the
unpadded sequence. The result equals a plain forward pass over each row alone up to float rounding (the tests
check it).

The slots, not the positions, order the cache: transformers builds the causal mask from the cache length and the
2-D padding mask, and uses ``position_ids`` only for the rotary embedding. On the CPU a Qwen3 model gets the
layout itself instead of a mask (`rewards.guards.slot_attention`: the same attention with less work).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rewards.guards import last_layer
from rewards.guards.padding import pad
from rewards.guards.slot_attention import layout, long_chunk, rows_attention, supports


@dataclass
class KVRows:
    """Per-layer keys/values ``[rows, kv_heads, slots, head_dim]``, a ``[rows, slots]`` mask, next positions."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def slots(self) -> int:
        return self.mask.shape[1]

    def select(self, index: torch.Tensor | Sequence[int]) -> KVRows:
        """The given rows (repeats allowed), as new tensors: the source can be reused afterwards."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        return KVRows(
            keys=[k.index_select(0, index) for k in self.keys],
            values=[v.index_select(0, index) for v in self.values],
            mask=self.mask.index_select(0, index),
            next_pos=self.next_pos.index_select(0, index),
        )

    def drop_last_slots(self, row: int, count: int) -> None:
        """Mask the last ``count`` visible slots of ``row`` (rejected draft tokens), move its next position back."""
        if count > 0:
            visible = self.mask[row].nonzero().flatten()  # padding may follow them (a right-padded chunk)
            self.mask[row, visible[-count:]] = 0
            self.next_pos[row] -= count

    def cache(self, config: Any) -> DynamicCache:
        """A `DynamicCache` over these tensors; it concatenates on update, so they are never written through it."""
        cache = DynamicCache(config=config)
        if len(cache.layers) == len(self.keys) and all(type(layer) is DynamicLayer for layer in cache.layers):
            for layer, k, v in zip(cache.layers, self.keys, self.values, strict=True):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v  # no copy (filling through `update` would copy every layer)
            return cache
        return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values, strict=True)), config=config)


def stack(parts: Sequence[tuple[KVRows, Sequence[int]]]) -> KVRows:
    """Rows taken from several states (``(state, row indices)`` pairs), aligned on their last slot; one copy."""
    slots = max(state.slots for state, _ in parts)
    rows = sum(len(index) for _, index in parts)
    first = parts[0][0]
    keys = [k.new_zeros(rows, k.shape[1], slots, k.shape[3]) for k in first.keys]
    values = [v.new_zeros(rows, v.shape[1], slots, v.shape[3]) for v in first.values]
    mask = first.mask.new_zeros(rows, slots)
    next_pos = first.next_pos.new_zeros(rows)
    row = 0
    for state, index in parts:
        index = torch.as_tensor(index, dtype=torch.long, device=state.mask.device)
        span, tail = slice(row, row + len(index)), slice(slots - state.slots, slots)
        for out, src in zip(keys + values, state.keys + state.values, strict=True):
            out[span, :, tail] = src.index_select(0, index)
        mask[span, tail] = state.mask.index_select(0, index)
        next_pos[span] = state.next_pos.index_select(0, index)
        row += len(index)
    return KVRows(keys=keys, values=values, mask=mask, next_pos=next_pos)


@torch.inference_mode()
def extend(
    model: Any,
    state: KVRows | None,
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    keep: int = 1,
    hidden: bool = False,
) -> tuple[KVRows, torch.Tensor]:
    """Run ``rows`` (one token list per state row, padded into one chunk) on top of ``state``.

    Returns the extended state and the logits at each row's last ``keep`` tokens, ``[rows, keep, vocab]`` (a row of
    fewer tokens gets some of its own or padding in front; ``keep=0``: no logits, only the state). The last layer
    runs only at those tokens where it can (`rewards.guards.last_layer`). ``hidden`` (only where
    `last_layer.supports` the model): the final hidden states there instead, ``[rows, keep, hidden]``, for the
    caller to put through the LM head (``model.get_output_embeddings()``) together with other batches'.
    """
    device = model.device
    fast = supports(model)  # same attention, less work: see `rewards.guards.slot_attention`
    right = fast and long_chunk(max(len(r) for r in rows))  # its long-chunk attention wants right padding
    ids, chunk_mask = pad(rows, pad_id, device, left=not right)
    start = state.next_pos if state is not None else torch.zeros(len(rows), dtype=torch.long, device=device)
    positions = (start[:, None] + chunk_mask.cumsum(1) - 1).clamp(min=0)  # padding gets any valid position
    mask = chunk_mask if state is None else torch.cat([state.mask, chunk_mask], 1)
    cache = state.cache(model.config) if state is not None else DynamicCache(config=model.config)
    if fast:  # a prepared mask: transformers builds none
        attention = {"full_attention": layout(state.mask if state is not None else None, chunk_mask, model.dtype)}
    else:
        attention = mask
    width = ids.shape[1]
    if right:
        index = (chunk_mask.sum(1, keepdim=True) - keep + torch.arange(keep, device=device)).clamp(min=0)
    else:
        index = torch.arange(width - keep, width, device=device).clamp(min=0).expand(len(rows), keep)
    tail = last_layer.supports(model)
    if hidden and not tail:
        raise ValueError("hidden=True needs a model that rewards.guards.last_layer supports")
    with (
        rows_attention(model) if fast else nullcontext(),
        last_layer.last_positions(model, index) if tail else nullcontext(),
    ):
        out = (model.get_decoder() if hidden else model)(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **({} if hidden else {"logits_to_keep": keep if tail else max(keep, 1)}),  # 0: every column to HF
        )
    cache = out.past_key_values
    new = KVRows(
        keys=[layer.keys for layer in cache.layers],
        values=[layer.values for layer in cache.layers],
        mask=mask,
        next_pos=start + chunk_mask.sum(1),
    )
    if hidden:
        return new, out.last_hidden_state  # the last layer kept just the ``keep`` columns
    return new, out.logits[:, out.logits.shape[1] - keep :]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token lists.

    Example:
        >>> common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]])
        2
    """
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def length_batches(
    lengths: Sequence[int], *, max_rows: int, max_tokens: int, max_waste: float = 0.1, min_rows: int = 4
) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch holds at most ``max_rows`` rows and, beyond its first row, at most ``max_tokens`` padded tokens (rows x
    longest); once it has ``min_rows`` rows it also stops where padding would exceed ``max_waste`` of its real
    tokens (padding is computed like real tokens).

    Example:
        >>> length_batches([5, 100, 7, 90], max_rows=2, max_tokens=1000)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    real = 0
    for i in order:
        batch = batches[-1] if batches else None
        if batch is not None:
            padded = (len(batch) + 1) * lengths[batch[0]]
            fits = len(batch) < max_rows and padded <= max_tokens
            if fits and (len(batch) < min_rows or padded <= (1 + max_waste) * (real + lengths[i])):
                batch.append(i)
                real += lengths[i]
                continue
        batches.append([i])
        real = lengths[i]
    return batches
