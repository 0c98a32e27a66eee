"""The fast path's forward pass (`rewards.engine.rows.qwen3_forward`) and its caches (`rewards.engine.rows.kv_cache`):
rows from shared prefixes, several batches' passes in one set of products, caches extended in place.

Every check compares with a plain forward pass of the same tiny Qwen3 model over each row alone (its own tokens
only: prefix, rejected slots and padding left out), then follows up with another pass on top of the returned
caches, so that the keys/values written into the spare slots are checked too.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen3ForCausalLM

from rewards.engine.rows import attention, qwen3_forward
from rewards.engine.rows.kv_cache import RowsKV, gather_rows
from rewards.engine.rows.qwen3_forward import extend
from tests._tiny import tiny_config

VOCAB = 512
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rows-forward")
    Qwen3ForCausalLM(tiny_config(VOCAB, num_hidden_layers=3, initializer_range=0.2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["cpu", "grouped", "public-only", "eager-model"])
def model(request, model_dir):
    """cpu: the CPU attention (masked SDPA calls, long chunks split with torch's private CPU flash operator);
    grouped: the attention GPUs take (one masked SDPA call, query heads stacked per key/value head), run here on the
    CPU; public-only: the CPU attention without the private operator; eager-model: a model loaded with eager
    attention (our forward pass does not use the model's attention function; its own forward is the reference)."""
    implementation = "eager" if request.param == "eager-model" else "sdpa"
    loaded = Qwen3ForCausalLM.from_pretrained(model_dir, attn_implementation=implementation).eval()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "CPU_KERNEL", request.param != "grouped")
        if request.param == "public-only":
            patch.setattr(attention, "FLASH_CPU", None)
        yield loaded


@pytest.fixture(scope="module")
def cpu_model(model_dir):
    return Qwen3ForCausalLM.from_pretrained(model_dir).eval()


def plain(model, ids: list[int], keep: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -keep:]


def tokens(rng: random.Random, lengths: list[int]) -> list[list[int]]:
    return [[rng.randrange(1, VOCAB) for _ in range(n)] for n in lengths]


def batch(model, rng: random.Random, prefix_len: int, lengths: list[int], spare: int) -> tuple[RowsKV, list]:
    """A cache as the guard builds one: a shared prefix gathered into rows with room for the rows' inputs and
    ``spare`` slots more, each row's input run on top."""
    prefix = tokens(rng, [prefix_len])[0]
    base, _ = extend(model, None, [prefix], pad_id=0, keep=0)
    inputs = tokens(rng, lengths)
    room = max(lengths) + spare
    cache, _ = extend(model, gather_rows([(base, [0] * len(lengths))], room=room), inputs, pad_id=0, keep=1)
    assert cache.room == spare  # the input went into the spare slots
    return cache, [prefix + x for x in inputs]


@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["cpu-attention", "grouped-sdpa"])
@pytest.mark.parametrize("piece", [qwen3_forward.PIECE, 7], ids=["whole", "in-pieces"])
@torch.inference_mode()
def test_batches_in_one_pass_equal_each_row_alone(cpu_model, piece, cpu_kernel, monkeypatch):
    model = cpu_model
    monkeypatch.setattr(qwen3_forward, "PIECE", piece)  # per-token work in pieces of 7 tokens: same results
    monkeypatch.setattr(attention, "CPU_KERNEL", cpu_kernel)
    rng = random.Random(0)
    built = [batch(model, rng, p, lengths, spare=40) for p, lengths in ((7, [70, 90]), (12, [5, 9, 3]), (3, [30]))]
    caches = [c for c, _ in built]
    caches[1].drop_last_slots(0, 2)  # a rejected draft: its slots stay, masked
    histories = [list(h) for _, h in built]
    histories[1][0] = histories[1][0][:-2]
    feeds = [tokens(rng, [3, 1]), tokens(rng, [2, 4, 4]), tokens(rng, [1])]
    keeps = [3, 4, 1]
    new, hidden = qwen3_forward.extend_batches(model, caches, feeds, keeps, pad_id=0)
    for b in range(3):
        assert new[b].buffers is not None and caches[b].buffers is None  # handed on, written in place
        assert new[b].keys[0].data_ptr() == new[b].buffers[0][0].data_ptr()
        logits = model.lm_head(hidden[b])
        for row, feed in enumerate(feeds[b]):
            n = min(keeps[b], len(feed))  # a row shorter than keep: its own tokens are at the end
            histories[b][row] += feed
            torch.testing.assert_close(logits[row, -n:], plain(model, histories[b][row], n), **TOL)
    # a second merged pass reads the keys/values the first one wrote into the spare slots
    more = [tokens(rng, [1, 2]), tokens(rng, [2, 1, 1]), tokens(rng, [2])]
    _, hidden = qwen3_forward.extend_batches(model, new, more, [1, 1, 1], pad_id=0)
    for b in range(3):
        logits = model.lm_head(hidden[b][:, -1])
        for row, feed in enumerate(more[b]):
            torch.testing.assert_close(logits[row], plain(model, histories[b][row] + feed, 1)[0], **TOL)


