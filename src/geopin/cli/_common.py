"""What every command shares: bad input ends with one clear line and exit code 2, not a traceback."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re
from typing import Iterator

import typer

# Import names whose distribution is named otherwise (the rest: the import name, "_" read as "-").
_DISTRIBUTIONS = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "faiss": "faiss-cpu",
    "open_clip": "open_clip_torch",
}


@contextlib.contextmanager
def input_errors(command: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Turn the named exception kinds (default: ValueError, FileNotFoundError) into `geopin CMD: reason`."""
    try:
        yield
    except (kinds or (ValueError, FileNotFoundError)) as exc:
        typer.echo(f"geopin {command}: {exc}", err=True)
        raise typer.Exit(2) from None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_of(distribution: str) -> tuple[bool, str | None]:
    """(declared by geopin, the extra that brings it): read from geopin's installed metadata (pyproject.toml).

    The `test` extra is named only when no other extra has the package.
    """
    try:
        requires = importlib.metadata.requires("geopin") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return False, None
    extras = []
    for req in requires:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if name is None or _normalized(name.group(1)) != _normalized(distribution):
            continue
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if extra is None:
            return True, None  # a base dependency
        extras.append(extra.group(1))
    if not extras:
        return False, None
    return True, next((e for e in extras if e != "test"), extras[0])


def missing_package(exc: ModuleNotFoundError) -> str | None:
    """The line that says which package to install, or None when the missing module is geopin's own."""
    if not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top == "geopin":
        return None
    if exc.name != top and importlib.util.find_spec(top) is not None:
        return None  # a module missing inside an installed package: a wrong import, not a missing install
    distribution = _DISTRIBUTIONS.get(top, top.replace("_", "-"))
    declared, extra = _extra_of(distribution)
    if extra is not None:
        return f"needs the Python package {distribution}, which is not installed: pip install 'geopin[{extra}]'"
    if declared:
        return (f"needs the Python package {distribution}, a dependency of geopin that is not installed: "
                f"pip install {distribution}")
    return f"needs the Python package {distribution}, which is not installed: pip install {distribution}"
