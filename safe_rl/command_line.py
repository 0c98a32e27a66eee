"""Command-line parsing shared by every ``safe-rl`` command: dataclass fields are the flags, YAML is the config file.

A command declares a tuple of dataclasses (for example ``(ScoreArguments, GuardArguments, HelpfulnessArguments,
RewardArguments)``); `parse_arguments` turns ``--config FILE.yaml`` plus the command-line flags into one instance of
each, the way `safe-rl train` has always read TRL's ``GRPOConfig`` (it is TRL's own `TrlParser` underneath):

* every field is a flag, written ``--field_name`` or ``--field-name``; booleans take ``--flag``, ``--flag false``
  and, where they default to true, ``--no_flag``;
* ``--config FILE.yaml`` sets the same fields as keys; a section such as ``guard: {model: X}`` is the field
  ``guard_model`` (sections are flattened with their name as prefix); an ``env:`` mapping sets environment
  variables; flags given on the command line win over the file;
* the fields of `rewards.arguments`' dataclasses (guard, helpfulness model, reward) default to their
  ``SAFE_RL_<FIELD>`` variables where set, as for the TRL dotted-path rewards; the file and the flags win;
* ``--help`` lists every field with its help text and default;
* a mistake (unknown key or flag, a value of the wrong type, a value the dataclass rejects) is a `UsageError`,
  which `command` prints as one line, ``error: ...``, with exit status 2, before any model loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

logger = logging.getLogger(__name__)

USAGE_EXIT_CODE = 2
HELP_FLAGS = ("--help", "-h")


class UsageError(ValueError):
    """A command line or config file the command cannot run with."""


def _parser_class() -> type:
    from trl import TrlParser

    class ArgumentParser(TrlParser):
        """TRL's parser, raising `UsageError` instead of printing usage and exiting."""

        def error(self, message: str) -> Any:  # argparse's hook for every parsing error
            raise UsageError(message)

    return ArgumentParser


def make_parser(types: Sequence[type], prog: str, description: str | None = None) -> Any:
    """The argument parser of ``types`` (fields as ``--field_name``/``--field-name``; no abbreviations)."""
    return _parser_class()(list(types), prog=prog, description=description, allow_abbrev=False)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file holding a mapping (a missing file or another shape is a `UsageError` naming it).

    Example:
        >>> load_yaml("/no/such/config.yaml")
        Traceback (most recent call last):
        ...
        safe_rl.command_line.UsageError: config file not found: /no/such/config.yaml
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a YAML mapping of settings")
    return data


