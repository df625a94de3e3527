"""Embedding similarity against distance in km: do photos taken near each other look alike to the model?

A property of the embeddings, measured once on all photos beside the cross-validation: pairs of
photos are sampled (`_similarity_pairs`), their cosines summed per series x distance bin x zone with
bootstrap draws of photographers (`_PairStats`), and each series read off those sums
(`_series_result`). `similarity_lines` prints the result; `plots.plot_similarity_km` draws it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geopin.dataset.splits import group_codes
from geopin.evaluation.crossval import ROUGH_BELOW, plural
from geopin.geo import haversine_km
from geopin.metrics import BootstrapDraws

log = logging.getLogger(__name__)

#: Distance bins (km) of the similarity analysis: street, city, region, country, continent, beyond.
#: The last edge passes half the Earth's circumference, so every pair of photos falls in a bin.
SIMILARITY_BINS_KM: tuple[float, ...] = (0, 1, 25, 200, 750, 2500, 20040)
SIMILARITY_NEAR_KM, SIMILARITY_FAR_KM = 25.0, 2500.0
SIMILARITY_MIN_BIN_PAIRS = 1000  # fewer random pairs in a bin: add each photo's nearest photos
SIMILARITY_SERIES = {
    "different_photographers": "pairs by different photographers",
    "same_photographer": "pairs by the same photographer",
    "all_pairs": "all pairs (photographers unknown)",
}


def similarity_by_distance(
    emb: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    groups=None,
    bins_km: tuple[float, ...] = SIMILARITY_BINS_KM,
    n_pairs: int = 200_000,
    seed: int = 0,
    *,
    k_near: int = 10,
    n_boot: int = 1000,
    level: float = 0.95,
    reference: np.ndarray | None = None,
    label: str = "embeddings",
    reference_label: str = "reference",
) -> dict:
    """Do photos taken near each other look alike to the model? Mean cosine similarity by distance bin.

    Similarity is the cosine of unit embeddings centred on their mean (as the gallery compares them;
    uncentred, every pair scores ~0.9). Pairs: every pair closer than the largest bin edge with at
    most `n_pairs` pairs within it (a census, so the near bins are unbiased), `n_pairs` drawn at random
    beyond (a uniform sample; all pairs when there are fewer), and, only in a bin the random pairs
    leave nearly empty (random pairs almost never fall within 25 km of each other in a big
    collection), each photo's `k_near` nearest photos in km (of up to n_pairs / k_near photos): such
    a bin leans towards its closest pairs, and its "sampling" says so.

    With `groups`, the headline uses only pairs by *different* photographers: one photographer's
    photos look alike for reasons other than place (the same camera, the same trip, the same habits),
    so they would show "geography" that is not there. Same-photographer pairs are a second series.
    Per bin: pairs, mean similarity, a `level` interval from resampling photographers (photos when
    groups are unknown: a photo in many pairs is still one piece of evidence), a pair weighing the
    product of its two units' draw counts. Summary: Spearman's rank correlation of km and similarity
    over the random pairs (negative: nearer looks more alike), and the gap "mean within 25 km minus
    mean beyond 2500 km" with its interval. `reference` (e.g. the embeddings before fine-tuning) is
    measured on the same pairs and draws, and the gap difference (emb minus reference) is paired.
    Deterministic for a seed; memory grows with the pairs, never with photos squared. Embeddings
    fine-tuned on these very photos look alike near each other by construction: measure held-out photos.
    """
    t0 = time.perf_counter()
    lat, lon, embs, edges, codes = _check_inputs(emb, lat, lon, groups, bins_km, n_pairs, k_near, reference)
    a, b, is_random, sampling, census_km, k = _similarity_pairs(lat, lon, edges, n_pairs, k_near, seed)
    stats = _PairStats.of(embs, lat, lon, codes, edges, a, b, n_boot, seed, level)
    series = stats.series
    gaps = {key: stats.gap_draws(s_i) for s_i, key in enumerate(series)}  # per series: (n_boot, embedding sets)
    results = []
    for k_col, name in enumerate([label, reference_label][: len(embs)]):
        out_series = {key: _series_result(stats, s_i, key, k_col, is_random, sampling, gaps[key])
                      for s_i, key in enumerate(series)}
        results.append({
            "label": name,
            "n_photos": len(lat),
            "unit": stats.unit,
            "n_units": stats.draws.n_units,
            "n_boot": stats.draws.n_boot,
            "level": stats.draws.level,
            "seed": seed,
            "similarity": "cosine of unit embeddings centred on their mean",
            "bins_km": [_num(e) for e in edges],
            "n_pairs": int(n_pairs),
            "k_near": k,
            "pairs_sampled": len(a),
            "pairs_random": int(is_random.sum()),
            "all_pairs": all(s == "all" for s in sampling),
            "census_km": _num(census_km),
            "headline": next(iter(series)),
            "series": out_series,
        })
    res = results[0]
    if reference is not None:
        res["reference"] = results[1]
        res["difference"] = _paired_difference(res, results[1], gaps, level)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    g = res["series"][res["headline"]]["gap"]
    log.info("similarity by distance (%s, %d pairs, %.1f s): near minus far %s [%s, %s]", label, len(a),
             res["seconds"], g["estimate"], g["lo"], g["hi"])
    return res


def _check_inputs(emb, lat, lon, groups, bins_km, n_pairs: int, k_near: int, reference):
    """(lat, lon, [emb, reference?], bin edges, photographer codes or None), or a ValueError naming the input."""
    from geopin.geo import validate_lat_lon

    lat, lon = validate_lat_lon(lat, lon, "positions")
    n = len(lat)
    embs = [_check_embeddings(emb, n, "emb")]
    if reference is not None:
        embs.append(_check_embeddings(reference, n, "reference"))
    if n < 2:
        raise ValueError(f"similarity_by_distance: {plural(n, 'photo')}: pairs need at least 2 photos")
    edges = _check_bins(bins_km)
    if n_pairs < 1 or k_near < 0:
        raise ValueError(f"n_pairs must be at least 1 and k_near at least 0, got {n_pairs} and {k_near}")
    codes = None
    if groups is not None:
        codes = group_codes(groups)
        if len(codes) != n:
            raise ValueError(f"groups: {len(codes)} labels for {n} photos")
    return lat, lon, embs, edges, codes


@dataclass
class _PairStats:
    """The sampled pairs' distances, similarities and bootstrap sums, by series x distance bin x zone.

    A pair falls in one series (different / same photographer, or all pairs), one distance bin and
    one zone (near: < SIMILARITY_NEAR_KM, middle, far: >= SIMILARITY_FAR_KM): disjoint strata, so
    every pair is counted once and a bin or the gap is a union of strata.
    """

    draws: BootstrapDraws
    series: dict[str, np.ndarray]  # series -> (P,) bool
    edges: np.ndarray
    km: np.ndarray  # (P,)
    bin_of: np.ndarray  # (P,)
    sims: np.ndarray  # (P, embedding sets)
    unit_a: np.ndarray  # (P,) the resampled unit of each pair's ends
    unit_b: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    d_sums: np.ndarray
    d_counts: np.ndarray

    @classmethod
    def of(cls, embs, lat, lon, codes, edges, a, b, n_boot: int, seed: int, level: float) -> "_PairStats":
        from geopin.metrics import bootstrap_pair_sums

        # the units resampled are those in some pair: the others carry no evidence here
        in_pairs = np.unique(np.r_[a, b])
        draws = BootstrapDraws.of(None if codes is None else codes[in_pairs], n=len(in_pairs), n_boot=n_boot,
                                  seed=seed, level=level)
        pa, pb = np.searchsorted(in_pairs, a), np.searchsorted(in_pairs, b)  # pair ends as rows of the draws
        km = haversine_km(lat[a], lon[a], lat[b], lon[b])
        bin_of = np.searchsorted(edges, km, side="right") - 1
        sims = np.stack([_pair_cosines(e, a, b) for e in embs], axis=1)
        if codes is None:
            series = {"all_pairs": np.ones(len(a), dtype=bool)}
        else:
            same = codes[a] == codes[b]
            series = {"different_photographers": ~same, "same_photographer": same}
        n_bins = len(edges) - 1
        zone = np.where(km < SIMILARITY_NEAR_KM, 0, np.where(km >= SIMILARITY_FAR_KM, 2, 1))
        s_of = np.zeros(len(a), dtype=np.int64)
        for s_i, sel in enumerate(series.values()):
            s_of[sel] = s_i
        strata = (s_of * n_bins + bin_of) * 3 + zone
        sums, counts, d_sums, d_counts = bootstrap_pair_sums(sims, pa, pb, strata, len(series) * n_bins * 3, draws)
        return cls(draws, series, edges, km, bin_of, sims, draws.codes[pa], draws.codes[pb], sums, counts, d_sums, d_counts)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def unit(self) -> str:
        return "photographer" if self.draws.unit == "group" else "photo"

    def mean(self, s_i: int, bins=None, zones=(0, 1, 2)) -> tuple[np.ndarray, np.ndarray, int]:
        """(estimate (m,), draws (n_boot, m), pairs) of the mean over the strata of a series' bins and zones."""
        n_bins = self.n_bins
        idx = [(s_i * n_bins + i) * 3 + z for i in (range(n_bins) if bins is None else bins) for z in zones]
        c, dc = self.counts[idx].sum(), self.d_counts[:, idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            est = self.sums[idx].sum(axis=0) / c
            dr = np.where(dc[:, None] > 0, self.d_sums[:, idx].sum(axis=1) / dc[:, None], np.nan)
        return est, dr, int(c)

    def gap_draws(self, s_i: int) -> np.ndarray:
        """Near minus far mean similarity in every draw, (n_boot, embedding sets)."""
        return self.mean(s_i, zones=(0,))[1] - self.mean(s_i, zones=(2,))[1]


def _series_result(stats: _PairStats, s_i: int, key: str, k_col: int, is_random: np.ndarray,
                   sampling: list[str], gap_draws: np.ndarray) -> dict:
    """One series of one embedding set: per bin mean and interval, Spearman over the random pairs, the gap."""
    sel = stats.series[key]
    bins = []
    for i in range(stats.n_bins):
        est, dr, pairs = stats.mean(s_i, bins=[i])
        lo, hi = _nan_interval(dr[:, k_col], stats.draws.level)
        m = sel & (stats.bin_of == i)
        bins.append({
            "lo_km": _num(stats.edges[i]), "hi_km": _num(stats.edges[i + 1]), "pairs": pairs,
            "units": int(np.unique(np.r_[stats.unit_a[m], stats.unit_b[m]]).size),
            "mean": _finite(est[k_col]), "lo": lo, "hi": hi, "sampling": sampling[i],
        })
    (near_est, _, near_n), (far_est, _, far_n) = stats.mean(s_i, zones=(0,)), stats.mean(s_i, zones=(2,))
    lo, hi = _nan_interval(gap_draws[:, k_col], stats.draws.level)
    rand = sel & is_random
    return {
        "label": SIMILARITY_SERIES[key],
        "pairs": int(sel.sum()),
        "bins": bins,
        "spearman": _spearman(stats.km[rand], stats.sims[rand, k_col]),
        "spearman_pairs": int(rand.sum()),
        "gap": {
            "near_km": SIMILARITY_NEAR_KM, "far_km": SIMILARITY_FAR_KM, "near_pairs": near_n, "far_pairs": far_n,
            "estimate": _finite(near_est[k_col] - far_est[k_col]), "lo": lo, "hi": hi,
        },
    }


def _paired_difference(res: dict, ref: dict, gaps: dict[str, np.ndarray], level: float) -> dict:
    """Embeddings minus reference per series: the gap (paired: the same pairs and draws) and Spearman."""
    out = {}
    for key, g in gaps.items():
        lo, hi = _nan_interval(g[:, 0] - g[:, 1], level)
        est_d = res["series"][key]["gap"]["estimate"], ref["series"][key]["gap"]["estimate"]
        out[key] = {
            "gap": {"estimate": _diff_or_none(*est_d), "lo": lo, "hi": hi},
            "spearman": _diff_or_none(res["series"][key]["spearman"], ref["series"][key]["spearman"]),
        }
    return out


def _check_embeddings(emb: np.ndarray, n: int, name: str) -> np.ndarray:
    """The matrix itself (a memory map stays mapped), checked chunk by chunk: shape, rows, finite."""
    from geopin.locate.heads import iter_rows

    if getattr(emb, "ndim", None) != 2:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"{name}: expected a (photos, dim) matrix, got shape {emb.shape}")
    if len(emb) != n:
        raise ValueError(f"{name}: {len(emb)} embeddings for {n} positions")
    bad = np.zeros(n, dtype=bool)
    for s, rows in iter_rows(emb):
        bad[s : s + len(rows)] = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: {plural(int(bad.sum()), 'photo')} with embeddings that are not finite "
                         f"(NaN or inf); first at index {int(np.flatnonzero(bad)[0])}")
    return emb


