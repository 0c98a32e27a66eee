"""A Qwen3 forward pass over `RowsKV` batches: the guard's passes without transformers' generic path.

The same layer arithmetic as transformers' Qwen3 decoder, on the model's own modules and weights, with less work
around it:

* attention knows the batch layout (`rewards.engine.rows.attention`): key/value heads never copied, and on the CPU
  the causal half of long chunks skipped;
* the last layer computes queries, attention and MLP only at the columns whose scores are read (every token's keys
  and values still, for the passes that follow);
* new keys/values go into the cache's spare slots (`RowsKV.append`) instead of a concatenated copy;
* several batches' decoding passes (a handful of new tokens per row each) run as one: their tokens share every
  projection, norm and MLP; only attention runs per batch, on the batch's own cache;
* element-wise work done with fewer passes over memory: torch's fused RMSNorm kernel, the rotary embedding on
  halves of each head instead of a rotated copy, SiLU and the gate product in place.

Results equal transformers' forward pass up to float summation order. Nothing here is a transformers API: the
engine runs it only where `rewards.engine.rows.probe` has checked it against the model's own forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rewards.engine.batching import pad
from rewards.engine.rows.attention import AttentionLayout, attend, layout, long_chunk, masked
from rewards.engine.rows.kv_cache import RowsKV, chunk_positions, new_rows

# Per-token work (norms, projections, MLP) runs this many tokens at a time: on the CPU the intermediates stay in
# cache; on a GPU pieces only bound the intermediates' memory, and large ones keep its matrix units busy.
PIECE = 2048
PIECE_GPU = 16384


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

    Example:
        >>> x, cos, sin = torch.randn(3, 2, 4), torch.randn(3, 4), torch.randn(3, 4)
        >>> half = torch.cat([-x[..., 2:], x[..., :2]], -1)
        >>> torch.allclose(_rotate(x, cos, sin), x * cos[:, None] + half * sin[:, None])
        True
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
    layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, queries: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Queries (None without ``queries``), keys and values of hidden states ``h`` ``[tokens, hidden]``,
    ``[tokens, heads, head_dim]`` each."""
    attn = layer.self_attn
    heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
    query = h.new_empty(len(h), heads, attn.head_dim) if queries else None
    key = h.new_empty(len(h), kv_heads, attn.head_dim)
    value = torch.empty_like(key)
    for s in _pieces(h):
        x = _norm(layer.input_layernorm, h[s])
        if query is not None:
            query[s] = _query(attn, x, cos[s], sin[s])
        key[s] = _rotate(_norm(attn.k_norm, _heads(attn.k_proj(x), attn.head_dim)), cos[s], sin[s])
        value[s] = _heads(attn.v_proj(x), attn.head_dim)
    return query, key, value


