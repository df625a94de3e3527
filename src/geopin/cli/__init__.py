"""The `geopin` command: a thin layer over the stage functions.

Each stage registers its commands from its own module under geopin.cli, importing its heavy
dependencies inside the command so that `geopin --help` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

from geopin.log import setup_logging

app = typer.Typer(
    name="geopin",
    help="Where on Earth was this photo taken? Build datasets, partition the Earth, learn, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, each defining `register(app)`.
_COMMAND_MODULES = ["ingest", "cells", "splits", "embed", "train", "predict", "evaluate", "serve", "explain", "build", "finetune"]


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    setup_logging(verbose, quiet)


for _name in _COMMAND_MODULES:
    importlib.import_module(f"geopin.cli.{_name}").register(app)


def main() -> None:
    # Idle OpenMP threads that spin make small batches 10-30x slower on a busy 2-core machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.captureWarnings(True)
    app()
