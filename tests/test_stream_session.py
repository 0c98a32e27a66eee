"""Incremental Qwen3Guard-Stream: feeding tokens against the growing key/value cache equals the full forward."""

from __future__ import annotations

import os
import random
import weakref

import pytest
import torch
from _stream import one_torch_thread, reference_logits, write_tiny_stream_checkpoint  # noqa: F401

from rewards.guards.stream import session as session_module
from rewards.guards.stream.model import load_stream_model
from rewards.guards.stream.session import GrowingKVLayer, StreamSession, growing_cache_probe

HEADS = ("risk", "category", "query_risk", "query_category")
DEVICE = os.environ.get("SAFE_RL_TEST_DEVICE", "cpu")  # set to "cuda" to run the parity checks on a GPU


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = write_tiny_stream_checkpoint(tmp_path_factory.mktemp("stream") / "random", seed=3)
    net, _, _ = load_stream_model(folder, device=DEVICE, dtype="float32")
    rng = random.Random(0)
    streams = [[rng.randrange(151669) for _ in range(n)] for n in (23, 9, 41)]
    references = [reference_logits(folder, ids) for ids in streams]
    return net, streams, references


def _collect(pieces):
    return {name: torch.cat([getattr(p, name) for p in pieces]) for name in HEADS}


def _assert_matches(got, reference):
    for name in HEADS:
        torch.testing.assert_close(got[name].double(), reference[name], atol=1e-5, rtol=0)
        assert got[name].argmax(-1).tolist() == reference[name].argmax(-1).tolist()


def _chunks(ids, sizes):
    out, i = [], 0
    for size in sizes:
        out.append(ids[i : i + size])
        i += size
    return out


@pytest.mark.parametrize("mode", ["one_by_one", "chunks", "prefix_then_tokens"])
def test_single_stream_feeding_equals_full_forward(setup, mode):
    net, streams, references = setup
    rng = random.Random(1)
    for ids, reference in zip(streams, references, strict=True):
        if mode == "one_by_one":
            sizes = [1] * len(ids)
        elif mode == "chunks":
            sizes = [rng.randint(1, 7) for _ in ids]
        else:
            sizes = [len(ids) // 2] + [1] * (len(ids) - len(ids) // 2)
        session = StreamSession(net, batch_size=1, capacity=4)  # tiny capacity: the cache regrows on the way
        pieces = [session.feed([chunk])[0] for chunk in _chunks(ids, sizes) if chunk]
        _assert_matches(_collect(pieces), reference)
        assert session.lengths == [len(ids)] and session.slots == len(ids)


@pytest.mark.parametrize("static_steps", [False, True])
def test_batched_streams_with_uneven_feeds_equal_full_forward(setup, static_steps):
    """Chunks of 0..5 tokens per stream; with static_steps the one-token feeds take the static (CUDA graph) path."""
    net, streams, references = setup
    rng = random.Random(2)
    session = StreamSession(net, batch_size=len(streams), capacity=8, static_steps=static_steps)
    positions = [0] * len(streams)
    pieces: list[list] = [[] for _ in streams]
    first, one_token_steps = True, 0
    while any(p < len(ids) for p, ids in zip(positions, streams, strict=True)):
        tokens = []
        for r, ids in enumerate(streams):
            n = rng.randint(1, 4) if first else rng.choice([0, 0, 1, 1, 2, 5])
            tokens.append(ids[positions[r] : positions[r] + n])
            positions[r] += len(tokens[-1])
        one_token_steps += not first and max(map(len, tokens)) == 1
        first = False
        for r, out in enumerate(session.feed(tokens)):
            assert out.risk.shape[0] == len(tokens[r])
            pieces[r].append(out)
    assert session.slots > max(len(ids) for ids in streams)  # padding holes really were left in the cache
    assert one_token_steps >= 3  # the one-token (static) path was taken
    for r, reference in enumerate(references):
        _assert_matches(_collect(pieces[r]), reference)


@pytest.mark.parametrize("breakage", ["raises", "writes-nothing"])
def test_a_broken_growing_cache_falls_back_to_transformers_dynamic_cache(setup, monkeypatch, breakage):
    """An upstream change the cache layer no longer fits (a new ``update`` signature, or the model bypassing it):
    the probe rules the layer out, and sessions run on transformers' own cache with the same numbers."""
    net, streams, references = setup
    monkeypatch.setattr(session_module, "_PROBED", weakref.WeakKeyDictionary())
    original = GrowingKVLayer.update

    def changed(self, key_states, value_states, *args, **kwargs):
        if breakage == "raises":
            raise TypeError("update() got an unexpected keyword argument 'cache_kwargs'")
        original(self, key_states, value_states)
        return key_states, value_states  # the new tokens only: what came before is lost

    monkeypatch.setattr(GrowingKVLayer, "update", changed)
    assert growing_cache_probe(net) is not None
    session = StreamSession(net, batch_size=1, capacity=4, static_steps=True)
    assert session.layers == [] and not session.static_steps
    for ids, reference in zip(streams, references, strict=True):
        session = StreamSession(net, batch_size=1, capacity=4)
        sizes = [len(ids) // 2] + [1] * (len(ids) - len(ids) // 2)
        pieces = [session.feed([chunk])[0] for chunk in _chunks(ids, sizes) if chunk]
        _assert_matches(_collect(pieces), reference)


def test_empty_first_feed_is_refused_and_empty_feed_is_free(setup):
    net, streams, _ = setup
    session = StreamSession(net, batch_size=2)
    with pytest.raises(ValueError, match="at least one token in the first feed"):
        session.feed([streams[0][:3], []])
    out = StreamSession(net, batch_size=2).feed([[], []])
    assert all(o.risk.numel() == 0 for o in out)
    with pytest.raises(ValueError, match="token lists for 2 streams"):
        session.feed([[1]])


def test_growing_layer_appends_in_place():
    layer = GrowingKVLayer(capacity=2)
    chunks = [torch.randn(1, 2, n, 4) for n in (1, 2, 3)]
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    expected = torch.cat(chunks, dim=2)
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(values, -expected)
    assert layer.get_seq_length() == 6 and layer._k.shape[2] >= 6
    buffer = layer._k
    layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert layer._k is buffer  # room left: no reallocation, the token was written into the buffer
