"""`RowsKV`: the keys/values of a batch of token rows built from shared prefixes, extended pass by pass.

Rows built from different prefixes are stacked into one batch (`gather_rows`): slots may hold padding anywhere
(between a prefix and what follows, or where a draft token was rejected), a slot mask hides it, and each row's next
rotary position is kept apart from its slot count (`chunk_positions`), so every row sees exactly what a forward pass
over its own tokens alone would see.

A cache built with spare slots (``gather_rows(..., room=n)``) is extended in place: a pass writes its new keys/values
into the next free slots instead of concatenating them onto a copy of everything before (a decoding pass of a few
tokens would otherwise copy the whole cache). The extended cache takes the buffers over (`RowsKV.extended`); the one
it came from keeps valid keys/values but no room, so extending it a second time concatenates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Buffers = tuple[list[torch.Tensor], list[torch.Tensor]]  # per-layer key and value buffers


@dataclass
class RowsKV:
    """Per-layer keys/values ``[rows, kv_heads, slots, head_dim]``, a ``[rows, slots]`` slot mask (1: a token the
    row attends to) and each row's next rotary position.

    ``buffers``: per-layer key and value buffers with spare slots after the first ``slots`` (``keys``/``values``
    are views of them), or None.

    Example:
        >>> kv = RowsKV([torch.zeros(1, 1, 2, 4)], [torch.zeros(1, 1, 2, 4)], torch.tensor([[0, 1]]), torch.tensor([1]))
        >>> kv.rows, kv.slots, kv.room
        (1, 2, 0)
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    next_pos: torch.Tensor
    buffers: Buffers | None = None

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def slots(self) -> int:
        return int(self.mask.shape[1])

    @property
    def room(self) -> int:
        """Spare slots after the used ones (0 without buffers)."""
        return int(self.buffers[0][0].shape[2]) - self.slots if self.buffers else 0

    def select(self, index: torch.Tensor | Sequence[int]) -> RowsKV:
        """The given rows (repeats allowed) as new tensors, with the same room.

        Example:
            >>> kv = RowsKV([torch.arange(2.0).view(2, 1, 1, 1)], [torch.zeros(2, 1, 1, 1)],
            ...     torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 1]))
            >>> kv.select([1, 1]).keys[0].flatten().tolist()
            [1.0, 1.0]
        """
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        mask, next_pos = self.mask.index_select(0, index), self.next_pos.index_select(0, index)
        if self.buffers is None:
            keys = [k.index_select(0, index) for k in self.keys]
            return RowsKV(keys, [v.index_select(0, index) for v in self.values], mask, next_pos)
        buffers = (
            [b.index_select(0, index) for b in self.buffers[0]],
            [b.index_select(0, index) for b in self.buffers[1]],
        )
        return RowsKV(*_views(buffers, self.slots), mask, next_pos, buffers)

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys/values followed by ``key``/``value`` ``[rows, kv_heads, new, head_dim]``.

        Written into the spare slots when there are enough (the result views the buffers), else concatenated. This
        cache is unchanged (its views end where they ended); `extended` makes the cache that holds the new slots.
        """
        used, end = self.keys[layer].shape[2], self.keys[layer].shape[2] + key.shape[2]
        if self.buffers is None or end > self.buffers[0][layer].shape[2]:
            return torch.cat([self.keys[layer], key], 2), torch.cat([self.values[layer], value], 2)
        kb, vb = self.buffers[0][layer], self.buffers[1][layer]
        kb[:, :, used:end] = key
        vb[:, :, used:end] = value
        return kb[:, :, :end], vb[:, :, :end]

    def extended(self, chunk_mask: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> RowsKV:
        """The cache after a chunk ``[rows, chunk]`` ran on top of this one; ``keys``/``values``: every layer's, the
        chunk's included (what `append` returned). Where they were written into this cache's buffers, the new cache
        owns the buffers from now on: a second continuation of this cache must not write over the first one's slots.
        """
        mask = torch.cat([self.mask, chunk_mask], 1)
        buffers = self.buffers
        if buffers is not None and all(k.data_ptr() == b.data_ptr() for k, b in zip(keys, buffers[0], strict=True)):
            self.buffers = None
        else:
            buffers = None
        return RowsKV(keys, values, mask, self.next_pos + chunk_mask.sum(1), buffers)

    def drop_last_slots(self, row: int, count: int) -> None:
        """Mask the last ``count`` visible slots of ``row`` (rejected draft tokens), move its next position back.

        Example:
            >>> kv = RowsKV([torch.zeros(1, 1, 3, 1)], [torch.zeros(1, 1, 3, 1)], torch.ones(1, 3, dtype=torch.long),
            ...     torch.tensor([3]))
            >>> kv.drop_last_slots(0, 2)
            >>> kv.mask.tolist(), kv.next_pos.tolist()
            ([[1, 0, 0]], [1])
        """
        if count > 0:
            visible = self.mask[row].nonzero().flatten()  # padding may follow them (a right-padded chunk)
            self.mask[row, visible[-count:]] = 0
            self.next_pos[row] -= count


def new_rows(chunk_mask: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> RowsKV:
    """The cache of a first chunk ``[rows, chunk]`` (no prefix).

    Example:
        >>> new_rows(torch.tensor([[0, 1]]), [torch.zeros(1, 1, 2, 1)], [torch.zeros(1, 1, 2, 1)]).next_pos.tolist()
        [1]
    """
    return RowsKV(keys, values, chunk_mask, chunk_mask.sum(1))


def chunk_positions(cache: RowsKV | None, chunk_mask: torch.Tensor) -> torch.Tensor:
    """The rotary position of each column of a chunk ``[rows, chunk]`` run on top of ``cache``: each row goes on
    from its next position (padding gets any valid position).

    Example:
        >>> chunk_positions(None, torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist()
        [[0, 0, 1], [0, 1, 2]]
    """
    start = cache.next_pos if cache is not None else chunk_mask.new_zeros(chunk_mask.shape[0])
    return (start[:, None] + chunk_mask.cumsum(1) - 1).clamp(min=0)


def _views(buffers: Buffers, slots: int) -> Buffers:
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


def gather_rows(parts: Sequence[tuple[RowsKV, Sequence[int]]], *, room: int = 0) -> RowsKV:
    """Rows taken from several caches (``(cache, row indices)`` pairs) into one: each row's visible slots, in order
    and aligned on the last slot, its masked ones (padding of the cache it came from) left out; one copy.

    The order of cached slots matters to nothing but the mask (their positions are in the keys already), so a row
    may lose its gaps: attention then spends no work on them. The slots before a shorter row's own hold copies of
    its keys (masked, and finite, as a masked slot must be: its score is -inf only if the key is finite). ``room``:
    spare slots after them, for the passes that extend the result.

    Example:
        >>> kv = RowsKV([torch.arange(4.0).view(1, 1, 4, 1)], [torch.zeros(1, 1, 4, 1)],
        ...     mask=torch.tensor([[1, 0, 1, 1]]), next_pos=torch.tensor([3]))
        >>> short = RowsKV([torch.ones(1, 1, 1, 1)], [torch.ones(1, 1, 1, 1)], torch.tensor([[1]]), torch.tensor([1]))
        >>> both = gather_rows([(kv, [0]), (short, [0])])
        >>> both.mask.tolist(), both.keys[0].flatten(1)[both.mask.bool()].tolist(), both.next_pos.tolist()
        ([[1, 1, 1], [0, 0, 1]], [0.0, 2.0, 3.0, 1.0], [3, 1])
    """
    picked = []
    for cache, index in parts:
        index_t = torch.as_tensor(index, dtype=torch.long, device=cache.mask.device)
        visible = cache.mask.index_select(0, index_t).bool()
        picked.append((cache, index_t, visible, visible.sum(1)))
    slots = max(int(counts.max()) for *_, counts in picked)
    rows = sum(len(index) for _, index, _, _ in picked)
    first = parts[0][0]
    buffers = (
        [k.new_empty((rows, k.shape[1], slots + room, k.shape[3])) for k in first.keys],
        [v.new_empty((rows, v.shape[1], slots + room, v.shape[3])) for v in first.values],
    )
    mask = first.mask.new_empty(rows, slots)
    next_pos = first.next_pos.new_empty(rows)
    columns = torch.arange(slots, device=first.mask.device)
    row = 0
    for cache, index_t, visible, counts in picked:
        span, width = slice(row, row + len(index_t)), visible.shape[1]
        # each row's visible slots in order, then its masked ones; slot j of the result takes the (j - gap)-th
        order = (torch.arange(width, device=visible.device) + (~visible) * width).argsort(1)
        gap = slots - counts
        source = order.gather(1, (columns[None] - gap[:, None]).clamp(min=0))
        for out, src in zip(buffers[0] + buffers[1], cache.keys + cache.values, strict=True):
            out[span, :, :slots] = _pick(src, index_t, source)
        mask[span] = (columns[None] >= gap[:, None]).to(mask.dtype)
        next_pos[span] = cache.next_pos.index_select(0, index_t)
        row += len(index_t)
    return RowsKV(*_views(buffers, slots), mask, next_pos, buffers if room else None)
