"""Cross-validated evaluation: the model beside the prior, the simple baselines and the oracle.

Every run compares, on the same embeddings and the same folds:
  (a) the full model (posterior of classifier + neighbours + prior, best guess by expected GeoScore),
  (b) the classifier alone, per granularity and hierarchical (DeepLocation/DeepGeoWorld style),
  (c) nearest neighbour alone (the Geosolver approach),
  (d) the prior's best constant answer,
  (e) the oracle: the training location nearest the truth, the ceiling of any answer from the gallery,
in two scenarios: new photographers (folds by group) and archive completion (random folds).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from geopin.countries import country_of
from geopin.dataset.splits import _group_codes, group_kfold, random_kfold
from geopin.geo import haversine_km, pairwise_km
from geopin.locate.posterior import CONFIDENCE_KM, classifier_probs
from geopin.locate.train import SCENARIOS, TrainConfig, train_model
from geopin.metrics import (
    BootstrapDraws,
    bootstrap_ece,
    bootstrap_mean,
    expected_calibration_error,
    geoscore,
    global_average_precision,
    reliability_table,
    summarize,
)

log = logging.getLogger(__name__)

SCENARIO_LABELS = {
    "group": "new photographers (folds by photographer)",
    "random": "archive completion (random folds: same photographers in train and test)",
}


# Shares whose intervals are reported beside GeoScore: city and region scale.
INTERVAL_KM: tuple[int, ...] = (25, 750)
NOT_BASELINES = ("model", "oracle")  # the oracle is a ceiling, not an answer anyone can give
ROUGH_BELOW = 10  # a percentile bootstrap over fewer units than this says little


@dataclass
class EvalConfig:
    scenarios: tuple[str, ...] = ("group", "random")
    folds: int = 5  # requested; fewer are used when the data has fewer photographers (or photos)
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    n_bins: int = 10
    n_boot: int = 1000  # bootstrap draws of photographers for the intervals
    level: float = 0.95

    def __post_init__(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"scenario {', '.join(map(repr, unknown))}: choose from {', '.join(SCENARIOS)}")
        if not self.scenarios:
            raise ValueError("no scenario chosen: give 'group' and/or 'random'")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")


@dataclass
class FoldPlan:
    """The folds a scenario gets from the data; folds is None when the scenario cannot run (note says why)."""

    folds: np.ndarray | None
    used: int
    note: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_folds(scenario: str, n: int, codes: np.ndarray | None, cfg: EvalConfig) -> FoldPlan:
    """k = min(requested folds, photographers (or photos)): a small collection is evaluated, and says so."""
    if scenario == "group":
        if codes is None:
            return FoldPlan(None, 0, "no photographer (group) is known for every photo")
        units, word = int(np.unique(codes).size), "photographer"
    else:
        units, word = n, "photo"
    if units < 2:
        return FoldPlan(None, 0, f"{_plural(units, word)} only: held-out folds need at least 2")
    k = min(cfg.folds, units)
    note = "" if k == cfg.folds else f"only {_plural(units, word)}, so {k} folds instead of the {cfg.folds} requested"
    folds = group_kfold(codes, k=k, seed=cfg.seed) if scenario == "group" else random_kfold(n, k=k, seed=cfg.seed)
    return FoldPlan(folds, k, note)


def _nearest_train(test_lat, test_lon, train_lat, train_lon, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(len(test_lat), dtype=np.int64)
    for s in range(0, len(test_lat), chunk):
        out[s : s + chunk] = np.argmin(pairwise_km(test_lat[s : s + chunk], test_lon[s : s + chunk], train_lat, train_lon), axis=1)
    return train_lat[out], train_lon[out]


def predict_fold(model, emb_test: np.ndarray, train_lat: np.ndarray, train_lon: np.ndarray, test_lat, test_lon) -> dict:
    """Guesses of every method for one fold's test photos."""
    heads = model.heads
    ev, cell, nb, dec, conf = model.decide(emb_test)
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {"model": (dec.lat, dec.lon)}
    cells = heads.cells
    for name, lg in zip(heads.granularities, ev.logits):
        t = cells[cells.granularity == name].sort_values("class_id")
        j = lg.argmax(1)
        preds[f"classifier_{name}"] = (t.lat.to_numpy()[j], t.lon.to_numpy()[j])
    ph = classifier_probs(heads.places, ev.logits, 1.0).argmax(1)
    preds["classifier_hierarchical"] = (heads.places.lat[ph], heads.places.lon[ph])
    preds["nearest_neighbour"] = (ev.nb_lat[:, 0], ev.nb_lon[:, 0])
    c_lat, c_lon = heads.places.best_constant
    preds["prior_constant"] = (np.full(len(test_lat), c_lat), np.full(len(test_lat), c_lon))
    preds["oracle"] = _nearest_train(test_lat, test_lon, train_lat, train_lon)
    return {"preds": preds, "conf": conf, "raw": dec.raw_within}


