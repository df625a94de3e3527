"""Weighing what the photo shows (geopin.evidence clues) into the posterior, and fitting how much each source counts.

Each clue is a likelihood over places, tempered by its source's weight `lam` (fit out of fold) times its
own strength:
  * a country clue multiplies the mass of each place by 1 + lam * l(country), l in 0..1;
  * a spot clue (a town whose name was read) says "the photo is at one of these spots, or the text misled":
    p'(x) is proportional to p(x) * (1 + lam * sum_j w_j delta(x near spot_j)). The mass it adds at spot j is
    lam * w_j * (the posterior's own mass within CLUE_REACH_KM of it), so the model still chooses between
    namesakes (Praiano, Italy against a Praiano elsewhere), and each spot becomes a place of the posterior at
    its exact location, where the best guess can land.
With lam = 0, or no clue, the posterior is exactly the one without evidence. The weights are fit on held-out
photographers' photos by the same score as the mixture (log-probability of the truth's 25/200/750/2500 km
neighbourhoods), one source at a time from zero, so a source that does not help keeps weight 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd

from geopin.evidence.base import Clue
from geopin.geo import pairwise_km
from geopin.locate.posterior import CLUE_REACH_KM, Evidence, Places, truth_masks

log = logging.getLogger(__name__)

#: Within this distance of a clue's spots the posterior mass is "where the clue points" (before/after).
SPOT_KM = 25.0

#: Support floors tried for the spots clues name (0: only where the photo model already puts mass).
SPOT_FLOOR_GRID: tuple[float, ...] = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)

#: Weights tried per source when fitting (0: the source does not count).
LAMBDA_GRID: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)

PhotoClues = Sequence[Clue]


@dataclass(frozen=True)
class ClueEffect:
    """One clue as applied to one photo: its weight and how much of the posterior agreed with it before and after."""

    clue: Clue
    weight: float  # the source's fit weight times the clue's strength; 0: listed, not counted
    before: float  # posterior mass where the clue points (its countries, weighted; or within SPOT_KM of its spots)
    after: float

    def to_dict(self) -> dict:
        c = self.clue
        out = {"source": c.source, "read": c.read, "points_to": c.points_to, "weight": round(self.weight, 4),
               "probability_before": round(self.before, 4), "probability_after": round(self.after, 4)}
        if c.spots:
            out["places"] = [{"name": s.name, "country": s.country, "lat": s.lat, "lon": s.lon, "weight": round(s.weight, 4)}
                             for s in c.spots[:5]]
        else:
            top = sorted(c.countries.items(), key=lambda kv: -kv[1])[:8]
            out["countries"] = {cc: round(v, 3) for cc, v in top}
        return out


def _country_likelihood(clue: Clue, codes: np.ndarray) -> np.ndarray:
    return np.array([clue.countries.get(str(cc), 0.0) for cc in codes], dtype=np.float64)


def apply_clues(places: Places, ev: Evidence, cell: np.ndarray, nb: np.ndarray, clues: Sequence[PhotoClues] | None,
                weights: dict[str, float], reach_km: float = CLUE_REACH_KM, floor: float = 0.0,
                ) -> tuple[Evidence, np.ndarray, np.ndarray, list[list[ClueEffect]]]:
    """The posterior (cell, nb) of a batch after each photo's clues; spots named by clues are appended to the
    neighbour arrays (nb_place -1, their name in nb_name). Photos without clues keep their rows exactly.

    `floor` is added to the posterior's own support for every spot: the training photos are not the world, and a
    town far from all of them (Vladivostok, for photos taken mostly in Europe and America) still has photos taken
    in it. It is fit out of fold with the weights."""
    b = len(ev)
    effects: list[list[ClueEffect]] = [[] for _ in range(b)]
    if not clues or not any(clues):
        return ev, cell, nb, effects
    if len(clues) != b:
        raise ValueError(f"{len(clues)} photos' clues for a batch of {b} photos")
    codes, code_idx = np.unique(places.country, return_inverse=True)
    cell = np.array(cell, dtype=np.float64, copy=True)
    nb = np.array(nb, dtype=np.float64, copy=True)
    nb_cc = ev.nb_country if ev.nb_country is not None else np.full(ev.nb_lat.shape, "", dtype=object)
    added: list[list[tuple[float, float, float, str, str]]] = [[] for _ in range(b)]  # (lat, lon, mass, name, cc)
    for i, photo_clues in enumerate(clues):
        if not photo_clues:
            continue
        c, n = cell[i], nb[i]
        spots_lat: list[float] = []
        spots_lon: list[float] = []
        spots_mass: list[float] = []
        spots_meta: list[tuple[str, str]] = []
        # countries first: a town's namesakes are then weighed with the country evidence already in
        for clue in sorted(photo_clues, key=lambda x: (bool(x.spots), x.source)):
            lam = float(weights.get(clue.source, 0.0)) * clue.strength
            a_m = np.asarray(spots_mass)
            if clue.countries:
                l_cells = _country_likelihood(clue, codes)[code_idx]
                l_nb = np.array([clue.countries.get(str(cc), 0.0) for cc in nb_cc[i]])
                l_sp = np.array([clue.countries.get(cc, 0.0) for _, cc in spots_meta])
                before = float(c @ l_cells + n @ l_nb + (a_m @ l_sp if len(a_m) else 0.0))
                if lam > 0:
                    c *= 1.0 + lam * l_cells
                    n *= 1.0 + lam * l_nb
                    if len(a_m):
                        spots_mass = list(a_m * (1.0 + lam * l_sp))
                    total = c.sum() + n.sum() + sum(spots_mass)
                    c /= total
                    n /= total
                    spots_mass = [m / total for m in spots_mass]
                    a_m = np.asarray(spots_mass)
                after = float(c @ l_cells + n @ l_nb + (a_m @ l_sp if len(a_m) else 0.0))
            else:
                s_lat = np.array([s.lat for s in clue.spots])
                s_lon = np.array([s.lon for s in clue.spots])
                w = np.array([s.weight for s in clue.spots])
                w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
                d_cells = pairwise_km(s_lat, s_lon, places.lat, places.lon)  # (S, K)
                d_nb = pairwise_km(s_lat, s_lon, ev.nb_lat[i], ev.nb_lon[i])  # (S, k)
                d_sp = pairwise_km(s_lat, s_lon, np.asarray(spots_lat), np.asarray(spots_lon)) if spots_lat else np.zeros((len(w), 0))
                near = lambda d: d.min(0) <= SPOT_KM if d.shape[1] else np.zeros(0, bool)  # noqa: E731
                before = float(c[near(d_cells)].sum() + n[near(d_nb)].sum() + (a_m[near(d_sp)].sum() if len(a_m) else 0.0))
                if lam > 0:
                    support = np.exp(-d_cells / reach_km) @ c + np.exp(-d_nb / reach_km) @ n + floor
                    if len(a_m):
                        support = support + np.exp(-d_sp / reach_km) @ a_m
                    extra = lam * w * support  # (S,)
                    total = 1.0 + float(extra.sum())
                    c /= total
                    n /= total
                    spots_mass = [m / total for m in spots_mass]
                    for s, m in zip(clue.spots, extra / total):
                        spots_lat.append(s.lat)
                        spots_lon.append(s.lon)
                        spots_mass.append(float(m))
                        spots_meta.append((s.name, s.country))
                    a_m = np.asarray(spots_mass)
                    d_sp = pairwise_km(s_lat, s_lon, np.asarray(spots_lat), np.asarray(spots_lon))
                after = float(c[near(d_cells)].sum() + n[near(d_nb)].sum() + (a_m[near(d_sp)].sum() if len(a_m) else 0.0))
            effects[i].append(ClueEffect(clue, lam, before, after))
        added[i] = [(la, lo, m, name, cc) for la, lo, m, (name, cc) in zip(spots_lat, spots_lon, spots_mass, spots_meta)]
    n_add = max(len(a) for a in added)
    if n_add == 0:
        return ev, cell, nb, effects
    return _with_spots(ev, added, n_add), cell, _pad(nb, added, n_add), effects


def _pad(nb: np.ndarray, added, n_add: int) -> np.ndarray:
    extra = np.zeros((len(nb), n_add))
    for i, spots in enumerate(added):
        for j, s in enumerate(spots):
            extra[i, j] = s[2]
    return np.concatenate([nb, extra], axis=1)


def _with_spots(ev: Evidence, added, n_add: int) -> Evidence:
    """The batch's Evidence with each photo's spots after its neighbours (padding: the first neighbour's
    location, nb_place -2, no mass)."""
    b, k = ev.nb_lat.shape
    lat = np.repeat(ev.nb_lat[:, :1], n_add, axis=1).astype(np.float64)
    lon = np.repeat(ev.nb_lon[:, :1], n_add, axis=1).astype(np.float64)
    place = np.full((b, n_add), -2, dtype=np.int64)
    cc = np.full((b, n_add), "", dtype=object)
    name = np.full((b, k + n_add), "", dtype=object)
    if ev.nb_name is not None:
        name[:, :k] = ev.nb_name
    for i, spots in enumerate(added):
        for j, (la, lo, _, nm, c) in enumerate(spots):
            lat[i, j], lon[i, j], place[i, j], cc[i, j], name[i, k + j] = la, lo, -1, c, nm
    nb_cc = ev.nb_country if ev.nb_country is not None else np.full((b, k), "", dtype=object)
    return replace(
        ev,
        nb_sim=np.concatenate([ev.nb_sim, np.full((b, n_add), -1.0, dtype=ev.nb_sim.dtype)], axis=1),
        nb_lat=np.concatenate([ev.nb_lat, lat], axis=1),
        nb_lon=np.concatenate([ev.nb_lon, lon], axis=1),
        nb_place=np.concatenate([ev.nb_place, place], axis=1),
        nb_country=np.concatenate([nb_cc.astype(object), cc], axis=1),
        nb_name=name,
    )


def applied(effects: Sequence[ClueEffect]) -> bool:
    """Whether any clue of a photo counted (a weight above zero)."""
    return any(e.weight > 0 for e in effects)


# ------------------------------------------------------------------------------------ fitting the weights


def truth_mass(places: Places, ev: Evidence, cell: np.ndarray, nb: np.ndarray, t_lat: np.ndarray, t_lon: np.ndarray) -> np.ndarray:
    """Posterior mass within each CONFIDENCE_KM of the truth, (B, R)."""
    in_cells, in_nb = truth_masks(places, ev, t_lat, t_lon)
    return ((in_cells * cell[None]).sum(-1) + (in_nb * nb[None]).sum(-1)).T


@dataclass
class FoldPosterior:
    """One held-out fold's posterior before clues, with the truth and the clues of its photos."""

    places: Places
    ev: Evidence
    cell: np.ndarray
    nb: np.ndarray
    t_lat: np.ndarray
    t_lon: np.ndarray
    clues: list[list[Clue]]
    groups: np.ndarray | None = None


