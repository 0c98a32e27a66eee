"""Every command in README.md runs as written.

The test reads the README's ```bash blocks and runs each command, in order, in an empty folder (with the repository's
configs/ and scripts/ linked in, as in a clone): commands on the toy models run as written; commands that need the hub
or a GPU run with ``--dry-run`` (which checks their settings and local files); the launch scripts run with
``DRY_RUN=1``. The set-up lines are what CI runs (.ci/run), and the main job's real run is tests/test_smoke_train.py,
so here it runs as a dry run. A README command that fits no rule fails the test: a new command needs a rule.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _toy import toy_models  # noqa: F401  (builds the toy models once per session)
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAIN_JOB = "safe-rl train --config configs/smoke.yaml"
HUB_OR_SERVER = re.compile(r"https?://|\b(Qwen|allenai|Skywork)/")


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def how(command: str) -> str:
    """How the test runs ``command`` (see the module docstring)."""
    if command.startswith(("python3 -m venv", "pip install", "DS_BUILD_OPS=0 pip install", "ruff check")):
        return "ci"
    if command == MAIN_JOB:
        return "dry-run"
    if re.match(r"^([A-Z_]+=\S+ )*scripts/\S+\.sh\b", command):
        return "script"
    if command.startswith("vllm serve"):
        return "vllm"
    if command.startswith("python -m verl.trainer.main_ppo ... "):
        return "verl"
    if command.startswith("curl ") and command.endswith("/health"):
        return "covered"  # a running serve-reward's health: tests/test_reward_server.py asks it, on loopback
    if command.startswith("python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url http://openrlhf:$KEY@"):
        return "covered"  # OpenRLHF's own client with the key in the URL: tests/test_openrlhf.py
    if command.startswith("python -c "):
        return "run"
    if command.startswith("safe-rl "):
        offline = {
            "eval": "--benchmark toy" in command or "--responses " in command,  # default: WildJailbreak (hub)
            "prepare": "--data_source toy" in command,  # default: WildJailbreak (hub)
            "score": True,
            "report": True,
        }.get(command.split()[1], False)  # train: the main job runs in test_smoke_train.py; the others need GPUs
        return "run" if offline and not HUB_OR_SERVER.search(command) else "dry-run"
    raise AssertionError(f"README command with no rule in tests/test_readme_commands.py: {command}")


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert MAIN_JOB in commands and len(commands) > 15
    kinds = {c: how(c) for c in commands}
    assert sum(k == "run" for k in kinds.values()) >= 6  # the toy commands really run


def test_setup_lines_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().replace(" -q", "").replace(".ci-venv", ".venv")  # CI's own venv
    for command in (c for c in readme_commands() if how(c) == "ci"):
        for part in command.split(" && "):
            assert part.replace(" -q", "") in ci, f"README set-up line not in .ci/run: {part}"
    assert "torch==2.13.0+cpu" in ci  # the CPU build, chosen on purpose


def _run_script(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    env = {**os.environ, "DRY_RUN": "1"}
    while "=" in words[0] and not words[0].startswith("scripts/"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return subprocess.run(["bash", *words], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _compose_verl(command: str) -> str:
    """verl's own ``ppo_trainer.yaml`` composed by Hydra with the command's ``key=value`` overrides (the rest of a
    real run's command line is the user's, hence the ``...``), and our function loaded from the configured path."""
    import verl.trainer.main_ppo as main_ppo
    from hydra import compose, initialize_config_dir

    overrides = [word for word in shlex.split(command)[3:] if word != "..."]
    folder = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=folder, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    function = config.reward.custom_reward_function
    module = importlib.import_module(function.path.removeprefix("pkg://"))
    assert callable(getattr(module, function.name)), command
    return f"{function.path}:{function.name} {dict(function.reward_kwargs)}"


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, monkeypatch, toy_models):  # noqa: F811
    from safe_rl.cli import app

    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    ran: dict[str, str] = {}
    for command in readme_commands():
        kind = how(command)
        if kind == "ci":
            continue
        if kind == "vllm":
            if importlib.util.find_spec("vllm") is None:
                continue  # no CPU build of vLLM: an optional extra
            kind, command = "run", command.split()[0] + " serve --help"
        if kind == "covered":
            continue
        if kind == "verl":
            ran[command] = _compose_verl(command)
            continue
        if kind == "script":
            proc = _run_script(command, tmp_path)
            assert proc.returncode == 0 and proc.stdout.startswith(("env ", "accelerate ")), (command, proc.stderr)
            ran[command] = proc.stdout
            continue
        if command.startswith("python -c "):
            proc = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True)
            assert proc.returncode == 0, (command, proc.stderr)
            ran[command] = proc.stdout
            continue
        args = shlex.split(command)[1:] + (["--dry-run"] if kind == "dry-run" else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}\n{result.exception!r}"
        ran[command] = result.output
    # What the toy commands left, as the README says.
    assert json.loads((tmp_path / "runs/toy-start/metrics.json").read_text())["counts"]["n"] == 64
    assert (tmp_path / "runs/toy-rejudged/metrics.json").exists()
    assert "## Answers side by side" in (tmp_path / "runs/report.md").read_text()
    assert (tmp_path / "runs/report.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "runs/toy-scored.summary.json").read_text())
    assert summary["rows"] == 64 and summary["mean_reward"] is not None and summary["reward"] == "hybrid"
    assert json.loads((tmp_path / "data/toy/report.json").read_text())["prompts"] == 16
    assert "policy:      toy:policy" in ran[MAIN_JOB]  # the main job, described
    torch_line = next(out for c, out in ran.items() if c.startswith("python -c "))
    assert torch_line.startswith("torch 2.") and ("CPU only" in torch_line or "CUDA" in torch_line)
