"""One posterior over places from the classifier, the neighbours and the training prior.

The support of the posterior is the finest geocells' representative points (where the prior and
the classifier put their mass) plus the query's nearest training photos (where retrieval puts its
mass, at their exact locations). The mixing weights and temperatures are fit on held-out photos by
maximising the log-probability given to the truth's 25/200/750/2500 km neighbourhoods, so a
component that does not help gets no weight and the posterior never does worse than the prior on
held-out data. Decisions (best guess, top-k places, within-km confidences) are read off it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from geopin.countries import country_of
from geopin.geo import haversine_km, pairwise_km, pairwise_km_xyz, to_xyz
from geopin.metrics import geoscore

log = logging.getLogger(__name__)

#: The within-km confidences geopin states for every guess.
CONFIDENCE_KM: tuple[float, ...] = (25.0, 200.0, 750.0, 2500.0)

#: How far around a named spot (a town read on a sign) the posterior's own mass counts as support for it:
#: the photo model cannot tell towns 50 km apart, but it can tell Italy from Texas.
CLUE_REACH_KM = 300.0


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(z, axis))


@dataclass
class Places:
    """The fixed support: fine cells' representative points, their training share and ancestry."""

    lat: np.ndarray  # (K,)
    lon: np.ndarray  # (K,)
    prior: np.ndarray  # (K,) share of training photos, sums to 1
    ancestors: list[np.ndarray]  # per granularity, coarse to fine: (K,) class index at that level
    best_constant: tuple[float, float]  # the point maximising the training photos' mean GeoScore

    def __post_init__(self) -> None:
        self._score = None

    @functools.cached_property
    def country(self) -> np.ndarray:
        """ISO code of each place ('' at sea or unknown), for clues that point to countries."""
        return country_of(self.lat, self.lon)

    @functools.cached_property
    def xyz(self) -> np.ndarray:
        """Unit vectors of the places (K, 3), made once per model rather than once per photo."""
        return to_xyz(self.lat, self.lon).reshape(-1, 3)

    @property
    def score_matrix(self) -> np.ndarray:
        """GeoScore between every pair of places (K, K), built once per model."""
        if self._score is None:  # by row blocks: float64 (K, K) temporaries were 0.6 GB at 5,000 places
            k = len(self.lat)
            score = np.empty((k, k), dtype=np.float32)
            for s in range(0, k, 512):
                score[s : s + 512] = geoscore(pairwise_km(self.lat[s : s + 512], self.lon[s : s + 512], self.lat, self.lon))
            self._score = score
        return self._score


@dataclass
class Evidence:
    """What the heads say about a batch of photos, before any mixing parameter is applied."""

    logits: list[np.ndarray]  # per granularity (B, K_l), same order as Places.ancestors
    nb_sim: np.ndarray  # (B, k) cosine similarity of the nearest training photos
    nb_lat: np.ndarray  # (B, k)
    nb_lon: np.ndarray  # (B, k)
    nb_place: np.ndarray  # (B, k) index of the neighbour's fine place, -1 if its cell was dropped
    nb_country: np.ndarray | None = None  # (B, k) ISO code of each neighbour's location
    # (B, k) a name for spots that are not neighbours but places a clue named (apply_clues adds them after the
    # neighbours, with nb_place -1; rows with fewer such spots are padded with nb_place -2 and no mass)
    nb_name: np.ndarray | None = None

    def __len__(self) -> int:
        return self.nb_sim.shape[0]

    def rows(self, idx: np.ndarray) -> "Evidence":
        """The evidence of some photos of the batch, in the order of `idx`."""
        return Evidence([lg[idx] for lg in self.logits], self.nb_sim[idx], self.nb_lat[idx], self.nb_lon[idx], self.nb_place[idx],
                        None if self.nb_country is None else self.nb_country[idx], None if self.nb_name is None else self.nb_name[idx])


@dataclass
class MixParams:
    """Mixing weights (prior, classifier, neighbours) and the temperatures fit on held-out photos."""

    w_prior: float = 1.0
    w_clf: float = 0.0
    w_knn: float = 0.0
    t_clf: float = 1.0
    t_knn: float = 0.05
    # weight of each evidence source (geopin.evidence), fit out of fold; a source not named here counts for nothing
    clue_weights: dict[str, float] = field(default_factory=dict)
    clue_reach_km: float = CLUE_REACH_KM
    clue_floor: float = 0.0  # support every spot a clue names gets beyond the posterior's own (fit with the weights)

    @property
    def prior_only(self) -> bool:
        """Nothing but the training prior: the photo itself carries no weight."""
        return self.w_clf == 0 and self.w_knn == 0

    def to_dict(self) -> dict:
        return asdict(self)


