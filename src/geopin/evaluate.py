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

import numpy as np
import pandas as pd

from geopin.countries import country_of
from geopin.geo import haversine_km, pairwise_km
from geopin.metrics import (
    expected_calibration_error,
    global_average_precision,
    reliability_table,
    summarize,
)
from geopin.posterior import CONFIDENCE_KM, classifier_probs
from geopin.splits import group_kfold, random_kfold
from geopin.train import TrainConfig, train_model

log = logging.getLogger(__name__)

SCENARIO_LABELS = {
    "group": "new photographers (folds by photographer)",
    "random": "archive completion (random folds: same photographers in train and test)",
}


@dataclass
class EvalConfig:
    scenarios: tuple[str, ...] = ("group", "random")
    folds: int = 5
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    n_bins: int = 10


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


def evaluate_cv(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, groups, cfg: EvalConfig = EvalConfig()) -> dict:
    """Run both scenarios; returns metrics per method, calibration and per-photo predictions."""
    emb = np.asarray(emb, dtype=np.float32)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    true_cc = country_of(lat, lon)
    report: dict = {"n": int(len(lat)), "folds": cfg.folds, "scenarios": {}}
    per_photo: dict[str, pd.DataFrame] = {}
    for scenario in cfg.scenarios:
        t0 = time.perf_counter()
        if scenario == "group":
            if groups is None:
                log.warning("no groups: skipping the new-photographers scenario")
                continue
            folds = group_kfold(np.asarray(groups), k=cfg.folds, seed=cfg.seed)
        else:
            folds = random_kfold(len(lat), k=cfg.folds, seed=cfg.seed)
        tcfg = replace(cfg.train, scenario=scenario)
        rows = []
        fold_ids = np.unique(folds)
        if len(fold_ids) < cfg.folds:
            log.warning("%s: only %d folds possible (fewer groups than folds)", scenario, len(fold_ids))
        if len(fold_ids) < 2:
            raise ValueError(f"{scenario} scenario needs at least 2 folds; the data gives {len(fold_ids)}")
        for f in fold_ids:
            tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            g_tr = np.asarray(groups)[tr] if groups is not None else None
            model = train_model(emb[tr], lat[tr], lon[tr], g_tr, tcfg)
            out = predict_fold(model, emb[te], lat[tr], lon[tr], lat[te], lon[te])
            df = pd.DataFrame({"row": te, "fold": f, "true_lat": lat[te], "true_lon": lon[te]})
            for name, (p_lat, p_lon) in out["preds"].items():
                df[f"{name}_lat"] = p_lat
                df[f"{name}_lon"] = p_lon
            for r_i, r in enumerate(CONFIDENCE_KM):
                df[f"conf_{int(r)}"] = out["conf"][:, r_i]
                df[f"raw_{int(r)}"] = out["raw"][:, r_i]
            df["w_prior"], df["w_clf"], df["w_knn"] = model.params.w_prior, model.params.w_clf, model.params.w_knn
            rows.append(df)
            log.info("%s fold %d/%d: %s", scenario, f + 1, len(fold_ids), model.params)
        df = pd.concat(rows).sort_values("row").reset_index(drop=True)
        per_photo[scenario] = df
        report["scenarios"][scenario] = _scenario_report(df, true_cc, cfg.n_bins)
        report["scenarios"][scenario]["label"] = SCENARIO_LABELS[scenario]
        report["scenarios"][scenario]["seconds"] = round(time.perf_counter() - t0, 1)
    report["per_photo"] = per_photo
    return report


def method_names(df: pd.DataFrame) -> list[str]:
    return [c[: -len("_lat")] for c in df.columns if c.endswith("_lat") and c != "true_lat"]


def _scenario_report(df: pd.DataFrame, true_cc: np.ndarray, n_bins: int) -> dict:
    t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
    tcc = true_cc[df.row.to_numpy()]
    methods = {}
    for m in method_names(df):
        p_lat, p_lon = df[f"{m}_lat"].to_numpy(), df[f"{m}_lon"].to_numpy()
        methods[m] = summarize(p_lat, p_lon, t_lat, t_lon, country_of(p_lat, p_lon), tcc)
    km = haversine_km(df.model_lat.to_numpy(), df.model_lon.to_numpy(), t_lat, t_lon)
    calib = {}
    for r in CONFIDENCE_KM:
        key = str(int(r))
        hit = km <= r
        prob = df[f"conf_{key}"].to_numpy()
        table = reliability_table(prob, hit, n_bins)
        calib[key] = {
            "ece": expected_calibration_error(prob, hit, n_bins),
            "ece_raw": expected_calibration_error(df[f"raw_{key}"].to_numpy(), hit, n_bins),
            "mean_confidence": float(prob.mean()),
            "hit_rate": float(hit.mean()),
            "gap": global_average_precision(prob, hit),
            "reliability": table.to_dict(orient="records"),
        }
    return {
        "methods": methods,
        "calibration": calib,
        "mix_weights": {
            "w_prior": float(df.w_prior.mean()),
            "w_clf": float(df.w_clf.mean()),
            "w_knn": float(df.w_knn.mean()),
        },
    }


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
            {"within_km": k, "mean_conf": v["mean_confidence"], "hit_rate": v["hit_rate"], "ece": v["ece"], "ece_raw": v["ece_raw"], "gap": v["gap"]}
            for k, v in c.items()
        ]
    )


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
