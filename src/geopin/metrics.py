"""Geolocation metrics: distance-threshold accuracy, GeoScore, country accuracy, and calibration.

The thresholds are the customary street/city/region/country/continent scales of the Im2GPS line of
work, so numbers are comparable with published results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from geopin.geo import haversine_km

THRESHOLDS_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)
GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7


def _km_array(km) -> np.ndarray:
    km = np.asarray(km, dtype=np.float64).ravel()
    if np.any(np.isnan(km)):
        raise ValueError(f"km: {int(np.isnan(km).sum())} distance(s) are NaN")
    if np.any(km < 0):
        raise ValueError("km: distances must be non-negative")
    return km


def geoscore(km) -> np.ndarray | float:
    """GeoGuessr-style score per guess, 5000 at the spot decaying with a 1492.7 km scale."""
    arr = np.asarray(km, dtype=np.float64)
    out = GEOSCORE_MAX * np.exp(-arr / GEOSCORE_SCALE_KM)
    return float(out) if out.ndim == 0 else out


def _threshold_key(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t)


def accuracy_within(km, thresholds: Sequence[float] = THRESHOLDS_KM) -> dict[str, float]:
    """Share of guesses within each threshold (inclusive), keyed by the threshold as text ("25")."""
    km = _km_array(km)
    if km.size == 0:
        return {_threshold_key(t): float("nan") for t in thresholds}
    return {_threshold_key(t): float(np.mean(km <= t)) for t in thresholds}


def median_km(km) -> float:
    km = _km_array(km)
    return float(np.median(km)) if km.size else float("nan")


def _country_codes(cc) -> np.ndarray:
    arr = pd.Series(cc, dtype="object")
    return arr.where(arr.notna(), "").astype(str).str.strip().str.upper().to_numpy()


def country_accuracy(pred_cc, true_cc) -> float:
    """Share of guesses in the right country, over photos whose true country is known.

    Photos at sea or otherwise unplaceable (empty/None truth) are left out rather than counted as
    misses, since no country answer could be right for them.
    """
    pred = _country_codes(pred_cc)
    true = _country_codes(true_cc)
    if pred.shape != true.shape:
        raise ValueError(f"country_accuracy: {pred.size} predictions for {true.size} truths")
    known = true != ""
    if not known.any():
        return float("nan")
    return float(np.mean(pred[known] == true[known]))


def summarize(
    pred_lat,
    pred_lon,
    true_lat,
    true_lon,
    pred_country=None,
    true_country=None,
    thresholds: Sequence[float] = THRESHOLDS_KM,
) -> dict[str, float]:
    """The standard report for a set of guesses: accuracies, median/mean error, GeoScore, country."""
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in (pred_lat, pred_lon, true_lat, true_lon)]
    n = arrays[0].size
    if any(a.size != n for a in arrays):
        raise ValueError(f"summarize: lat/lon arrays differ in length ({[a.size for a in arrays]})")
    km = haversine_km(*arrays)
    out: dict[str, float] = {"n": int(n)}
    for key, share in accuracy_within(km, thresholds).items():
        out[f"acc_{key}km"] = share
    out["median_km"] = median_km(km)
    out["mean_km"] = float(np.mean(km)) if n else float("nan")
    out["geoscore"] = float(np.mean(geoscore(km))) if n else float("nan")
    if pred_country is not None and true_country is not None:
        out["country_acc"] = country_accuracy(pred_country, true_country)
    else:
        out["country_acc"] = float("nan")
    return out


def _prob_hit(prob, hit) -> tuple[np.ndarray, np.ndarray]:
    prob = np.asarray(prob, dtype=np.float64).ravel()
    hit = np.asarray(hit, dtype=np.float64).ravel()
    if prob.shape != hit.shape:
        raise ValueError(f"prob and hit lengths differ ({prob.size} vs {hit.size})")
    # Calibrated probabilities may overshoot [0, 1] by rounding; anything more is a units mistake (e.g. %).
    if np.any(~np.isfinite(prob)) or np.any((prob < -1e-9) | (prob > 1 + 1e-9)):
        raise ValueError("prob: confidences must be fractions in [0, 1]")
    prob = np.clip(prob, 0.0, 1.0)
    if np.any((hit != 0) & (hit != 1)):
        raise ValueError("hit: outcomes must be 0/1 or booleans")
    return prob, hit


def _bin_index(prob: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # Equal-width bins [k/n, (k+1)/n); a confidence of exactly 1 belongs to the last bin.
    return np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)


def reliability_table(prob, hit, n_bins: int = 10) -> pd.DataFrame:
    """Per confidence bin: its bounds, how many guesses fell in it, their mean confidence and hit rate."""
    prob, hit = _prob_hit(prob, hit)
    idx = _bin_index(prob, n_bins)
    n = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=prob, minlength=n_bins)
    sum_h = np.bincount(idx, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(n > 0, sum_p / np.maximum(n, 1), np.nan)
        hit_rate = np.where(n > 0, sum_h / np.maximum(n, 1), np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {"lo": edges[:-1], "hi": edges[1:], "n": n.astype(np.int64), "mean_prob": mean_prob, "hit_rate": hit_rate}
    )


def expected_calibration_error(prob, hit, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and hit rate over equal-width bins.

    Tells whether "70 % sure" means right 70 % of the time, which is what users act on.
    """
    table = reliability_table(prob, hit, n_bins)
    total = int(table["n"].sum())
    if total == 0:
        return float("nan")
    filled = table[table["n"] > 0]
    return float(np.sum(filled["n"] / total * np.abs(filled["mean_prob"] - filled["hit_rate"])))


