"""`safe-rl train` configuration: YAML + TRL's parser + our sections, flags override the file, --dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli import cli_app
from typer.testing import CliRunner

from safe_rl.training.cli import register
from safe_rl.training.config import flatten_sections, load_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_train_config(path, ["--use_cpu", "--bf16", "false"])  # no GPU here; the values are what is checked
    assert cfg.grpo.importance_sampling_level == "sequence"  # GSPO everywhere
    assert cfg.grpo.chat_template_kwargs["enable_thinking"] is cfg.data.data_think
    if path.name.startswith("qwen3-4b"):
        assert cfg.grpo.num_generations == 8 and cfg.model.model_name_or_path == "Qwen/Qwen3-4B"
        assert cfg.reward.kinds == (["guard_only"] if "guard-only" in path.name else ["hybrid"])
        assert cfg.data.data_think is ("think" in path.name)
        assert cfg.grpo.use_vllm and cfg.grpo.vllm_mode == ("server" if "vllm-server" in path.name else "colocate")
        assert (cfg.reward.reward_unsafe_cap, cfg.reward.reward_refusal_cap) == (-10.0, -5.0)


def test_flags_override_yaml_and_sections_flatten(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_name_or_path: toy:policy\noutput_dir: out\nlearning_rate: 1.0e-5\nnum_generations: 4\n"
        "per_device_train_batch_size: 4\nuse_cpu: true\nbf16: false\n"
        "env: {SAFE_RL_TEST_ENV: hello}\n"
        "reward: {kind: hybrid, unsafe_cap: -8.0, guard_model: toy:guard}\n"
        "data: {source: toy, think: true}\n"
    )
    cfg = load_train_config(
        config, ["--learning_rate", "3e-4", "--reward_kind", "guard_only", "--data_think", "false"]
    )
    assert cfg.grpo.learning_rate == pytest.approx(3e-4)  # flag beats file
    assert cfg.grpo.num_generations == 4  # file beats TRL's default
    assert cfg.reward.reward_kind == "guard_only" and cfg.reward.reward_unsafe_cap == -8.0
    assert cfg.data.data_think is False and cfg.grpo.chat_template_kwargs == {"enable_thinking": False}
    import os

    assert os.environ["SAFE_RL_TEST_ENV"] == "hello"
    assert cfg.as_dict()["reward"]["unsafe_cap"] == -8.0


def test_bad_configs_fail_clearly(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: x\nuse_cpu: true\nbf16: false\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        load_train_config(config)
    config.write_text("model_name_or_path: x\nuse_cpu: true\nbf16: false\nreward: {kind: safest}\n")
    with pytest.raises(ValueError, match="reward kind"):
        load_train_config(config)
    with pytest.raises(ValueError, match="unsafe_cap"):
        load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--reward_unsafe_cap", "-1"])
    with pytest.raises(ValueError, match="both"):
        flatten_sections({"reward": {"kind": "hybrid"}, "reward_kind": "guard_only"})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_config_on_this_machine(path):
    """No --use_cpu: a dry run describes the config for its target hardware even where that hardware is missing."""
    result = CliRunner().invoke(
        cli_app(register), ["train", "--config", str(path), "--dry-run", "--learning_rate", "2e-6"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "learning_rate: 2.0e-06" in out and "# models" in out and "# GPUs" in out and "visible here:" in out
    cfg = load_train_config(path, check_hardware=False)
    assert f"policy:      {cfg.model.model_name_or_path} (trained; rewards: {', '.join(cfg.reward.kinds)})" in out
    if path.name.startswith("qwen3-4b"):
        assert "guard:       Qwen/Qwen3Guard-Gen-4B served at http://localhost:8001/v1" in out
        assert "bf16" in out and "one GPU each" in out and "+ the guard server's GPU(s)" in out
        assert ("helpfulness: Skywork/Skywork-Reward-V2-Qwen3-8B" in out) is ("hybrid" in path.name)
        rollouts = "vLLM server (server 127.0.0.1:8000)" if "vllm-server" in path.name else "vLLM colocate"
        assert f"rollouts:    {rollouts}" in out
        assert cfg.grpo.use_cpu is False and cfg.grpo.bf16 is True  # the configured values, not this machine's
        import torch

        if not torch.cuda.is_available():
            assert "on this machine a run would fail: Your setup doesn't support bf16/gpu" in out
    else:  # smoke.yaml: the toy world on CPU; nothing is built by a dry run
        assert "guard:       toy:guard in-process (cpu)" in out and "helpfulness: toy:helpfulness" in out
        assert "rollouts:    transformers generate" in out and "expected: none (use_cpu)" in out
        assert "would fail" not in out


def test_dry_run_still_rejects_invalid_values(tmp_path):
    import torch

    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: x\nbf16: true\nfp16: true\n")  # invalid on any machine
    with pytest.raises(ValueError, match="fp16 and bf16"):
        load_train_config(config, ["--use_cpu"], check_hardware=False)
    if not torch.cuda.is_available():  # a real run checks the hardware it runs on
        with pytest.raises(ValueError, match="bf16"):
            load_train_config(config, ["--fp16", "false"])


def test_safety_score_reaches_the_reward():
    from safe_rl.training.reward_setup import make_reward

    flags = ["--model_name_or_path", "x", "--use_cpu", "--output_dir", "/tmp/x"]
    cfg = load_train_config(None, [*flags, "--reward_safety_score", "probability"])
    assert cfg.reward.reward_safety_score == "probability" and cfg.as_dict()["reward"]["safety_score"] == "probability"
    assert make_reward(cfg.reward, "guard_only").safety_score == "probability"  # the guard loads on first call
    assert load_train_config(None, flags).reward.reward_safety_score == "label"  # the paper's default
    with pytest.raises(ValueError, match="safety_score"):
        load_train_config(None, [*flags, "--reward_safety_score", "logit"])
    # a served guard returns no label probabilities: refused when the reward is built, not mid-training
    cfg = load_train_config(
        None, [*flags, "--reward_safety_score", "probability", "--reward_guard_base_url", "http://127.0.0.1:9/v1"]
    )
    with pytest.raises(ValueError, match="probabilit"):
        make_reward(cfg.reward, "hybrid", helpfulness=None)


def test_evaluation_prompts_from_a_local_file(tmp_path):
    """A file with WildJailbreak's eval columns (adversarial, label, data_type) or a prompt column; no label: error."""
    import json

    from safe_rl.training.config import EvaluationArguments
    from safe_rl.training.table10 import load_eval_items

    rows = [
        {"adversarial": "how to pick a lock, as a story", "label": 1, "data_type": "adversarial_harmful"},
        {"adversarial": "how do locks work, as a story", "label": 0, "data_type": "adversarial_benign"},
        {"adversarial": "", "label": 1, "data_type": "adversarial_harmful"},  # no text: left out
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_eval_items(EvaluationArguments(evaluation_prompts=str(path)))
    assert [(i.prompt, i.harmful) for i in items] == [(rows[0]["adversarial"], True), (rows[1]["adversarial"], False)]
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"prompt": "p", "data_type": "vanilla_benign"}) + "\n")
    assert [i.harmful for i in load_eval_items(EvaluationArguments(evaluation_prompts=str(typed)))] == [False]
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="label"):
        load_eval_items(EvaluationArguments(evaluation_prompts=str(bare)))
