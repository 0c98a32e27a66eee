"""Qwen3Guard-Stream without remote code: strict loading of the released layout, head parity, label maps, flag rule."""

from __future__ import annotations

import json

import pytest
import torch
from _stream import one_torch_thread, reference_logits, tiny_config, write_tiny_stream_checkpoint  # noqa: F401

from rewards.guards.stream.model import (
    DEFAULT_QUERY_CATEGORIES,
    CheckpointMismatchError,
    StreamLabels,
    load_stream_model,
)
from rewards.guards.stream.rule import FlagTracker, first_flag, query_verdict

IDS = [151644, 872, 198, 9707, 1879, 11, 1246, 653, 358, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_stream_checkpoint(tmp_path_factory.mktemp("stream") / "random")


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_stream_model(ckpt, device="cpu", dtype="float32")


def test_loads_released_layout_strictly(loaded, ckpt):
    net, labels, folder = loaded
    assert folder == ckpt
    assert net.model.__class__.__name__ == "Qwen3Model"  # transformers' own backbone, no remote code
    heads = {name for name in net.state_dict() if not name.startswith("model.")}
    assert heads == {
        f"{p}{part}.weight"
        for p in ("", "query_")
        for part in ("risk_level_category_pre", "risk_level_category_layernorm", "risk_level_head", "category_head")
    }
    assert not any(t.is_meta for t in net.parameters())
    assert labels.risk == ("Safe", "Unsafe", "Controversial")
    assert labels.query_category == DEFAULT_QUERY_CATEGORIES
    assert net.model.rotary_emb.inv_freq.dtype == torch.float32


def test_head_logits_match_plain_reference(loaded, ckpt):
    net, _, _ = loaded
    ref = reference_logits(ckpt, IDS)
    with torch.inference_mode():
        out = net(torch.tensor([IDS]))
    for name, ours in zip(("risk", "category", "query_risk", "query_category"), out, strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours[0].double(), ref[name], atol=1e-5, rtol=0)
    # The random heads give a mix of labels, so the comparison is not between constants.
    assert len(set(out.risk[0].argmax(-1).tolist())) > 1


def test_bfloat16_load_keeps_rotary_in_float32(ckpt):
    net, _, _ = load_stream_model(ckpt, device="cpu", dtype="bfloat16")
    assert net.model.embed_tokens.weight.dtype == torch.bfloat16
    assert net.model.rotary_emb.inv_freq.dtype == torch.float32
    ref = reference_logits(ckpt, IDS)["risk"]
    with torch.inference_mode():
        ours = net(torch.tensor([IDS])).risk[0].double()
    assert (ours - ref).abs().max() < 0.15  # bf16 rounding only


def test_plain_qwen3_checkpoint_is_refused_clearly(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = {k: v for k, v in tiny_config(vocab_size=1000).items() if not k.endswith("_map")}
    Qwen3ForCausalLM(Qwen3Config(**config)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="not a Qwen3Guard-Stream checkpoint.*risk_level_head"):
        load_stream_model(tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "patch", "message"),
    [
        ({}, {"num_category": 7}, "config.json says num_category=7 but the checkpoint's tensors give 8"),
        ({"extra_tensors": {"score.weight": torch.zeros(3, 64)}}, {}, r"unexpected: \['score.weight'\]"),
        ({"drop_tensors": ("model.layers.1.mlp.up_proj.weight",)}, {}, "missing: .*layers.1.mlp.up_proj"),
        ({}, {"intermediate_size": 96}, "wrong shape: .*mlp"),
        ({}, {"model_type": "llama"}, "Qwen3 backbone"),
        ({}, {"response_risk_level_map": {"0": "Safe", "1": "Harmful", "2": "Controversial"}}, "'Harmful'"),
        ({"config_overrides": {"num_risk_level": 2}}, {}, "num_risk_level must be 3"),
    ],
)
def test_mismatching_checkpoints_raise_clear_errors(tmp_path, kwargs, patch, message):
    if "config_overrides" in kwargs:  # a risk head of the wrong size, written consistently with its config
        write_tiny_stream_checkpoint(tmp_path, seed=1)
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(tmp_path / "model.safetensors"))
        tensors["risk_level_head.weight"] = tensors["risk_level_head.weight"][:2].contiguous()
        save_file(tensors, str(tmp_path / "model.safetensors"))
        patch = kwargs["config_overrides"]
    else:
        write_tiny_stream_checkpoint(tmp_path, **kwargs, seed=1)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **patch}))
    with pytest.raises(CheckpointMismatchError, match=message):
        load_stream_model(tmp_path, device="cpu")