def classifier_probs(places: Places, logits: list[np.ndarray], t: float) -> np.ndarray:
    """Hierarchical inference: p(fine) proportional to the product over levels of p(ancestor)."""
    total = np.zeros((logits[0].shape[0], len(places.lat)), dtype=np.float64)
    for lg, anc in zip(logits, places.ancestors):
        total += log_softmax(lg.astype(np.float64) / t, axis=1)[:, anc]
    return softmax(total, axis=1)


def neighbour_probs(sim: np.ndarray, t: float) -> np.ndarray:
    return softmax(sim.astype(np.float64) / t, axis=1)


def mixture(places: Places, ev: Evidence, p: MixParams) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mass on the fine places (B, K) and on the neighbours' own locations (B, k)."""
    cell = p.w_prior * places.prior[None, :]
    if p.w_clf > 0:
        cell = cell + p.w_clf * classifier_probs(places, ev.logits, p.t_clf)
    else:
        cell = np.broadcast_to(cell, (len(ev), len(places.lat))).copy()
    nb = p.w_knn * neighbour_probs(ev.nb_sim, p.t_knn)
    return cell, nb


@dataclass
class Decision:
    """Read off one batch of posteriors."""

    lat: np.ndarray  # (B,) best guess: the candidate maximising expected GeoScore
    lon: np.ndarray
    expected_geoscore: np.ndarray  # (B,)
    raw_within: np.ndarray  # (B, R) posterior mass within CONFIDENCE_KM of the guess (uncalibrated)


def decide(places: Places, ev: Evidence, cell: np.ndarray, nb: np.ndarray, prior_only: bool | np.ndarray = False) -> Decision:
    """Best guess among the fine places, the neighbours (and spots that clues named) and the prior's best constant.

    With `prior_only` (the posterior is the training prior; one flag, or one per photo) the guess is the
    constant itself: it maximises GeoScore over the training photos exactly, where the places only approximate them.
    """
    prior_only = np.broadcast_to(np.asarray(prior_only, dtype=bool), (nb.shape[0],))
    score = places.score_matrix
    b = nb.shape[0]
    const_lat, const_lon = places.best_constant
    out_lat = np.empty(b)
    out_lon = np.empty(b)
    out_score = np.empty(b)
    within = np.empty((b, len(CONFIDENCE_KM)))
    # Expected score of each place candidate against the place part of the posterior, batched.
    exp_cells = cell.astype(np.float32) @ score  # (B, K), score is symmetric
    places_xyz = places.xyz
    const_xyz = to_xyz([const_lat], [const_lon])
    nb_xyz_all = to_xyz(ev.nb_lat, ev.nb_lon)  # (B, k, 3)
    for i in range(b):
        cand_lat = np.append(ev.nb_lat[i], const_lat)
        cand_lon = np.append(ev.nb_lon[i], const_lon)
        # neighbours' own locations and the constant as candidates: (k+1, K) and (k+1, k); the
        # neighbours' rows of the first are also the places-to-neighbours distances, so it is made once
        nb_xyz = nb_xyz_all[i]
        cand_xyz = np.concatenate([nb_xyz, const_xyz])
        d_c_places = pairwise_km_xyz(cand_xyz, places_xyz)
        g_c_places = geoscore(d_c_places)
        d_c_nb = pairwise_km_xyz(cand_xyz, nb_xyz)
        exp_extra = g_c_places @ cell[i] + geoscore(d_c_nb) @ nb[i]
        n_nb = len(nb_xyz)
        exp_places = exp_cells[i] + nb[i] @ g_c_places[:n_nb]
        j = int(np.argmax(exp_places))
        jj = int(np.argmax(exp_extra))
        if prior_only[i]:
            jj = len(cand_lat) - 1
        if prior_only[i] or exp_extra[jj] > exp_places[j]:
            g_lat, g_lon, best = cand_lat[jj], cand_lon[jj], exp_extra[jj]
            d_to_places, d_to_nb = d_c_places[jj], d_c_nb[jj]
        else:
            g_lat, g_lon, best = places.lat[j], places.lon[j], exp_places[j]
            d_to_places = pairwise_km_xyz(places_xyz[j : j + 1], places_xyz)[0]
            d_to_nb = d_c_places[:n_nb, j]
        out_lat[i], out_lon[i], out_score[i] = g_lat, g_lon, best
        for r_i, r in enumerate(CONFIDENCE_KM):
            within[i, r_i] = cell[i][d_to_places <= r].sum() + nb[i][d_to_nb <= r].sum()
    return Decision(out_lat, out_lon, out_score, np.clip(within, 0.0, 1.0))


