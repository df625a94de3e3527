"""The `geopin` command: a thin layer over the stage functions.

Each command lives in its own module under geopin.cli and takes its option defaults from the stage's
config dataclass, so importing it loads that stage (for some, torch). The group below therefore imports
a command's module only when that command runs or shows its help: `geopin --help` lists the commands
from their docstrings, read from the source, and stays fast.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from typer.core import TyperCommand, TyperGroup

from geopin.cli._common import missing_package
from geopin.log import setup_logging

# command -> (module under geopin.cli, function), in the order `geopin --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("ingest", "ingest_cmd"),
    "cells": ("cells", "cells_cmd"),
    "split": ("splits", "split_cmd"),
    "embed": ("embed", "embed"),
    "read": ("read", "read_cmd"),
    "backbones": ("embed", "backbones"),
    "train": ("train", "train_cmd"),
    "predict": ("predict", "predict_cmd"),
    "demo": ("predict", "demo_cmd"),
    "evaluate": ("evaluate", "evaluate_cmd"),
    "serve": ("serve", "serve_cmd"),
    "explain": ("explain", "explain_cmd"),
    "characterize": ("explain", "characterize_cmd"),
    "build": ("build", "build_cmd"),
    "finetune": ("finetune", "finetune_cmd"),
    "tag": ("tag", "tag_cmd"),
}

_LISTING = "geopin.cli.listing"  # ctx.meta key: set while the group's own help lists the commands


def _docstring(module: str, function: str) -> str:
    """A command's docstring from its module's source, without importing the module (and its stage)."""
    spec = importlib.util.find_spec(f"geopin.cli.{module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    raise LookupError(f"geopin.cli.{module} has no function {function}")  # a wrong COMMANDS entry


class _LazyGroup(TyperGroup):
    """Loads a command's module on first use; turns a missing optional package into one line and exit 2."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | None:
        if cmd_name not in COMMANDS:
            return None
        if ctx.meta.get(_LISTING):  # the command list needs the first line of each docstring only
            return TyperCommand(cmd_name, help=_docstring(*COMMANDS[cmd_name]))
        if cmd_name not in self.commands:
            module, function = COMMANDS[cmd_name]
            with _missing_packages(cmd_name):
                callback = getattr(importlib.import_module(f"geopin.cli.{module}"), function)
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command(name=cmd_name)(callback)
            self.commands[cmd_name] = typer.main.get_group(single).commands[cmd_name]
        return self.commands[cmd_name]

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        ctx.meta[_LISTING] = True
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx.meta.pop(_LISTING, None)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:  # typer suggests among loaded ones only
            matches = difflib.get_close_matches(name, list(COMMANDS))
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {', '.join(map(repr, matches))}?" if matches else ""))
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        with _missing_packages(lambda: ctx.invoked_subcommand):
            return super().invoke(ctx)


@contextlib.contextmanager
def _missing_packages(command: str | Callable[[], str | None]) -> Iterator[None]:
    """A third-party package that is not installed ends the command with one line naming what to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        line = missing_package(exc)
        if line is None:  # our own code (or an unnamed module): a bug, shown in full
            raise
        name = command() if callable(command) else command
        typer.echo(f"geopin {name}: {line}" if name else f"geopin: {line}", err=True)
        raise typer.Exit(2) from None


app = typer.Typer(
    name="geopin",
    cls=_LazyGroup,
    help="Where on Earth was this photo taken? Build datasets, partition the Earth, learn, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    setup_logging(verbose, quiet)


def main() -> None:
    # Idle OpenMP threads that spin make small batches 10-30x slower on a busy 2-core machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.captureWarnings(True)
    app()
