"""`safe-rl serve-reward`: the guard rewards as an OpenRLHF remote reward server (``--reward.remote_url``).

The guard, the helpfulness model and the reward are `rewards.arguments`' dataclasses, as in every command
(``--guard_model toy:guard``, ``--reward_kind guard_only``, ...; unset, they take the ``SAFE_RL_*`` variables). The
server builds the reward, loads every model and judges a probe sample before it binds: a model that cannot load or
a guard server that cannot be reached ends the command at once with a non-zero status and a message naming it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import typer

from safe_rl.command_line import command

logger = logging.getLogger(__name__)

SERVE_HELP = (
    "Serve POST /get_reward for OpenRLHF's --reward.remote_url (and GET /health): the guard-only or hybrid reward, "
    "every model loaded before the server binds."
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeArguments:
    """`safe-rl serve-reward`'s own settings."""

    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to bind (loopback; 0.0.0.0 to serve a cluster)."}
    )
    port: int = field(default=5000, metadata={"help": "Port to bind."})
    api_key: str | None = field(
        default=None,
        metadata={"help": "Require this key (Authorization: Bearer KEY, or http://user:KEY@host:port/get_reward for "
                  "OpenRLHF); default: the SAFE_RL_SERVE_API_KEY variable, else none."},
    )  # fmt: skip
    max_body_bytes: int = field(default=8 << 20, metadata={"help": "Larger request bodies get 413."})
    failure_score: float | None = field(
        default=None, metadata={"help": "Score of an unjudged sample (default: the unsafe cap, 0 for guard-only)."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Check the settings and model folders, print the plan, exit."}
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        self.api_key = self.api_key or os.environ.get("SAFE_RL_SERVE_API_KEY") or None


def serve_reward(serve: ServeArguments, guard: Any, helpfulness: Any, reward: Any) -> None:
    """Build and load the reward, then serve it until interrupted."""
    import uvicorn

    from rewards.integrations.reward_server import create_app
    from rewards.warmup import load_reward_models, probe_reward
    from safe_rl.io import check_models

    hybrid = reward.reward_kind == "hybrid"
    check_models(guard, helpfulness if hybrid else None)
    if serve.dry_run:
        lines = [f"reward: {reward.reward_kind} ({reward.reward_strictness})", f"guard: {guard.describe()}"]
        if hybrid:
            lines.append(f"helpfulness: {helpfulness.helpfulness_model}")
        auth = "a key" if serve.api_key else "no key"
        typer.echo("\n".join([*lines, f"serving: http://{serve.host}:{serve.port}/get_reward ({auth})"]))
        return
    built = reward.build(guard.build(), helpfulness.build() if hybrid else None)
    built.__name__ = f"{reward.reward_kind}_reward"
    load_reward_models(built)
    probe_reward(built)
    if serve.api_key is None and serve.host not in LOOPBACK:
        logger.warning("serving on %s without --api_key: anyone who reaches the port can use the guard", serve.host)
    logger.info("%s ready: serving on http://%s:%d/get_reward", built.__name__, serve.host, serve.port)
    app = create_app(built, serve.failure_score, api_key=serve.api_key, max_body_bytes=serve.max_body_bytes)
    uvicorn.run(app, host=serve.host, port=serve.port, log_level="warning")


def register(app: typer.Typer) -> None:
    from rewards.arguments import GuardArguments, HelpfulnessArguments, RewardArguments

    command(app, "serve-reward", (ServeArguments, GuardArguments, HelpfulnessArguments, RewardArguments),
            serve_reward, help=SERVE_HELP, sections=("guard", "helpfulness", "reward"))  # fmt: skip
