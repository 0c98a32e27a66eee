"""A Qwen3 forward pass over `KVRows` batches: the guard's passes without transformers' generic path.

`rewards.guards.prefix_cache.extend` runs here where `supports` holds (a Qwen3 model with SDPA, CPU or GPU); it is
the same layer arithmetic with less work around it:

* attention knows the batch layout (`rewards.guards.slot_attention`): key/value heads never copied, and on the CPU
  the causal half of long chunks skipped;
* the last layer computes queries, attention and MLP only at the columns whose scores are read (as
  `rewards.guards.last_layer` does for transformers' own forward);
* new keys/values go into the state's spare slots (`KVRows.append`) instead of a concatenated copy;
* several batches' decoding passes (a handful of new tokens per row each) run as one: their tokens share every
  projection, norm and MLP; only attention runs per batch, on the batch's own state (on a GPU this also divides the
  kernel launches of those passes, which bound them there, by the number of batches);
* element-wise work done with fewer passes over memory: torch's fused RMSNorm kernel, the rotary embedding on
  halves of each head instead of a rotated copy, SiLU and the gate product in place.

The modules and weights are the model's own and every operation is the one Qwen3's decoder layer performs, in the
same order and precision (the RMSNorm kernel gives the same bits in float32 on the inputs checked), so results equal
transformers' forward pass up to float summation order; the tests compare them with plain passes over each row
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rewards.guards import last_layer, slot_attention
from rewards.guards.kv_rows import KVRows, chunk_positions, extended
from rewards.guards.padding import pad
from rewards.guards.slot_attention import RowsLayout, attend, layout, long_chunk, masked

# Per-token work (norms, projections, MLP) runs this many tokens at a time: on the CPU the intermediates stay in
# cache and reuse memory instead of fresh pages (the bench shape's MLP alone over 16k tokens: 12-15% faster, the
# same values; the bench's first-pass batches are mostly 2-4k tokens, where it changes little). On a GPU pieces only
# bound the intermediates' memory; large ones keep its matrix units busy.
PIECE = 2048
PIECE_GPU = 16384


def supports(model: Any) -> bool:
    """Whether this forward pass applies: where both the slot attention and the shortened last layer do, on a
    model whose weights sit on one device (a model split over devices by ``device_map`` runs transformers' forward,
    whose hooks move activations between them).

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16))
        >>> supports(model)
        True
        >>> model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 1, "lm_head": 1}  # as accelerate sets it
        >>> supports(model)
        False
    """
    devices = set((getattr(model, "hf_device_map", None) or {}).values())
    return len(devices) <= 1 and slot_attention.supports(model) and last_layer.supports(model)


def fits(feeds: Sequence[Sequence[Sequence[int]]]) -> bool:
    """Whether every batch's new tokens make a short chunk: batches worth running together in one pass.

    Example:
        >>> fits([[[1, 2, 3]], [[4]]]), fits([[[1] * 64]])
        (True, False)
    """
    return all(not long_chunk(max(len(r) for r in rows)) for rows in feeds)


def _norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """Qwen3RMSNorm: normalised in float32, cast back, times the weight."""
    eps = module.variance_epsilon
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), module.weight, eps)
    return module.weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[tokens, heads, head_dim]``, ``cos``/``sin`` ``[tokens, head_dim]``.

    rotate_half(x) is (-x2, x1) for the halves x1, x2 of each head; the same products and sums, without the copy.
    """
    half = x.shape[-1] // 2
    cos, sin = cos[:, None], sin[:, None]
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]
    return out


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[tokens, heads * head_dim]`` as ``[tokens, heads, head_dim]``."""
    return x.view(x.shape[0], x.shape[1] // head_dim, head_dim)


def _mlp(mlp: Any, x: torch.Tensor) -> torch.Tensor:
    gate = mlp.gate_proj(x)
    return mlp.down_proj(F.silu(gate, inplace=True).mul_(mlp.up_proj(x)))


def _pieces(h: torch.Tensor) -> list[slice]:
    """Token ranges covering the rows of ``h``: `PIECE` tokens at a time on the CPU, `PIECE_GPU` elsewhere."""
    n, piece = len(h), PIECE if h.device.type == "cpu" else PIECE_GPU
    return [slice(s, min(s + piece, n)) for s in range(0, n, piece)]


def _project(
    layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, queries: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys, values (and queries) of hidden states ``h`` ``[tokens, hidden]``, ``[tokens, heads, head_dim]`` each."""
    attn = layer.self_attn
    key = h.new_empty(len(h), attn.config.num_key_value_heads, attn.head_dim)
    value = torch.empty_like(key)
    query = h.new_empty(len(h), attn.config.num_attention_heads, attn.head_dim) if queries else None
    for s in _pieces(h):
        x = _norm(layer.input_layernorm, h[s])
        key[s] = _rotate(_norm(attn.k_norm, _heads(attn.k_proj(x), attn.head_dim)), cos[s], sin[s])
        value[s] = _heads(attn.v_proj(x), attn.head_dim)
        if queries:
            query[s] = _rotate(_norm(attn.q_norm, _heads(attn.q_proj(x), attn.head_dim)), cos[s], sin[s])
    return key, value, query


