"""What every command shares: bad input ends with one clear line and exit code 2, not a traceback."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer


@contextlib.contextmanager
def input_errors(command: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Turn the named exception kinds (default: ValueError, FileNotFoundError) into `geopin CMD: reason`."""
    try:
        yield
    except (kinds or (ValueError, FileNotFoundError)) as exc:
        typer.echo(f"geopin {command}: {exc}", err=True)
        raise typer.Exit(2) from None

