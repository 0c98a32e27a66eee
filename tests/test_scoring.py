"""`safe-rl score`: JSONL/CSV/Parquet input, rows written as they finish, resume without loss or duplicates."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from safe_rl.cli import app
from safe_rl.io import read_jsonl
from tests._tiny import save_tiny_causal_lm, save_tiny_reward_model
from tests.conftest import GUARD_TEMPLATE

ROWS = [
    {"prompt": f"question {i}", "response": ("answer " * (i % 7)) + str(i), "model": f"m{i % 2}"} for i in range(11)
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, qwen_tokenizer_path):
    root = tmp_path_factory.mktemp("score-models")
    guard = save_tiny_causal_lm(root / "guard", qwen_tokenizer_path, chat_template=GUARD_TEMPLATE.read_text())
    rm = save_tiny_reward_model(root / "rm", qwen_tokenizer_path)
    return str(guard), str(rm)


def write_input(tmp_path, fmt):
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"rows.{fmt}"
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


def run(*args):
    return CliRunner().invoke(app, ["score", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_score_formats_and_summary(tmp_path, models, fmt):
    guard, rm = models
    out = tmp_path / "scored.jsonl"
    # the hybrid path once (the default reward); guard-only for the rest
    kind = ["--helpfulness-model", rm] if fmt == "jsonl" else ["--reward_kind", "guard_only"]
    args = ["--output", out, "--guard-model", guard, *kind, "--batch-size", "4", "--guard_device", "cpu",
            "--helpfulness_device", "cpu"]  # fmt: skip
    result = run(write_input(tmp_path, fmt), *args)
    assert result.exit_code == 0, result.output
    rows = list(read_jsonl(out))
    assert sorted(r["index"] for r in rows) == list(range(len(ROWS)))
    assert all(r["response"] == ROWS[r["index"]]["response"] for r in rows)
    assert all(r["model"] == ROWS[r["index"]]["model"] for r in rows)  # the input's own columns are kept
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    # a random tiny guard writes no verdict: every row is a counted failure, none passes for safe
    assert summary["rows"] == len(ROWS) and summary["unjudged"] == len(ROWS) and summary["safe"] == 0
    assert summary["unjudged_share"] == 1.0 and summary["mean_reward"] is None
    assert summary["reward"] == ("hybrid" if fmt == "jsonl" else "guard_only")
    assert all(r["reward"] is None and r["failure"] for r in rows)


def test_resume_after_a_torn_write_loses_and_duplicates_nothing(tmp_path, models):
    guard, _ = models
    src = write_input(tmp_path, "jsonl")
    out = tmp_path / "scored.jsonl"
    common = ["--guard-model", guard, "--reward_kind", "guard_only", "--guard_device", "cpu"]
    assert run(src, "--output", out, *common, "--batch-size", "3", "--limit", "5").exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:17])  # killed mid-write: 3 rows and a torn fourth
    refused = CliRunner().invoke(app, ["score", str(src), "--output", str(out), *common])
    assert refused.exit_code == 2 and "--resume" in refused.output  # never clobbers a run without --resume
    assert run(src, "--output", out, *common, "--batch-size", "3", "--resume").exit_code == 0
    indices = [r["index"] for r in read_jsonl(out)]
    assert sorted(indices) == list(range(len(ROWS))) and len(indices) == len(set(indices))


def test_resume_checks_the_input_and_retries_failures(tmp_path, models):
    """The output records a fingerprint of its input and settings: resuming with another input or other settings
    is refused before any model loads; --retry-failed judges the failed rows again; --overwrite starts afresh."""
    guard, _ = models
    src = write_input(tmp_path, "jsonl")
    out = tmp_path / "scored.jsonl"
    common = ["--guard-model", guard, "--reward_kind", "guard_only", "--guard_device", "cpu"]
    assert run(src, "--output", out, *common, "--limit", "4").exit_code == 0
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "response": "changed"}) + "\n" for r in ROWS))
    mixed = CliRunner().invoke(app, ["score", str(other), "--output", str(out), *common, "--resume"])
    assert mixed.exit_code == 2 and mixed.output.startswith("error: ") and "input.sha256" in mixed.output
    assert "Traceback" not in mixed.output
    loose = CliRunner().invoke(app, ["score", str(src), "--output", str(out), *common, "--reward_strictness", "loose",
                                     "--resume"])  # fmt: skip
    assert loose.exit_code == 2 and "settings.reward_strictness: 'strict' -> 'loose'" in loose.output
    assert len(list(read_jsonl(out))) == 4  # nothing mixed in
    # every row failed (a random guard): --retry-failed judges them again, the rest of the input too
    assert run(src, "--output", out, *common, "--resume", "--retry-failed").exit_code == 0
    rows = list(read_jsonl(out))
    assert sorted(r["index"] for r in rows) == list(range(len(ROWS)))
    assert run(other, "--output", out, *common, "--overwrite", "--limit", "2").exit_code == 0
    assert [r["response"] for r in read_jsonl(out)] == ["changed", "changed"]


def test_summary_means_and_dry_run(tmp_path):
    from safe_rl.scoring import summarize

    rows = [{"unsafe": False, "refusal": False, "reward": 2.0, "helpfulness": 2.0, "failure": None},
            {"unsafe": True, "refusal": False, "reward": -10.0, "helpfulness": 1.0, "failure": None},
            {"unsafe": None, "reward": None, "helpfulness": None, "failure": "unreadable verdict"}]  # fmt: skip
    summary = summarize(rows)
    assert summary["mean_reward"] == -4.0 and summary["mean_helpfulness"] == 1.5
    assert summary["unjudged"] == 1 and summary["unjudged_share"] == pytest.approx(1 / 3)
    src = write_input(tmp_path, "csv")
    dry = CliRunner().invoke(app, ["score", str(src), "--output", str(tmp_path / "o.jsonl"), "--guard_model",
                                   "toy:guard", "--helpfulness_model", "toy:helpfulness", "--dry-run"])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert f"input: {src} (11 rows)" in dry.output and "reward: hybrid (strict)" in dry.output
    assert "helpfulness: toy:helpfulness" in dry.output and not (tmp_path / "o.jsonl").exists()
    missing = CliRunner().invoke(app, ["score", "data/typo.jsonl", "--output", str(tmp_path / "o.jsonl")])
    assert missing.exit_code == 2 and missing.output.startswith("error: no such input file: data/typo")


def test_missing_column_is_a_clear_error(tmp_path, models):
    guard, _ = models
    result = CliRunner().invoke(
        app,
        [
            "score",
            str(write_input(tmp_path, "jsonl")),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--guard-model",
            guard,
            "--response-column",
            "answer",
        ],
    )
    assert result.exit_code == 2 and "no column(s) ['answer']" in result.output
