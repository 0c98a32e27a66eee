"""Key/value states that rows share: compute a common prefix once, copy it into every row that starts with it.

Every guard input starts with the same instruction text (the chat template before the first content), and in a
GRPO step the thinking and the answers of one prompt's rollouts also share the prompt. Their keys/values are
computed once and stacked into the rows that start with them (`rewards.guards.kv_rows`: slots may hold padding
anywhere, a mask hides it and explicit position ids keep each row's rotary positions those of its unpadded
sequence); `extend` runs each row's remaining tokens on top. The result equals a plain forward pass over each row
alone up to float rounding (the tests check it).

The slots, not the positions, order the cache: transformers builds the causal mask from the cache length and the
2-D padding mask, and uses ``position_ids`` only for the rotary embedding. A Qwen3 model with SDPA runs our own
forward pass instead (`rewards.guards.rows_forward`: the same arithmetic with less work around it).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from transformers import DynamicCache

from rewards.guards import last_layer, rows_forward
from rewards.guards.kv_rows import KVRows, chunk_positions, extended
from rewards.guards.lm_head import head_logits
from rewards.guards.padding import left_pad


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
    caller to put through the LM head (`rewards.guards.lm_head.head_logits`) together with other batches'.
    A Qwen3 model with SDPA runs `rewards.guards.rows_forward`; any other model transformers' forward pass.
    """
    if rows_forward.supports(model):
        (new,), (out,) = rows_forward.extend_batches(model, [state], [rows], [keep], pad_id=pad_id)
        return new, out if hidden else head_logits(model, out.flatten(0, 1)).unflatten(0, out.shape[:2])
    device = model.device
    ids, chunk_mask = left_pad(rows, pad_id, device)
    mask = chunk_mask if state is None else torch.cat([state.mask, chunk_mask], 1)
    cache = state.cache(model.config) if state is not None else DynamicCache(config=model.config)
    width = ids.shape[1]
    index = torch.arange(width - keep, width, device=device).clamp(min=0).expand(len(rows), keep)
    tail = last_layer.supports(model)
    if hidden and not tail:
        raise ValueError("hidden=True needs a model that rewards.guards.last_layer supports")
    with last_layer.last_positions(model, index) if tail else nullcontext():
        out = (model.get_decoder() if hidden else model)(
            input_ids=ids,
            attention_mask=mask,
            position_ids=chunk_positions(state, chunk_mask),
            past_key_values=cache,
            use_cache=True,
            **({} if hidden else {"logits_to_keep": keep if tail else max(keep, 1)}),  # 0: every column to HF
        )
    layers = out.past_key_values.layers
    new = extended(state, chunk_mask, [layer.keys for layer in layers], [layer.values for layer in layers])
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
