"""The `eval` and `report` commands on tiny local models, and resume after SIGKILL with no loss and no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from _eval import shared_tiny_lm, write_benchmark
from typer.testing import CliRunner

from safe_rl.evaluation.cli import register
from safe_rl.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, qwen_tokenizer_path):
    return shared_tiny_lm(tmp_path_factory, qwen_tokenizer_path)


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def invoke(app, *args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


@pytest.mark.slow
def test_eval_and_report_on_tiny_models(tmp_path, app, tiny_lm_dir):
    bench = write_benchmark(tmp_path / "bench.jsonl")
    out = tmp_path / "non-think"
    common = ["--benchmark", bench, "--judge", "wildguard", "--judge-model", tiny_lm_dir, "--max-new-tokens", 8,
              "--judge_max_new_tokens", 16, "--batch-size", 4, "--judge-batch-size", 4, "--no-progress"]  # fmt: skip
    result = invoke(app, "eval", "--policy", tiny_lm_dir, "--output", out, "--label", "tiny", *common)
    assert result.exit_code == 0, result.output
    assert "| tiny |" in result.output  # the run's Table 10 row is printed
    metrics = json.loads((out / "metrics.json").read_text())
    # A random judge writes no readable answer: every sample is a counted failure, and counted as harmful.
    assert metrics["counts"]["judge_failures"] == metrics["counts"]["n"] == 7
    assert metrics["rates"]["safety"]["value"] == 0.0 and metrics["rates"]["safety_refusal"]["value"] == 0.0
    assert metrics["rates"]["judge_failure"]["value"] == 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["policy"]["sampling"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_new_tokens": 8,
                                         "seed": 0, "greedy": False}  # fmt: skip
    assert run["policy"]["template_reacts_to_enable_thinking"] is True and run["mode"] == "non-think"
    responses = list(read_jsonl(out / "responses.jsonl"))
    assert len(responses) == 7 and all(r["num_tokens"] == 8 and r["finish_reason"] == "length" for r in responses)

    # The same flags from YAML; the command line wins (limit 3 in the file, 2 given).
    config = tmp_path / "think.yaml"
    config.write_text(f"policy: {tiny_lm_dir}\noutput: {tmp_path / 'think'}\nthink: true\nlimit: 3\ntemperature: 0\n"
                      f"label: tiny\njudge-model: {tiny_lm_dir}\n")  # fmt: skip
    result = invoke(app, "eval", "--config", config, "--limit", 2, *common)
    assert result.exit_code == 0, result.output
    think = json.loads((tmp_path / "think" / "run.json").read_text())
    assert think["mode"] == "think" and think["config"]["limit"] == 2 and think["policy"]["sampling"]["greedy"]
    assert len(list(read_jsonl(tmp_path / "think" / "samples.jsonl"))) == 2

    report, plot = tmp_path / "report.md", tmp_path / "report.png"
    result = invoke(app, "report", out, tmp_path / "think", "--output", report, "--plot", plot)
    assert result.exit_code == 0, result.output
    text = report.read_text()
    columns = [f"{mode} · {what}" for mode in ("non-think", "think")
               for what in ("Safety (WildGuard) ↑", "Refusal (WildGuard) ↓", "Unjudged (WildGuard)")]  # fmt: skip
    assert "| Model | " + " | ".join(columns) + " |" in text
    assert text.split("## All rates")[0].count("| tiny |") == 1  # both modes of one model on one row
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    # Refusals: an existing run without --resume, and --resume with other settings.
    again = invoke(app, "eval", "--policy", tiny_lm_dir, "--output", out, *common)
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    other = invoke(app, "eval", "--policy", tiny_lm_dir, "--output", out, "--resume", "--think", *common)
    assert other.exit_code == 2 and "settings.think: False -> True" in other.output
    fewer = invoke(app, "eval", "--policy", tiny_lm_dir, "--output", out, "--resume", "--limit", 3, *common)
    assert fewer.exit_code == 2 and "input.prompts: 7 -> 3" in fewer.output  # another input: refused
    assert "Traceback" not in again.output + other.output + fewer.output


def test_usage_errors_are_one_line_and_checked_before_any_model_loads(tmp_path, app):
    bench = write_benchmark(tmp_path / "bench.jsonl")
    out = tmp_path / "run"
    cases = [
        (["--policy", "/no/such/policy", "--benchmark", bench], "error: no such policy folder: /no/such/policy"),
        (["--policy", "toy:policy", "--benchmark", "data/typo.jsonl"], "error: no such benchmark file: data/typo"),
        (["--policy", "toy:policy", "--n-boot", 50], "error: n_boot must be at least 100"),
        (["--policy", "toy:policy", "--limit", "all"], "error: argument --limit: invalid int value"),
        (["--policy", "toy:policy", "--judge", "gpt"], "error: judge must be one of"),
        (["--policy", "toy:policy", "--polcy", "x"], "error: unknown argument(s) ['--polcy', 'x']"),
        (["--responses", tmp_path / "none.jsonl"], "error: no such responses file"),
    ]
    for args, message in cases:
        result = invoke(app, "eval", "--output", out, *args)
        assert result.exit_code == 2 and result.output.startswith(message), (args, result.output)
        assert result.output.count("\n") == 1, result.output
    assert not out.exists()  # nothing was started


def test_toy_policy_and_judge_and_a_failed_start_that_does_not_block(tmp_path, app):
    out = tmp_path / "toy"
    toy = ["--policy", "toy:policy", "--benchmark", "toy", "--judge", "toy", "--limit", 8, "--max_new_tokens", 24,
           "--temperature", 1, "--top_k", 50, "--top_p", 1, "--no-progress", "--output", out]  # fmt: skip
    broken = tmp_path / "broken-policy"
    broken.mkdir()  # a folder without a model: found, then fails to load after the run started
    failed = invoke(app, "eval", *toy[2:], "--policy", broken)
    assert failed.exit_code == 2 and f"cannot load the policy tokenizer '{broken}'" in failed.output, failed.output
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    result = invoke(app, "eval", *toy)  # no --resume needed: the failed start wrote no answer
    assert result.exit_code == 0, result.output
    assert "| toy:policy |" in result.output and "Unjudged (toy judge)" in result.output
    samples = list(read_jsonl(out / "samples.jsonl"))
    assert len(samples) == 8 and {s["judge"] for s in samples} == {"toy"}
    # The same answers judged again from the responses file, with the labels recorded beside them.
    again = invoke(app, "eval", "--responses", out / "responses.jsonl", "--judge", "toy", "--output", tmp_path / "r",
                   "--no-progress")  # fmt: skip
    assert again.exit_code == 0, again.output
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "r"))
    assert second["counts"]["n_harmful"] == first["counts"]["n_harmful"] > 0
    assert second["rates"] == first["rates"]
    report = invoke(app, "report", out, tmp_path / "r", "--pairs", 2, "--no-details")
    assert report.exit_code == 0 and "## Answers side by side: toy:policy → toy:policy" in report.output
    assert report.output.count("- toy:policy [") == 4


def test_report_refuses_unfinished_runs(tmp_path, app):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    result = invoke(app, "report", tmp_path / "run")
    assert result.exit_code == 2 and "--resume" in result.output and result.output.startswith("error: ")


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run_until(command, env, path: Path, at_least: int, timeout: float = 240.0) -> tuple[bytes, int]:
    """Start the command, SIGKILL it once ``path`` holds ``at_least`` rows; (the file's bytes then, rows in it)."""
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while _lines(path) < at_least:
            assert process.poll() is None, f"finished before the kill: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return path.read_bytes(), _lines(path)


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path, tiny_lm_dir):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"prompt": f"Question {i}: how?", "label": i % 2}) + "\n" for i in range(6)))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "safe_rl.evaluation", "eval", "--policy", str(tiny_lm_dir), "--benchmark",
               str(bench), "--judge-model", str(tiny_lm_dir), "--output", str(out), "--batch-size", "1",
               "--judge-batch-size", "1", "--max-new-tokens", "12", "--judge-max-new-tokens", "16",
               "--temperature", "0", "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    # Killed while generating, then while judging; each resume keeps what was written and adds only the rest.
    responses_then, n_responses = _run_until(command, env, out / "responses.jsonl", 2)
    assert 2 <= n_responses < 6
    samples_then, n_samples = _run_until(command + ["--resume"], env, out / "samples.jsonl", 2)
    assert 2 <= n_samples < 6
    done = subprocess.run(command + ["--resume"], env=env, cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    for name, before in (("responses.jsonl", responses_then), ("samples.jsonl", samples_then)):
        after = (out / name).read_bytes()
        kept = before[: before.rfind(b"\n") + 1]  # a torn last line may be cut on resume, nothing else
        assert after.startswith(kept), name
        ids = [r["id"] for r in read_jsonl(out / name)]
        assert sorted(ids, key=int) == [str(i) for i in range(6)], name  # all there, none twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["n"] == 6 and json.loads((out / "run.json").read_text())["status"] == "done"
