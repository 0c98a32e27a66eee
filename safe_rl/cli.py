"""The `safe-rl` command line. Each sub-command lives in its own module, which adds itself with `register(app)`."""

from __future__ import annotations

import importlib
import logging
import sys

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


def configuration_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a configuration error that deserves one line, not a traceback: a model that cannot load, a
    bad ``SAFE_RL_*`` value, a reward that cannot judge a probe, a run whose samples keep coming back unjudged.

    Example:
        >>> from rewards.loading import ModelLoadError
        >>> configuration_error(ModelLoadError("guard", "toy:nope", ValueError("unknown"))), configuration_error(KeyError())
        (True, False)
    """
    from rewards.arguments import SettingError
    from rewards.circuit_breaker import TrainingOnNothingError
    from rewards.loading import ModelLoadError
    from rewards.warmup import RewardNotReadyError

    return isinstance(exc, (ModelLoadError, SettingError, RewardNotReadyError, TrainingOnNothingError))


def main() -> None:
    """Entry point of the `safe-rl` console script. Usage and configuration errors print one line `error: ...` and
    exit with status 2 (`safe_rl.command_line`); a reward that fails its probe or keeps coming back unjudged, status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except Exception as exc:
        if not configuration_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
