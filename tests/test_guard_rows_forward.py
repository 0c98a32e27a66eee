"""Several batches' decoding passes in one set of products (`rewards.guards.rows_forward`), and states extended in
place (`prefix_cache.stack(..., room=n)`, `KVRows.append`).

Every check compares with a plain forward pass of the same tiny Qwen3 model over each row alone (its own tokens
only: prefix, rejected slots and padding left out), then follows up with another pass on top of the returned
states, so that the keys/values written into the spare slots are checked too.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen3ForCausalLM

from rewards.guards import rows_forward, slot_attention
from rewards.guards.kv_rows import KVRows, stack
from rewards.guards.lm_head import head_logits
from rewards.guards.prefix_cache import extend
from tests._tiny import tiny_config

VOCAB = 512
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cpu-forward")
    Qwen3ForCausalLM(tiny_config(VOCAB, num_hidden_layers=3, initializer_range=0.2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["sdpa", "sdpa-grouped", "eager"])
def model(request, model_dir):
    """sdpa: our forward pass with the CPU flash kernel; sdpa-grouped: our forward pass with the attention GPUs
    take (`slot_attention.grouped`: one masked SDPA call, query heads stacked per key/value head), run here on the
    CPU; eager: transformers' forward, whose cache layers write into the spare slots (`KVRows.cache`)."""
    implementation = request.param.split("-")[0]
    loaded = Qwen3ForCausalLM.from_pretrained(model_dir, attn_implementation=implementation).eval()
    assert rows_forward.supports(loaded) == (implementation == "sdpa")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slot_attention, "CPU_KERNEL", request.param != "sdpa-grouped")
        yield loaded


@pytest.fixture(scope="module")
def cpu_model(model_dir):
    return Qwen3ForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()


def plain(model, ids: list[int], keep: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -keep:]


def tokens(rng: random.Random, lengths: list[int]) -> list[list[int]]:
    return [[rng.randrange(1, VOCAB) for _ in range(n)] for n in lengths]


def batch(model, rng: random.Random, prefix_len: int, lengths: list[int], spare: int) -> tuple[KVRows, list]:
    """A state as the guard builds one: a shared prefix stacked into rows with room for the rows' inputs and
    ``spare`` slots more, each row's input run on top."""
    prefix = tokens(rng, [prefix_len])[0]
    base, _ = extend(model, None, [prefix], pad_id=0, keep=0)
    inputs = tokens(rng, lengths)
    room = max(lengths) + spare
    state, _ = extend(model, stack([(base, [0] * len(lengths))], room=room), inputs, pad_id=0, keep=1)
    assert state.room == spare  # the input went into the spare slots
    return state, [prefix + x for x in inputs]


@pytest.mark.parametrize("cpu_kernel", [True, False], ids=["cpu-kernel", "grouped-sdpa"])
@pytest.mark.parametrize("piece", [rows_forward.PIECE, 7], ids=["whole", "in-pieces"])
@torch.inference_mode()
def test_batches_in_one_pass_equal_each_row_alone(cpu_model, piece, cpu_kernel, monkeypatch):
    model = cpu_model  # several batches in one pass: our forward only
    monkeypatch.setattr(rows_forward, "PIECE", piece)  # per-token work in pieces of 7 tokens: same results
    monkeypatch.setattr(slot_attention, "CPU_KERNEL", cpu_kernel)  # grouped-sdpa: the attention GPUs run
    rng = random.Random(0)
    built = [batch(model, rng, p, lengths, spare=40) for p, lengths in ((7, [70, 90]), (12, [5, 9, 3]), (3, [30]))]
    states = [s for s, _ in built]
    states[1].drop_last_slots(0, 2)  # a rejected draft: its slots stay, masked
    histories = [list(h) for _, h in built]
    histories[1][0] = histories[1][0][:-2]
    feeds = [tokens(rng, [3, 1]), tokens(rng, [2, 4, 4]), tokens(rng, [1])]
    keeps = [3, 4, 1]
    new, hidden = rows_forward.extend_batches(model, states, feeds, keeps, pad_id=0)
    for b in range(3):
        assert new[b].buffers is not None and states[b].buffers is None  # handed on, written in place
        assert new[b].keys[0].data_ptr() == new[b].buffers[0][0].data_ptr()
        logits = head_logits(model, hidden[b].flatten(0, 1)).view(*hidden[b].shape[:2], -1)
        for row, feed in enumerate(feeds[b]):
            n = min(keeps[b], len(feed))  # a row shorter than keep: its own tokens are at the end
            histories[b][row] += feed
            torch.testing.assert_close(logits[row, -n:], plain(model, histories[b][row], n), **TOL)
    # a second merged pass reads the keys/values the first one wrote into the spare slots
    more = [tokens(rng, [1, 2]), tokens(rng, [2, 1, 1]), tokens(rng, [2])]
    _, hidden = rows_forward.extend_batches(model, new, more, [1, 1, 1], pad_id=0)
    for b in range(3):
        logits = head_logits(model, hidden[b][:, -1])
        for row, feed in enumerate(more[b]):
            torch.testing.assert_close(logits[row], plain(model, histories[b][row] + feed, 1)[0], **TOL)