def _score_rows(fold: FoldPosterior, weights: dict[str, float], rows: np.ndarray, reach_km: float, floor: float,
                spot_floor: float = 0.0) -> np.ndarray:
    """Per photo (of `rows`), the summed log-probability of the truth's neighbourhoods under `weights`."""
    ev = fold.ev.rows(rows)
    ev2, c2, n2, _ = apply_clues(fold.places, ev, fold.cell[rows], fold.nb[rows], [fold.clues[r] for r in rows], weights, reach_km,
                                 spot_floor)
    m = truth_mass(fold.places, ev2, c2, n2, fold.t_lat[rows], fold.t_lon[rows])
    return np.log(np.clip(m, 0.0, 1.0) + floor).sum(1)


def fit_clue_weights(folds: Sequence[FoldPosterior], sources: Sequence[str] | None = None, grid: Sequence[float] = LAMBDA_GRID,
                     reach_km: float = CLUE_REACH_KM, floor: float = 1e-4, rounds: int = 2,
                     spot_floors: Sequence[float] = SPOT_FLOOR_GRID) -> tuple[dict[str, float], float, dict]:
    """Each source's weight, by coordinate ascent over `grid` on the held-out photos where any clue fired, and the
    spots' support floor (apply_clues' `floor`) over `spot_floors` on the photos with a spot clue.

    Returns the weights (sources that did not help: 0), the spot floor, and a report: per source the photos it
    fired on, the gain in mean log-probability over weight 0 and that gain's standard error over photographers.
    """
    names = sorted({c.source for f in folds for cl in f.clues for c in cl} if sources is None else set(sources))
    weights = {s: 0.0 for s in names}
    rows = [np.array([i for i, cl in enumerate(f.clues) if cl], dtype=np.int64) for f in folds]
    fires = {s: [np.array([i for i, cl in enumerate(f.clues) if any(c.source == s for c in cl)], dtype=np.int64) for f in folds]
             for s in names}

    spotted = [np.array([i for i, cl in enumerate(f.clues) if any(c.spots for c in cl)], dtype=np.int64) for f in folds]
    spot_floor = 0.0

    def total(w: dict[str, float], s: str | None, sf: float | None = None) -> np.ndarray:  # per photo s fires on (None: any spot)
        rows_of = fires[s] if s is not None else spotted
        sf = spot_floor if sf is None else sf
        return np.concatenate([_score_rows(f, w, r, reach_km, floor, sf) for f, r in zip(folds, rows_of) if len(r)] or [np.zeros(0)])

    for _ in range(rounds):
        for s in names:
            scores = [(float(total({**weights, s: lam}, s).mean()), lam) for lam in grid]
            best = max(scores, key=lambda t: (t[0], -t[1]))
            weights[s] = best[1]
        if any(len(r) for r in spotted):
            scores = [(float(total(weights, None, sf).mean()), sf) for sf in spot_floors]
            spot_floor = max(scores, key=lambda t: (t[0], -t[1]))[1]
    report: dict = {"spot_floor": spot_floor}
    for s in names:
        gain = total(weights, s) - total({**weights, s: 0.0}, s)
        grp = np.concatenate([f.groups[r] if f.groups is not None else np.arange(len(r)) + 10**6 * k
                              for k, (f, r) in enumerate(zip(folds, fires[s])) if len(r)] or [np.zeros(0)])
        report[s] = {"weight": weights[s], "photos": int(len(gain)), "gain": round(float(gain.mean()), 4) if len(gain) else 0.0,
                     "se": round(_group_se(gain, grp), 4)}
    log.info("clue weights fit on %d held-out photos with clues: %s", sum(len(r) for r in rows), report)
    return weights, spot_floor, report


def _group_se(values: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of the mean of `values`, with photos of one group (photographer) moving together."""
    if len(values) < 2:
        return float("nan")
    mean = values.mean()
    per = pd.DataFrame({"v": values - mean, "g": groups}).groupby("g")["v"].sum()
    return float(np.sqrt((per**2).sum()) / len(values))


__all__ = ["ClueEffect", "apply_clues", "applied", "truth_mass", "FoldPosterior", "fit_clue_weights", "LAMBDA_GRID", "SPOT_KM"]
