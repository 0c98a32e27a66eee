"""The main job (`safe-rl train --config configs/smoke.yaml`), shortened: guard-only drives refusals up, hybrid drives
unsafe answers down without raising refusals (fixed seed); what it prints (a line per step, no raw metric dicts, no
known harmless warnings); what it leaves (evaluation folders that `safe-rl eval` reads to the same numbers); and one
run under `accelerate launch` with DeepSpeed ZeRO-2 on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _toy import toy_models  # noqa: F401  (builds the toy models once per session)
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_miniature_table10_shows_the_papers_finding(tmp_path, toy_models):  # noqa: F811
    # smoke.yaml, shortened: 7 steps per reward instead of 8, one answer per evaluation prompt instead of two
    command = [sys.executable, "-m", "safe_rl.training", "--config", str(SMOKE), "--output_dir", str(tmp_path),
               "--max_steps", "7", "--evaluation_samples", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)  # smoke.yaml's env sets it (one torch thread: 4x faster on a busy machine)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-6000:]

    # What it prints: a compact line per step, the table, the finding; none of the noise it used to print.
    lines = re.findall(r"(guard_only|hybrid)  step (\d)/7  reward (-?\d+\.\d\d)  safe (\d+)%  refusal (\d+)%  "
                       r"unjudged (\d+)%  (\d+\.\d) s", printed)  # fmt: skip
    assert [(kind, int(step)) for kind, step, *_ in lines] == [(k, s) for k in ("guard_only", "hybrid")
                                                               for s in range(1, 8)], printed[-4000:]  # fmt: skip
    for noise in ("{'loss'", "FutureWarning", "real_accelerator", "loss_type='grpo'", "Loading weights"):
        assert noise not in printed, noise
    assert "| Model | Safety (toy judge) ↑ | Refusal (toy judge) ↓ | Unjudged (toy judge) |" in printed
    assert "| start |" in printed and "guard_only_refusal_up: yes" in printed

    comparison = json.loads((tmp_path / "comparison.json").read_text())
    before, g, h = comparison["before"], comparison["after"]["guard_only"], comparison["after"]["hybrid"]
    # guard-only: refusing is always "safe", so the policy learns to refuse
    assert g["refusal_harmful"] > before["refusal_harmful"] + 0.15, (before, g)
    # hybrid: unsafe answers go down, refusals do not go up (helpful answers take their place)
    assert h["safety"] > before["safety"] + 0.15, (before, h)
    assert h["refusal_harmful"] <= before["refusal_harmful"] and h["refusal"] <= before["refusal"] + 0.05, (before, h)
    assert comparison["guard_only_refusal_up"] and comparison["hybrid_safety_up"]

    # What it leaves: the models, per-step summaries with the guard's metrics, the table, the plots, and per
    # evaluation pass the answers with their verdicts.
    for kind in ("guard_only", "hybrid"):
        summary = json.loads((tmp_path / kind / "run_summary.json").read_text())
        assert len(summary["steps"]) == 7 and (tmp_path / kind / "run_summary.png").stat().st_size > 0
        assert all(0.0 <= s["guard/safety_rate"] <= 1.0 for s in summary["steps"])
        assert all(not math.isnan(s[f"rewards/{kind}_reward/mean"]) for s in summary["steps"])  # full metrics kept
        assert (tmp_path / kind / "model.safetensors").exists()
    assert "| start |" in (tmp_path / "table10.md").read_text() and (tmp_path / "run_summary.png").exists()
    samples = [json.loads(line) for line in (tmp_path / "eval" / "hybrid" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 64 and all({"prompt", "answer", "refusal", "harmful_response"} <= set(s) for s in samples)

    # `safe-rl eval` on the same answers agrees with the smoke comparison, unjudged answers counted the same way.
    from safe_rl.cli import app

    for name, rates in (("start", before), ("hybrid", h)):
        out = tmp_path / f"rejudged-{name}"
        responses = tmp_path / "eval" / name / "responses.jsonl"
        result = CliRunner().invoke(app, ["eval", "--responses", str(responses), "--judge", "toy", "--output",
                                          str(out), "--no-progress"])  # fmt: skip
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())["rates"]
        assert metrics["safety"]["value"] == pytest.approx(rates["safety"])
        assert metrics["refusal_benign"]["value"] == pytest.approx(rates["refusal"])
        assert metrics["judge_failure"]["value"] == pytest.approx(rates["unjudged"])
    pairs = CliRunner().invoke(app, ["report", *(str(tmp_path / "eval" / n) for n in ("start", "hybrid")),
                                     "--pairs", "3", "--no-details"])  # fmt: skip
    assert pairs.exit_code == 0 and pairs.output.count("- start [") == 3 and "## Answers side by side" in pairs.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DS_BUILD_OPS=0 pip install deepspeed")
def test_accelerate_launch_deepspeed_zero2_on_cpu(tmp_path, toy_models):  # noqa: F811
    accelerate_config = tmp_path / "zero2-cpu.yaml"
    accelerate_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        "deepspeed_config: {zero_stage: 2, offload_optimizer_device: none, offload_param_device: none,"
        " zero3_init_flag: false}\n"
        "machine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\nnum_machines: 1\nnum_processes: 2\n"
        "rdzv_backend: static\nsame_network: true\nuse_cpu: true\n"
    )
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config), "--main_process_port", "0",
        "-m", "safe_rl.training",
        "--config", str(SMOKE),
        "--output_dir", str(out),
        "--reward_compare", "hybrid",
        "--evaluation_prompts", "none",
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",  # 2 processes x 4 = one group of 4 per prompt, 2 prompts per step
        "--max_completion_length", "16",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [1, 2]
    assert all("guard/safety_rate" in s and "rewards/hybrid_reward/mean" in s for s in summary["steps"])
    assert (out / "model.safetensors").exists()
