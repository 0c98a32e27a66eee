"""Padding of token rows into one batch (one helper for every in-process batch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), ``[rows, longest]`` long tensors with each row right-aligned.

    Example:
        >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    return pad(rows, pad_id, device, left=True)


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None, *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with the padding on the left (decoder-only generation) or on the right.

    Example:
        >>> ids, mask = pad([[5, 6], [7]], pad_id=0, left=False)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.as_tensor(row, dtype=torch.long)
            mask[i, span] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
