"""`safe-rl train --config CONFIG.yaml [--dry-run] [--resume] [any TRL flag ...]`."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def describe(cfg: Any) -> str:
    """What a run will do: the resolved configuration, the models it loads and the GPUs it expects."""
    import os

    import yaml

    grpo, reward = cfg.grpo, cfg.reward
    lines = ["# resolved configuration (our sections in full; TRL fields that differ from TRL's defaults)"]
    lines.append(yaml.safe_dump(cfg.as_dict(), sort_keys=False, allow_unicode=True).rstrip())
    if reward.reward_guard_base_url:
        guard = f"{reward.reward_guard_model} served at {reward.reward_guard_base_url}"
    else:
        guard = f"{reward.reward_guard_model} in-process ({reward.reward_guard_device or 'training device'})"
    models = [
        f"policy:      {cfg.model.model_name_or_path} (trained; rewards: {', '.join(reward.kinds)})",
        f"guard:       {guard}",
    ]
    if "hybrid" in reward.kinds:
        models.append(f"helpfulness: {reward.reward_helpfulness_model} in-process")
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
        if reward.reward_guard_base_url:
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
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def train(
        ctx: typer.Context,
        config: Annotated[
            str | None, typer.Option("--config", help="YAML: TRL GRPOConfig fields + reward/data/evaluation.")
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the resolved config, models and GPUs; exit.")
        ] = False,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")
        ] = False,
    ) -> None:
        """Train a policy with GRPO/GSPO and the guard-only or hybrid reward (extra flags: any TRL GRPOConfig
        field, e.g. --learning_rate 1e-6, or ours, e.g. --reward_kind guard_only; they override the YAML)."""
        from safe_rl.training.config import load_train_config

        # A dry run describes a config meant for other hardware (e.g. bf16 GPUs) without failing on this one.
        cfg = load_train_config(config, ctx.args, check_hardware=not dry_run)
        if resume:
            cfg.grpo.resume_from_checkpoint = "last"
        if dry_run:
            typer.echo(describe(cfg))
            return
        from safe_rl.training.train import run_training

        result = run_training(cfg)
        if result.get("table"):
            typer.echo(f"\nTable 10 in miniature (judge: {cfg.evaluation.evaluation_judge})\n")
            typer.echo(result["table"])
            typer.echo("\n" + "  ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["finding"].items()))
        for kind, folder in result["runs"].items():
            typer.echo(f"{kind}: model and run summary in {folder}")
