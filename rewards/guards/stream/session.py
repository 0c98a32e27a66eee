"""Incremental Qwen3Guard-Stream: feed new token ids against a key/value cache, for many streams at once.

`StreamSession` runs the backbone over B streams that share one cache. Each `feed` takes any number of new tokens
per stream (zero included): the chunk is right-padded, the padded slots are masked out for good, and position ids
count each stream's real tokens only, so every stream sees exactly what a full forward over its own tokens would
see. The cache lives in preallocated buffers that double when full (`GrowingKVLayer`): adding a token writes only
that token, so the cost of a new token does not grow with the length so far beyond attention itself.

One-token steps (the streaming case) can run "static": inputs, mask and write position sit in fixed device buffers
and attention (`decode_attention`) spans the whole buffer, so on CUDA the step is captured once as a CUDA graph and
replayed (re-captured only when the buffers grow). That removes the per-kernel launch cost that dominates a small
model's step (figures in docs/benchmarks.md, "Qwen3Guard-Stream").

The growing cache subclasses transformers' ``DynamicLayer`` and the static steps swap the model's attention function:
both lean on transformers internals, so a session uses them only where `growing_cache_probe` (once per model: a
session of its own against the full forward) finds them working; otherwise it runs on transformers' public
``DynamicCache`` with eager steps, logged once.

`rewards.guards.stream.moderation.StreamModeration` adds the Qwen3Guard semantics on top.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from rewards.guards.stream.model import Qwen3GuardStreamModel, StreamLogits

logger = logging.getLogger(__name__)


@contextmanager
def attention_swapped(config: Any, name: str) -> Iterator[None]:
    """Sets a model config's attention implementation to ``name`` inside the block (then restores the previous one).

    ``name`` is a function registered with transformers' ``AttentionInterface`` (or a built-in one such as "sdpa").

    Example:
        >>> from transformers import Qwen3Config
        >>> config = Qwen3Config(attn_implementation="sdpa")
        >>> with attention_swapped(config, "eager"):
        ...     config._attn_implementation
        'eager'
        >>> config._attn_implementation
        'sdpa'
    """
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


DECODE_ATTENTION = "qwen3guard_stream_decode"


def decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one query per stream over a long cache, as two batched matrix-vector products.

    The query heads that share a key/value head are stacked against it (no key repetition). Over thousands of
    cached keys this spreads the work over the whole GPU, where the fused SDPA kernels give one query a few thread
    blocks. ``attention_mask`` is boolean, True where a key may be read. Same arithmetic as transformers' eager
    attention: scores in the model's dtype, softmax in float32.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> query, (key, value) = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 2, 5, 8)  # 4 query heads, 2 kv heads
        >>> out, _ = decode_attention(None, query, key, value, None, scaling=8**-0.5)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(query, key, value, enable_gqa=True)
        >>> tuple(out.shape), torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
        ((2, 1, 4, 8), True)
    """
    batch, heads, q_length, dim = query.shape
    if q_length != 1:
        raise ValueError(f"decode_attention takes one query per stream, got {q_length}")
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, (heads // kv_heads) * q_length, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value).reshape(batch, heads, q_length, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)


class GrowingKVLayer(DynamicLayer):
    """A cache layer over preallocated buffers that double when full (amortised O(1) append, no re-concatenation).

    With ``write_at`` set (a one-element device tensor), `update` writes its single new token at that slot and
    returns the whole buffers (a static step, see `StreamSession`). Only `update` is used by `StreamSession`; the
    beam-search/cropping helpers of `DynamicLayer` are not supported.

    Example:
        >>> layer = GrowingKVLayer(capacity=2)
        >>> keys, values = layer.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))  # 3 tokens: doubled to 4
        >>> keys, values = layer.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))  # fits: no reallocation
        >>> tuple(keys.shape), layer.size, keys[0, 0, :, 0].tolist()
        ((1, 2, 4, 4), 4, [1.0, 1.0, 1.0, 0.0])
    """

    def __init__(self, capacity: int = 256):
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0
        self.write_at: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._k = key_states.new_zeros((*key_states.shape[:2], self.capacity, key_states.shape[-1]))
        self._v = value_states.new_zeros((*value_states.shape[:2], self.capacity, value_states.shape[-1]))
        self._length = 0
        self.is_initialized = True

    @property
    def size(self) -> int:
        """Slots allocated."""
        return self._k.shape[2] if self._k is not None else self.capacity

    def resize(self, size: int) -> bool:
        """Grow the buffers to ``size`` slots (kept data copied); True if they were reallocated."""
        if self._k is None:
            self.capacity = max(self.capacity, size)
            return False
        if size <= self._k.shape[2]:
            return False
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], size, old.shape[-1]))
            new[:, :, : self._length] = old[:, :, : self._length]
            setattr(self, name, new)
        self.advance(0)
        return True

    def advance(self, n: int) -> None:
        """Count ``n`` more slots as written (after static steps, which write through ``write_at``)."""
        assert self._k is not None and self._v is not None, "no buffers before the first update"
        self._length += n
        self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._k is not None and self._v is not None
        if self.write_at is not None:
            # Static step: one token per stream at a slot held on the device; the mask hides the unused slots.
            self._k.index_copy_(2, self.write_at, key_states)
            self._v.index_copy_(2, self.write_at, value_states)
            return self._k, self._v
        end = self._length + key_states.shape[-2]
        if end > self._k.shape[2]:
            self.resize(max(end, 2 * self._k.shape[2]))
        self._k[:, :, self._length : end] = key_states
        self._v[:, :, self._length : end] = value_states
        self.advance(end - self._length)
        return self._k[:, :, :end], self._v[:, :, :end]  # what `advance` set ``keys``/``values`` to

    def reset(self) -> None:
        self._k = self._v = self.keys = self.values = None
        self._length = 0
        self.is_initialized = False


