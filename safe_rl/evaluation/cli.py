"""`safe-rl eval` and `safe-rl report`. Importing this module is cheap; the work is imported inside the commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from safe_rl.command_line import command, run_guarded

logger = logging.getLogger(__name__)

EVAL_HELP = (
    "Generate answers to a benchmark's prompts (or read them with --responses), judge them, and write "
    "per-sample JSONL, metrics and a summary to --output. Every setting is a flag (--judge_model or "
    "--judge-model) or a key of a --config YAML file; flags win."
)
REPORT_HELP = "Put finished runs side by side in the layout of the Qwen3Guard report's Table 10 (+ a PNG plot)."


def plan(config: Any, prompts: list[Any] | None) -> str:
    """What a run of ``config`` would do (``--dry-run``)."""
    source = config.responses or (f"{config.policy} served at {config.base_url}" if config.base_url else config.policy)
    n = "read from the hub when the run starts" if prompts is None else f"{len(prompts)} answers to judge"
    judge = config.judge_model or "its default model"
    where = f"served at {config.judge_base_url}" if config.judge_base_url else "in-process"
    lines = [f"answers: {source} ({config.mode})", f"benchmark: {config.benchmark} ({n})",
             f"judge: {config.judge} ({judge}, {where})", f"output: {config.output}"]  # fmt: skip
    return "\n".join(lines)


def run_eval_command(config: Any) -> None:
    """The body of `safe-rl eval`: a dry run prints the plan; a run prints its Table 10 row at the end. A run stopped
    by server failures exits with status 1 (continue it with --resume)."""
    from rewards.loading import ModelLoadError
    from safe_rl.evaluation.benchmarks import load_benchmark
    from safe_rl.evaluation.report import load_run, runs_markdown
    from safe_rl.evaluation.run import check_sources, run_eval
    from safe_rl.io import looks_local

    if config.dry_run:
        check_sources(config)
        spec = config.benchmark or "wildjailbreak"
        local = spec == "toy" or looks_local(spec.partition(":")[2] or spec) or Path(spec).exists()
        prompts = load_benchmark(spec).for_run(config.limit, config.seed, config.samples) if local else None
        typer.echo(plan(config, prompts))
        return
    try:
        run_eval(config)
    except ModelLoadError:
        raise
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(runs_markdown([load_run(config.output)], details=False))


def _opt(help: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=help, show_default=False, **kwargs)


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `safe-rl eval` (or `safe-rl train`).")],
    output: Annotated[Path | None, _opt("Write the Markdown here (default: print it).")] = None,
    plot: Annotated[Path | None, _opt("Write a PNG of safety vs refusal with the intervals.")] = None,
    safety: Annotated[str, _opt("safety (a, default) or safety_refusal (b: 1 - attack success).")] = "safety",
    details: Annotated[bool, typer.Option("--details/--no-details", help="Add every rate and subcategory.")] = True,
    pairs: Annotated[
        int, _opt("Add N prompts answered by the first run and each other run, side by side with their verdicts.")
    ] = 0,
) -> None:
    from safe_rl.evaluation.report import answer_pairs, load_run, plot_runs, runs_markdown

    def build() -> tuple[list[Any], str]:
        if pairs < 0:
            raise ValueError(f"--pairs must not be negative, got {pairs}")
        loaded = [load_run(path) for path in runs]
        text = runs_markdown(loaded, details=details, safety=safety)
        if pairs:
            text += "\n" + answer_pairs(loaded, pairs)
        return loaded, text

    loaded, text = run_guarded(build)
    if output is None:
        typer.echo(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        typer.echo(f"wrote {output}")
    if plot is not None:
        typer.echo(f"wrote {plot_runs(loaded, plot, safety=safety)}")


def register(app: typer.Typer) -> None:
    """Add the `eval` and `report` sub-commands to the `safe-rl` app."""
    from safe_rl.evaluation.run import EvalConfig

    command(app, "eval", (EvalConfig,), run_eval_command, help=EVAL_HELP)
    app.command("report", help=REPORT_HELP, no_args_is_help=True)(report_command)
