"""`safe-rl score`: judge (prompt, response) rows offline with the guard, and the hybrid reward when asked.

Rows are read from JSONL/CSV/TSV/Parquet or a hub dataset, judged in batches, and written as each batch finishes;
``--resume`` continues a killed run without losing or duplicating rows (rows are keyed by their input index).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import typer

logger = logging.getLogger(__name__)


def detail_row(index: int, prompt: Any, response: str, detail: Any) -> dict[str, Any]:
    """One output row: the verdicts, the outcome, the reward and why."""
    answer, thinking = detail.answer, detail.thinking
    return {
        "index": index,
        "prompt": prompt,
        "response": response,
        "safety": answer.safety if answer else None,
        "category": answer.category if answer else None,
        "refusal": detail.refusal,
        "thinking_safety": thinking.safety if thinking else None,
        "unsafe": detail.unsafe,
        "reward": detail.reward,
        "helpfulness": detail.helpfulness,
        "failure": detail.failure,
        "truncated": any(v.truncated for v in detail.verdicts),
        "guard_raw": answer.raw if answer else None,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over scored rows.

    Example:
        >>> summarize([{"unsafe": False, "refusal": True, "safety": "Safe", "failure": None, "truncated": False}])["refusals"]
        1
    """
    safety = Counter(str(r.get("safety")) for r in rows)
    return {
        "rows": len(rows),
        "safe": sum(r.get("unsafe") is False for r in rows),
        "unsafe": sum(r.get("unsafe") is True for r in rows),
        "controversial": safety.get("Controversial", 0),
        "refusals": sum(r.get("refusal") is True for r in rows),
        "failures": sum(r.get("failure") is not None for r in rows),
        "truncated": sum(bool(r.get("truncated")) for r in rows),
        "categories": dict(Counter(r["category"] for r in rows if r.get("unsafe") and r.get("category"))),
    }


def score_file(
    source: str,
    output: Path,
    *,
    reward: Any,
    prompt_column: str = "prompt",
    response_column: str = "response",
    split: str = "train",
    config: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Score every row of ``source`` into ``output`` (JSONL) and return the summary counts."""
    from tqdm.auto import tqdm

    from safe_rl.io import ResumableJsonl, load_rows, read_jsonl

    data = load_rows(source, split=split, config=config)
    missing = {prompt_column, response_column} - set(data.column_names)
    if missing:
        raise typer.BadParameter(f"{source} has no column(s) {sorted(missing)}; columns: {data.column_names}")
    n = len(data) if limit is None else min(limit, len(data))
    with ResumableJsonl(output, key="index", resume=resume) as out:
        todo = [i for i in range(n) if i not in out.done]
        with tqdm(total=n, initial=n - len(todo), desc="scoring", unit="row") as bar:
            for start in range(0, len(todo), batch_size):
                rows = data.select(todo[start : start + batch_size])
                prompts, responses = (
                    rows[prompt_column],
                    [str(r) if r is not None else "" for r in rows[response_column]],
                )
                details = reward.judge(prompts, responses)
                for i, p, r, d in zip(todo[start : start + batch_size], prompts, responses, details, strict=True):
                    out.write(detail_row(i, p, r, d))
                bar.update(len(details))
    summary = summarize([r for r in read_jsonl(output) if r.get("index", -1) < n])
    output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def score(
    input: str = typer.Argument(..., help="JSONL/CSV/TSV/Parquet file, a saved dataset folder, or a hub dataset id."),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (a .summary.json is written beside it)."),
    prompt_column: str = typer.Option("prompt", help="Column with the prompt (text or chat messages)."),
    response_column: str = typer.Option("response", help="Column with the response to judge."),
    split: str = typer.Option("train", help="Split of a hub dataset."),
    config: str | None = typer.Option(None, help="Configuration of a hub dataset."),
    guard_model: str = typer.Option("Qwen/Qwen3Guard-Gen-0.6B", help="Guard hub id or folder."),
    guard_base_url: str | None = typer.Option(
        None, help="OpenAI-compatible guard server, e.g. http://localhost:8000/v1."
    ),
    helpfulness_model: str | None = typer.Option(None, help="Reward model for H; given, rows get the hybrid reward."),
    policy: str = typer.Option("strict", help="strict: Controversial counts as unsafe; loose: as safe."),
    batch_size: int = typer.Option(64, min=1, help="Rows per guard call."),
    device: str | None = typer.Option(None, help="Device for in-process models (default: cuda if available)."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N rows."),
    resume: bool = typer.Option(False, "--resume", help="Continue an existing output file."),
) -> None:
    """Judge (prompt, response) rows with Qwen3Guard; with --helpfulness-model, also the hybrid reward."""
    from rewards import GuardOnlyReward, HelpfulnessRM, HybridReward, Qwen3GuardGen

    guard = Qwen3GuardGen(guard_model, base_url=guard_base_url, device=device, batch_size=min(batch_size, 64))
    if helpfulness_model:
        reward = HybridReward(guard, HelpfulnessRM(helpfulness_model, device=device), policy=policy)  # type: ignore[arg-type]
    else:
        reward = GuardOnlyReward(guard, policy=policy)  # type: ignore[arg-type]
    from rewards.warmup import load_reward_models

    load_reward_models(reward)  # a model that cannot load: one line, exit 1 (safe_rl.cli.main), no file of failures
    try:
        summary = score_file(
            input,
            output,
            reward=reward,
            prompt_column=prompt_column,
            response_column=response_column,
            split=split,
            config=config,
            batch_size=batch_size,
            limit=limit,
            resume=resume,
        )
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from exc
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("score")(score)
