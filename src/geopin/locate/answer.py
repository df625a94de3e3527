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


def confidence_regions(order: list[Place], targets: tuple[float, ...], max_cells: int | None = None) -> dict[str, list[str]]:
    """Smallest sets of places, by mass, that hold each target share of the posterior (e.g. 50 %, 90 %),
    each drawn as S2 cells of one level (one_level_tokens: at most `max_cells`, REGION_MAX_CELLS by default)."""
    return {label: one_level_tokens(places, max_cells) for label, places in region_places(order, targets).items()}


def region_places(order: list[Place], targets: tuple[float, ...]) -> dict[str, list[Place]]:
    """The places of each confidence region: the heaviest first (`order`), until the target mass is held."""
    regions: dict[str, list[Place]] = {}
    cum = 0.0
    taken: list[Place] = []
    left = list(targets)
    for p in order:
        cum += p.mass
        taken.append(p)
        while left and cum >= left[0] - 1e-9:
            regions[f"{int(round(left.pop(0) * 100))}%"] = list(taken)
        if not left:
            break
    return regions


#: Most S2 cells one confidence region is drawn with (the page asks /api/cells for at most 2,000 at a time).
#: The places of a region span S2 levels 1 to 20 (a level-1 class covers Siberia, a level-11 one a town): at
#: the finest level a 90 % region would be millions of cells, so its level is the finest that fits this cap.
REGION_MAX_CELLS = 1000
#: A training photo's own spot (a place with no cell) weighs, when a region's level is chosen, as a cell of
#: this level (about the 25 km disc the page drew for it); at the chosen level it is the cell that holds it.
SPOT_LEVEL = 8


def one_level_tokens(places: list[Place], max_cells: int | None = None) -> list[str]:
    """A region's places as S2 cell tokens of one level, the heaviest place's cells first.

    The level is the finest among the places' cells (a spot counting as SPOT_LEVEL) at which the region is
    at most `max_cells` cells. A coarser cell is split into its children at that level: the same area, the
    same mass. A finer cell, or a spot, becomes the cell of that level holding it: a little more area around
    it, so the region holds at least its mass (and every place it held); nothing of the region is dropped.
    """
    from geopin.dataset.cells import cell_levels, leaf_cell_ids, token_to_cell_id

    if not places:
        return []
    cap = REGION_MAX_CELLS if max_cells is None else int(max_cells)
    if cap < 6:
        raise ValueError(f"max_cells must be at least 6 (the S2 faces), got {cap}")
    ids = np.zeros(len(places), dtype=np.uint64)
    spot = np.array([not p.cell for p in places])
    if spot.any():
        ids[spot] = leaf_cell_ids([p.lat for p, s in zip(places, spot) if s], [p.lon for p, s in zip(places, spot) if s])
    ids[~spot] = [token_to_cell_id(p.cell) for p, s in zip(places, spot) if not s]
    ids = _outermost(ids)  # a cell (or spot) inside another of the region's cells adds nothing to it
    levels = cell_levels(ids)
    finest = int(max(levels.max(initial=0, where=levels < 30), SPOT_LEVEL if (levels == 30).any() else 0))
    # the coarsest cell alone is 4^(level - its level) cells: no finer level can fit
    top = min(finest, int(levels.min()) + int(np.floor(np.log(cap) / np.log(4) + 1e-9)))
    level = next(lv for lv in range(top, -1, -1) if _count_at(ids, levels, lv) <= cap)
    return _tokens(_cells_at(ids, levels, level), level)


def _outermost(ids: np.ndarray) -> np.ndarray:
    """The cells not inside another one of `ids` (S2 cells are nested or disjoint), in their given order."""
    from geopin.dataset.cells import cell_levels, cell_ranges

    lo, hi = cell_ranges(ids)
    by_lo = np.lexsort((cell_levels(ids), lo))  # of cells starting at one leaf, the biggest (coarsest) first
    inside = np.zeros(len(ids), dtype=bool)
    end = None
    for k in by_lo:
        if end is not None and lo[k] <= end:
            inside[k] = True
        else:
            end = hi[k]
    return ids[~inside]


def _count_at(ids: np.ndarray, levels: np.ndarray, level: int) -> float:
    """How many cells of `level` the disjoint cells `ids` (of `levels`) become: children of the coarser ones,
    the distinct ancestors of the finer ones (an ancestor of one can hold no other's child: they are disjoint)."""
    from geopin.dataset.cells import parent_ids

    coarse = levels <= level
    split = float(np.sum(4.0 ** (level - levels[coarse])))
    return split + len(np.unique(parent_ids(ids[~coarse], level))) if not coarse.all() else split


def _cells_at(ids: np.ndarray, levels: np.ndarray, level: int) -> np.ndarray:
    """The distinct cells of `level` covering `ids`, in the order of `ids` (a cell's children in curve order)."""
    lsb = np.uint64(1) << np.uint64(2 * (30 - level))
    coarse = levels <= level
    n = np.where(coarse, 4 ** (level - np.minimum(levels, level)), 1)
    own_lsb = np.uint64(1) << (np.uint64(2) * (np.uint64(30) - levels.astype(np.uint64)))
    # a coarser cell's first child at `level`, then every other id from there; a finer cell's ancestor
    first = np.where(coarse, ids - own_lsb + lsb, _ancestors(ids, level, coarse))
    step = np.arange(int(n.sum()), dtype=np.uint64) - np.repeat((np.cumsum(n) - n).astype(np.uint64), n)
    cells = np.repeat(first, n) + step * (lsb << np.uint64(1))
    _, keep = np.unique(cells, return_index=True)
    return cells[np.sort(keep)]


def _ancestors(ids: np.ndarray, level: int, coarse: np.ndarray) -> np.ndarray:
    """Each finer cell's ancestor at `level`; the coarse ones as they are."""
    from geopin.dataset.cells import parent_ids

    out = ids.copy()
    out[~coarse] = parent_ids(ids[~coarse], level)
    return out


def _tokens(cells: np.ndarray, level: int) -> list[str]:
    """S2 tokens of cells of one level: the hex id without its trailing zeros, all of one length there."""
    digits = 16 - (2 * (30 - level)) // 4
    hexes = np.frombuffer(cells.astype(">u8").tobytes().hex().encode("ascii"), dtype="S16")
    return hexes.astype(f"S{digits}").astype(str).tolist()


__all__ = [
    "Place",
    "read_region_masses",
    "summary",
    "evidence_words",
    "most_likely_words",
    "top_places",
    "most_likely",
    "confidence_regions",
    "region_places",
    "one_level_tokens",
    "REGION_MAX_CELLS",
    "SPOT_LEVEL",
]
