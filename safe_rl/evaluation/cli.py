"""`safe-rl eval` and `safe-rl report`. Importing this module is cheap; the work is imported inside the commands."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

logger = logging.getLogger(__name__)

EVAL_HELP = """Generate answers to a benchmark's prompts, judge them, and write per-sample JSONL + metrics to --output.

Flags may also come from --config YAML (same names, - or _); flags given on the command line win."""
REPORT_HELP = "Put finished runs side by side in the layout of the Qwen3Guard report's Table 10 (+ a PNG plot)."


def _opt(help: str, *names: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=help, show_default=False, **kwargs)


def eval_command(
    policy: Annotated[
        str | None, _opt("Policy: hub id or local folder (transformers), or the served model name with --base-url.")
    ] = None,
    benchmark: Annotated[
        str | None,
        _opt("wildjailbreak, wildjailbreak:FILE, xstest:CSV, prompts:FILE, or a file (default wildjailbreak)."),
    ] = None,
    judge: Annotated[str | None, _opt("wildguard | qwen3guard | llm (default wildguard).")] = None,
    judge_model: Annotated[
        str | None,
        _opt("Judge hub id / local folder / served name (default allenai/wildguard, Qwen/Qwen3Guard-Gen-4B)."),
    ] = None,
    output: Annotated[Path | None, _opt("Run folder.")] = None,
    resume: Annotated[bool | None, _opt("Continue a killed run in --output.", "--resume/--no-resume")] = None,
    limit: Annotated[int | None, _opt("Evaluate a seeded random subset of N prompts.")] = None,
    base_url: Annotated[
        str | None, _opt("Policy served by an OpenAI-compatible server, e.g. http://localhost:8000/v1.")
    ] = None,
    responses: Annotated[str | None, _opt("Judge existing responses from this file instead of generating.")] = None,
    think: Annotated[
        bool | None, _opt("Thinking mode (chat template enable_thinking); default --no-think.", "--think/--no-think")
    ] = None,
    config: Annotated[Path | None, _opt("YAML file with any of these settings.")] = None,
    label: Annotated[str | None, _opt("Model name in reports.")] = None,
    system_prompt: Annotated[str | None, _opt("System message for the policy.")] = None,
    temperature: Annotated[float | None, _opt("Policy temperature (0 = greedy; default Qwen3's per mode).")] = None,
    top_p: Annotated[float | None, _opt("Policy top-p (default Qwen3's per mode).")] = None,
    top_k: Annotated[int | None, _opt("Policy top-k (default 20).")] = None,
    max_new_tokens: Annotated[int | None, _opt("Policy answer limit in tokens (default 2048).")] = None,
    batch_size: Annotated[int | None, _opt("Policy batch size, transformers (default 8).")] = None,
    seed: Annotated[int | None, _opt("Seed for the subset, sampling and bootstrap (default 0).")] = None,
    device: Annotated[str | None, _opt("Device for local models (default cuda when present).")] = None,
    dtype: Annotated[str | None, _opt("dtype for local models (default auto).")] = None,
    max_concurrency: Annotated[int | None, _opt("Concurrent requests per server (default 16).")] = None,
    judge_base_url: Annotated[
        str | None, _opt("Judge served by an OpenAI-compatible server (required for llm).")
    ] = None,
    judge_batch_size: Annotated[int | None, _opt("Judge batch size, transformers (default 8).")] = None,
    judge_max_new_tokens: Annotated[int | None, _opt("Judge answer limit (default 128 WildGuard, 1024 llm).")] = None,
    judge_policy: Annotated[
        str | None, _opt("qwen3guard: strict (Controversial = harmful, default) or loose.")
    ] = None,
    n_boot: Annotated[int | None, _opt("Bootstrap resamples (default 2000).")] = None,
    api_key: Annotated[str | None, _opt("Policy server key.", envvar="SAFE_RL_API_KEY")] = None,
    judge_api_key: Annotated[str | None, _opt("Judge server key.", envvar="SAFE_RL_JUDGE_API_KEY")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    from safe_rl.evaluation.report import load_run, runs_markdown
    from safe_rl.evaluation.run import EvalConfig, config_keys, load_config_file, run_eval

    flags = config_keys()  # every flag above but --config and --progress is an EvalConfig field
    given = {k: v for k, v in locals().items() if k in flags and v is not None}
    try:
        values = load_config_file(config) if config is not None else {}
        values.update({k: str(v) if isinstance(v, Path) else v for k, v in given.items()})
        if "output" not in values:
            raise ValueError("pass --output DIR (or output: in --config)")
        cfg = EvalConfig(**values)
        run_eval(cfg, progress=progress)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(runs_markdown([load_run(cfg.output)], details=False))


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `safe-rl eval`.")],
    output: Annotated[Path | None, _opt("Write the Markdown here (default: print it).")] = None,
    plot: Annotated[Path | None, _opt("Write a PNG of safety vs refusal with the intervals.")] = None,
    safety: Annotated[str, _opt("safety (a, default) or safety_refusal (b: 1 - attack success).")] = "safety",
    details: Annotated[bool, typer.Option("--details/--no-details", help="Add every rate and subcategory.")] = True,
) -> None:
    from safe_rl.evaluation.report import load_run, plot_runs, runs_markdown

    try:
        loaded = [load_run(path) for path in runs]
        text = runs_markdown(loaded, details=details, safety=safety)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
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
    app.command("eval", help=EVAL_HELP, no_args_is_help=True)(eval_command)
    app.command("report", help=REPORT_HELP, no_args_is_help=True)(report_command)
