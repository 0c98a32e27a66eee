"""The launch scripts (scripts/*.sh) under real bash with DRY_RUN=1: the command each would run, checked against
accelerate's own argument parser and `safe-rl train --dry-run`, without GPUs, vLLM or a guard server."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from _cli import cli_app
from typer.testing import CliRunner

from safe_rl.training.cli import register

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/qwen3-4b-saferl-hybrid.yaml"


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TRAIN_GPUS", "GUARD_URL", "NODE_RANK", "MAIN_ADDR")}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        cwd=REPO,
        env={**clean, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _printed(name: str, *args: str, **env: str) -> list[str]:
    proc = _script(name, *args, **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly the command, nothing run
    return shlex.split(lines[0])


def _accelerate_args(argv: list[str]):
    from accelerate.commands.launch import launch_command_parser

    i = argv.index("launch")
    assert argv[i - 1] == "accelerate"
    return launch_command_parser().parse_args(argv[i + 1 :])


def _train_dry_run(train_args: list[str]) -> str:
    app = cli_app(register)
    result = CliRunner().invoke(app, ["train", *train_args, "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.output


def test_launch_guard_prints_vllm_serve():
    argv = _printed("launch_guard.sh")
    assert argv[:4] == ["env", "CUDA_VISIBLE_DEVICES=7", "vllm", "serve"]
    assert argv[4] == "Qwen/Qwen3Guard-Gen-4B"
    opts = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert opts == {
        "--port": "8001",
        "--max-model-len": "8192",
        "--gpu-memory-utilization": "0.85",
        "--generation-config": "vllm",
    }
    argv = _printed("launch_guard.sh", GUARD_MODEL="Qwen/Qwen3Guard-Gen-0.6B", GUARD_GPU="3", PORT="9000")
    assert argv[1] == "CUDA_VISIBLE_DEVICES=3" and argv[4] == "Qwen/Qwen3Guard-Gen-0.6B" and "9000" in argv


def test_train_1node_prints_accelerate_launch():
    argv = _printed("train_1node.sh", CONFIG, "--resume", "--learning_rate", "2e-6")
    assert argv[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6"]  # GPU 7 serves the guard
    args = _accelerate_args(argv)
    assert args.config_file == "configs/accelerate/zero3.yaml" and (REPO / args.config_file).exists()
    assert args.num_processes == 7 and args.module and args.training_script == "safe_rl.training"
    assert args.training_script_args == [
        "--config", CONFIG, "--guard_base_url", "http://localhost:8001/v1", "--resume", "--learning_rate", "2e-6"
    ]  # fmt: skip
    # what the training processes would run resolves on this machine
    out = _train_dry_run(args.training_script_args)
    assert "learning_rate: 2.0e-06" in out and "served at http://localhost:8001/v1" in out

    argv = _printed("train_1node.sh", CONFIG, TRAIN_GPUS="4", GUARD_URL="http://g:1/v1", ACCELERATE_CONFIG="a.yaml")
    args = _accelerate_args(argv)
    assert argv[1] == "CUDA_VISIBLE_DEVICES=0,1,2,3" and args.num_processes == 4 and args.config_file == "a.yaml"
    assert args.training_script_args == ["--config", CONFIG, "--guard_base_url", "http://g:1/v1"]


def test_train_multinode_prints_rank_and_address():
    env = {"NODE_RANK": "1", "MAIN_ADDR": "10.0.0.1", "GUARD_URL": "http://10.0.0.9:8001/v1", "NUM_NODES": "4"}
    argv = _printed("train_multinode.sh", CONFIG, "--max_steps", "10", **env)
    assert argv[0] == "accelerate"
    args = _accelerate_args(argv)
    assert args.config_file == "configs/accelerate/zero3-multinode.yaml" and (REPO / args.config_file).exists()
    assert (args.num_machines, args.machine_rank, args.num_processes) == (4, 1, 32)  # 4 nodes x 8 GPUs
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29500)
    assert args.training_script_args == [
        "--config", CONFIG, "--guard_base_url", "http://10.0.0.9:8001/v1", "--max_steps", "10"
    ]  # fmt: skip
    assert "max_steps: 10" in _train_dry_run(args.training_script_args)


@pytest.mark.parametrize("missing", ["NODE_RANK", "MAIN_ADDR", "GUARD_URL"])
def test_train_multinode_requires_its_variables(missing):
    env = {"NODE_RANK": "0", "MAIN_ADDR": "10.0.0.1", "GUARD_URL": "http://10.0.0.9:8001/v1"}
    del env[missing]
    proc = _script("train_multinode.sh", CONFIG, **env)
    assert proc.returncode != 0 and missing in proc.stderr and not proc.stdout


def test_scripts_need_a_config():
    for name in ("train_1node.sh", "train_multinode.sh"):
        proc = _script(name)
        assert proc.returncode != 0 and "usage" in proc.stderr