def evaluate_cv(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, groups, cfg: EvalConfig = EvalConfig(),
                fold_embeddings: Callable[[str, int, np.ndarray, np.ndarray], np.ndarray] | None = None) -> dict:
    """Run the scenarios the data allows; returns metrics per method with intervals, calibration, per-photo predictions.

    `fold_embeddings(scenario, fold, train_rows, test_rows)`, when given, returns the (n, dim) matrix that fold
    is trained and tested on (e.g. from a backbone fine-tuned on that fold's training photos only); `emb` then
    only fixes the number of rows. Raises ValueError naming why when no scenario can run (e.g. one
    photographer and only 'group' asked).
    """
    emb = np.asarray(emb, dtype=np.float32)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if not len(emb) == len(lat) == len(lon):
        raise ValueError(f"{len(emb)} embeddings for {len(lat)} latitudes and {len(lon)} longitudes")
    codes = _group_codes(groups) if groups is not None else None
    if codes is not None and len(codes) != len(lat):
        raise ValueError(f"groups: {len(codes)} labels for {len(lat)} photos")
    true_cc = country_of(lat, lon)
    report: dict = {"n": int(len(lat)), "folds": cfg.folds, "scenarios": {}, "skipped": {}}
    per_photo: dict[str, pd.DataFrame] = {}
    for scenario in cfg.scenarios:
        t0 = time.perf_counter()
        plan = plan_folds(scenario, len(lat), codes, cfg)
        if plan.folds is None:
            log.warning("%s: skipping the scenario: %s", scenario, plan.note)
            report["skipped"][scenario] = plan.note
            continue
        if plan.note:
            log.warning("%s: %s", scenario, plan.note)
        tcfg = replace(cfg.train, scenario=scenario)
        rows, guards = [], []
        for f in range(plan.used):
            tr, te = np.flatnonzero(plan.folds != f), np.flatnonzero(plan.folds == f)
            g_tr = np.asarray(groups)[tr] if groups is not None else None
            e = emb if fold_embeddings is None else np.asarray(fold_embeddings(scenario, f, tr, te), dtype=np.float32)
            if len(e) != len(lat):
                raise ValueError(f"{scenario} fold {f}: fold_embeddings gave {len(e)} rows for {len(lat)} photos")
            model = train_model(e[tr], lat[tr], lon[tr], g_tr, tcfg)
            out = predict_fold(model, e[te], lat[tr], lon[tr], lat[te], lon[te])
            df = pd.DataFrame({"row": te, "fold": f, "true_lat": lat[te], "true_lon": lon[te]})
            for name, (p_lat, p_lon) in out["preds"].items():
                df[f"{name}_lat"] = p_lat
                df[f"{name}_lon"] = p_lon
            for r_i, r in enumerate(CONFIDENCE_KM):
                df[f"conf_{int(r)}"] = out["conf"][:, r_i]
                df[f"raw_{int(r)}"] = out["raw"][:, r_i]
            df["w_prior"], df["w_clf"], df["w_knn"] = model.params.w_prior, model.params.w_clf, model.params.w_knn
            guard = prior_guard_applied(model)
            guards.append(guard)
            df["prior_guard"] = pd.array([guard] * len(te), dtype="boolean")
            rows.append(df)
            log.info("%s fold %d/%d: %s%s", scenario, f + 1, plan.used, model.params,
                     "" if guard is None else f", prior guard {'applied' if guard else 'not applied'}")
        df = pd.concat(rows).sort_values("row").reset_index(drop=True)
        per_photo[scenario] = df
        draws = _draws(df, codes, cfg)
        sc = _scenario_report(df, true_cc, cfg.n_bins, draws)
        sc.update(
            label=SCENARIO_LABELS[scenario],
            folds_requested=cfg.folds,
            folds_used=plan.used,
            note=plan.note,
            prior_guard={
                "folds": plan.used,
                "folds_reported": sum(g is not None for g in guards),
                "folds_applied": sum(bool(g) for g in guards),
            },
            seconds=round(time.perf_counter() - t0, 1),
        )
        report["scenarios"][scenario] = sc
    if not report["scenarios"]:
        why = "; ".join(f"{s}: {note}" for s, note in report["skipped"].items())
        raise ValueError(f"no scenario can run ({why})")
    report["per_photo"] = per_photo
    return report


