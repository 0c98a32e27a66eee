"""The last decoder layer computed only at the columns whose logits are read (`rewards.guards.last_layer`).

Each check compares `prefix_cache.extend` (which runs the last layer that way) with a plain forward pass of the
same tiny Qwen3 model over each row alone, for both paths (SDPA on the CPU: our own forward pass,
`rewards.guards.rows_forward`, with right-padded long chunks; eager: transformers' forward with its own 4-D mask and
`last_layer.last_positions`), and follows up with passes on top of the returned state: the keys/values the
shortened layer leaves in the cache must be every token's.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Qwen3ForCausalLM

from rewards.guards import last_layer
from rewards.guards.prefix_cache import extend
from rewards.guards.rows_forward import supports
from tests._tiny import tiny_config

VOCAB = 512


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("last-layer")
    Qwen3ForCausalLM(tiny_config(VOCAB, num_hidden_layers=3, initializer_range=0.2)).save_pretrained(path)
    loaded = Qwen3ForCausalLM.from_pretrained(path, attn_implementation=request.param).eval()
    assert supports(loaded) == (request.param == "sdpa")  # eager: transformers' forward, its 4-D mask
    assert last_layer.supports(loaded)
    return loaded


def plain(model, ids: list[int], keep: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -keep:]


def rows(rng: random.Random, lengths: list[int]) -> list[list[int]]:
    return [[rng.randrange(1, VOCAB) for _ in range(n)] for n in lengths]


@pytest.mark.parametrize("lengths", [[5, 12, 9], [70, 140, 100]], ids=["short-chunk", "long-chunk"])
@torch.inference_mode()  # as the decoder runs (it edits the state in place)
def test_kept_columns_and_cache_equal_a_plain_pass(model, lengths):
    rng = random.Random(len(lengths) + sum(lengths))
    prefix, chunks = rows(rng, [20])[0], rows(rng, lengths)
    base, none = extend(model, None, [prefix], pad_id=0, keep=0)
    assert none.shape[:2] == (1, 0)
    sizes = []
    mlp = model.model.layers[-1].mlp.down_proj  # both paths call the layer's own modules
    hook = mlp.register_forward_hook(lambda mod, args, out: sizes.append(out.numel()))
    state, logits = extend(model, base.select([0, 0, 0]), chunks, pad_id=0, keep=3)
    hook.remove()
    assert sizes == [3 * 3 * model.config.hidden_size]  # the last layer's MLP ran at the 3 kept columns only
    for row, chunk in enumerate(chunks):
        torch.testing.assert_close(logits[row], plain(model, prefix + chunk, 3), atol=1e-4, rtol=1e-4)
    # a pass on top reads every key/value the shortened layer wrote, and a rejected draft's slots are masked
    state.drop_last_slots(2, 2)  # not the longest row: in a long chunk, padding follows its tokens
    more = rows(rng, [2, 4, 1])
    _, logits = extend(model, state, more, pad_id=0, keep=1)
    expected = [prefix + chunks[0] + more[0], prefix + chunks[1] + more[1], prefix + chunks[2][:-2] + more[2]]
    for row, ids in enumerate(expected):
        torch.testing.assert_close(logits[row], plain(model, ids, 1), atol=1e-4, rtol=1e-4)


def test_a_row_shorter_than_keep_gets_its_own_tokens_at_the_end(model):
    chunks = rows(random.Random(7), [80, 2])
    _, logits = extend(model, None, chunks, pad_id=0, keep=3)
    assert logits.shape[:2] == (2, 3)
    torch.testing.assert_close(logits[1, -2:], plain(model, chunks[1], 2), atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_transformers_own_masks_reach_the_shortened_layer(model):
    """A stock forward pass (transformers builds the 4-D mask: boolean for SDPA, additive for eager) inside the block."""
    chunks = rows(random.Random(11), [9, 4, 7])
    width = max(map(len, chunks))
    ids = torch.tensor([[0] * (width - len(c)) + c for c in chunks])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(c) for c in chunks])[:, None]).long()
    full = model(ids, attention_mask=mask).logits[:, -3:]
    index = torch.arange(width - 3, width).expand(len(chunks), 3)
    shapes = []
    hook = model.model.layers[-1].register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    with last_layer.last_positions(model, index):
        kept = model(ids, attention_mask=mask, logits_to_keep=3).logits
    hook.remove()
    assert shapes == [(3, 3, model.config.hidden_size)]
    torch.testing.assert_close(kept, full, atol=1e-4, rtol=1e-4)
    assert model.model.layers[-1].forward.__func__ is type(model.model.layers[-1]).forward  # restored after the block
