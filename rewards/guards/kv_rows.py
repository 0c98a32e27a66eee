"""Key/value states of batches of token rows, built from shared prefixes and extended pass by pass.

`KVRows` holds the keys and values of a batch of token rows together with a slot mask and each row's next position,
so that rows built from different prefixes can be stacked (`stack`): slots may hold padding anywhere (between a
prefix and what follows, or where a draft token was rejected), the mask hides them and explicit position ids keep
the rotary positions those of the unpadded sequence (see `rewards.guards.prefix_cache`).

A state built with spare slots (``stack(..., room=n)``) is extended in place: the new keys/values are written into
the next free slots instead of concatenated onto a copy of everything before them (a decoding pass of a few
tokens would otherwise copy the whole cache). The buffers pass to the extended state; the state extended keeps
valid keys/values but no room, so extending it again (a second continuation) concatenates as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rewards.guards.workspace import Empty, new_empty


@dataclass
class KVRows:
    """Per-layer keys/values ``[rows, kv_heads, slots, head_dim]``, a ``[rows, slots]`` mask, next positions."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor
    # per-layer key and value buffers with spare slots after the first ``slots`` (``keys``/``values`` view them)
    buffers: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def slots(self) -> int:
        return self.mask.shape[1]

    @property
    def room(self) -> int:
        """Spare slots after the used ones (0 without buffers)."""
        return self.buffers[0][0].shape[2] - self.slots if self.buffers else 0

    def select(self, index: torch.Tensor | Sequence[int], empty: Empty = new_empty) -> KVRows:
        """The given rows (repeats allowed), as new tensors (with the same room) made by ``empty``: the source can
        be reused afterwards."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        mask, next_pos = self.mask.index_select(0, index), self.next_pos.index_select(0, index)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return torch.index_select(t, 0, index, out=empty((len(index), *t.shape[1:]), t))

        if self.buffers is None:
            return KVRows([pick(k) for k in self.keys], [pick(v) for v in self.values], mask, next_pos)
        buffers = tuple([pick(b) for b in part] for part in self.buffers)
        return KVRows(*_views(buffers, self.slots), mask, next_pos, buffers)

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys/values followed by ``key``/``value`` ``[rows, kv_heads, new, head_dim]``.

        Written into the spare slots when there are enough (the result views the buffers), else concatenated. The
        state itself is unchanged (its views end where they ended); see `handed_on` for the extended state's room.
        """
        used, end = self.keys[layer].shape[2], self.keys[layer].shape[2] + key.shape[2]
        if self.buffers is None or end > self.buffers[0][layer].shape[2]:
            return torch.cat([self.keys[layer], key], 2), torch.cat([self.values[layer], value], 2)
        kb, vb = self.buffers[0][layer], self.buffers[1][layer]
        kb[:, :, used:end] = key
        vb[:, :, used:end] = value
        return kb[:, :, :end], vb[:, :, :end]

    def handed_on(self, keys: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The buffers, for a state whose ``keys`` were all written into them (then this state gives them up)."""
        buffers = self.buffers
        if buffers is None or any(k.data_ptr() != b.data_ptr() for k, b in zip(keys, buffers[0], strict=True)):
            return None
        self.buffers = None  # a second continuation of this state must not write over the first one's slots
        return buffers

    def drop_last_slots(self, row: int, count: int) -> None:
        """Mask the last ``count`` visible slots of ``row`` (rejected draft tokens), move its next position back."""
        if count > 0:
            visible = self.mask[row].nonzero().flatten()  # padding may follow them (a right-padded chunk)
            self.mask[row, visible[-count:]] = 0
            self.next_pos[row] -= count

    def cache(self, config: Any) -> DynamicCache:
        """A `DynamicCache` over these tensors: updates go through `append` (spare slots, else concatenation)."""
        cache = DynamicCache(config=config)
        if len(cache.layers) == len(self.keys) and all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [_RowsLayer(self, i) for i in range(len(self.keys))]
            return cache
        return DynamicCache(ddp_cache_data=list(zip(self.keys, self.values, strict=True)), config=config)


class _RowsLayer(DynamicLayer):
    """A cache layer over one layer of a `KVRows` state, updated through `KVRows.append`."""

    def __init__(self, state: KVRows, layer: int):
        super().__init__()
        self.state, self.layer = state, layer
        self.lazy_initialization(state.keys[layer], state.values[layer])
        self.keys, self.values = state.keys[layer], state.values[layer]  # no copy

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.keys, self.values = self.state.append(self.layer, key_states, value_states)
        return self.keys, self.values


def chunk_positions(state: KVRows | None, chunk_mask: torch.Tensor) -> torch.Tensor:
    """The rotary position of each column of a chunk ``[rows, chunk]`` run on top of ``state``: each row goes on
    from its state's next position (padding gets any valid position).

    Example:
        >>> chunk_positions(None, torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
        [[0, 0, 1], [0, 1, 2]]
    """
    start = state.next_pos if state is not None else chunk_mask.new_zeros(chunk_mask.shape[0])
    return (start[:, None] + chunk_mask.cumsum(1) - 1).clamp(min=0)


def extended(
    state: KVRows | None, chunk_mask: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]
) -> KVRows:
    """The state after a chunk ``[rows, chunk]`` ran on top of ``state``; ``keys``/``values``: every layer's, the
    chunk's included. It takes the buffers over where the chunk was written into them (`KVRows.handed_on`)."""
    if state is None:
        return KVRows(keys, values, chunk_mask, chunk_mask.sum(1))
    mask = torch.cat([state.mask, chunk_mask], 1)
    return KVRows(keys, values, mask, state.next_pos + chunk_mask.sum(1), state.handed_on(keys))


def _views(
    buffers: tuple[list[torch.Tensor], list[torch.Tensor]], slots: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [b[:, :, :slots] for b in buffers[0]], [b[:, :, :slots] for b in buffers[1]]


def _pick(src: torch.Tensor, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``src[index[r], :, source[r, j]]`` as ``[rows, kv_heads, slots, head_dim]``: whole head vectors copied by
    one ``index_select`` where ``src`` is contiguous (a gather per element is several times slower on the CPU)."""
    rows, slots = source.shape
    _, heads, width, dim = src.shape
    if not src.is_contiguous():
        return src.index_select(0, index).gather(2, source[:, None, :, None].expand(-1, heads, -1, dim))
    head = torch.arange(heads, device=src.device)
    flat = (index[:, None, None] * heads + head[None, :, None]) * width + source[:, None, :]
    return src.view(-1, dim).index_select(0, flat.flatten()).view(rows, heads, slots, dim)


def stack(parts: Sequence[tuple[KVRows, Sequence[int]]], *, room: int = 0, empty: Empty = new_empty) -> KVRows:
    """Rows taken from several states (``(state, row indices)`` pairs): each row's visible slots, in order and
    aligned on the last slot, with its masked ones (padding of the states it came from) left out; one copy.

    The order of cached slots matters to nothing but the mask (their positions are in the keys already), so a row
    may lose its gaps: attention then spends no work on them. The slots before a shorter row's own hold copies of
    its keys (masked, and finite, as a masked slot must be: its score is -inf only if the key is finite). ``room``:
    spare slots after them, for the passes that extend the result (see the module docstring). ``empty`` makes the
    key/value buffers.

    Example:
        >>> state = KVRows([torch.arange(4.0).view(1, 1, 4, 1)], [torch.zeros(1, 1, 4, 1)],
        ...     mask=torch.tensor([[1, 0, 1, 1]]), next_pos=torch.tensor([3]))
        >>> short = KVRows([torch.ones(1, 1, 1, 1)], [torch.ones(1, 1, 1, 1)], torch.tensor([[1]]), torch.tensor([1]))
        >>> both = stack([(state, [0]), (short, [0])])
        >>> both.mask.tolist(), both.keys[0].flatten(1)[both.mask.bool()].tolist(), both.next_pos.tolist()
        ([[1, 1, 1], [0, 0, 1]], [0.0, 2.0, 3.0, 1.0], [3, 1])
    """
    picked = []
    for state, index in parts:
        index = torch.as_tensor(index, dtype=torch.long, device=state.mask.device)
        visible = state.mask.index_select(0, index).bool()
        picked.append((state, index, visible, visible.sum(1)))
    slots = max(int(counts.max()) for *_, counts in picked)
    rows = sum(len(index) for _, index, _, _ in picked)
    first = parts[0][0]
    buffers = (
        [empty((rows, k.shape[1], slots + room, k.shape[3]), k) for k in first.keys],
        [empty((rows, v.shape[1], slots + room, v.shape[3]), v) for v in first.values],
    )
    mask = first.mask.new_empty(rows, slots)
    next_pos = first.next_pos.new_empty(rows)
    columns = torch.arange(slots, device=first.mask.device)
    row = 0
    for state, index, visible, counts in picked:
        span, width = slice(row, row + len(index)), visible.shape[1]
        # each row's visible slots in order, then its masked ones; slot j of the result takes the (j - gap)-th
        order = (torch.arange(width, device=visible.device) + (~visible) * width).argsort(1)
        gap = slots - counts
        source = order.gather(1, (columns[None] - gap[:, None]).clamp(min=0))
        for out, src in zip(buffers[0] + buffers[1], state.keys + state.values, strict=True):
            out[span, :, :slots] = _pick(src, index, source)
        mask[span] = (columns[None] >= gap[:, None]).to(mask.dtype)
        next_pos[span] = state.next_pos.index_select(0, index)
        row += len(index)
    return KVRows(*_views(buffers, slots), mask, next_pos, buffers if room else None)