def _finish(layer: Any, h: torch.Tensor, attended: torch.Tensor) -> None:
    """The rest of the layer, in place on ``h``: output projection and residual, then the MLP and residual."""
    for s in _pieces(h):
        x = h[s] + layer.self_attn.o_proj(attended[s])
        h[s] = x + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, x))


class _Batch:
    """One batch of a pass: its state, padded chunk, positions, layout, and the chunk columns it reads."""

    def __init__(self, state: KVRows | None, rows: Sequence[Sequence[int]], keep: int, pad_id: int, model: Any):
        device = model.device
        self.state = state
        self.right = long_chunk(max(len(r) for r in rows))  # long-chunk attention wants right padding
        self.ids, self.mask = pad(rows, pad_id, device, left=not self.right)
        self.rows, self.width = self.ids.shape
        self.positions = chunk_positions(state, self.mask)
        self.layout: RowsLayout = layout(state.mask if state is not None else None, self.mask, model.dtype)
        self.keep = keep
        if self.right:
            index = self.mask.sum(1, keepdim=True) - keep + torch.arange(keep, device=device)
        else:
            index = torch.arange(self.width - keep, self.width, device=device).expand(self.rows, keep)
        self.index = index.clamp(min=0)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.state is None:
            key, value = key.contiguous(), value.contiguous()
        else:
            key, value = self.state.append(layer, key, value)
        self.keys.append(key)
        self.values.append(value)
        return key, value

    def result(self) -> KVRows:
        return extended(self.state, self.mask, self.keys, self.values)


@torch.inference_mode()
def extend_batches(
    model: Any,
    states: Sequence[KVRows | None],
    feeds: Sequence[Sequence[Sequence[int]]],
    keeps: Sequence[int],
    *,
    pad_id: int,
) -> tuple[list[KVRows], list[torch.Tensor]]:
    """`prefix_cache.extend` with ``hidden=True`` for several batches in one pass: per batch, the extended state
    and the final hidden states at each row's last ``keeps[b]`` tokens, ``[rows, keep, hidden]``.

    ``feeds[b]`` holds batch b's new tokens per row; the states are consumed as `prefix_cache.extend` consumes them.
    """
    body = model.get_decoder()
    layers = body.layers
    batches = [_Batch(s, rows, k, pad_id, model) for s, rows, k in zip(states, feeds, keeps, strict=True)]
    sizes = [b.ids.numel() for b in batches]
    # the columns read, as flat token indices over all batches (each batch's rows one after the other)
    read, offset = [], 0
    for b in batches:
        read.append((offset + torch.arange(b.rows, device=b.index.device)[:, None] * b.width + b.index).flatten())
        offset += b.ids.numel()
    read = torch.cat(read)

    h = body.embed_tokens(torch.cat([b.ids.flatten() for b in batches]))
    cos, sin = body.rotary_emb(h[None], torch.cat([b.positions.flatten() for b in batches])[None])
    cos, sin = cos[0], sin[0]
    for li, layer in enumerate(layers):
        attn, last = layer.self_attn, li == len(layers) - 1
        key, value, query = _project(layer, h, cos, sin, queries=not last)
        kv, start = [], 0
        for b, size in zip(batches, sizes, strict=True):
            k = key[start : start + size].view(b.rows, b.width, *key.shape[1:]).transpose(1, 2)
            v = value[start : start + size].view(b.rows, b.width, *value.shape[1:]).transpose(1, 2)
            kv.append(b.append(li, k, v))
            start += size
        if last:  # every token's keys/values (later passes attend to them), the rest only where scores are read
            if not len(read):
                h = h[:0]
                break
            h = h[read]
            query = _rotate(_norm(attn.q_norm, _heads(attn.q_proj(_norm(layer.input_layernorm, h)), attn.head_dim)),
                            cos[read], sin[read])  # fmt: skip
        outs, qstart = [], 0
        for b, (k, v) in zip(batches, kv, strict=True):
            width = b.keep if last else b.width
            if not width:
                continue
            q = query[qstart : qstart + b.rows * width].view(b.rows, width, *query.shape[1:]).transpose(1, 2)
            qstart += b.rows * width
            if last:
                out = masked(q, k, v, b.layout.query_bias(b.index, b.width, q.dtype), attn.scaling)
            else:
                out = attend(q, k, v, b.layout, attn.scaling)
            outs.append(out.reshape(b.rows * width, -1))
        _finish(layer, h, torch.cat(outs))
    h = _norm(body.norm, h)

    hidden, qstart = [], 0
    for b in batches:
        hidden.append(h[qstart : qstart + b.rows * b.keep].view(b.rows, b.keep, h.shape[-1]))
        qstart += b.rows * b.keep
    return [b.result() for b in batches], hidden
