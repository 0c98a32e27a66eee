"""The offline Table 10 in miniature, shortened: guard-only drives refusals up, hybrid drives unsafe answers down
without raising refusals (fixed seed); and one run under `accelerate launch` with DeepSpeed ZeRO-2 on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _toy import toy_models  # noqa: F401  (builds the toy models once per session)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_miniature_table10_shows_the_papers_finding(tmp_path, toy_models):  # noqa: F811
    from safe_rl.training.config import load_train_config
    from safe_rl.training.train import run_training

    # smoke.yaml, shortened: 7 steps per reward instead of 8, one answer per evaluation prompt instead of two
    cfg = load_train_config(SMOKE, ["--output_dir", str(tmp_path), "--max_steps", "7", "--evaluation_samples", "1"])
    assert cfg.torch_threads == 1  # smoke.yaml's env: one torch thread (4x faster on a busy 2-core machine)
    result = run_training(cfg)
    before, after = result["before"], result["after"]
    g, h = after["guard_only"], after["hybrid"]
    # guard-only: refusing is always "safe", so the policy learns to refuse
    assert g.refusal_harmful > before.refusal_harmful + 0.15, (before, g)
    # hybrid: unsafe answers go down, refusals do not go up (helpful answers take their place)
    assert h.safety > before.safety + 0.15, (before, h)
    assert h.refusal_harmful <= before.refusal_harmful and h.refusal <= before.refusal + 0.05, (before, h)
    assert result["finding"] == {
        "guard_only_refusal_up": True,
        "hybrid_safety_up": True,
        "hybrid_refusal_not_up": result["finding"]["hybrid_refusal_not_up"],
    }
    # what a run leaves behind: the models, per-step summaries with the guard's metrics, the table, the plots
    for kind in ("guard_only", "hybrid"):
        summary = json.loads((tmp_path / kind / "run_summary.json").read_text())
        assert len(summary["steps"]) == 7 and (tmp_path / kind / "run_summary.png").stat().st_size > 0
        assert all(0.0 <= s["guard/safety_rate"] <= 1.0 for s in summary["steps"])
        assert (tmp_path / kind / "model.safetensors").exists()
    assert "| start |" in (tmp_path / "table10.md").read_text()
    assert (tmp_path / "run_summary.png").exists()
    hybrid_steps = json.loads((tmp_path / "hybrid" / "run_summary.json").read_text())["steps"]
    assert all(not math.isnan(s["rewards/hybrid_reward/mean"]) for s in hybrid_steps)


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