def prior_guard_applied(model) -> bool | None:
    """Whether training fell back towards the prior (model.meta's fit report); None when not reported."""
    guard = (model.meta.get("fit_report") or {}).get("prior_guard")
    return bool(guard.get("applied")) if isinstance(guard, dict) else None


def _draws(df: pd.DataFrame, codes: np.ndarray | None, cfg: EvalConfig) -> BootstrapDraws:
    """Photographers are the unit of resampling; photos only when photographers are unknown (or just one)."""
    rows = df.row.to_numpy()
    if codes is not None and np.unique(codes[rows]).size >= 2:
        return BootstrapDraws.of(codes[rows], n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)
    return BootstrapDraws.of(None, n=len(rows), n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)


def method_names(df: pd.DataFrame) -> list[str]:
    return [c[: -len("_lat")] for c in df.columns if c.endswith("_lat") and c != "true_lat"]


def _scenario_report(df: pd.DataFrame, true_cc: np.ndarray, n_bins: int, draws: BootstrapDraws) -> dict:
    t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
    tcc = true_cc[df.row.to_numpy()]
    methods, kms = {}, {}
    for m in method_names(df):
        p_lat, p_lon = df[f"{m}_lat"].to_numpy(), df[f"{m}_lon"].to_numpy()
        methods[m] = summarize(p_lat, p_lon, t_lat, t_lon, country_of(p_lat, p_lon), tcc)
        kms[m] = haversine_km(p_lat, p_lon, t_lat, t_lon)
    km = kms["model"]
    calib = {}
    for r in CONFIDENCE_KM:
        key = str(int(r))
        hit = km <= r
        prob = df[f"conf_{key}"].to_numpy()
        table = reliability_table(prob, hit, n_bins)
        calib[key] = {
            "ece": expected_calibration_error(prob, hit, n_bins),
            "ece_interval": bootstrap_ece(prob, hit, draws, n_bins).to_dict(),
            "ece_raw": expected_calibration_error(df[f"raw_{key}"].to_numpy(), hit, n_bins),
            "mean_confidence": float(prob.mean()),
            "hit_rate": float(hit.mean()),
            "gap": global_average_precision(prob, hit),
            "reliability": table.to_dict(orient="records"),
        }
    return {
        "methods": methods,
        "intervals": _intervals(methods, kms, draws),
        "calibration": calib,
        "mix_weights": {
            "w_prior": float(df.w_prior.mean()),
            "w_clf": float(df.w_clf.mean()),
            "w_knn": float(df.w_knn.mean()),
        },
    }


def _intervals(methods: dict, kms: dict[str, np.ndarray], draws: BootstrapDraws) -> dict:
    """Intervals of GeoScore and the 25/750 km shares per method, and paired GeoScore differences.

    All columns go through the same draws in one matrix product, so the differences are paired: a
    photographer who is easy for the model is easy for the prior too, and that cancels out.
    """
    names, cols = [], []
    for m, km in kms.items():
        names.append((m, "geoscore"))
        cols.append(geoscore(km))
        for r in INTERVAL_KM:
            names.append((m, f"acc_{r}km"))
            cols.append((km <= r).astype(np.float64))
    score = {m: geoscore(km) for m, km in kms.items()}
    baselines = [m for m in methods if m not in NOT_BASELINES]
    best = max(baselines, key=lambda m: methods[m]["geoscore"]) if baselines else None
    paired_names = []
    if "model" in score:
        for other, key in (("prior_constant", "model_minus_prior_constant"), (best, "model_minus_best_baseline")):
            if other is not None and other in score:
                paired_names.append((key, other))
                cols.append(score["model"] - score[other])
    ivs = bootstrap_mean(np.stack(cols, axis=1), draws)
    out: dict = {
        "unit": "photographer" if draws.unit == "group" else "photo",
        "n_units": draws.n_units,
        "n_boot": draws.n_boot,
        "level": draws.level,
        "seed": draws.seed,
        "methods": {},
        "paired": {},
        "note": "" if draws.n_units >= ROUGH_BELOW else f"only {draws.n_units} units resampled: the intervals are rough",
    }
    for (m, stat), iv in zip(names, ivs):
        out["methods"].setdefault(m, {})[stat] = iv.to_dict()
    for (key, other), iv in zip(paired_names, ivs[len(names):]):
        out["paired"][key] = {"baseline": other, "stat": "geoscore", **iv.to_dict()}
    return out


