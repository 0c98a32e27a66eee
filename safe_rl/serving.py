"""`safe-rl serve-reward`: the guard rewards as an OpenRLHF remote reward server."""

from __future__ import annotations

import typer


def serve_reward(
    reward: str = typer.Option("hybrid", help="hybrid or guard_only."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(5000, help="Port to bind."),
    guard_model: str = typer.Option("Qwen/Qwen3Guard-Gen-0.6B", help="Guard hub id or folder."),
    guard_base_url: str | None = typer.Option(None, help="OpenAI-compatible guard server (vllm serve)."),
    helpfulness_model: str = typer.Option("Skywork/Skywork-Reward-V2-Qwen3-0.6B", help="Helpfulness RM (hybrid)."),
    policy: str = typer.Option("strict", help="strict or loose."),
    safety_score: str = typer.Option("label", help="label (0/1, paper) or probability (in-process guard only)."),
    failure_score: float | None = typer.Option(None, help="Score of unjudged samples (default: pessimistic)."),
) -> None:
    """Serve POST /get_reward for OpenRLHF's --reward.remote_url."""
    import uvicorn

    from rewards.integrations.openrlhf import create_app
    from rewards.registry import get_reward

    kwargs = {
        "guard_model": guard_model,
        "guard_base_url": guard_base_url,
        "policy": policy,
        "safety_score": safety_score,
    }
    if reward == "hybrid":
        kwargs["helpfulness_model"] = helpfulness_model
    uvicorn.run(create_app(get_reward(reward, **kwargs), failure_score), host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command("serve-reward")(serve_reward)
