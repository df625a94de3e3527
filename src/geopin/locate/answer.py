"""One posterior, read out the same way everywhere: the guess, the places, the region and the words.

The JSON, the words and the map must not contradict each other, so everything here is read off the
same posterior masses: continent first, then the most probable country inside that continent, then
the best guess. The guess is the place with the highest expected GeoScore, which under a spread-out
posterior may lie outside the most probable continent or country (it sits closest, on average, to
where the mass is); the words then say so plainly instead of naming two places as "the" answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geopin.countries import continent_of, country_name
from geopin.locate.posterior import CONFIDENCE_KM

#: Within-km confidence at which an answer stops being "low confidence" (for 750 km).
CONFIDENT = 0.5


@dataclass
class Place:
    """A candidate place of the posterior: a finest geocell's point, or a training photo's own spot."""

    key: int  # fine place index, or -j-1 for neighbour j outside every class
    lat: float
    lon: float
    cell: str
    country: str
    mass: float
    name: str = ""  # the town a clue named, for a spot of evidence


def read_region_masses(by_cc: dict[str, float], guess_cc: str) -> dict:
    """Continent, the most probable country inside it, and where the guess stands relative to both,
    from the posterior mass per country code ('' for places at sea or unknown)."""
    codes = list(by_cc)
    cont_of = dict(zip(codes, continent_of(codes) if codes else []))
    by_continent: dict[str, float] = {}
    for cc in codes:
        key = (cont_of[cc] or "") if cc else ""
        by_continent[key] = by_continent.get(key, 0.0) + by_cc[cc]
    named = {k: v for k, v in by_continent.items() if k}
    continent = max(named, key=named.get) if named else ""
    inside = [cc for cc in codes if cc and cont_of[cc] == continent]
    country = max(inside, key=by_cc.get) if inside else ""
    guess_continent = str(continent_of([guess_cc])[0]) if guess_cc else ""
    if guess_cc and guess_cc == country:
        guess_in = "country"
    elif guess_continent and guess_continent == continent:
        guess_in = "continent"
    else:
        guess_in = "elsewhere"
    return {
        "continent": continent,
        "continent_probability": float(named.get(continent, 0.0)),
        "country": country,
        "country_name": country_name(country) if country else "",
        "country_probability": float(by_cc.get(country, 0.0)),
        "guess_country_probability": float(by_cc.get(guess_cc, 0.0)) if guess_cc else 0.0,
        "guess_continent": guess_continent,
        "guess_continent_probability": float(by_continent.get(guess_continent, 0.0)) if guess_continent else 0.0,
        "guess_in": guess_in,
    }


def summary(conf_row: np.ndarray, region: dict, guess_cc: str, effects=(), most: dict | None = None) -> str:
    """The answer in words, e.g. 'Europe (64%), most likely France (22%), best guess in France; low
    confidence: 3% within 25 km, 31% within 750 km', then what was read off the photo and where it points
    (`effects`: the ClueEffects of geopin.locate.clues). Never names a place that the JSON does not."""
    words = _posterior_words(conf_row, region, guess_cc)
    return most_likely_words(most) + words + evidence_words(effects)


def most_likely_words(most: dict | None) -> str:
    """'Most probable place: near Nara, Japan (6%); ': the single most probable place first, as a person would say it."""
    if not most:
        return ""
    where = ", ".join(x for x in (f"near {most['near']}" if most.get("near") else "", most.get("country_name") or "") if x)
    where = where or f"{most['lat']:.2f}, {most['lon']:.2f}"
    return f"Most probable place: {where} ({most['probability']:.0%}); "


def evidence_words(effects) -> str:
    """'; read "PRAIANO": Praiano, Italy' for each clue that counted, then the ones this model gives no weight."""
    counted = [e for e in effects if e.weight > 0]
    ignored = [e for e in effects if e.weight <= 0]
    out = "".join(f"; read \"{e.clue.read}\": {e.clue.points_to}" for e in counted)
    if ignored:
        reads = ", ".join(f"\"{e.clue.read}\"" for e in ignored[:3]) + (" and more" if len(ignored) > 3 else "")
        out += f"; also read {reads}, not weighed (sources that did not earn weight on held-out photographers)"
    return out


def _posterior_words(conf_row: np.ndarray, region: dict, guess_cc: str) -> str:
    guess_name = country_name(guess_cc) if guess_cc else ""
    where = guess_name or "open sea or an unknown country"
    for r_i, r in enumerate(CONFIDENCE_KM[:2]):
        if conf_row[r_i] >= CONFIDENT:
            cont = f", {region['guess_continent']}" if region.get("guess_continent") else ""
            return f"{where}{cont}: {conf_row[r_i]:.0%} within {int(r)} km of the guess"
    head = []
    if region.get("continent"):
        head.append(f"{region['continent']} ({region['continent_probability']:.0%})")
    if region.get("country_name"):
        head.append(f"most likely {region['country_name']} ({region['country_probability']:.0%})")
    if region["guess_in"] == "country":
        head.append(f"best guess in {where}")
        words = ", ".join(head)
    elif region["guess_in"] == "continent":
        words = (
            f"{', '.join(head)}; the best guess is in {where} ({region['guess_country_probability']:.0%}), "
            f"nearer on average to the other candidates"
        )
    else:
        elsewhere = f"{where}, {region['guess_continent']}" if region.get("guess_continent") else where
        words = (
            f"{', '.join(head) or 'no continent stands out'}; the best guess lies outside it, in {elsewhere}, "
            f"a compromise between distant candidates"
        )
    level = "low confidence" if conf_row[2] < CONFIDENT else "moderate confidence"
    return f"{words}; {level}: {conf_row[0]:.0%} within 25 km, {conf_row[2]:.0%} within 750 km"


def top_places(places: dict[int, Place], guess: dict, key: int | None, k: int) -> list[dict]:
    """The guess first, then the other places by posterior mass: the first row is always the answer."""
    first = {
        "lat": guess["lat"],
        "lon": guess["lon"],
        "cell": guess["cell"],
        "country": guess["country"],
        "probability": places[key].mass if key is not None else 0.0,
        "is_guess": True,
    }
    if key is not None and places[key].name:
        first["name"] = places[key].name
    rest = sorted((p for kk, p in places.items() if kk != key), key=lambda p: -p.mass)
    out = [first]
    for p in rest[: max(0, k - 1)]:
        row = {"lat": p.lat, "lon": p.lon, "cell": p.cell, "country": p.country, "probability": p.mass, "is_guess": False}
        if p.name:
            row["name"] = p.name
        out.append(row)
    return out


def most_likely(place: Place) -> dict:
    """The single most probable place of the posterior (a fine cell's point, a training photo's spot, or a
    town a clue named). The best guess (`lat`, `lon`) is the point of least expected distance, which under a
    spread-out posterior can lie between candidates; this is where the posterior itself puts most mass."""
    out = {"lat": place.lat, "lon": place.lon, "cell": place.cell, "country": place.country,
           "country_name": country_name(place.country) if place.country else "", "probability": place.mass}
    if place.name:
        out["name"] = place.name
    return out


def confidence_regions(order: list[Place], targets: tuple[float, ...]) -> dict[str, list[str]]:
    """Smallest sets of places, by mass, that hold each target share of the posterior (e.g. 50 %, 90 %)."""
    regions: dict[str, list[str]] = {}
    cum = 0.0
    tokens: list[str] = []
    left = list(targets)
    for p in order:
        cum += p.mass
        tokens.append(p.cell or f"near:{p.lat:.4f},{p.lon:.4f}")
        while left and cum >= left[0] - 1e-9:
            regions[f"{int(round(left.pop(0) * 100))}%"] = list(tokens)
        if not left:
            break
    return regions


__all__ = [
    "Place",
    "read_region_masses",
    "summary",
    "evidence_words",
    "most_likely_words",
    "top_places",
    "most_likely",
    "confidence_regions",
]
