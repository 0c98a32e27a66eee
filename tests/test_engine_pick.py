"""Which engine runs a guard: the fast path only where its load-time probe passes, `GenerateEngine` otherwise, and
`GenerateEngine` for good once the fast path raises at run time, with the same verdicts either way."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoTokenizer, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3

from rewards.engine import FallbackEngine, GenerateEngine, VerdictRequest, pick_engine
from rewards.engine.rows import RowsEngine, probe, qwen3_forward
from rewards.guards.gen.local import LocalGenBackend
from tests._tiny import tiny_config
from tests.conftest import GUARD_TEMPLATE

CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "I can't help."}],
    [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Sure: " + "x " * 40}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! " * 30}],
]


@pytest.fixture(scope="module")
def guard(tmp_path_factory, qwen_tokenizer_path):
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_path)
    tok.chat_template = GUARD_TEMPLATE.read_text()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_config(len(tok), initializer_range=0.2)).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def verdicts(model, tok, engine: str) -> tuple[list[str], object]:
    backend = LocalGenBackend(model=model, tokenizer=tok, engine=engine, max_new_tokens=10)
    return [v.raw for v in backend.moderate(CONVERSATIONS)], backend.engine


def test_auto_takes_the_fast_path_where_the_probe_passes(guard):
    model, tok = guard
    assert probe(model) is None
    ours, engine = verdicts(model, tok, "auto")
    assert isinstance(engine, FallbackEngine) and isinstance(engine.fast, RowsEngine) and engine.name == "rows"
    theirs, oracle = verdicts(model, tok, "generate")
    assert isinstance(oracle, GenerateEngine) and ours == theirs
    assert engine.stats["forwards"] > 0 and oracle.stats["forwards"] > 0


def test_a_changed_norm_upstream_fails_the_probe_and_auto_uses_generate(guard, monkeypatch, caplog):
    """transformers' RMSNorm computing something else than the fast path assumes: the numbers check catches it."""
    model, tok = guard
    expected, _ = verdicts(model, tok, "generate")
    original = modeling_qwen3.Qwen3RMSNorm.forward
    monkeypatch.setattr(modeling_qwen3.Qwen3RMSNorm, "forward", lambda self, x: original(self, x) * 1.5)
    assert "differ from the model's own" in probe(model)
    changed, _ = verdicts(model, tok, "generate")  # the model's own (changed) numbers
    with caplog.at_level(logging.WARNING, logger="rewards.engine.pick"):
        ours, engine = verdicts(model, tok, "auto")
    assert isinstance(engine, GenerateEngine) and ours == changed
    assert "fast path does not apply" in caplog.text and "differ" in caplog.text
    with pytest.raises(ValueError, match="rows engine cannot run this model"):
        pick_engine(model, tok, "rows")
    monkeypatch.undo()
    assert verdicts(model, tok, "auto")[0] == expected


def test_a_module_moved_upstream_fails_the_probe(guard, monkeypatch):
    model, tok = guard
    monkeypatch.delattr(model.model, "rotary_emb")
    assert "rotary_emb" in probe(model)
    monkeypatch.undo()
    half = Qwen3ForCausalLM(tiny_config(64)).to(torch.float16)
    assert "float16" in probe(half)


def test_a_fast_path_failing_at_run_time_falls_back_for_good(guard, monkeypatch, caplog):
    model, tok = guard
    expected, _ = verdicts(model, tok, "generate")
    backend = LocalGenBackend(model=model, tokenizer=tok, engine="auto", max_new_tokens=10)
    engine = backend.engine
    assert isinstance(engine, FallbackEngine)

    def broken(*args, **kwargs):
        raise AttributeError("'Qwen3Attention' object has no attribute 'q_norm'")

    monkeypatch.setattr(qwen3_forward, "extend_batches", broken)
    with caplog.at_level(logging.WARNING, logger="rewards.engine.pick"):
        assert [v.raw for v in backend.moderate(CONVERSATIONS)] == expected  # the failing batch, decoded again
        assert [v.raw for v in backend.moderate(CONVERSATIONS[:2])] == expected[:2]
    assert engine.name == "generate" and "q_norm" in engine.failure
    assert caplog.text.count("failed") == 1  # logged once
    monkeypatch.undo()
    assert engine.name == "generate"  # it stays on the fallback


def test_pick_engine_checks_its_argument(guard):
    model, tok = guard
    with pytest.raises(ValueError, match="engine must be one of"):
        pick_engine(model, tok, "fast")
    requests = [VerdictRequest(ids=[1, 2, 3], response=False)]
    assert len(pick_engine(model, tok, "generate", max_new_tokens=4).decode(requests)[0].generated) <= 4
