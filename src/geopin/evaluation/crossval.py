"""Cross-validated evaluation: the model beside the prior, the simple baselines and the oracle.

Every run compares, on the same embeddings and the same folds:
  (a) the full model (posterior of classifier + neighbours + prior, best guess by expected GeoScore),
  (b) the classifier alone, per granularity and hierarchical (DeepLocation/DeepGeoWorld style),
  (c) nearest neighbour alone (the Geosolver approach),
  (d) the prior's best constant answer,
  (e) the oracle: the training location nearest the truth, the ceiling of any answer from the gallery,
in two scenarios: new photographers (folds by group) and archive completion (random folds).

The stages after it live beside it: `similarity` (embedding similarity against distance), `tables`
(the report as text), `plots` (its figures) and `report` (report.html and every file of an evaluation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd

from geopin.countries import country_of
from geopin.dataset.splits import group_codes, group_kfold, random_kfold
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
# the oracle is a ceiling, not an answer anyone can give; the model's other decision rule and its pixel-only twin
# are the model itself, not baselines to beat
NOT_BASELINES = ("model", "oracle", "model_most_likely", "model_pixels_only")
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


def plural(n: int, word: str) -> str:
    """'1 photo', '2 photos': counts in messages read as sentences."""
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
        return FoldPlan(None, 0, f"{plural(units, word)} only: held-out folds need at least 2")
    k = min(cfg.folds, units)
    note = "" if k == cfg.folds else f"only {plural(units, word)}, so {k} folds instead of the {cfg.folds} requested"
    folds = group_kfold(codes, k=k, seed=cfg.seed) if scenario == "group" else random_kfold(n, k=k, seed=cfg.seed)
    return FoldPlan(folds, k, note)


def _nearest_train(test_lat, test_lon, train_lat, train_lon, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty(len(test_lat), dtype=np.int64)
    for s in range(0, len(test_lat), chunk):
        out[s : s + chunk] = np.argmin(pairwise_km(test_lat[s : s + chunk], test_lon[s : s + chunk], train_lat, train_lon), axis=1)
    return train_lat[out], train_lon[out]


def predict_fold(model, emb_test: np.ndarray, train_lat: np.ndarray, train_lon: np.ndarray, test_lat, test_lon,
                 clues=None) -> dict:
    """Guesses of every method for one fold's test photos; with `clues` (what evidence sources read off each
    test photo) the model weighs them, and `model_pixels_only` is the same model without them."""
    heads = model.heads
    ev, cell, nb, dec, conf = model.decide(emb_test)
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {"model": (dec.lat, dec.lon)}
    most = model.most_likely_points(ev, cell, nb)
    if clues is not None:
        ev_c, cell_c, nb_c, dec_clues, conf = model.decide(emb_test, clues)
        preds = {"model": (dec_clues.lat, dec_clues.lon), "model_pixels_only": (dec.lat, dec.lon)}
        dec = dec_clues
        most = model.most_likely_points(ev_c, cell_c, nb_c)
    # the other decision rule: the most probable place, which the page and the words show first
    preds["model_most_likely"] = most
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


def evaluate_cv(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, groups, cfg: EvalConfig | None = None,
                fold_embeddings: Callable[[str, int, np.ndarray, np.ndarray], np.ndarray] | None = None,
                clues=None) -> dict:
    """Run the scenarios the data allows; returns metrics per method with intervals, calibration, per-photo predictions.

    `fold_embeddings(scenario, fold, train_rows, test_rows)`, when given, returns the (n, dim) matrix that fold
    is trained and tested on (e.g. from a backbone fine-tuned on that fold's training photos only); `emb` then
    only fixes the number of rows. `clues`, when given (per photo, what the evidence sources read off it), are
    weighed by each fold's model, their weights fit on that fold's training photos only. Raises ValueError naming why when no scenario can run (e.g. one
    photographer and only 'group' asked). `cfg` None: EvalConfig's defaults.
    """
    cfg = EvalConfig() if cfg is None else cfg
    emb = np.asarray(emb, dtype=np.float32)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if not len(emb) == len(lat) == len(lon):
        raise ValueError(f"{len(emb)} embeddings for {len(lat)} latitudes and {len(lon)} longitudes")
    if clues is not None and len(clues) != len(lat):
        raise ValueError(f"clues for {len(clues)} photos but {len(lat)} locations")
    codes = group_codes(groups) if groups is not None else None
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
            model = train_model(e[tr], lat[tr], lon[tr], g_tr, tcfg, clues=None if clues is None else [clues[r] for r in tr])
            out = predict_fold(model, e[te], lat[tr], lon[tr], lat[te], lon[te],
                               clues=None if clues is None else [clues[r] for r in te])
            guard = prior_guard_applied(model)
            guards.append(guard)
            rows.append(_fold_frame(out, model, guard, f, te, lat, lon))
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


def _fold_frame(out: dict, model, guard: bool | None, fold: int, te: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> pd.DataFrame:
    """One fold's test photos, a row each: truth, every method's guess, the stated and raw confidences, the weights."""
    df = pd.DataFrame({"row": te, "fold": fold, "true_lat": lat[te], "true_lon": lon[te]})
    for name, (p_lat, p_lon) in out["preds"].items():
        df[f"{name}_lat"] = p_lat
        df[f"{name}_lon"] = p_lon
    for r_i, r in enumerate(CONFIDENCE_KM):
        df[f"conf_{int(r)}"] = out["conf"][:, r_i]
        df[f"raw_{int(r)}"] = out["raw"][:, r_i]
    df["w_prior"], df["w_clf"], df["w_knn"] = model.params.w_prior, model.params.w_clf, model.params.w_knn
    df["prior_guard"] = pd.array([guard] * len(te), dtype="boolean")
    return df


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