class StreamSession:
    """B token streams through the guard, fed incrementally against one growing key/value cache.

    Args:
        net: the loaded `Qwen3GuardStreamModel`.
        batch_size: number of streams.
        capacity: initial cache slots (they double when full); pass the expected longest stream to avoid regrowth.
        static_steps: run one-token feeds as static steps (default: on CUDA only).
        cuda_graphs: capture static steps as a CUDA graph and replay it (CUDA only).
        growing_cache: use the growing cache layers (and static steps); None: where `growing_cache_probe` passes.
            Without them the session runs on transformers' ``DynamicCache`` with eager steps.

    Every stream must get at least one token in the first `feed` (a stream with no token at all would give its
    padded slots nothing to attend to).

    Example:
        >>> session = StreamSession(net, batch_size=2)  # doctest: +SKIP
        >>> first = session.feed([[151644, 872], [151644]])  # doctest: +SKIP
        >>> step = session.feed([[198], []])  # doctest: +SKIP
        >>> step[0].risk.shape, step[1].risk.shape  # doctest: +SKIP
        (torch.Size([1, 3]), torch.Size([0, 3]))
    """

    def __init__(
        self,
        net: Qwen3GuardStreamModel,
        batch_size: int,
        *,
        capacity: int = 256,
        static_steps: bool | None = None,
        cuda_graphs: bool = True,
        growing_cache: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.net = net
        self.batch_size = batch_size
        self.device = next(net.parameters()).device
        if growing_cache is None:
            growing_cache = growing_cache_probe(net) is None
        self.static_steps = growing_cache and (self.device.type == "cuda" if static_steps is None else static_steps)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        capacity = max(int(capacity), 1)
        self.layers = [GrowingKVLayer(capacity) for _ in range(net.config.num_hidden_layers)] if growing_cache else []
        self.cache: Cache = Cache(layers=list[Any](self.layers)) if growing_cache else DynamicCache()
        self._mask = torch.zeros((batch_size, capacity), dtype=torch.bool, device=self.device)
        self._slots = 0
        self.lengths = [0] * batch_size
        c = net.config
        self._sizes = [c.num_risk_level, c.num_category, c.num_query_risk_level, c.num_query_category]
        self._static: dict[str, torch.Tensor] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: torch.Tensor | None = None

    @property
    def slots(self) -> int:
        """Cache slots used so far (real tokens plus padding)."""
        return self._slots

    def _resize(self, needed: int) -> bool:
        """Make the mask and every layer hold at least ``needed`` slots, all the same size; True if reallocated."""
        size = max([self._mask.shape[1], *(layer.size for layer in self.layers)])
        if needed > size:
            size = max(needed, 2 * size)
        changed = False
        if size > self._mask.shape[1]:
            grown = self._mask.new_zeros((self.batch_size, size))
            grown[:, : self._slots] = self._mask[:, : self._slots]
            self._mask, changed = grown, True
        for layer in self.layers:
            changed = layer.resize(size) or changed
        return changed

    def _empty(self) -> list[StreamLogits]:
        return [StreamLogits(*(torch.zeros((0, n)) for n in self._sizes)) for _ in range(self.batch_size)]

    @torch.inference_mode()
    def feed(self, tokens: Sequence[Sequence[int]]) -> list[StreamLogits]:
        """Add ``tokens[r]`` to stream r; returns, per stream, the head logits (float32, CPU) of the tokens added."""
        if len(tokens) != self.batch_size:
            raise ValueError(f"expected token lists for {self.batch_size} streams, got {len(tokens)}")
        counts = [len(t) for t in tokens]
        width = max(counts)
        if width == 0:
            return self._empty()
        if any(self.lengths[r] + counts[r] == 0 for r in range(self.batch_size)):
            raise ValueError("every stream needs at least one token in the first feed")
        if width == 1 and self.static_steps and self._slots > 0:
            logits = self._static_step(tokens, counts)
        else:
            logits = self._eager(tokens, counts, width)
        for r, n in enumerate(counts):
            self.lengths[r] += n
        return [StreamLogits(*(t[r, :n] for t in logits)) for r, n in enumerate(counts)]

    def _split(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # One device-to-host copy for all four heads.
        return logits.float().cpu().split(self._sizes, dim=-1)

    def _eager(self, tokens: Sequence[Sequence[int]], counts: list[int], width: int) -> tuple[torch.Tensor, ...]:
        ids = torch.zeros((self.batch_size, width), dtype=torch.long)
        new_mask = torch.zeros((self.batch_size, width), dtype=torch.bool)
        for r, row in enumerate(tokens):
            if row:
                ids[r, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
                new_mask[r, : len(row)] = True
        # Padded slots get any position (they are masked); real tokens continue their stream's count.
        positions = torch.tensor(self.lengths, dtype=torch.long)[:, None] + torch.arange(width)[None, :]
        if self._resize(self._slots + width):
            self._graph = None
        self._mask[:, self._slots : self._slots + width] = new_mask.to(self.device)
        self._slots += width
        hidden = self.net.backbone(
            ids.to(self.device),
            attention_mask=self._mask[:, : self._slots],
            position_ids=positions.to(self.device),
            past_key_values=self.cache,
        )
        return self._split(torch.cat(self.net.heads(hidden), dim=-1))

    # -- static one-token steps (CUDA graphs) -------------------------------------------------------------------
    def _static_step(self, tokens: Sequence[Sequence[int]], counts: list[int]) -> tuple[torch.Tensor, ...]:
        slot = self._slots
        if self._resize(slot + 1):
            self._graph = None
        if self._static is None:
            self._static = {
                "ids": torch.zeros((self.batch_size, 1), dtype=torch.long, device=self.device),
                "positions": torch.zeros((self.batch_size, 1), dtype=torch.long, device=self.device),
                "write_at": torch.zeros((1,), dtype=torch.long, device=self.device),
            }
        static = self._static
        assert static is not None
        static["ids"].copy_(torch.tensor([[row[0] if row else 0] for row in tokens], dtype=torch.long))
        static["positions"].copy_(torch.tensor(self.lengths, dtype=torch.long)[:, None])
        static["write_at"].fill_(slot)
        self._mask[:, slot] = torch.tensor(counts, dtype=torch.bool).to(self.device)
        if self.cuda_graphs:
            if self._graph is None:
                self._capture()
            assert self._graph is not None and self._graph_out is not None
            self._graph.replay()
            out = self._graph_out
        else:
            out = self._run_static()
        self._slots += 1
        for layer in self.layers:
            layer.advance(1)
        return self._split(out)

    def _run_static(self) -> torch.Tensor:
        static = self._static
        assert static is not None
        for layer in self.layers:
            layer.write_at = static["write_at"]
        try:
            with attention_swapped(self.net.config, DECODE_ATTENTION):
                hidden = self.net.backbone(
                    static["ids"],
                    attention_mask=self._mask[:, None, None, :],  # 4D: used as is, over every slot of the buffers
                    position_ids=static["positions"],
                    past_key_values=self.cache,
                )
            return torch.cat(self.net.heads(hidden), dim=-1)
        finally:
            for layer in self.layers:
                layer.write_at = None

    def _capture(self) -> None:
        # Warm up on a side stream (library workspaces), then record. Both write the same slot with the same inputs.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._run_static()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_out = self._run_static()
        self._graph = graph


_PROBED: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def growing_cache_probe(net: Qwen3GuardStreamModel) -> str | None:
    """None where `GrowingKVLayer` and static steps give ``net``'s own numbers, else why not (logged once per model).

    The check is a session of its own: three tokens, then one as a static step, against one full forward pass.
    """
    if net not in _PROBED:
        _PROBED[net] = reason = _probe(net)
        if reason is not None:
            logger.warning("Qwen3Guard-Stream sessions run on transformers' DynamicCache: %s", reason)
    return _PROBED[net]


def _probe(net: Qwen3GuardStreamModel) -> str | None:
    try:
        ids = [i % net.config.vocab_size for i in (13, 1013, 2013, 3013)]
        session = StreamSession(net, 1, capacity=2, static_steps=True, cuda_graphs=False, growing_cache=True)
        pieces = [session.feed([ids[:3]])[0], session.feed([ids[3:]])[0]]
        with torch.inference_mode():
            full = net(torch.tensor([ids], device=session.device))
        got = torch.cat([torch.cat(list(p), -1) for p in pieces])
        expected = torch.cat([t[0] for t in full], -1).float().cpu()
        gap = float((got - expected).abs().max() / expected.abs().max().clamp(min=1.0))
        tolerance = 1e-4 if next(net.parameters()).dtype == torch.float32 else 3e-2
        if not gap <= tolerance:
            return f"its cache layers give logits {gap:.2g} away from the full forward pass"
        return None
    except Exception as exc:  # any failure of the internals rules them out
        return f"its cache layers raised {type(exc).__name__}: {exc}"