def flatten_sections(config: dict[str, Any], sections: Sequence[str]) -> dict[str, Any]:
    """``{"guard": {"model": "x"}}`` -> ``{"guard_model": "x"}`` for each of ``sections``; other keys pass through
    (``-`` in a key reads as ``_``, as on the command line).

    Example:
        >>> flatten_sections({"guard": {"model": "toy:guard"}, "learning-rate": 1e-6}, ["guard", "reward"])
        {'learning_rate': 1e-06, 'guard_model': 'toy:guard'}
    """
    flat = {str(k).replace("-", "_"): v for k, v in config.items() if k not in sections}
    for section in sections:
        values = config.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UsageError(f"the {section!r} section must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            name = f"{section}_{str(key).replace('-', '_')}"
            if name in flat:
                raise UsageError(f"{name} is set both in the {section!r} section and at the top level")
            flat[name] = value
    return flat


def pop_config_path(args: list[str]) -> str | None:
    """Remove ``--config PATH`` (or ``--config=PATH``) from ``args``; return PATH.

    Example:
        >>> args = ["--limit", "3", "--config=eval.yaml"]
        >>> pop_config_path(args), args
        ('eval.yaml', ['--limit', '3'])
    """
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise UsageError("--config needs a file")
            path = args[i + 1]
            del args[i : i + 2]
            return path
        if arg.startswith("--config="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def parse_arguments(
    types: Sequence[type],
    args: Sequence[str],
    *,
    prog: str = "safe-rl",
    sections: Sequence[str] = (),
    config_path: str | os.PathLike | None = None,
    parser: Any = None,
) -> tuple[Any, ...]:
    """One instance of each dataclass in ``types`` from ``--config`` (in ``args``, or ``config_path``) and flags.

    Values a dataclass rejects in ``__post_init__`` surface as `UsageError` (a `ValueError`) naming the problem.

    Example:
        >>> from rewards.arguments import GuardArguments, RewardArguments
        >>> guard, reward = parse_arguments((GuardArguments, RewardArguments), ["--guard-model", "toy:guard",
        ...                                 "--reward_kind", "guard_only"])
        >>> guard.guard_model, reward.reward_kind
        ('toy:guard', 'guard_only')
        >>> parse_arguments((GuardArguments,), ["--guard_batch_size", "many"])
        Traceback (most recent call last):
        ...
        safe_rl.command_line.UsageError: argument --guard_batch_size/--guard-batch-size: invalid int value: 'many'
    """
    args = list(args)
    path = pop_config_path(args)
    if path is not None and config_path is not None:
        raise UsageError("--config given twice")
    path = path if path is not None else config_path
    parser = parser if parser is not None else make_parser(types, prog)
    from rewards.arguments import env_values

    for cls in types:  # the reward's settings: SAFE_RL_<FIELD> variables, then the file, then the flags
        if cls.__module__ == "rewards.arguments":
            parser.set_defaults(**env_values(cls))
    if path is not None:
        config = load_yaml(path)
        env = config.pop("env", None) or {}
        if not isinstance(env, dict):
            raise UsageError(f"{path}: env must be a mapping of variables")
        os.environ.update({str(k): str(v) for k, v in env.items()})
        unknown = parser.set_defaults_with_config(**flatten_sections(config, sections))
        if unknown:
            keys = sorted({u[2:] for u in unknown if u.startswith("--")})
            raise UsageError(f"{path}: unknown setting(s) {keys}; `{prog} --help` lists them")
    try:
        return tuple(parser.parse_args_into_dataclasses(args=args))
    except UsageError:
        raise
    except ValueError as exc:  # __post_init__ validation, or flags the parser did not use
        message = str(exc)
        if message.startswith("Some specified arguments are not used by the HfArgumentParser"):
            message = "unknown argument(s) " + message.split(":", 1)[1].strip() + f"; `{prog} --help` lists them"
        raise UsageError(message) from None


# What a command prints as `error: ...` (exit status 2) instead of a traceback: usage and configuration mistakes,
# missing files, output folders in the way, models that cannot load.
def _user_errors() -> tuple[type[BaseException], ...]:
    from rewards.loading import ModelLoadError

    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ModelLoadError)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the `typer.Exit` (status 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE_EXIT_CODE)


def name_deepspeed_accelerator() -> None:
    """Tell DeepSpeed (when installed) that a machine without an accelerator runs on the CPU, so that its import,
    which transformers and accelerate trigger, does not guess aloud ("Setting accelerator to CPU ...")."""
    import importlib.util

    if "DS_ACCELERATOR" in os.environ or importlib.util.find_spec("deepspeed") is None:
        return
    import torch

    accelerators = [torch.cuda.is_available(), torch.backends.mps.is_available()]
    if hasattr(torch, "xpu"):
        accelerators.append(torch.xpu.is_available())
    if not any(accelerators):
        os.environ["DS_ACCELERATOR"] = "cpu"


def run_guarded(body: Callable[[], Any]) -> Any:
    """``body()``, with user errors (`_user_errors`) printed as one ``error: ...`` line and exit status 2."""
    try:
        return body()
    except _user_errors() as exc:
        logger.debug("command failed", exc_info=True)
        raise fail(str(exc)) from None


def command(
    app: typer.Typer,
    name: str,
    types: Sequence[type],
    run: Callable[..., Any],
    *,
    help: str,
    sections: Sequence[str] = (),
    positional: str | None = None,
) -> None:
    """Add the command ``name`` to ``app``: its arguments are the fields of ``types`` (see the module docstring), and
    ``run(*instances)`` does the work. ``positional`` names a field that may also be given as the first argument
    (``safe-rl score FILE``)."""

    @app.command(
        name,
        help=help,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _command(ctx: typer.Context) -> None:
        args = list(ctx.args)
        prog = f"safe-rl {name}"
        parser = make_parser(types, prog, help)
        if any(a in HELP_FLAGS for a in args):
            typer.echo(parser.format_help())
            return
        if positional and args and not args[0].startswith("-"):
            args = [f"--{positional}", args[0], *args[1:]]
        parsed = run_guarded(lambda: parse_arguments(types, args, prog=prog, sections=sections, parser=parser))
        name_deepspeed_accelerator()
        run_guarded(lambda: run(*parsed))

    _command.__doc__ = help