def mass_within(places: Places, ev: Evidence, cell: np.ndarray, nb: np.ndarray, lat: float, lon: float,
                radii=CONFIDENCE_KM) -> np.ndarray:
    """Raw (uncalibrated) posterior mass within each radius (km) of one point, (B, R): places plus neighbours.

    What `decide` measures around its own guess, for any point (an explanation's target, a user's pin).
    """
    d_places = pairwise_km(np.array([lat]), np.array([lon]), places.lat, places.lon)[0]
    d_nb = haversine_km(lat, lon, ev.nb_lat, ev.nb_lon)
    return np.stack([cell[:, d_places <= r].sum(1) + (nb * (d_nb <= r)).sum(1) for r in radii], axis=1)


# ---------------------------------------------------------------- fitting on held-out photos


def truth_masks(places: Places, ev: Evidence, true_lat: np.ndarray, true_lon: np.ndarray):
    """Which support points lie within each confidence radius of the truth: (R, B, K), (R, B, k)."""
    d_cells = pairwise_km(true_lat, true_lon, places.lat, places.lon)
    d_nb = np.stack(
        [pairwise_km(true_lat[i : i + 1], true_lon[i : i + 1], ev.nb_lat[i], ev.nb_lon[i])[0] for i in range(len(ev))]
    )
    radii = np.asarray(CONFIDENCE_KM)[:, None, None]
    return d_cells[None] <= radii, d_nb[None] <= radii


@dataclass
class FitConfig:
    t_clf_grid: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 13.0)
    t_knn_grid: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4)
    floor: float = 1e-4  # probability floor inside the log so one surprise cannot dominate
    em_iters: int = 300


def _fit_weights(v: np.ndarray, floor: float, iters: int) -> tuple[np.ndarray, float]:
    """Maximise mean log(floor + w . v) over the simplex by EM; v is (n, 3) component likelihoods."""
    w = np.full(v.shape[1], 1.0 / v.shape[1])
    for _ in range(iters):
        mix = v @ w + floor
        resp = (v * w) / mix[:, None]
        w_new = resp.mean(0)
        w_new = w_new / max(w_new.sum(), 1e-12)
        if np.abs(w_new - w).max() < 1e-7:
            w = w_new
            break
        w = w_new
    return w, float(np.log(v @ w + floor).mean())


def fit_mixture(
    places_list: list[Places],
    ev_list: list[Evidence],
    truth_list: list[tuple[np.ndarray, np.ndarray]],
    cfg: FitConfig | None = None,
) -> tuple[MixParams, dict]:
    """Fit weights and temperatures on out-of-fold evidence (one entry per inner fold)."""
    cfg = cfg or FitConfig()
    masks = [truth_masks(p, e, t[0], t[1]) for p, e, t in zip(places_list, ev_list, truth_list)]
    # prior component does not depend on temperatures
    prior_v = np.concatenate([(mc * p.prior[None, None, :]).sum(-1) for p, (mc, _) in zip(places_list, masks)], axis=1)
    clf_v = {
        t: np.concatenate(
            [(mc * classifier_probs(p, e.logits, t)[None]).sum(-1) for p, e, (mc, _) in zip(places_list, ev_list, masks)],
            axis=1,
        )
        for t in cfg.t_clf_grid
    }
    knn_v = {
        t: np.concatenate([(mn * neighbour_probs(e.nb_sim, t)[None]).sum(-1) for e, (_, mn) in zip(ev_list, masks)], axis=1)
        for t in cfg.t_knn_grid
    }
    best = None
    table = []
    for tc, cv in clf_v.items():
        for tk, kv in knn_v.items():
            # one row per (radius, photo): each radius is an equally weighted proper score
            v = np.stack([prior_v.ravel(), cv.ravel(), kv.ravel()], axis=1)
            w, ll = _fit_weights(v, cfg.floor, cfg.em_iters)
            table.append({"t_clf": tc, "t_knn": tk, "w": w.tolist(), "loglik": ll})
            if best is None or ll > best[0]:
                best = (ll, MixParams(float(w[0]), float(w[1]), float(w[2]), tc, tk))
    prior_only = float(np.log(prior_v.ravel() + cfg.floor).mean())
    report = {"loglik": best[0], "loglik_prior_only": prior_only, "grid": table, "n": int(prior_v.shape[1])}
    log.info(
        "mixture fit on %d held-out photos: %s (log-lik %.4f vs prior alone %.4f)",
        prior_v.shape[1],
        best[1],
        best[0],
        prior_only,
    )
    return best[1], report


