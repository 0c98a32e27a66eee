"""Token rows into batches: left padding, length-sorted batches, common prefixes. Shared by both engines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask): ``[rows, longest]`` long tensors, each row right-aligned (decoder-only inputs).

    Example:
        >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    return pad(rows, pad_id, device, left=True)


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None, *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with the padding on the left or on the right (`torch`'s ``pad_sequence``).

    Example:
        >>> ids, mask = pad([[5, 6], [7]], pad_id=0, left=False)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    side = "left" if left else "right"
    tensors = [torch.as_tensor(list(row), dtype=torch.long) for row in rows]
    ids = pad_sequence(tensors, batch_first=True, padding_value=pad_id, padding_side=side)
    ones = [torch.ones(len(t), dtype=torch.long) for t in tensors]
    mask = pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


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
        if batches:
            batch = batches[-1]
            padded = (len(batch) + 1) * lengths[batch[0]]
            fits = len(batch) < max_rows and padded <= max_tokens
            if fits and (len(batch) < min_rows or padded <= (1 + max_waste) * (real + lengths[i])):
                batch.append(i)
                real += lengths[i]
                continue
        batches.append([i])
        real = lengths[i]
    return batches
