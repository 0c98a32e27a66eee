"""A typer app around one sub-command module, for CLI tests: ``from _cli import cli_app``."""

from __future__ import annotations

from collections.abc import Callable

import typer


def cli_app(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """A typer app with the commands of ``register`` (a module's `register(app)`, as `safe_rl.cli` calls it).

    The root callback keeps typer from collapsing a single command into the app itself, so that the command name is
    given on the command line as in ``safe-rl``.
    """
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """test app"""

    return app