@dataclass
class Calibration:
    """Maps raw within-km mass to observed frequency, one map per radius.

    Each map is the average of an isotonic fit (follows any monotone shape) and a Platt fit in logit
    space (smooth, two parameters): on the shared set the blend generalised from the inner folds to
    new photos better than either alone, mostly at the rare high-confidence end where isotonic steps
    are fit on a handful of photos.
    """

    radii: tuple[float, ...] = CONFIDENCE_KM
    x: list[list[float]] = field(default_factory=list)  # knots of each isotonic map
    y: list[list[float]] = field(default_factory=list)
    platt: list[tuple[float, float]] = field(default_factory=list)  # (slope, intercept) on logit(raw)

    @classmethod
    def fit(cls, raw: np.ndarray, hit: np.ndarray) -> "Calibration":
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        xs, ys, platt = [], [], []
        for r_i in range(raw.shape[1]):
            h = hit[:, r_i].astype(float)
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            iso.fit(raw[:, r_i], h)
            xs.append(iso.X_thresholds_.tolist())
            ys.append(iso.y_thresholds_.tolist())
            if 0 < h.sum() < len(h):
                lr = LogisticRegression(C=1e4).fit(_logit(raw[:, r_i])[:, None], h)
                slope = max(float(lr.coef_[0, 0]), 0.0)  # never let more mass mean less confidence
                platt.append((slope, float(lr.intercept_[0])))
            else:  # every or no photo within the radius: a constant
                rate = float(np.clip(h.mean() if len(h) else 0.5, 1e-4, 1 - 1e-4))
                platt.append((0.0, float(np.log(rate / (1 - rate)))))
        return cls(CONFIDENCE_KM, xs, ys, platt)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        out = np.empty_like(raw, dtype=np.float64)
        for r_i in range(raw.shape[1]):
            parts = []
            if self.x and len(self.x[r_i]) > 0:
                parts.append(np.interp(raw[:, r_i], self.x[r_i], self.y[r_i]))
            if self.platt:
                a, b = self.platt[r_i]
                parts.append(1.0 / (1.0 + np.exp(-(a * _logit(raw[:, r_i]) + b))))
            out[:, r_i] = np.mean(parts, axis=0) if parts else raw[:, r_i]
        # a larger radius can never be less likely
        return np.maximum.accumulate(out, axis=1)

    def to_dict(self) -> dict:
        return {"radii": list(self.radii), "x": self.x, "y": self.y, "platt": [list(p) for p in self.platt]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(tuple(d["radii"]), d["x"], d["y"], [tuple(p) for p in d.get("platt", [])])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def best_constant(lat: np.ndarray, lon: np.ndarray, max_candidates: int = 4000, seed: int = 0) -> tuple[float, float]:
    """The single training location with the highest mean GeoScore to all training photos."""
    n = len(lat)
    rng = np.random.default_rng(seed)
    cand = np.arange(n) if n <= max_candidates else rng.choice(n, max_candidates, replace=False)
    ref = np.arange(n) if n <= 20000 else rng.choice(n, 20000, replace=False)
    score = np.zeros(len(cand))
    for start in range(0, len(cand), 512):
        c = cand[start : start + 512]
        score[start : start + 512] = geoscore(pairwise_km(lat[c], lon[c], lat[ref], lon[ref])).mean(1)
    j = cand[int(np.argmax(score))]
    return float(lat[j]), float(lon[j])


__all__ = [
    "CONFIDENCE_KM",
    "Places",
    "Evidence",
    "MixParams",
    "Decision",
    "Calibration",
    "FitConfig",
    "classifier_probs",
    "neighbour_probs",
    "mixture",
    "decide",
    "mass_within",
    "fit_mixture",
    "best_constant",
]
