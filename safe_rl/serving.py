"""`safe-rl serve-reward`: the guard rewards as an OpenRLHF remote reward server (``--reward.remote_url``).

Unset options fall back to the ``SAFE_RL_*`` variables of `rewards.presets` (one default per setting). The server
builds the reward, loads every model and judges a probe sample before it binds: a model that cannot load or a guard
server that cannot be reached ends the command at once with a non-zero status and a message naming it.
"""

from __future__ import annotations

import logging

import typer

logger = logging.getLogger(__name__)


def serve_reward(
    reward: str = typer.Option("hybrid", help="hybrid or guard_only."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default; 0.0.0.0 to serve a cluster)."),
    port: int = typer.Option(5000, help="Port to bind."),
    api_key: str | None = typer.Option(
        None,
        envvar="SAFE_RL_SERVE_API_KEY",
        help="Require this key (Authorization: Bearer KEY, or http://user:KEY@host:port/get_reward for OpenRLHF).",
        show_envvar=True,
    ),
    max_body_bytes: int | None = typer.Option(None, min=1, help="Larger request bodies get 413 (default 8 MiB)."),
    guard_model: str | None = typer.Option(None, help="Guard hub id, folder or toy:guard [SAFE_RL_GUARD_MODEL]."),
    guard_base_url: str | None = typer.Option(
        None, help="OpenAI-compatible guard server (vllm serve) [SAFE_RL_GUARD_BASE_URL]."
    ),
    guard_api_key: str | None = typer.Option(
        None, envvar="SAFE_RL_GUARD_API_KEY", help="Bearer token for the guard server.", show_envvar=True
    ),
    guard_concurrency: int | None = typer.Option(
        None,
        min=1,
        help="Guard server requests in flight at once, for the whole server [SAFE_RL_GUARD_MAX_CONCURRENCY].",
    ),
    helpfulness_model: str | None = typer.Option(None, help="Helpfulness RM (hybrid) [SAFE_RL_HELPFULNESS_MODEL]."),
    policy: str | None = typer.Option(None, help="strict or loose [SAFE_RL_POLICY]."),
    safety_score: str | None = typer.Option(
        None, help="label (0/1, paper) or probability (in-process guard only) [SAFE_RL_SAFETY_SCORE]."
    ),
    failure_score: float | None = typer.Option(
        None, help="Score of unjudged samples (default: pessimistic) [SAFE_RL_FAILURE_SCORE]."
    ),
) -> None:
    """Serve POST /get_reward for OpenRLHF's --reward.remote_url (and GET /health)."""
    import uvicorn

    from rewards.integrations.reward_server import DEFAULT_MAX_BODY_BYTES, create_app
    from rewards.presets import reward_from_env
    from rewards.warmup import load_reward_models, probe_reward

    built = reward_from_env(
        reward,
        guard_model=guard_model,
        guard_base_url=guard_base_url,
        api_key=guard_api_key,
        max_concurrency=guard_concurrency,
        helpfulness_model=helpfulness_model if reward == "hybrid" else None,
        policy=policy,
        safety_score=safety_score,
    )
    load_reward_models(built)
    probe_reward(built)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without --api-key: anyone who reaches the port can use the guard", host)
    logger.info("%s ready: serving on http://%s:%d/get_reward", built.__name__, host, port)
    limit = max_body_bytes or DEFAULT_MAX_BODY_BYTES
    app = create_app(built, failure_score, api_key=api_key, max_body_bytes=limit)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve-reward")(serve_reward)