def global_average_precision(confidence, correct) -> float:
    """GAP (micro average precision) of the Google Landmarks challenge.

    Predictions are ranked by confidence, highest first; GAP = (1/M) * sum_i P(i) * rel(i), with M the
    number of queries (every prediction counts, so abstaining is not free) and P(i) the precision among
    the top i. It rewards confidences that put the right answers first. Ties keep the input order.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    rel = np.asarray(correct).astype(bool).ravel()
    if conf.shape != rel.shape:
        raise ValueError(f"confidence and correct lengths differ ({conf.size} vs {rel.size})")
    if np.any(np.isnan(conf)):
        raise ValueError("confidence: NaN values cannot be ranked")
    m = conf.size
    if m == 0:
        return float("nan")
    order = np.argsort(-conf, kind="stable")
    rel = rel[order]
    precision_at_i = np.cumsum(rel) / np.arange(1, m + 1)
    return float(np.sum(precision_at_i * rel) / m)


# ---------------------------------------------------------------- bootstrap over groups (photographers)

# Weights held in memory at once: 1000 draws of 8,000 photographers; larger problems go in chunks.
_BOOT_MAX_ELEMENTS = 8_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi}


@dataclass
class BootstrapDraws:
    """Seeded resamples of the units (photographers, or photos when groups are unknown), with replacement.

    A photographer's photos share places and style, so they are not independent evidence: resampling
    whole photographers gives intervals that do not shrink with photos per photographer. Every
    statistic computed from the same draws is paired, so differences between methods come out right.
    Draw b gives unit g the weight weights[b, g] (how many times it was drawn; a multinomial count).
    """

    codes: np.ndarray  # unit index (0..n_units-1) of each value
    n_units: int
    unit: str  # "group" or "photo"
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    _cache: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, groups=None, n: int | None = None, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "BootstrapDraws":
        """Draws over the distinct labels of `groups`; with groups=None, over the `n` values themselves."""
        if n_boot < 1:
            raise ValueError(f"n_boot must be at least 1, got {n_boot}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be strictly between 0 and 1, got {level}")
        if groups is None:
            if n is None:
                raise ValueError("BootstrapDraws.of: give groups, or n when there are none")
            codes, unit = np.arange(int(n)), "photo"
        else:
            labels = pd.Series(np.asarray(groups, dtype=object).ravel(), dtype="object")
            if labels.isna().any():
                raise ValueError(f"groups: {int(labels.isna().sum())} value(s) have no group label")
            codes, unit = pd.factorize(labels, sort=True)[0].astype(np.int64), "group"
            if n is not None and n != codes.size:
                raise ValueError(f"groups: {codes.size} labels for {n} values")
        if codes.size == 0:
            raise ValueError("bootstrap: no values to resample")
        return cls(codes, int(codes.max()) + 1, unit, int(n_boot), int(seed), float(level))

    @property
    def weights(self) -> np.ndarray:
        """All draws at once, shape (n_boot, n_units); for tests and small problems."""
        return np.concatenate(list(self.chunks()))

    def chunks(self) -> Iterator[np.ndarray]:
        """The draws in row blocks, identical on every pass (same seed), memory bounded."""
        if self._cache is not None:
            yield self._cache
            return
        g = self.n_units
        rows = max(1, _BOOT_MAX_ELEMENTS // g)
        rng = np.random.default_rng(self.seed)
        p = np.full(g, 1.0 / g)
        if rows >= self.n_boot:
            self._cache = rng.multinomial(g, p, size=self.n_boot).astype(np.float64)
            yield self._cache
            return
        for start in range(0, self.n_boot, rows):
            yield rng.multinomial(g, p, size=min(rows, self.n_boot - start)).astype(np.float64)

    def unit_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-unit sums of the rows of `values` (n, m) -> (n_units, m)."""
        if values.shape[0] != self.codes.size:
            raise ValueError(f"groups: {self.codes.size} labels for {values.shape[0]} values")
        out = np.zeros((self.n_units, values.shape[1]))
        order = np.argsort(self.codes, kind="stable")
        sorted_codes = self.codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        out[sorted_codes[starts]] = np.add.reduceat(values[order], starts, axis=0)
        return out

    def percentiles(self, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(stats, [tail, 100 - tail], axis=0)
        return lo, hi


def bootstrap_mean(values, draws: BootstrapDraws) -> Interval | list[Interval]:
    """Mean of the values with its interval over the draws' units; a list for 2-D values (one per column).

    A drawn unit contributes all its photos, so each draw's mean is sum(w_g * S_g) / sum(w_g * n_g):
    a matrix product, not a loop over draws.
    """
    x = np.asarray(values, dtype=np.float64)
    one = x.ndim == 1
    x = x.reshape(len(x), -1)
    if np.isnan(x).any():
        raise ValueError(f"bootstrap_mean: {int(np.isnan(x).sum())} value(s) are NaN")
    sums = draws.unit_sums(x)
    counts = draws.unit_sums(np.ones((len(x), 1)))[:, 0]
    stats = np.concatenate([(w @ sums) / (w @ counts)[:, None] for w in draws.chunks()])
    lo, hi = draws.percentiles(stats)
    est = x.mean(axis=0)
    out = [Interval(float(e), float(a), float(b)) for e, a, b in zip(est, lo, hi)]
    return out[0] if one else out


def bootstrap_ece(prob, hit, draws: BootstrapDraws, n_bins: int = 10) -> Interval:
    """ECE with its interval over the draws' units.

    ECE = sum over bins of |sum_i (p_i - h_i)| / N, so per-unit, per-bin sums of (p - h) are all a draw needs.
    ECE is biased upwards by noise (an absolute value of sums), and resampling adds noise: the interval
    can sit above a small estimate. Read its upper end as "miscalibrated by at most this much".
    """
    prob, hit = _prob_hit(prob, hit)
    idx = _bin_index(prob, n_bins)
    gap = np.zeros((prob.size, n_bins))
    gap[np.arange(prob.size), idx] = prob - hit
    sums = draws.unit_sums(gap)
    counts = draws.unit_sums(np.ones((prob.size, 1)))[:, 0]
    stats = np.concatenate([np.abs(w @ sums).sum(1) / (w @ counts) for w in draws.chunks()])
    lo, hi = draws.percentiles(stats)
    return Interval(expected_calibration_error(prob, hit, n_bins), float(lo), float(hi))


def bootstrap_pair_sums(values, rows_a, rows_b, strata, n_strata: int, draws: BootstrapDraws):
    """Sums and counts of a value over disjoint strata of photo pairs, and the same in every draw of the units.

    A pair (a, b) is evidence from two units (photographers, or photos): a draw that takes a's unit
    w_a times and b's unit w_b times takes the pair w_a * w_b times, so a stratum's draw sum is
    w' S w with S its unit-by-unit sums: sparse products over the distinct unit pairs, never a loop
    over draws or a (draws x pairs) matrix. Means of strata and of their unions (sum / count) follow,
    all from the same draws, so differences between them are paired.

    values (P,) or (P, m); rows_a, rows_b (P,): photo indices into draws.codes; strata (P,): the
    stratum of each pair, 0..n_strata-1. Returns (sums (n_strata, m), counts (n_strata,),
    draw_sums (n_boot, n_strata, m), draw_counts (n_boot, n_strata)).
    """
    from scipy import sparse

    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)
    strata = np.asarray(strata, dtype=np.int64).ravel()
    if np.isnan(x).any():
        raise ValueError(f"bootstrap_pair_sums: {int(np.isnan(x).sum())} value(s) are NaN")
    if strata.shape != (len(x),) or (len(x) and (strata.min() < 0 or strata.max() >= n_strata)):
        raise ValueError(f"strata: need one stratum in 0..{n_strata - 1} per pair ({len(x)} pairs)")
    ua, ub = draws.codes[np.asarray(rows_a)], draws.codes[np.asarray(rows_b)]
    m = x.shape[1]
    sums, counts = np.zeros((n_strata, m)), np.zeros(n_strata)
    mats = []  # per stratum: its units, then the count matrix and one sum matrix per value column over them
    for s in range(n_strata):
        sel = strata == s
        n_sel = int(sel.sum())
        counts[s] = n_sel
        sums[s] = [x[sel, k].sum() for k in range(m)]  # column by column: none depends on its neighbours
        units, inv = np.unique(np.r_[ua[sel], ub[sel]], return_inverse=True)  # only the units it touches
        ij, u = (inv[:n_sel], inv[n_sel:]), len(units)
        cols = [np.ones(n_sel)] + [x[sel, k] for k in range(m)]
        mats.append((units, [sparse.coo_matrix((c, ij), shape=(u, u)).tocsr() for c in cols]))
    d_sums, d_counts = [], []
    for w in draws.chunks():
        ds, dc = np.zeros((len(w), n_strata, m)), np.zeros((len(w), n_strata))
        for s, (units, (count, *mat)) in enumerate(mats):
            if len(units) == 0:
                continue
            wt = np.ascontiguousarray(w[:, units].T)  # (units, rows)
            dc[:, s] = (wt * (count @ wt)).sum(axis=0)
            for k, sm in enumerate(mat):
                ds[:, s, k] = (wt * (sm @ wt)).sum(axis=0)
        d_sums.append(ds)
        d_counts.append(dc)
    return sums, counts, np.concatenate(d_sums), np.concatenate(d_counts)