def _query(attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotated, normed queries of normed hidden states ``x``."""
    return _rotate(_norm(attn.q_norm, _heads(attn.q_proj(x), attn.head_dim)), cos, sin)


def _finish(layer: Any, h: torch.Tensor, attended: torch.Tensor) -> None:
    """The rest of the layer, in place on ``h``: output projection and residual, then the MLP and residual."""
    for s in _pieces(h):
        x = h[s] + layer.self_attn.o_proj(attended[s])
        h[s] = x + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, x))


class _Batch:
    """One batch of a pass: its cache, padded chunk, positions, attention layout, and the chunk columns it reads."""

    def __init__(self, cache: RowsKV | None, rows: Sequence[Sequence[int]], keep: int, pad_id: int, model: Any):
        device = model.device
        self.cache = cache
        self.right = long_chunk(max(len(r) for r in rows))  # long chunks are padded on the right
        self.ids, self.mask = pad(rows, pad_id, device, left=not self.right)
        self.rows, self.width = self.ids.shape
        self.positions = chunk_positions(cache, self.mask)
        self.layout: AttentionLayout = layout(cache.mask if cache is not None else None, self.mask, model.dtype)
        self.keep = keep
        if self.right:
            index = self.mask.sum(1, keepdim=True) - keep + torch.arange(keep, device=device)
        else:
            index = torch.arange(self.width - keep, self.width, device=device).expand(self.rows, keep)
        self.index = index.clamp(min=0)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def columns(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """This batch's tokens of ``x`` ``[all tokens, heads, head_dim]`` (its rows from ``start`` on) as
        ``[rows, heads, width, head_dim]``."""
        return x[start : start + self.ids.numel()].view(self.rows, self.width, *x.shape[1:]).transpose(1, 2)

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            key, value = key.contiguous(), value.contiguous()
        else:
            key, value = self.cache.append(layer, key, value)
        self.keys.append(key)
        self.values.append(value)
        return key, value

    def result(self) -> RowsKV:
        if self.cache is None:
            return new_rows(self.mask, self.keys, self.values)
        return self.cache.extended(self.mask, self.keys, self.values)


@torch.inference_mode()
def extend_batches(
    model: Any,
    caches: Sequence[RowsKV | None],
    feeds: Sequence[Sequence[Sequence[int]]],
    keeps: Sequence[int],
    *,
    pad_id: int,
) -> tuple[list[RowsKV], list[torch.Tensor]]:
    """Run several batches' new tokens in one pass: ``feeds[b]`` holds batch b's tokens per row, on top of
    ``caches[b]`` (None: no prefix). Returns per batch the extended cache and the final hidden states (after the
    model's last norm) at each row's last ``keeps[b]`` tokens, ``[rows, keep, hidden]`` (a row of fewer tokens gets
    some of its own padding in front). The caches are consumed (see `RowsKV.extended`).
    """
    body = model.get_decoder()
    batches = [_Batch(c, rows, k, pad_id, model) for c, rows, k in zip(caches, feeds, keeps, strict=True)]
    # the columns read, as flat token indices over all batches (each batch's rows one after the other)
    read, offset = [], 0
    for b in batches:
        read.append((offset + torch.arange(b.rows, device=b.index.device)[:, None] * b.width + b.index).flatten())
        offset += b.ids.numel()

    h = body.embed_tokens(torch.cat([b.ids.flatten() for b in batches]))
    cos, sin = body.rotary_emb(h[None], torch.cat([b.positions.flatten() for b in batches])[None])
    cos, sin = cos[0], sin[0]
    read_all = torch.cat(read)
    for li, layer in enumerate(body.layers):
        attn, last = layer.self_attn, li == len(body.layers) - 1
        # the last layer: keys/values of every token (later passes attend to them), the rest only where read
        query, key, value = _project(layer, h, cos, sin, queries=not last)
        if last:
            h = h[read_all]
            query = _query(attn, _norm(layer.input_layernorm, h), cos[read_all], sin[read_all])
        assert query is not None
        outs, start, qstart = [], 0, 0
        for b in batches:
            k, v = b.append(li, b.columns(key, start), b.columns(value, start))
            start += b.ids.numel()
            if last and not b.keep:
                continue
            if last:
                q = query[qstart : qstart + b.rows * b.keep].view(b.rows, b.keep, *query.shape[1:]).transpose(1, 2)
                qstart += b.rows * b.keep
                out = masked(q, k, v, b.layout.query_bias(b.index, b.width, q.dtype), attn.scaling)
            else:
                out = attend(b.columns(query, qstart), k, v, b.layout, attn.scaling)
                qstart += b.ids.numel()
            outs.append(out.flatten(2).flatten(0, 1))  # [rows * columns, heads * head_dim]
        if len(h):
            _finish(layer, h, torch.cat(outs))
    h = _norm(body.norm, h)

    hidden, start = [], 0
    for b in batches:
        hidden.append(h[start : start + b.rows * b.keep].view(b.rows, b.keep, h.shape[-1]))
        start += b.rows * b.keep
    return [b.result() for b in batches], hidden


@torch.inference_mode()
def extend(
    model: Any, cache: RowsKV | None, rows: Sequence[Sequence[int]], *, pad_id: int, keep: int = 1
) -> tuple[RowsKV, torch.Tensor]:
    """One batch: ``rows`` (one token list per cache row) on top of ``cache``; the extended cache and the logits at
    each row's last ``keep`` tokens, ``[rows, keep, vocab]`` (``keep=0``: the cache only).

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()
        >>> prefix, _ = extend(model, None, [[5, 6, 7]], pad_id=0, keep=0)
        >>> _, logits = extend(model, prefix.select([0, 0]), [[8, 9], [10]], pad_id=0)
        >>> with torch.no_grad():
        ...     plain = model(torch.tensor([[5, 6, 7, 10]])).logits[0, -1]
        >>> torch.allclose(logits[1, -1], plain, atol=1e-5)
        True
    """
    (new,), (hidden,) = extend_batches(model, [cache], [rows], [keep], pad_id=pad_id)
    return new, model.get_output_embeddings()(hidden)
