"""Attention for `RowsKV` batches: no key/value head copies, and on the CPU the causal work skipped.

A batch that `rewards.engine.rows.qwen3_forward` runs has a known layout: every row holds a prefix of cached slots
(any of them may be padding) and a chunk of new tokens. Stock transformers turns that into one boolean
``[rows, 1, chunk, slots]`` mask and, with a mask, first copies the key/value heads up to the query heads
(``repeat_kv``: four copies of every cached key and value per layer and pass for the 4B guard's 32/8 heads). Here:

* on the CPU, short chunks (decoding passes of a few tokens, padded on the left) take one masked SDPA call with
  grouped-query heads as they are (``enable_gqa``: PyTorch's CPU flash kernel). Long chunks (the first pass over
  the inputs), padded on the right, attend to the prefix (mask, no causality), then to themselves with
  ``is_causal`` (the kernel skips the blocks above the diagonal, which a mask would stop it from doing; a top-left
  causal mask is each right-padded row's own), merged with the two log-sum-exps: softmax over the union of the
  keys, rounding aside. The log-sum-exps come only from torch's private CPU flash operator (`FLASH_CPU`); without
  it long chunks take one masked call too;
* elsewhere (GPUs) one masked call per batch through PyTorch's SDPA, the query heads of each key/value head
  stacked along the query axis (`grouped`): the same products as per-head attention, and the cache read as it is.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SPLIT_MIN = 64  # a chunk this long is split into prefix + per-row causal parts; shorter ones take one masked call
# torch's CPU flash operator, which returns the log-sum-exps the split needs (private: None where a release drops it)
FLASH_CPU: Any = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# The CPU attention of this module where the tensors live on the CPU. The tests set it False to run, on the CPU, the
# `grouped` SDPA path that GPUs take.
CPU_KERNEL = True
# The SDPA kernels `grouped` may use on a GPU (None: PyTorch's choice). Left to itself PyTorch picks cuDNN's
# attention on Hopper, which builds an execution plan for every new shape; a guard step's batches and passes all
# have new shapes (every step brings new inputs), see docs/benchmarks.md. The memory-efficient kernel takes any
# shape and an additive mask as it is.
GPU_KERNELS: list[SDPBackend] | None = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def cpu_kernel(device: torch.device) -> bool:
    """Whether attention on ``device`` takes the CPU path (masked calls with grouped-query heads), else `grouped`.

    Example:
        >>> cpu_kernel(torch.device("cpu")), cpu_kernel(torch.device("cuda"))
        (True, False)
    """
    return CPU_KERNEL and device.type == "cpu"


def split_long_chunks(device: torch.device) -> bool:
    """Whether long chunks on ``device`` attend to their prefix and to themselves apart (`FLASH_CPU`).

    Example:
        >>> split_long_chunks(torch.device("cuda"))
        False
    """
    return cpu_kernel(device) and FLASH_CPU is not None


@dataclass
class AttentionLayout:
    """What a pass over a `RowsKV` cache + a chunk of new tokens attends to (its attention mask, in parts)."""

    prefix: int  # cached slots before the chunk
    prefix_bias: torch.Tensor | None  # [rows, 1, 1, prefix], 0 where a slot is visible, -inf where not
    prefix_rows: list[bool]  # rows with at least one visible prefix slot
    full_bias: torch.Tensor | None  # [rows, 1, chunk, prefix + chunk] for one masked call, else None (split)
    _grouped: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def grouped_bias(self, groups: int) -> torch.Tensor:
        """`full_bias` repeated for ``groups`` query heads stacked per key/value head (made once per pass)."""
        assert self.full_bias is not None, "a split layout has no single mask"
        if groups not in self._grouped:
            self._grouped[groups] = self.full_bias.repeat(1, 1, groups, 1) if groups > 1 else self.full_bias
        return self._grouped[groups]

    def query_bias(self, index: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask ``[rows, 1, keep, prefix + chunk]`` of the chunk columns ``index`` ``[rows, keep]``."""
        rows, keep = index.shape
        if self.full_bias is not None:
            return self.full_bias.gather(2, index[:, None, :, None].expand(rows, 1, keep, self.full_bias.shape[-1]))
        # a right-padded long chunk: a query sees the chunk up to itself (padding only ever follows it)
        columns = torch.arange(width, device=index.device)
        chunk = additive(columns[None, None, None, :] <= index[:, None, :, None], dtype)
        if not self.prefix or self.prefix_bias is None:
            return chunk
        return torch.cat([self.prefix_bias.expand(rows, 1, keep, self.prefix), chunk], 3)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is true, -inf elsewhere.

    Example:
        >>> additive(torch.tensor([True, False]), torch.float32)
        tensor([0., -inf])
    """
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def layout(state_mask: torch.Tensor | None, chunk_mask: torch.Tensor, dtype: torch.dtype) -> AttentionLayout:
    """The layout of one pass: ``state_mask`` ``[rows, prefix]`` (or None), ``chunk_mask`` ``[rows, chunk]``.

    A chunk of at least `SPLIT_MIN` columns must be right-padded, a shorter one left-padded (`long_chunk`); the
    split layout (no ``full_bias``) is for long chunks on the CPU (`split_long_chunks`), every other pass gets one
    mask.

    Example:
        >>> lay = layout(torch.tensor([[1, 0]]), torch.tensor([[0, 1, 1]]), torch.float32)  # short: one masked call
        >>> lay.full_bias.isfinite()[0, 0].int().tolist()  # chunk query x key (2 prefix slots, then the chunk)
        [[1, 0, 1, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 1]]

    (The padding query in front also sees itself, so that no query is left without a key.)
    """
    rows, width = chunk_mask.shape
    prefix = 0 if state_mask is None else state_mask.shape[1]
    visible = state_mask.bool() if state_mask is not None else chunk_mask.new_zeros(rows, 0, dtype=torch.bool)
    if long_chunk(width) and split_long_chunks(chunk_mask.device):
        return AttentionLayout(
            prefix=prefix,
            prefix_bias=additive(visible[:, None, None, :], dtype) if prefix else None,
            prefix_rows=visible.any(1).tolist(),
            full_bias=None,
        )
    causal = torch.ones(width, width, dtype=torch.bool, device=chunk_mask.device).tril()
    # a padding query also sees itself: no query is left with no key at all (whose softmax would be NaN)
    chunk = causal[None] & (chunk_mask.bool()[:, None, :] | torch.eye(width, dtype=torch.bool, device=causal.device))
    full = torch.cat([visible[:, None, :].expand(rows, width, prefix), chunk], 2)
    return AttentionLayout(prefix=prefix, prefix_bias=None, prefix_rows=[], full_bias=additive(full[:, None], dtype))


def long_chunk(width: int) -> bool:
    """Whether a chunk this wide is padded on the right (and takes the split path where there is one).

    Example:
        >>> long_chunk(4), long_chunk(SPLIT_MIN)
        (False, True)
    """
    return width >= SPLIT_MIN


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lay: AttentionLayout, scaling: float
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
        if not cpu_kernel(query.device):
            return grouped(query, key, value, lay.grouped_bias(query.shape[1] // key.shape[1]), scaling)
        return masked(query, key, value, lay.full_bias, scaling)
    p0 = lay.prefix
    # right-padded rows: a top-left causal mask is each row's own; padding queries (at the end) are garbage
    own, own_lse, *_ = FLASH_CPU(query, key[:, :, p0:], value[:, :, p0:], 0.0, True, scale=scaling)
    if not p0:
        return own.transpose(1, 2).contiguous()
    out, lse, *_ = FLASH_CPU(
        query, key[:, :, :p0], value[:, :, :p0], 0.0, False, attn_mask=lay.prefix_bias, scale=scaling
    )
    lse = lse.masked_fill(~torch.as_tensor(lay.prefix_rows, device=lse.device)[:, None, None], float("-inf"))
    # softmax over prefix + chunk keys from the two partial softmaxes: weights exp(lse_part - lse_all)
    total = torch.logaddexp(lse, own_lse)
    out = out * (lse - total).exp_()[..., None] + own * (own_lse - total).exp_()[..., None]
    return out.to(query.dtype).transpose(1, 2).contiguous()


def masked(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention of ``query`` over ``key``/``value`` (as in `attend`) under the additive mask ``bias``
    ``[rows, 1, chunk, slots]``: ``[rows, chunk, heads, head_dim]``, contiguous.

    Example (against SDPA over copied key/value heads):
        >>> _ = torch.manual_seed(0)
        >>> query, key, value = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
        >>> bias = additive(torch.tensor([True, True, False, True, True]).expand(1, 1, 3, 5), torch.float32)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(
        ...     query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), bias, scale=8**-0.5)
        >>> torch.allclose(masked(query, key, value, bias, 8**-0.5), ref.transpose(1, 2), atol=1e-6)
        True
    """
    if cpu_kernel(query.device):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous()
    groups = query.shape[1] // key.shape[1]
    return grouped(query, key, value, bias.repeat(1, 1, groups, 1) if groups > 1 else bias, scaling)


