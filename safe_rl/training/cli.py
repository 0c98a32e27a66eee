"""`safe-rl train --config CONFIG.yaml [--dry-run] [--resume | --overwrite] [any TRL or section flag ...]`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from safe_rl.command_line import HELP_FLAGS, make_parser, name_deepspeed_accelerator, run_guarded

TRAIN_HELP = (
    "Train a policy with GRPO/GSPO and the guard-only or hybrid reward. Flags: any TRL GRPOConfig or "
    "ModelConfig field (--learning_rate 1e-6), and our sections' fields (--guard_model toy:guard, "
    "--reward_kind guard_only, --data_source FILE, --evaluation_prompts toy); they override the --config "
    "YAML."
)


def path_problems(cfg: Any) -> list[str]:
    """What a run would find missing or in the way: the local paths it reads (policy, data, evaluation prompts) and
    an output folder that holds a run."""
    from safe_rl.evaluation.benchmarks import BENCHMARKS
    from safe_rl.io import check_local

    prompts = cfg.evaluation.evaluation_prompts or ""
    name, sep, source = prompts.partition(":")
    checks = [(cfg.model.model_name_or_path, "policy folder"), (cfg.data.data_source, "data file or folder")]
    if prompts:
        checks.append((source if sep and name in BENCHMARKS else prompts, "evaluation prompts file"))
    if not cfg.guard.is_remote:
        checks.append((cfg.guard.guard_model, "guard folder"))
    if "hybrid" in cfg.kinds:
        checks.append((cfg.helpfulness.helpfulness_model, "helpfulness model folder"))
    problems = []
    for path, what in checks:
        try:
            check_local(path, what)
        except FileNotFoundError as exc:
            problems.append(str(exc))
    root = Path(cfg.grpo.output_dir)
    if root.is_dir() and any(root.iterdir()) and not (cfg.options.resume or cfg.options.overwrite):
        problems.append(f"{root} already holds a run (a run needs --resume or --overwrite)")
    return problems


def describe(cfg: Any) -> str:
    """What a run will do: the resolved configuration, the models it loads and the GPUs it expects."""
    import yaml

    grpo = cfg.grpo
    lines = ["# resolved configuration (our sections in full; TRL fields that differ from TRL's defaults)"]
    lines.append(yaml.safe_dump(cfg.as_dict(), sort_keys=False, allow_unicode=True).rstrip())
    models = [
        f"policy:      {cfg.model.model_name_or_path} (trained; rewards: {', '.join(cfg.kinds)})",
        f"guard:       {cfg.guard.describe()}",
    ]
    if "hybrid" in cfg.kinds:
        where = cfg.helpfulness.helpfulness_device or "auto"
        models.append(f"helpfulness: {cfg.helpfulness.helpfulness_model} in-process on {where}")
    if grpo.use_vllm:
        where = (
            "on the training GPUs"
            if grpo.vllm_mode == "colocate"
            else f"server {grpo.vllm_server_base_url or f'{grpo.vllm_server_host}:{grpo.vllm_server_port}'}"
        )
        models.append(f"rollouts:    vLLM {grpo.vllm_mode} ({where})")
    else:
        models.append("rollouts:    transformers generate")
    lines += ["", "# models", *models]
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if grpo.use_cpu:
        expected = "none (use_cpu)"
    else:
        expected = f"{processes} training process(es) (WORLD_SIZE; accelerate launch --num_processes), one GPU each"
        if grpo.use_vllm and grpo.vllm_mode == "server":
            expected += " + the vLLM server's GPUs (trl vllm-serve)"
        if cfg.guard.is_remote:
            expected += " + the guard server's GPU(s)"
    try:
        import torch

        visible = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a dry run must not fail on a broken CUDA set-up
        visible = 0
    precision = "bf16" if grpo.bf16 else "fp16" if grpo.fp16 else "fp32"
    lines += ["", "# GPUs", f"expected: {expected}, {precision}", f"visible here: {visible}"]
    if cfg.hardware_error:
        # A dry run resolves a config for the target hardware; say what a real run would hit on this machine.
        lines.append(f"on this machine a run would fail: {cfg.hardware_error}")
    problems = path_problems(cfg)
    lines += ["", "# files", *(f"on this machine a run would fail: {p}" for p in problems)]
    if not problems:
        lines.append("policy, data and evaluation paths: found; output folder: free")
    return "\n".join(lines)


def train_command(args: list[str]) -> None:
    """Parse ``args`` (``--config`` + flags), then describe (``--dry-run``) or run the training."""
    from safe_rl.training.config import load_train_config

    cfg = load_train_config(None, args)
    if cfg.options.dry_run:
        typer.echo(describe(cfg))
        return
    missing = [p for p in path_problems(cfg) if p.startswith("no such")]
    if missing:
        raise FileNotFoundError(missing[0])
    from safe_rl.training.train import run_training

    result = run_training(cfg)
    if result.get("table"):
        judge = "toy judge" if cfg.evaluation.evaluation_judge == "toy" else "the reward's guard"
        typer.echo(f"\nTable 10 in miniature (held-out prompts, judge: {judge})\n")
        typer.echo(result["table"])
        typer.echo("\n" + "  ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["finding"].items()))
        folders = " ".join(result["evaluations"].values())
        typer.echo(f"answers with their verdicts, side by side: safe-rl report {folders} --pairs 3")
    for kind, folder in result["runs"].items():
        typer.echo(f"{kind}: model and run summary in {folder}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command(
        "train",
        help=TRAIN_HELP,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def train(ctx: typer.Context) -> None:
        args = list(ctx.args)
        if any(a in HELP_FLAGS for a in args):
            from safe_rl.training.config import argument_types

            typer.echo(make_parser(argument_types(), "safe-rl train", TRAIN_HELP).format_help())
            return
        name_deepspeed_accelerator()
        run_guarded(lambda: train_command(args))
