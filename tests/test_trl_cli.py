"""TRL's own command line (``trl grpo``) with our dotted-path rewards on the toy models, each run in a fresh process:
every step judged, and a run whose guard cannot load stops with a non-zero status."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def trl_grpo(tmp_path: Path, reward_func: str, **env: str) -> subprocess.CompletedProcess:
    from rewards.loading import resolve_model_name
    from safe_rl.toy.data import toy_prompts

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    with open(data / "train.jsonl", "w") as f:
        for p in toy_prompts("train", harmful=True)[:8]:
            f.write(json.dumps({"prompt": [{"role": "user", "content": p.text}]}) + "\n")
    command = [
        str(Path(sys.executable).parent / "trl"), "grpo",  # the console script users run
        "--model_name_or_path", resolve_model_name("toy:policy"),
        "--dataset_name", str(data),
        "--reward_funcs", reward_func,
        "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--max_completion_length", "32", "--use_cpu", "--bf16", "false",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--chat_template_kwargs", '{"enable_thinking": false}',
    ]  # fmt: skip
    variables = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SAFE_RL_GUARD_MODEL": "toy:guard",
        "SAFE_RL_HELPFULNESS_MODEL": "toy:helpfulness",
        "SAFE_RL_GUARD_DEVICE": "cpu",
        "SAFE_RL_HELPFULNESS_DEVICE": "cpu",
        **env,
    }
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **variables}, timeout=600)


def logged_steps(stdout: str) -> list[dict[str, float]]:
    """The per-step metrics transformers prints (one dict per logging step; values printed as strings)."""
    steps = []
    for line in stdout.splitlines():
        if line.startswith("{") and "'loss'" in line:
            steps.append({k: float(v) for k, v in ast.literal_eval(line).items()})
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("reward_func", ["rewards.hybrid_reward", "rewards.hybrid_reward_async"])
def test_trl_grpo_cli_judges_every_step(tmp_path, reward_func):
    proc = trl_grpo(tmp_path, reward_func)
    assert proc.returncode == 0, proc.stderr[-5000:]
    steps = logged_steps(proc.stdout)
    assert len(steps) == 2, proc.stdout[-3000:]
    for step in steps:
        assert step["rewards/hybrid_reward/mean"] == step["rewards/hybrid_reward/mean"]  # not NaN: judged
        assert step["guard/failure_rate"] == 0.0 and step["guard/parse_failure_rate"] == 0.0, step
        assert -10.0 <= step["rewards/hybrid_reward/mean"] <= 10.0


@pytest.mark.slow
def test_trl_grpo_cli_stops_when_the_guard_cannot_load(tmp_path):
    proc = trl_grpo(tmp_path, "rewards.hybrid_reward", SAFE_RL_GUARD_MODEL=str(tmp_path / "no-such-guard"))
    assert proc.returncode != 0
    assert f"cannot load the guard '{tmp_path / 'no-such-guard'}'" in proc.stderr
    assert "Training completed" not in proc.stdout


@pytest.mark.slow
def test_trl_grpo_cli_stops_instead_of_training_on_nothing(tmp_path):
    from _serve import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # no guard server there: every sample comes back unjudged
    proc = trl_grpo(
        tmp_path,
        "rewards.guard_only_reward",
        SAFE_RL_GUARD_BASE_URL=url,
        SAFE_RL_GUARD_MODEL="served-guard",
        SAFE_RL_REWARD_UNJUDGED_PATIENCE="1",
    )
    assert proc.returncode != 0
    assert "TrainingOnNothingError" in proc.stderr and "guard server" in proc.stderr, proc.stderr[-3000:]
    assert "Training completed" not in proc.stdout