def test_lm_head_of_a_reexport_is_ignored(tmp_path):
    write_tiny_stream_checkpoint(tmp_path, extra_tensors={"lm_head.weight": torch.zeros(8, 64)})
    net, _, _ = load_stream_model(tmp_path, device="cpu")
    assert not hasattr(net, "lm_head")


def test_missing_weights_or_config_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="no \\*.safetensors"):
        load_stream_model(tmp_path, device="cpu")
    write_tiny_stream_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointMismatchError, match="no config.json"):
        load_stream_model(tmp_path, device="cpu")


def test_label_maps_come_from_config_with_defaults():
    config = json.loads(json.dumps(tiny_config()))
    config["response_category_map"]["0"] = '"Violent"'  # the quoted spelling of the official evaluation script
    config["response_risk_level_map"] = {"0": "safe", "1": "UNSAFE", "2": "Controversial"}
    labels = StreamLabels.from_config(config, n_category=8, n_query_category=9)
    assert labels.category[0] == "Violent" and labels.risk == ("Safe", "Unsafe", "Controversial")
    assert StreamLabels.from_config({}, n_category=8, n_query_category=9) == StreamLabels()
    with pytest.raises(CheckpointMismatchError, match="has 8 labels but the checkpoint's head has 5"):
        StreamLabels.from_config(config, n_category=5, n_query_category=9)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], ("Safe", None)),
        (["Unsafe"], ("Safe", None)),
        (["Safe", "Unsafe", "Safe", "Unsafe"], ("Safe", None)),
        (["Safe", "Unsafe", "Unsafe"], ("Unsafe", 2)),
        (["Unsafe", "Unsafe", "Unsafe", "Unsafe"], ("Unsafe", 1)),
        (["Controversial", "Controversial", "Safe"], ("Controversial", 1)),
        (["Controversial", "Controversial", "Safe", "Unsafe", "Unsafe"], ("Unsafe", 4)),  # Unsafe pair first
        (["Unsafe", "Controversial", "Unsafe", "Controversial"], ("Safe", None)),  # mixed pairs flag nothing
        (["Safe", "Controversial", "Unsafe", "Unsafe", "Controversial", "Controversial"], ("Unsafe", 3)),
    ],
)
def test_flag_rule_on_hand_built_sequences(labels, expected):
    assert first_flag(labels) == expected


def test_tracker_verdict_carries_flagged_token_details():
    tracker = FlagTracker()
    sequence = [("Safe", "PII"), ("Controversial", "PII"), ("Controversial", "Violent"), ("Unsafe", "PII")]
    for i, (label, category) in enumerate(sequence):
        tracker.push(label, category, {"Safe": 0.1 * i, "Unsafe": 0.0, "Controversial": 1 - 0.1 * i})
        if i == 2:
            assert tracker.flagged("strict") and not tracker.flagged("loose")
    verdict = tracker.verdict()
    assert (verdict.safety, verdict.category, verdict.flagged_at, verdict.answer_tokens) == (
        "Controversial",
        "Violent",
        2,
        4,
    )
    assert verdict.probs["Safe"] == pytest.approx(0.2) and verdict.refusal is None
    assert not verdict.is_safe("strict") and verdict.is_safe("loose")
    tracker.push("Unsafe", "Sexual Content or Sexual Acts")
    verdict = tracker.verdict(truncated=True)
    assert (verdict.safety, verdict.category, verdict.flagged_at, verdict.truncated) == (
        "Unsafe",
        "Sexual Content or Sexual Acts",
        4,
        True,
    )
    assert query_verdict("Safe", "Jailbreak").category is None
