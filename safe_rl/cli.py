"""The `safe-rl` command line. Each sub-command lives in its own module, which adds itself with `register(app)`."""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="safe-rl",
    help="Safety RL with Qwen3Guard as the reward model: score, prepare, train, eval, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Safety RL with Qwen3Guard as the reward model."""


# Sub-command modules; importing one must stay cheap (heavy imports go inside the command bodies).
COMMAND_MODULES: tuple[str, ...] = (
    "safe_rl.scoring",
    "safe_rl.serving",
    "safe_rl.evaluation.cli",
    "safe_rl.training.cli",
    "safe_rl.data.cli",
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Entry point of the `safe-rl` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