@torch.inference_mode()
def test_a_state_without_enough_room_concatenates(model):
    rng = random.Random(1)
    state, history = batch(model, rng, 5, [8, 6], spare=1)
    feed = tokens(rng, [3, 2])
    new, logits = extend(model, state, feed, pad_id=0, keep=1)
    assert new.buffers is None and new.room == 0  # out of room: concatenated copies
    for row in range(2):
        torch.testing.assert_close(logits[row, -1], plain(model, history[row] + feed[row], 1)[0], **TOL)


@torch.inference_mode()
def test_two_continuations_of_one_state_do_not_share_slots(model):
    rng = random.Random(2)
    state, history = batch(model, rng, 4, [6, 6], spare=20)
    first_feed, second_feed, after = tokens(rng, [2, 2]), tokens(rng, [3, 3]), tokens(rng, [1, 1])
    first, _ = extend(model, state, first_feed, pad_id=0, keep=1)
    second, _ = extend(model, state, second_feed, pad_id=0, keep=1)  # state gave its room to `first`: copies
    assert first.buffers is not None and second.buffers is None
    _, logits = extend(model, first, after, pad_id=0, keep=1)  # `first`'s slots must not hold `second`'s tokens
    for row in range(2):
        torch.testing.assert_close(
            logits[row, -1], plain(model, history[row] + first_feed[row] + after[row], 1)[0], **TOL
        )


@torch.inference_mode()
def test_select_keeps_the_room(model):
    state, history = batch(model, random.Random(3), 6, [5, 7, 4], spare=12)
    kept = state.select([2, 0])
    assert kept.room == state.room and kept.rows == 2
    feed = tokens(random.Random(4), [2, 3])
    new, logits = extend(model, kept, feed, pad_id=0, keep=1)
    assert new.buffers is not None
    for row, source in enumerate([2, 0]):
        torch.testing.assert_close(logits[row, -1], plain(model, history[source] + feed[row], 1)[0], **TOL)


def test_fits_only_short_chunks():
    assert rows_forward.fits([[[1, 2, 3]], [[4]]])
    assert not rows_forward.fits([[[1] * 64]])


@torch.inference_mode()
def test_stacking_a_state_with_room_equals_stacking_its_copy(model):
    """A state whose keys view larger buffers (not contiguous) is stacked by the gather path: same result."""
    rng = random.Random(5)
    state, _ = batch(model, rng, 5, [4, 9, 6], spare=8)
    state.drop_last_slots(1, 2)  # a gap inside a row
    assert not state.keys[0].is_contiguous()
    copy = KVRows(
        [k.contiguous() for k in state.keys], [v.contiguous() for v in state.values], state.mask, state.next_pos
    )
    a, b = stack([(state, [2, 0, 1])]), stack([(copy, [2, 0, 1])])
    assert torch.equal(a.mask, b.mask) and a.slots == int(state.mask.sum(1).max())  # padding and gaps left out
    visible = a.mask.bool()
    for ka, kb in zip(a.keys + a.values, b.keys + b.values, strict=True):
        assert torch.equal(ka.transpose(1, 2)[visible], kb.transpose(1, 2)[visible])
