"""Logging setup for the CLI; library code only calls logging.getLogger(__name__)."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr that stays silent when stderr is not a terminal, unless forced."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", None)  # None: disable on non-TTY
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)