def _check_bins(bins_km) -> np.ndarray:
    from geopin.geo import EARTH_RADIUS_KM

    edges = np.asarray(bins_km, dtype=np.float64).ravel()
    half = np.pi * EARTH_RADIUS_KM
    if edges.size < 2 or not np.isfinite(edges).all() or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bins_km: need at least 2 finite, strictly increasing edges, got {list(bins_km)}")
    if edges[0] != 0:
        raise ValueError(f"bins_km: must start at 0 so every pair falls in a bin, got {edges[0]:g}")
    if edges[-1] <= half:
        raise ValueError(f"bins_km: the last edge ({edges[-1]:g} km) must pass half the Earth's circumference "
                         f"({np.ceil(half):,.0f} km) so every pair falls in a bin")
    return edges


def _similarity_pairs(lat, lon, edges: np.ndarray, n_pairs: int, k_near: int, seed: int):
    """Pairs (a < b, sorted, each once) and how each distance bin was sampled.

    Every pair closer than the largest bin edge r that has at most n_pairs pairs within it (a census:
    unbiased); beyond r, n_pairs uniform random pairs; in a bin beyond r that the random pairs leave
    with fewer than SIMILARITY_MIN_BIN_PAIRS, also each photo's k nearest photos that fall in it
    (random pairs almost never land within 25 km of each other). Those bins lean towards the closest
    pairs, and the report says so. Returns (a, b, is_random, sampling per bin, r, k).
    """
    from scipy.spatial import cKDTree

    from geopin.geo import EARTH_RADIUS_KM, to_xyz

    n, n_bins = len(lat), len(edges) - 1
    total = n * (n - 1) // 2
    if total <= n_pairs:
        a, b = np.triu_indices(n, 1)
        return a.astype(np.int64), b.astype(np.int64), np.ones(len(a), dtype=bool), ["all"] * n_bins, float(edges[-1]), 0

    def chord(km: float) -> float:
        return 2.0 * np.sin(km / (2.0 * EARTH_RADIUS_KM))

    def bins_of(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, j = key // n, key % n
        km = haversine_km(lat[i], lon[i], lat[j], lon[j])
        return km, np.searchsorted(edges, km, side="right") - 1

    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # uniform over pairs with j != i
    rand_key = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
    xyz = to_xyz(lat, lon)
    tree = cKDTree(xyz)  # chord order is great-circle order
    r = 0.0
    for e in edges[1:-1]:
        if (int(tree.count_neighbors(tree, chord(e))) - n) // 2 > n_pairs:
            break
        r = float(e)
    census = np.empty(0, dtype=np.int64)
    if r > 0:
        p = tree.query_pairs(chord(r), output_type="ndarray").astype(np.int64)
        census = np.sort(p.min(axis=1) * n + p.max(axis=1))
        census = census[bins_of(census)[0] < r]
    sampling = ["all" if edges[i + 1] <= r else "random" for i in range(n_bins)]
    k = min(k_near, n - 1, n_pairs)
    near_key = np.empty(0, dtype=np.int64)
    starved = np.bincount(bins_of(rand_key)[1], minlength=n_bins) < SIMILARITY_MIN_BIN_PAIRS
    starved &= edges[1:] > r
    if k > 0 and starved.any():
        n_anchor = min(n, max(1, n_pairs // k))
        anchors = np.arange(n) if n_anchor == n else np.sort(rng.choice(n, n_anchor, replace=False))
        _, nb = tree.query(xyz[anchors], k=k + 1)
        src = np.broadcast_to(anchors[:, None], nb.shape)
        keep = nb != src
        keep[keep.all(axis=1), -1] = False  # the photo itself was not among them (a twin position): k, not k + 1
        near_key = np.unique(np.minimum(src, nb)[keep] * n + np.maximum(src, nb)[keep])
        km, b_of = bins_of(near_key)
        near_key = near_key[(km >= r) & starved[b_of]]
        for i in np.unique(bins_of(near_key)[1]):
            sampling[i] = "random + nearest"
    key = np.union1d(np.union1d(rand_key, census), near_key)
    return key // n, key % n, np.isin(key, rand_key, assume_unique=True), sampling, r, k


def _pair_cosines(emb: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 8192,
                  max_elements: int = 32_000_000) -> np.ndarray:
    """Cosine of the centred unit vectors of each pair.

    Each photo's vector is made once when the photos in pairs fit in `max_elements` floats (a photo
    sits in ~160 pairs of a few thousand photos); otherwise chunk by chunk, never all rows at once.
    """
    from geopin.locate.heads import centring_mean, l2_normalize, take_rows

    mu = centring_mean(emb)
    out = np.empty(len(a), dtype=np.float64)
    step = len(a) if np.unique(np.r_[a, b]).size * emb.shape[1] <= max_elements else max(1, max_elements // (2 * emb.shape[1]))
    for s in range(0, len(a), step):
        rows, inv = np.unique(np.r_[a[s : s + step], b[s : s + step]], return_inverse=True)
        z = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
        for r in range(0, len(rows), chunk):
            z[r : r + chunk] = l2_normalize(l2_normalize(take_rows(emb, rows[r : r + chunk])) - mu)
        m = min(step, len(a) - s)
        for c in range(0, m, chunk):
            ia, ib = inv[c : min(c + chunk, m)], inv[m + c : m + min(c + chunk, m)]
            out[s + c : s + c + len(ia)] = np.einsum("ij,ij->i", z[ia], z[ib])
    return np.clip(out, -1.0, 1.0, out=out)  # float32 unit vectors can overshoot by ~1e-7


def _spearman(km: np.ndarray, sim: np.ndarray) -> float | None:
    """Rank correlation, or None when it is undefined (fewer than 3 pairs, or no spread)."""
    from scipy.stats import spearmanr

    if len(km) < 3 or np.ptp(km) == 0 or np.ptp(sim) == 0:
        return None
    return _finite(spearmanr(km, sim).statistic)


def _nan_interval(draws: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile interval over the draws that have the statistic (a draw can miss every unit of a bin)."""
    ok = draws[np.isfinite(draws)]
    if ok.size == 0:
        return None, None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return float(lo), float(hi)


def _finite(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _diff_or_none(x, y):
    return None if x is None or y is None else x - y


def _km_label(lo: float, hi: float) -> str:
    """A bin's edges as printed; the last bin (past half the Earth's circumference) is open-ended."""
    return f"{lo:,g}-{hi:,g}" if hi < 20000 else f">= {lo:,g}"


def _signed(v: float | None, fmt: str = "+.3f") -> str:
    return "-" if v is None else format(v, fmt)


def _sim_iv(c: dict, unit: str) -> str:
    """A bin's mean with its interval; a bin of fewer than ROUGH_BELOW units gets no interval, but their count."""
    if c["mean"] is None:
        return "-"
    if c["units"] < ROUGH_BELOW:
        return f"{c['mean']:.3f} ({plural(c['units'], unit)} only)"
    return f"{c['mean']:.3f}" if c["lo"] is None else f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def similarity_lines(sim: dict) -> list[str]:
    """The similarity-by-distance section as printed: a table per bin, then the gap and Spearman per series."""
    over = f"{sim['n_units']:,} photographers" if sim["unit"] == "photographer" else "photos (photographers unknown)"
    runs = [sim] + ([sim["reference"]] if "reference" in sim else [])
    bins = sim["series"][sim["headline"]]["bins"]
    if sim["all_pairs"]:
        how = "all of them"
    else:
        how = (f"all within {sim['census_km']:,g} km, " if sim["census_km"] else "") + f"{sim['pairs_random']:,} random"
        leaning = [_km_label(b["lo_km"], b["hi_km"]) for b in bins if b["sampling"] == "random + nearest"]
        if leaning:
            how += f", and the {sim['k_near']} nearest of each photo in {', '.join(leaning)} km (these lean to the closest)"
    head = (f"== embedding similarity by distance: {', '.join(r['label'] for r in runs)}; {sim['similarity']}; "
            f"{sim['n_photos']:,} photos, {sim['pairs_sampled']:,} pairs ({how})"
            f"; [{100 * sim['level']:.0f} % intervals over {over}, {sim['n_boot']} draws]")
    rows = []
    for i, b in enumerate(sim["series"][sim["headline"]]["bins"]):
        row = {"km": _km_label(b["lo_km"], b["hi_km"])}
        for key, s in sim["series"].items():
            short = {"different_photographers": "different", "same_photographer": "same", "all_pairs": "all"}[key]
            row[f"pairs ({short})"] = f"{s['bins'][i]['pairs']:,}"
            for r in runs:
                c = r["series"][key]["bins"][i]
                name = short if len(runs) == 1 else f"{short}, {r['label']}"
                row[name] = _sim_iv(c, sim["unit"])
        rows.append(row)
    lines = [head, pd.DataFrame(rows).to_string(index=False)]
    for r in runs:
        for key, s in r["series"].items():
            g = s["gap"]
            iv = "" if g["lo"] is None else f" [{g['lo']:+.3f}, {g['hi']:+.3f}]"
            sure = "" if g["lo"] is None or g["lo"] > 0 or g["hi"] < 0 else "; the interval holds 0"
            rho = "-" if s["spearman"] is None else f"{s['spearman']:+.3f}"
            lines.append(f"{r['label']}, {s['label']}: near (< {g['near_km']:g} km) minus far (>= {g['far_km']:,g} km) "
                         f"{_signed(g['estimate'])}{iv}{sure}; Spearman(km, similarity) {rho} over {s['spearman_pairs']:,} random pairs")
    for key, d in sim.get("difference", {}).items():
        g = d["gap"]
        iv = "" if g["lo"] is None else f" [{g['lo']:+.3f}, {g['hi']:+.3f}]"
        lines.append(f"{sim['label']} - {sim['reference']['label']}, {SIMILARITY_SERIES[key]}: gap {_signed(g['estimate'])}{iv} "
                     f"(paired: the same pairs and draws); Spearman {_signed(d['spearman'])}")
    return lines