@pytest.mark.parametrize("lengths", [[5, 12, 9], [70, 140, 100]], ids=["short-chunk", "long-chunk"])
@torch.inference_mode()
def test_read_columns_and_cache_equal_a_plain_pass(model, lengths):
    rng = random.Random(len(lengths) + sum(lengths))
    prefix, chunks = tokens(rng, [20])[0], tokens(rng, lengths)
    base, none = extend(model, None, [prefix], pad_id=0, keep=0)
    assert none.shape[:2] == (1, 0)
    cache, logits = extend(model, base.select([0, 0, 0]), chunks, pad_id=0, keep=3)
    for row, chunk in enumerate(chunks):
        torch.testing.assert_close(logits[row], plain(model, prefix + chunk, 3), **TOL)
    # a pass on top reads every key/value written, and a rejected draft's slots are masked
    cache.drop_last_slots(2, 2)  # not the longest row: in a long chunk, padding follows its tokens
    more = tokens(rng, [2, 4, 1])
    _, logits = extend(model, cache, more, pad_id=0, keep=1)
    expected = [prefix + chunks[0] + more[0], prefix + chunks[1] + more[1], prefix + chunks[2][:-2] + more[2]]
    for row, ids in enumerate(expected):
        torch.testing.assert_close(logits[row], plain(model, ids, 1), **TOL)


@torch.inference_mode()
def test_a_row_shorter_than_keep_gets_its_own_tokens_at_the_end(model):
    chunks = tokens(random.Random(7), [80, 2])
    _, logits = extend(model, None, chunks, pad_id=0, keep=3)
    assert logits.shape[:2] == (2, 3)
    torch.testing.assert_close(logits[1, -2:], plain(model, chunks[1], 2), **TOL)


@pytest.mark.parametrize("scale", [1, 8], ids=["short-chunks", "long-chunks"])
@torch.inference_mode()
def test_rows_from_different_prefixes_gather_exactly(model, scale):
    rng = random.Random(3)
    shared = [rng.randrange(1, VOCAB) for _ in range(30 * scale)]
    group = [shared + [rng.randrange(1, VOCAB) for _ in range(n * scale)] for n in (12, 25)]
    tails = [[rng.randrange(1, VOCAB) for _ in range(n * scale)] for n in (3, 9, 1)]
    base, _ = extend(model, None, [shared], pad_id=0, keep=0)
    grouped, _ = extend(model, base.select([0, 0]), [g[len(shared) :] for g in group], pad_id=0, keep=0)
    cache = gather_rows([(grouped, [1, 0]), (base, [0])])
    _, logits = extend(model, cache, tails, pad_id=0, keep=2)
    _, padded_alone = extend(model, None, tails, pad_id=0, keep=2)  # no prefix, padding only
    for row, full in enumerate([group[1] + tails[0], group[0] + tails[1], shared + tails[2]]):
        k = min(2, len(tails[row]))  # a column before the row's first new token is padding
        torch.testing.assert_close(logits[row, -k:], plain(model, full, k), **TOL)
        torch.testing.assert_close(padded_alone[row, -k:], plain(model, tails[row], k), **TOL)
    assert cache.rows == 3


@torch.inference_mode()
def test_a_cache_without_enough_room_concatenates(model):
    rng = random.Random(1)
    cache, history = batch(model, rng, 5, [8, 6], spare=1)
    feed = tokens(rng, [3, 2])
    new, logits = extend(model, cache, feed, pad_id=0, keep=1)
    assert new.buffers is None and new.room == 0  # out of room: concatenated copies
    for row in range(2):
        torch.testing.assert_close(logits[row, -1], plain(model, history[row] + feed[row], 1)[0], **TOL)


@torch.inference_mode()
def test_two_continuations_of_one_cache_do_not_share_slots(model):
    rng = random.Random(2)
    cache, history = batch(model, rng, 4, [6, 6], spare=20)
    first_feed, second_feed, after = tokens(rng, [2, 2]), tokens(rng, [3, 3]), tokens(rng, [1, 1])
    first, _ = extend(model, cache, first_feed, pad_id=0, keep=1)
    second, _ = extend(model, cache, second_feed, pad_id=0, keep=1)  # the cache gave its room to `first`: copies
    assert first.buffers is not None and second.buffers is None
    _, logits = extend(model, first, after, pad_id=0, keep=1)  # `first`'s slots must not hold `second`'s tokens
    for row in range(2):
        torch.testing.assert_close(
            logits[row, -1], plain(model, history[row] + first_feed[row] + after[row], 1)[0], **TOL
        )


@torch.inference_mode()
def test_select_keeps_the_room(model):
    cache, history = batch(model, random.Random(3), 6, [5, 7, 4], spare=12)
    kept = cache.select([2, 0])
    assert kept.room == cache.room and kept.rows == 2
    feed = tokens(random.Random(4), [2, 3])
    new, logits = extend(model, kept, feed, pad_id=0, keep=1)
    assert new.buffers is not None
    for row, source in enumerate([2, 0]):
        torch.testing.assert_close(logits[row, -1], plain(model, history[source] + feed[row], 1)[0], **TOL)


def test_fits_only_short_chunks():
    assert qwen3_forward.fits([[[1, 2, 3]], [[4]]])
    assert not qwen3_forward.fits([[[1] * 64]])


@torch.inference_mode()
def test_gathering_a_cache_with_room_equals_gathering_its_copy(model):
    """A cache whose keys view larger buffers (not contiguous) is gathered by the gather path: same result."""
    rng = random.Random(5)
    cache, _ = batch(model, rng, 5, [4, 9, 6], spare=8)
    cache.drop_last_slots(1, 2)  # a gap inside a row
    assert not cache.keys[0].is_contiguous()
    copy = RowsKV(
        [k.contiguous() for k in cache.keys], [v.contiguous() for v in cache.values], cache.mask, cache.next_pos
    )
    a, b = gather_rows([(cache, [2, 0, 1])]), gather_rows([(copy, [2, 0, 1])])
    assert torch.equal(a.mask, b.mask) and a.slots == int(cache.mask.sum(1).max())  # padding and gaps left out
    visible = a.mask.bool()
    for ka, kb in zip(a.keys + a.values, b.keys + b.values, strict=True):
        assert torch.equal(ka.transpose(1, 2)[visible], kb.transpose(1, 2)[visible])