# ---------------------------------------------------------------- embedding similarity against distance

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
    from geopin.geo import validate_lat_lon
    from geopin.metrics import bootstrap_pair_sums

    t0 = time.perf_counter()
    lat, lon = validate_lat_lon(lat, lon, "positions")
    n = len(lat)
    embs = [_check_embeddings(emb, n, "emb")]
    if reference is not None:
        embs.append(_check_embeddings(reference, n, "reference"))
    if n < 2:
        raise ValueError(f"similarity_by_distance: {_plural(n, 'photo')}: pairs need at least 2 photos")
    edges = _check_bins(bins_km)
    if n_pairs < 1 or k_near < 0:
        raise ValueError(f"n_pairs must be at least 1 and k_near at least 0, got {n_pairs} and {k_near}")
    codes = None
    if groups is not None:
        codes = _group_codes(groups)
        if len(codes) != n:
            raise ValueError(f"groups: {len(codes)} labels for {n} photos")

    a, b, is_random, sampling, census_km, k = _similarity_pairs(lat, lon, edges, n_pairs, k_near, seed)
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
    # disjoint strata (series x bin x near/middle/far): every pair is counted once, bins and gap are unions
    strata = (s_of * n_bins + bin_of) * 3 + zone
    sums, counts, d_sums, d_counts = bootstrap_pair_sums(sims, pa, pb, strata, len(series) * n_bins * 3, draws)

    def union(s_i: int, bins=None, zones=(0, 1, 2)) -> tuple[np.ndarray, np.ndarray, int]:
        """(estimate (m,), draws (n_boot, m), pairs) of the mean over the strata of a series' bins and zones."""
        idx = [(s_i * n_bins + i) * 3 + z for i in (range(n_bins) if bins is None else bins) for z in zones]
        c, dc = counts[idx].sum(), d_counts[:, idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[idx].sum(axis=0) / c, np.where(dc[:, None] > 0, d_sums[:, idx].sum(axis=1) / dc[:, None], np.nan), int(c)

    unit = "photographer" if draws.unit == "group" else "photo"
    ua, ub = draws.codes[pa], draws.codes[pb]
    gaps: dict[str, np.ndarray] = {}  # per series: the gap in every draw, (n_boot, m)
    results = []
    for k_col, name in enumerate([label, reference_label][: len(embs)]):
        out_series = {}
        for s_i, (key, sel) in enumerate(series.items()):
            bins = []
            for i in range(n_bins):
                est, dr, pairs = union(s_i, bins=[i])
                lo, hi = _nan_interval(dr[:, k_col], level)
                m = sel & (bin_of == i)
                bins.append({
                    "lo_km": _num(edges[i]), "hi_km": _num(edges[i + 1]), "pairs": pairs,
                    "units": int(np.unique(np.r_[ua[m], ub[m]]).size),
                    "mean": _finite(est[k_col]), "lo": lo, "hi": hi, "sampling": sampling[i],
                })
            (near_est, near_dr, near_n), (far_est, far_dr, far_n) = union(s_i, zones=(0,)), union(s_i, zones=(2,))
            gaps[key] = near_dr - far_dr
            lo, hi = _nan_interval(gaps[key][:, k_col], level)
            out_series[key] = {
                "label": SIMILARITY_SERIES[key],
                "pairs": int(sel.sum()),
                "bins": bins,
                "spearman": _spearman(km[sel & is_random], sims[sel & is_random, k_col]),
                "spearman_pairs": int((sel & is_random).sum()),
                "gap": {
                    "near_km": SIMILARITY_NEAR_KM, "far_km": SIMILARITY_FAR_KM, "near_pairs": near_n, "far_pairs": far_n,
                    "estimate": _finite(near_est[k_col] - far_est[k_col]), "lo": lo, "hi": hi,
                },
            }
        results.append({
            "label": name,
            "n_photos": n,
            "unit": unit,
            "n_units": draws.n_units,
            "n_boot": draws.n_boot,
            "level": draws.level,
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
        res["difference"] = {}
        for key in series:
            lo, hi = _nan_interval(gaps[key][:, 0] - gaps[key][:, 1], level)  # paired: the same pairs and draws
            est_d = res["series"][key]["gap"]["estimate"], results[1]["series"][key]["gap"]["estimate"]
            res["difference"][key] = {
                "gap": {"estimate": _diff_or_none(*est_d), "lo": lo, "hi": hi},
                "spearman": _diff_or_none(res["series"][key]["spearman"], results[1]["series"][key]["spearman"]),
            }
    res["seconds"] = round(time.perf_counter() - t0, 2)
    g = res["series"][res["headline"]]["gap"]
    log.info("similarity by distance (%s, %d pairs, %.1f s): near minus far %s [%s, %s]", label, len(a),
             res["seconds"], g["estimate"], g["lo"], g["hi"])
    return res


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
        raise ValueError(f"{name}: {_plural(int(bad.sum()), 'photo')} with embeddings that are not finite "
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
    return f"{lo:,g}-{hi:,g}" if hi < 20000 else f">= {lo:,g}"


def _signed(v: float | None, fmt: str = "+.3f") -> str:
    return "-" if v is None else format(v, fmt)


def _sim_iv(c: dict, unit: str) -> str:
    """A bin's mean with its interval; a bin of fewer than ROUGH_BELOW units gets no interval, but their count."""
    if c["mean"] is None:
        return "-"
    if c["units"] < ROUGH_BELOW:
        return f"{c['mean']:.3f} ({_plural(c['units'], unit)} only)"
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


def plot_similarity_km(sim: dict, path: Path) -> Path:
    """Mean similarity with its interval against distance (log km), per series and per embedding set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    runs = [sim] + ([sim["reference"]] if "reference" in sim else [])
    styles = {"different_photographers": ("-", "o"), "all_pairs": ("-", "o"), "same_photographer": ("--", "s")}
    for r_i, r in enumerate(runs):
        color = ("tab:blue", "tab:orange")[r_i]
        for key, s in r["series"].items():
            bins = [b for b in s["bins"] if b["mean"] is not None]
            if not bins:
                continue
            # a bin sits at its geometric middle; the first (from 0 km) at half its upper edge
            x = np.array([np.sqrt(b["lo_km"] * b["hi_km"]) if b["lo_km"] > 0 else b["hi_km"] / 2 for b in bins])
            y = np.array([b["mean"] for b in bins])
            lo = np.array([b["lo"] if b["lo"] is not None else b["mean"] for b in bins])
            hi = np.array([b["hi"] if b["hi"] is not None else b["mean"] for b in bins])
            ls, marker = styles[key]
            name = s["label"] if len(runs) == 1 else f"{r['label']}: {s['label']}"
            ax.errorbar(x, y, yerr=[y - lo, hi - y], color=color, ls=ls, marker=marker, capsize=3, label=name,
                        alpha=1.0 if key != "same_photographer" else 0.7)
    for e in sim["bins_km"][1:-1]:
        ax.axvline(e, color="grey", lw=0.5, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distance between the two photos (km, log scale; points at bin middles)")
    ax.set_ylabel("mean cosine similarity (centred embeddings)")
    unit = "photographers" if sim["unit"] == "photographer" else "photos"
    ax.set_title(f"Do photos near each other look alike? ({100 * sim['level']:.0f} % intervals over {unit})")
    ax.legend(fontsize=8)
    return _save(fig, path)



# ---------------------------------------------------------------- tables and plots


def methods_table(report: dict, scenario: str) -> pd.DataFrame:
    rows = []
    for m, s in report["scenarios"][scenario]["methods"].items():
        rows.append({"method": m, **{k: v for k, v in s.items() if k != "n"}})
    return pd.DataFrame(rows)


def calibration_table(report: dict, scenario: str) -> pd.DataFrame:
    c = report["scenarios"][scenario]["calibration"]
    return pd.DataFrame(
        [
            {
                "within_km": k, "mean_conf": v["mean_confidence"], "hit_rate": v["hit_rate"], "ece": v["ece"],
                "ece_lo": v.get("ece_interval", {}).get("lo", np.nan), "ece_hi": v.get("ece_interval", {}).get("hi", np.nan),
                "ece_raw": v["ece_raw"], "gap": v["gap"],
            }
            for k, v in c.items()
        ]
    )


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _with_interval(est: str, iv: dict | None, fmt) -> str:
    return est if not iv else f"{est} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def scenario_header(report: dict, scenario: str) -> str:
    """What a reader must know before the numbers: how many folds (and why fewer), and what the intervals resample."""
    sc = report["scenarios"][scenario]
    used, asked = sc.get("folds_used", report["folds"]), sc.get("folds_requested", report["folds"])
    folds = f"{used} folds" if used == asked else f"{used} of {asked} folds requested"
    n = sc["methods"]["model"]["n"] if "model" in sc["methods"] else report["n"]
    line = f"== {sc['label']}: {n} photos, {folds}"
    ci = sc.get("intervals")
    if ci:
        over = f"{ci['n_units']} photographers" if ci["unit"] == "photographer" else "photos (photographers unknown)"
        line += f"; [{100 * ci['level']:.0f} % intervals over {over}, {ci['n_boot']} draws]"
    for note in (sc.get("note"), (ci or {}).get("note")):
        if note:
            line += f"\n   note: {note}"
    guard = sc.get("prior_guard") or {}
    if guard.get("folds_reported"):
        line += f"\n   prior guard applied in {guard['folds_applied']} of {guard['folds']} folds"
    return line


def format_methods_table(report: dict, scenario: str) -> tuple[str, pd.DataFrame]:
    """(header, table of text) for people: every method with its interval, e.g. "GeoScore 1036 [998, 1071]"."""
    sc = report["scenarios"][scenario]
    ivs = (sc.get("intervals") or {}).get("methods", {})
    rows = []
    for m, s in sc["methods"].items():
        iv = ivs.get(m, {})
        row = {"method": m}
        for key in s:
            if key.startswith("acc_"):
                row[f"<={key[4:-2]} km"] = _with_interval(_pct(s[key]), iv.get(key), lambda v: f"{100 * v:.1f}")
        row["median km"] = f"{s['median_km']:,.0f}" if s["median_km"] >= 10 else f"{s['median_km']:.2f}"
        row["GeoScore"] = _with_interval(f"{s['geoscore']:.0f}", iv.get("geoscore"), lambda v: f"{v:.0f}")
        row["country"] = _pct(s["country_acc"]) if np.isfinite(s["country_acc"]) else "-"
        rows.append(row)
    return scenario_header(report, scenario), pd.DataFrame(rows)


def paired_lines(report: dict, scenario: str) -> list[str]:
    """The model's GeoScore gain over the prior and over the best baseline, paired over the same draws."""
    sc = report["scenarios"][scenario]
    paired = (sc.get("intervals") or {}).get("paired", {})
    out = []
    for key, p in paired.items():
        if key == "model_minus_best_baseline" and p["baseline"] == paired.get("model_minus_prior_constant", {}).get("baseline"):
            continue  # the prior is the best baseline: said once, on the line above
        best = " (the best baseline)" if p["baseline"] == paired.get("model_minus_best_baseline", {}).get("baseline") else ""
        sure = "" if p["lo"] > 0 or p["hi"] < 0 else "; the interval holds 0: no clear difference"
        out.append(f"model - {p['baseline']}{best}: GeoScore {p['estimate']:+.0f} [{p['lo']:+.0f}, {p['hi']:+.0f}]{sure}")
    return out


def format_calibration_table(report: dict, scenario: str) -> pd.DataFrame:
    """Stated confidence against hit rate per radius, ECE in points with its interval."""
    rows = []
    for key, c in report["scenarios"][scenario]["calibration"].items():
        rows.append({
            "within": f"{key} km",
            "mean conf": _pct(c["mean_confidence"]),
            "hit rate": _pct(c["hit_rate"]),
            "ECE (pts)": _with_interval(f"{100 * c['ece']:.1f}", c.get("ece_interval"), lambda v: f"{100 * v:.1f}"),
            "ECE raw (pts)": f"{100 * c['ece_raw']:.1f}",
            "GAP": f"{c['gap']:.3f}",
        })
    return pd.DataFrame(rows)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, df in report["per_photo"].items():
        t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
        # error CDF of every method
        fig, ax = plt.subplots(figsize=(8, 5))
        for m in method_names(df):
            km = np.sort(haversine_km(df[f"{m}_lat"], df[f"{m}_lon"], t_lat, t_lon))
            ax.plot(np.maximum(km, 0.1), np.arange(1, len(km) + 1) / len(km), label=m, lw=2.2 if m == "model" else 1.1)
        for r in (1, 25, 200, 750, 2500):
            ax.axvline(r, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("error (km, log scale)")
        ax.set_ylabel("share of photos within")
        ax.set_title(f"Error CDF: {SCENARIO_LABELS[scenario]}")
        ax.legend(fontsize=7, loc="upper left")
        paths.append(_save(fig, out_dir / f"error_cdf_{scenario}.png"))
        # world map of true vs predicted, over populated places as the backdrop
        fig, ax = plt.subplots(figsize=(11, 5.5))
        _world_backdrop(ax)
        ax.plot(
            np.stack([t_lon, df.model_lon]), np.stack([t_lat, df.model_lat]), color="tab:red", lw=0.3, alpha=0.25
        )
        ax.scatter(t_lon, t_lat, s=4, c="tab:blue", label="true")
        ax.scatter(df.model_lon, df.model_lat, s=10, c="tab:red", marker="x", label="predicted")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_title(f"True vs predicted: {SCENARIO_LABELS[scenario]}")
        ax.legend(loc="lower left")
        paths.append(_save(fig, out_dir / f"map_{scenario}.png"))
        # reliability diagram of the stated confidences
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        cal = report["scenarios"][scenario]["calibration"]
        for key, c in cal.items():
            tab = pd.DataFrame(c["reliability"])
            tab = tab[tab.n > 0]
            line = ax.plot(tab.mean_prob, tab.hit_rate, lw=1, label=f"within {key} km (ECE {100 * c['ece']:.1f} pts)")
            # marker area shows how many photos stand behind each point: sparse bins are noise
            ax.scatter(tab.mean_prob, tab.hit_rate, s=8 + 400 * tab.n / tab.n.sum(), color=line[0].get_color())
        ax.set_xlabel("stated probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"Reliability: {scenario} (marker area = photos in the bin)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"reliability_{scenario}.png"))
    if report.get("similarity_km"):  # a property of the embeddings, once for all photos
        paths.append(plot_similarity_km(report["similarity_km"], out_dir / "similarity_km.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from geopin.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _world_backdrop(ax) -> None:
    """Populated places from the offline geocoder's data trace the continents without map files."""
    from geopin.countries import populated_places

    p_lat, p_lon = populated_places()
    ax.scatter(p_lon, p_lat, s=0.05, c="lightgrey", rasterized=True)
    ax.set_aspect("equal")


def report_for_json(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "per_photo"}


def write_evaluation(report: dict, man: pd.DataFrame, out: Path) -> tuple[dict, list[Path], Path]:
    """Per-photo predictions, plots, report.json and report.html (`geopin evaluate` and `geopin build`)."""
    from geopin.evaluation.report import write_report
    from geopin.io import write_json, write_parquet

    out.mkdir(parents=True, exist_ok=True)
    for sc, df in report["per_photo"].items():
        df = df.copy()
        df.insert(0, "id", man["id"].to_numpy()[df.row.to_numpy()])
        write_parquet(df, out / f"predictions_{sc}.parquet")
    plots = write_plots(report, out)
    doc = report_for_json(report)
    doc["plots"] = [str(p) for p in plots]
    write_json(doc, out / "report.json")
    html = write_report(report, out, ids=man["id"].astype(str).tolist())  # the same, to look at offline
    return doc, plots, html


def evaluation_text(report: dict) -> str:
    """The methods, paired-difference and calibration tables of every scenario, as printed."""
    import pandas as pd


    lines = []
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        for sc in report["scenarios"]:
            header, table = format_methods_table(report, sc)
            lines += [f"\n{header}", table.to_string(index=False), *paired_lines(report, sc),
                      format_calibration_table(report, sc).to_string(index=False)]
        for sc, why in report["skipped"].items():
            lines.append(f"\n== {sc}: skipped: {why}")
        if report.get("similarity_km"):
            lines += ["", *similarity_lines(report["similarity_km"])]
    return "\n".join(lines)
