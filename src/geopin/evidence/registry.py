"""The evidence registry: a name -> a source, found by looking in this package.

Adding a source is adding one file to geopin/evidence/ with a class decorated `@register_source("name")`
that implements `geopin.evidence.base.Source`. `sources()` imports every module of the package once,
so the registry needs no list to keep up to date; modules import their heavy libraries lazily.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from typing import Callable, Iterable, Sequence

from geopin.evidence.base import Clue, Reading, Source

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[[], Source]] = {}


def register_source(name: str):
    """Class decorator: the class (called with no argument) makes the source named `name`."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evidence source {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[str, ...]:
    import geopin.evidence as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return tuple(sorted(_REGISTRY))


def source_names() -> tuple[str, ...]:
    """Every registered source, by name."""
    return _discover()


def create_sources(names: Iterable[str] | None = None) -> list[Source]:
    """Sources by name (None: all of them), in name order; an unknown name is a ValueError naming the known ones."""
    known = _discover()
    wanted = known if names is None else tuple(sorted(set(names)))
    unknown = [n for n in wanted if n not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown evidence source(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [_REGISTRY[n]() for n in wanted]


def clues_of(reading: Reading, sources: list[Source]) -> list[Clue]:
    """Every source's clues for one photo. A source that fails on one photo is logged and skipped for it:
    one odd string must not cost the photo its answer."""
    out: list[Clue] = []
    for source in sources:
        try:
            out.extend(source.clues(reading))
        except (ValueError, LookupError, TypeError, ArithmeticError, RuntimeError) as exc:
            log.warning("evidence source %s failed on %r: %s: %s", source.name, reading.text[:80], type(exc).__name__, exc)
    return out


def clues_of_readings(readings: Sequence[Reading | None], sources: list[Source] | None = None) -> list[list[Clue]]:
    """Every photo's clues (None: a photo that was not read gives none)."""
    sources = create_sources() if sources is None else sources
    return [[] if r is None else clues_of(r, sources) for r in readings]


__all__ = ["register_source", "source_names", "create_sources", "clues_of", "clues_of_readings"]
