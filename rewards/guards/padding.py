"""Left padding of token rows, as decoder-only models read them (one helper for every in-process batch)."""

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
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