def grouped(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor, scaling: float
) -> torch.Tensor:
    """`masked` through SDPA with the query heads of each key/value head stacked along the query axis.

    Query head h reads key/value head ``h // groups`` (transformers' ``repeat_kv`` order), so the ``groups`` heads of
    one key/value head become ``groups * chunk`` queries of one head: no copy of the cache, which on a GPU is the
    large operand (SDPA's own grouped-query support takes no mask on the kernels that take one). ``bias`` is the
    mask repeated ``groups`` times along its query axis, ``[rows, 1, groups * chunk, slots]`` (made once per pass
    and shared by the layers: ``groups`` x rows x chunk x slots x 2 bytes in bf16).

    Example (against per-head attention over copied key/value heads):
        >>> _ = torch.manual_seed(0)
        >>> query, key, value = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
        >>> bias = additive(torch.rand(2, 1, 3, 5) > 0.3, torch.float32).clamp(min=-1e4)  # finite: no empty row
        >>> out = grouped(query, key, value, bias.repeat(1, 1, 2, 1), 8**-0.5)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(
        ...     query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1), bias, scale=8**-0.5)
        >>> torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
        True
    """
    rows, heads, width, dim = query.shape
    kv = key.shape[1]
    stacked = query.reshape(rows, kv, heads // kv * width, dim)
    with sdpa_kernel(GPU_KERNELS) if GPU_KERNELS and query.device.type != "cpu" else nullcontext():
        out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=bias, scale=scaling)
    return out.view(rows, kv, heads // kv, width, dim).permute(0, 3, 1, 2, 4).reshape(rows, width, heads, dim)
