"""`safe-rl train --resume` through TRL checkpoints: a 2-step toy run saves a checkpoint, a 3-step run with --resume
continues from it (step 3 only), on the real CLI, the real GRPOTrainer and the toy models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from _cli import cli_app
from _toy import toy_models  # noqa: F401  (builds the toy models once per session)
from typer.testing import CliRunner

from safe_rl.training.cli import register

REPO = Path(__file__).resolve().parents[1]
# The toy world at its smallest: one prompt x 4 generations per step, short answers, the guard-only reward.
TINY = [
    "--config", str(REPO / "configs" / "smoke.yaml"),
    "--reward_compare", "guard_only",
    "--evaluation_prompts", "none",
    "--per_device_train_batch_size", "4",
    "--max_completion_length", "12",
    "--save_strategy", "steps",
    "--save_steps", "2",
]  # fmt: skip


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train(*args: str) -> list[str]:
    """Run `safe-rl train ARGS`; return the messages logged by transformers' Trainer."""
    import transformers

    app = cli_app(register)
    records = _Records()
    trainer_logger = logging.getLogger("transformers.trainer")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_info()
    trainer_logger.addHandler(records)
    try:
        result = CliRunner().invoke(app, ["train", *TINY, *args])
    finally:
        trainer_logger.removeHandler(records)
        transformers.logging.set_verbosity(verbosity)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return records.messages


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path, toy_models):  # noqa: F811
    out = tmp_path / "run"
    first = _train("--output_dir", str(out), "--max_steps", "2")
    assert not any("Resuming training" in m for m in first)
    saved = out / "checkpoint-2"
    assert _state(saved)["global_step"] == 2
    mtimes = {p.name: p.stat().st_mtime_ns for p in saved.iterdir()}
    first_log = _state(saved)["log_history"]

    messages = _train("--output_dir", str(out), "--max_steps", "3", "--resume")
    assert any("Resuming training from checkpoint" in m and "global step 2" in m for m in messages), messages
    # only step 3 ran: checkpoint-2 was read, not written again, and step 3 was saved at the end
    assert {p.name: p.stat().st_mtime_ns for p in saved.iterdir()} == mtimes
    state = _state(out / "checkpoint-3")
    assert state["global_step"] == 3
    steps = [e for e in state["log_history"] if "train_runtime" not in e]
    assert [e["step"] for e in steps] == [1, 2, 3] and steps[:2] == [e for e in first_log if "train_runtime" not in e]
    summary = json.loads((out / "run_summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [1, 2, 3]
    assert all("guard/safety_rate" in s for s in summary["steps"])


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, caplog):
    from safe_rl.training.train import _checkpoint

    with caplog.at_level(logging.WARNING, logger="safe_rl.training.train"):
        assert _checkpoint("last", tmp_path / "missing") is None
    assert "no checkpoint" in caplog.text
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    assert _checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-12")
    assert _checkpoint(str(tmp_path / "checkpoint-5"), tmp_path) == str(tmp_path / "checkpoint-5")
