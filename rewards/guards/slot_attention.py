"""CPU attention for `KVRows` batches: causal work skipped, no key/value head copies.

A batch that `rewards.guards.cpu_forward` runs has a known layout: every row holds a prefix of cached slots (any of
them may be padding) and a chunk of new tokens. Stock transformers turns that into one boolean
``[rows, 1, chunk, slots]`` mask; torch's CPU flash kernel then computes every query against every key (a mask
stops it from skipping the causal upper triangle) and, with a mask, transformers first copies the key/value heads
up to the query heads (``repeat_kv``). Here, with the same kernel:

* long chunks (the first pass over the inputs), padded on the right: the queries against the prefix (mask, no
  causality), then the chunk against itself with ``is_causal`` (the kernel skips the blocks above the diagonal; a
  top-left causal mask is each right-padded row's own), merged with the two log-sum-exps: softmax over the union
  of the keys, rounding aside;
* short chunks (decoding passes of a few tokens), padded on the left: one call with an additive mask;
* key/value heads passed as they are (the kernel handles grouped-query attention itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SPLIT_MIN = 64  # a chunk this long is split into prefix + per-row causal parts; shorter ones take one masked call
flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@dataclass
class RowsLayout:
    """What a forward pass over a `KVRows` state + left-padded chunk attends to (passed as its attention mask)."""

    prefix: int  # cached slots before the chunk
    prefix_bias: torch.Tensor | None  # [rows, 1, 1, prefix], 0 where a slot is visible, -inf where not
    prefix_rows: list[bool]  # rows with at least one visible prefix slot
    full_bias: torch.Tensor | None  # [rows, 1, chunk, prefix + chunk] for short chunks (one call), else None

    def query_bias(self, index: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask ``[rows, 1, keep, prefix + chunk]`` of the chunk columns ``index`` ``[rows, keep]``."""
        rows, keep = index.shape
        if self.full_bias is not None:
            return self.full_bias.gather(2, index[:, None, :, None].expand(rows, 1, keep, self.full_bias.shape[-1]))
        # a right-padded long chunk: a query sees the chunk up to itself (padding only ever follows it)
        columns = torch.arange(width, device=index.device)
        chunk = additive(columns[None, None, None, :] <= index[:, None, :, None], dtype)
        if not self.prefix:
            return chunk
        return torch.cat([self.prefix_bias.expand(rows, 1, keep, self.prefix), chunk], 3)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is true, -inf elsewhere.

    Example:
        >>> additive(torch.tensor([True, False]), torch.float32)
        tensor([0., -inf])
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def layout(state_mask: torch.Tensor | None, chunk_mask: torch.Tensor, dtype: torch.dtype) -> RowsLayout:
    """The layout of one pass: ``state_mask`` ``[rows, prefix]`` (or None), ``chunk_mask`` ``[rows, chunk]``.

    A chunk of at least `SPLIT_MIN` columns must be right-padded, a shorter one left-padded (`long_chunk`).

    Example:
        >>> lay = layout(torch.tensor([[1, 0]]), torch.tensor([[0, 1, 1]]), torch.float32)  # short: one masked call
        >>> lay.full_bias.isfinite()[0, 0].int().tolist()  # chunk query x key (2 prefix slots, then the chunk)
        [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 1]]
    """
    rows, width = chunk_mask.shape
    prefix = 0 if state_mask is None else state_mask.shape[1]
    visible = state_mask.bool() if state_mask is not None else chunk_mask.new_zeros(rows, 0, dtype=torch.bool)
    if long_chunk(width):
        return RowsLayout(
            prefix=prefix,
            prefix_bias=additive(visible[:, None, None, :], dtype) if prefix else None,
            prefix_rows=visible.any(1).tolist(),
            full_bias=None,
        )
    causal = torch.ones(width, width, dtype=torch.bool, device=chunk_mask.device).tril()
    chunk = causal[None] & chunk_mask.bool()[:, None, :]
    full = torch.cat([visible[:, None, :].expand(rows, width, prefix), chunk], 2)
    return RowsLayout(prefix=prefix, prefix_bias=None, prefix_rows=[], full_bias=additive(full[:, None], dtype))


def long_chunk(width: int) -> bool:
    """Whether a chunk this wide takes the split path (and is therefore padded on the right).

    Example:
        >>> long_chunk(4), long_chunk(SPLIT_MIN)
        (False, True)
    """
    return width >= SPLIT_MIN


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lay: RowsLayout, scaling: float
) -> torch.Tensor:
    """Attention of ``query`` ``[rows, heads, chunk, head_dim]`` over ``key``/``value`` ``[rows, kv_heads, slots,
    head_dim]`` (prefix + chunk) in layout ``lay``: ``[rows, chunk, heads, head_dim]``, contiguous.

    Example (a long chunk, split into prefix and causal parts, against one masked SDPA call):
        >>> _ = torch.manual_seed(0)
        >>> width = SPLIT_MIN
        >>> lay = layout(torch.tensor([[1, 0]]), torch.tensor([[1] * (width - 2) + [0, 0]]), torch.float32)
        >>> query, (key, value) = torch.randn(1, 4, width, 8), torch.randn(2, 1, 2, 2 + width, 8)  # 2 kv heads
        >>> out = attend(query, key, value, lay, scaling=8**-0.5)
        >>> mask = lay.query_bias(torch.arange(width)[None], width, torch.float32)  # the same visibility, one mask
        >>> ref = torch.nn.functional.scaled_dot_product_attention(query, key, value, mask, enable_gqa=True)
        >>> torch.allclose(out[:, :-2], ref.transpose(1, 2)[:, :-2], atol=1e-5)  # the padding queries are unused
        True
    """
    if lay.full_bias is not None:
        out, *_ = flash_cpu(query, key, value, 0.0, False, attn_mask=lay.full_bias, scale=scaling)
        return out.transpose(1, 2).contiguous()
    p0 = lay.prefix
    # right-padded rows: a top-left causal mask is each row's own; padding queries (at the end) are garbage
    own, own_lse, *_ = flash_cpu(query, key[:, :, p0:], value[:, :, p0:], 0.0, True, scale=scaling)
    if not p0:
        return own.transpose(1, 2).contiguous()
    out, lse, *_ = flash_cpu(
        query, key[:, :, :p0], value[:, :, :p0], 0.0, False, attn_mask=lay.prefix_bias, scale=scaling
    )
    lse = lse.masked_fill(~torch.as_tensor(lay.prefix_rows, device=lse.device)[:, None, None], float("-inf"))
    # softmax over prefix + chunk keys from the two partial softmaxes: weights exp(lse_part - lse_all)
    total = torch.logaddexp(lse, own_lse)
    out = out * (lse - total).exp_()[..., None] + own * (own_lse - total).exp_()[..., None]
    return out.to(query.dtype).transpose(1, 2).contiguous()


def supports(model: Any) -> bool:
    """Whether this attention applies: a Qwen3 model on the CPU, with SDPA and full attention in every layer.

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> config = Qwen3Config(
        ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...     num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        ... )
        >>> model = Qwen3ForCausalLM(config)
        >>> supports(model), supports(model.to(torch.float16))
        (True, False)
    """
    config = model.config
    return (
        model.device.type == "cpu"
        and config.model_type == "qwen3"
        and config._attn_implementation == "sdpa"
        and all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))
        and model.dtype in (torch.float32, torch.bfloat16)
    )
