"""`safe-rl prepare`: build the training prompts (WildJailbreak harmful, optional rollout filter)."""

from __future__ import annotations

from typing import Any

import typer

from safe_rl.command_line import command

PREPARE_HELP = (
    "Build training prompts: WildJailbreak train vanilla_harmful + adversarial_harmful (--data_source: "
    "hub id, local file or toy), optionally filtered by --rollouts K answers per prompt judged by the "
    "guard (the Qwen3Guard report's recipe). Flags or --config YAML keys (data: and guard: sections "
    "flatten to --data_*, --guard_*)."
)


def run_prepare(args: Any, data: Any, guard: Any) -> None:
    import json

    from safe_rl.data.prepare import plan, prepare_prompts

    if args.dry_run:
        typer.echo(plan(args, data, guard))
        return
    report = prepare_prompts(args, data, guard)
    typer.echo(json.dumps({key: report[key] for key in ("prompts", "kept", "dropped", "kept_by_type")}, indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``prepare`` command to ``app``."""
    from rewards.arguments import GuardArguments
    from safe_rl.data.arguments import DataArguments
    from safe_rl.data.prepare import PrepareArguments

    command(app, "prepare", (PrepareArguments, DataArguments, GuardArguments), run_prepare, help=PREPARE_HELP,
            sections=("data", "guard"))  # fmt: skip
