"""`safe-rl train` configuration: YAML + TRL's parser + our sections, flags override the file, --dry-run, the output
folder, and usage errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import cli_app
from typer.testing import CliRunner

from safe_rl.command_line import UsageError, flatten_sections
from safe_rl.training.cli import register
from safe_rl.training.config import SECTIONS, load_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_train_config(path, ["--use_cpu", "--bf16", "false"])  # no GPU here; the values are what is checked
    assert cfg.grpo.importance_sampling_level == "sequence" and cfg.grpo.loss_type == "grpo"  # GSPO everywhere
    assert cfg.grpo.chat_template_kwargs["enable_thinking"] is cfg.data.data_think
    if path.name.startswith("qwen3-4b"):
        assert cfg.grpo.num_generations == 8 and cfg.model.model_name_or_path == "Qwen/Qwen3-4B"
        assert cfg.kinds == (["guard_only"] if "guard-only" in path.name else ["hybrid"])
        assert cfg.data.data_think is ("think" in path.name)
        assert cfg.grpo.use_vllm and cfg.grpo.vllm_mode == ("server" if "vllm-server" in path.name else "colocate")
        assert (cfg.reward.reward_unsafe_cap, cfg.reward.reward_refusal_cap) == (-10.0, -5.0)
        assert cfg.guard.guard_model == "Qwen/Qwen3Guard-Gen-4B" and cfg.guard.guard_base_url.endswith(":8001/v1")
        assert cfg.grpo.activation_checkpointing is True


def test_no_future_warning_from_the_shipped_configs(recwarn):
    load_train_config(REPO / "configs" / "smoke.yaml")
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)], [str(w.message) for w in recwarn]


def test_flags_override_yaml_and_sections_flatten(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_name_or_path: toy:policy\noutput_dir: out\nlearning_rate: 1.0e-5\nnum_generations: 4\n"
        "per_device_train_batch_size: 4\nuse_cpu: true\nbf16: false\n"
        "env: {SAFE_RL_TEST_ENV: hello}\n"
        "guard: {model: toy:guard, batch_size: 8}\nhelpfulness: {model: toy:helpfulness}\n"
        "reward: {kind: hybrid, unsafe_cap: -8.0, compare: [guard_only, hybrid]}\n"
        "data: {source: toy, think: true}\n"
    )
    flags = [
        "--learning_rate",
        "3e-4",
        "--reward_kind",
        "guard_only",
        "--data_think",
        "false",
        "--guard-batch-size",
        "4",
    ]
    cfg = load_train_config(config, flags)
    assert cfg.grpo.learning_rate == pytest.approx(3e-4)  # flag beats file
    assert cfg.grpo.num_generations == 4  # file beats TRL's default
    assert cfg.reward.reward_kind == "guard_only" and cfg.reward.reward_unsafe_cap == -8.0
    assert cfg.guard.guard_model == "toy:guard" and cfg.guard.guard_batch_size == 4  # --flag-name works too
    assert cfg.kinds == ["guard_only", "hybrid"] and cfg.helpfulness.helpfulness_model == "toy:helpfulness"
    assert cfg.data.data_think is False and cfg.grpo.chat_template_kwargs == {"enable_thinking": False}
    import os

    assert os.environ["SAFE_RL_TEST_ENV"] == "hello"
    described = cfg.as_dict()
    assert set(SECTIONS) <= set(described) and described["reward"]["unsafe_cap"] == -8.0
    assert described["guard"]["batch_size"] == 4 and described["reward"]["compare"] == ["guard_only", "hybrid"]


def test_bad_configs_fail_clearly(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: x\nuse_cpu: true\nbf16: false\nnot_a_field: 1\n")
    with pytest.raises(UsageError, match="not_a_field"):
        load_train_config(config)
    config.write_text("model_name_or_path: x\nuse_cpu: true\nbf16: false\nreward: {kind: safest}\n")
    with pytest.raises(ValueError, match="reward_kind"):
        load_train_config(config)
    config.write_text("model_name_or_path: x\nuse_cpu: true\nreward: {guard_model: old-layout}\n")
    with pytest.raises(UsageError, match="reward_guard_model"):  # the sections before guard: and helpfulness:
        load_train_config(config)
    with pytest.raises(ValueError, match="unsafe_cap"):
        load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--reward_unsafe_cap", "-1"])
    with pytest.raises(UsageError, match="unknown argument"):
        load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--reward_guard_model", "g"])
    with pytest.raises(UsageError, match="both"):
        flatten_sections({"reward": {"kind": "hybrid"}, "reward_kind": "guard_only"}, SECTIONS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_config_on_this_machine(path, tmp_path, monkeypatch):
    """No --use_cpu: a dry run describes the config for its target hardware even where that hardware is missing,
    and says what a run would find missing here (the 4B configs' prepared data folders)."""
    monkeypatch.chdir(tmp_path)  # relative data and output folders resolve in an empty folder
    (tmp_path / "configs").symlink_to(REPO / "configs")
    result = CliRunner().invoke(
        cli_app(register), ["train", "--config", str(path), "--dry-run", "--learning_rate", "2e-6"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "learning_rate: 2.0e-06" in out and "# models" in out and "# GPUs" in out and "visible here:" in out
    cfg = load_train_config(path, ["--dry-run"])
    assert f"policy:      {cfg.model.model_name_or_path} (trained; rewards: {', '.join(cfg.kinds)})" in out
    if path.name.startswith("qwen3-4b"):
        assert "guard:       Qwen/Qwen3Guard-Gen-4B (gen) served at http://localhost:8001/v1" in out
        assert "bf16" in out and "one GPU each" in out and "+ the guard server's GPU(s)" in out
        assert ("helpfulness: Skywork/Skywork-Reward-V2-Qwen3-8B" in out) is ("hybrid" in path.name)
        rollouts = "vLLM server (server 127.0.0.1:8000)" if "vllm-server" in path.name else "vLLM colocate"
        assert f"rollouts:    {rollouts}" in out
        assert cfg.grpo.use_cpu is False and cfg.grpo.bf16 is True  # the configured values, not this machine's
        assert f"on this machine a run would fail: no such data file or folder: {cfg.data.data_source}" in out
        import torch

        if not torch.cuda.is_available():
            assert "on this machine a run would fail: Your setup doesn't support bf16/gpu" in out
    else:  # smoke.yaml: the toy world on CPU; nothing is built by a dry run
        assert "guard:       toy:guard (gen) in-process on cpu" in out and "helpfulness: toy:helpfulness" in out
        assert "rollouts:    transformers generate" in out and "expected: none (use_cpu)" in out
        assert "would fail" not in out and "output folder: free" in out


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
    from safe_rl.training.train import make_reward

    flags = ["--model_name_or_path", "x", "--use_cpu", "--output_dir", "/tmp/x"]
    cfg = load_train_config(None, [*flags, "--reward_safety_score", "probability"])
    assert cfg.reward.reward_safety_score == "probability" and cfg.as_dict()["reward"]["safety_score"] == "probability"
    assert make_reward(cfg, "guard_only", guard=cfg.guard.build()).safety_score == "probability"  # loads on 1st call
    assert load_train_config(None, flags).reward.reward_safety_score == "label"  # the paper's default
    with pytest.raises(ValueError, match="safety_score"):
        load_train_config(None, [*flags, "--reward_safety_score", "logit"])
    # a served guard returns no label probabilities: refused when the reward is built, not mid-training
    cfg = load_train_config(
        None, [*flags, "--reward_safety_score", "probability", "--guard_base_url", "http://127.0.0.1:9/v1"]
    )
    with pytest.raises(ValueError, match="probabilit"):
        make_reward(cfg, "hybrid", guard=cfg.guard.build(), helpfulness=object())


def test_evaluation_prompts_are_a_benchmark(tmp_path):
    """evaluation.prompts takes what `safe-rl eval --benchmark` takes: WildJailbreak's eval columns (adversarial,
    label or data_type; vanilla where adversarial is empty), a prompt file with labels, the toy benchmark."""
    from safe_rl.evaluation.benchmarks import load_benchmark

    rows = [
        {"adversarial": "how to pick a lock, as a story", "label": 1, "data_type": "adversarial_harmful"},
        {"adversarial": "how do locks work, as a story", "label": 0, "data_type": "adversarial_benign"},
        {"vanilla": "how to pick a lock", "adversarial": "", "data_type": "vanilla_harmful"},
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_benchmark(str(path)).prompts
    assert [(p.prompt, p.harmful) for p in prompts] == [
        (rows[0]["adversarial"], True),
        (rows[1]["adversarial"], False),
        ("how to pick a lock", True),
    ]
    typed = tmp_path / "typed.jsonl"
    typed.write_text(json.dumps({"prompt": "p", "data_type": "vanilla_benign"}) + "\n")
    assert [p.harmful for p in load_benchmark(str(typed)).prompts] == [False]
    toy = load_benchmark("toy").for_run(limit=4, seed=0, samples=2)
    assert len(toy) == 8 and toy[0].id.endswith("#0") and [p.index for p in toy] == list(range(8))
    with pytest.raises(FileNotFoundError, match="no such benchmark file: data/missing.jsonl"):
        load_benchmark("data/missing.jsonl")


def test_output_folder_is_not_overwritten_silently(tmp_path):
    from safe_rl.training.train import check_output_dir

    out = tmp_path / "run"
    cfg = load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--output_dir", str(out)])
    check_output_dir(cfg, resume=False, overwrite=False)  # absent: fine
    out.mkdir()
    (out / "run_summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        check_output_dir(cfg, resume=False, overwrite=False)
    check_output_dir(cfg, resume=True, overwrite=False)  # continued: kept
    assert (out / "run_summary.json").exists()
    check_output_dir(cfg, resume=False, overwrite=True)  # started again: emptied
    assert not out.exists()
    with pytest.raises(UsageError, match="pass one"):
        load_train_config(None, ["--model_name_or_path", "x", "--use_cpu", "--resume", "--overwrite"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "configs/nothere.yaml"], "error: config file not found: configs/nothere.yaml"),
        (["--config", "configs/smoke.yaml", "--learning-rat", "1"], "error: unknown argument(s) ['--learning-rat'"),
        (["--config", "configs/smoke.yaml", "--max_steps", "many"], "error: argument --max_steps"),
        (["--config", "configs/smoke.yaml", "--data_source", "data/typo.jsonl"], "error: no such data file"),
        (["--config", "configs/smoke.yaml", "--reward_kind", "safest"], "error: reward_kind must be one of"),
    ],
)
def test_usage_errors_are_one_line(args, message, monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli_app(register), ["train", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output


def test_help_lists_every_section_field():
    result = CliRunner().invoke(cli_app(register), ["train", "--help"])
    assert result.exit_code == 0
    for flag in ("--guard_model", "--helpfulness_model", "--reward_kind", "--reward_compare", "--data_source",
                 "--evaluation_prompts", "--learning_rate", "--dry_run", "--overwrite"):  # fmt: skip
        assert flag in result.output, flag
