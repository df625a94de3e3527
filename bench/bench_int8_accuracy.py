"""What int8 features do to the guesses: f32 and int8 embeddings of the shared photos on the same folds.

    python bench/bench_int8_accuracy.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-bench] [--folds 5]

Every shared Im2GPS3k photo is embedded at f32 and at int8 (EmbedConfig.precision, runtime onnx), then the
model is cross-validated by photographer (geopin.evaluation.crossval, the folds bench_accuracy uses) in three
settings on the same folds:
  (a) f32 train, f32 test    what geopin does today
  (b) f32 train, int8 test   a model trained on f32 features (the bundled one) fed int8 features
  (c) int8 train, int8 test  a model trained on int8 features
For each: GeoScore, the shares within 25/750/2500 km and the median error, with 95 % intervals over
photographers (1000 bootstrap draws), and the paired difference to (a) over the same draws. Between (a) and
(b): how many best guesses and countries change. Caveat: the int8 calibration photos (scripts/calibrate_int8.py,
256 photos by 173 photographers) are from this same shared set. Writes bench/results/int8_accuracy.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from geopin.countries import country_of
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings
from geopin.geo import haversine_km
from geopin.io import write_json
from geopin.log import setup_logging
from geopin.metrics import BootstrapDraws, Interval, bootstrap_mean, geoscore
from shared_photos import shared_embedded

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_int8_accuracy")
SETTINGS = {"a": "f32 train + f32 test", "b": "f32 train + int8 test", "c": "int8 train + int8 test"}
SHARES_KM = (25, 750, 2500)
STATS = ("geoscore", *(f"acc_{k}km" for k in SHARES_KM))


def weighted_medians(values: np.ndarray, draws: BootstrapDraws) -> np.ndarray:
    """The median of `values` in every bootstrap draw (each photo weighted by how often its photographer was drawn)."""
    order = np.argsort(values, kind="stable")
    v, codes = values[order], draws.codes[order]
    out = []
    for w in draws.chunks():
        cum = np.cumsum(w[:, codes], axis=1)
        half = cum[:, -1:] / 2
        out.append(v[np.argmax(cum >= half, axis=1)])
    return np.concatenate(out)


def setting_figures(km: np.ndarray, base_km: np.ndarray, draws: BootstrapDraws) -> dict:
    """GeoScore, shares and median with intervals, and each one's paired difference to the baseline's."""
    def columns(k):
        return np.stack([geoscore(k)] + [(k <= r).astype(np.float64) for r in SHARES_KM], axis=1)

    own, base = columns(km), columns(base_km)
    ivs = bootstrap_mean(np.concatenate([own, own - base], axis=1), draws)
    out = {s: iv.to_dict() for s, iv in zip(STATS, ivs[: len(STATS)])}
    out["minus_a"] = {s: iv.to_dict() for s, iv in zip(STATS, ivs[len(STATS):])}
    med, base_med = weighted_medians(km, draws), weighted_medians(base_km, draws)
    lo, hi = draws.percentiles(med)
    out["median_km"] = Interval(float(np.median(km)), float(lo), float(hi)).to_dict()
    lo, hi = draws.percentiles(med - base_med)
    out["minus_a"]["median_km"] = Interval(float(np.median(km) - np.median(base_km)), float(lo), float(hi)).to_dict()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_accuracy.json")
    args = ap.parse_args(argv)
    setup_logging()
    logging.getLogger("geopin.dataset.cells").setLevel(logging.WARNING)

    manifest_path, _, _, _ = shared_embedded(args.shared, args.work)  # f32, as bench_accuracy embeds
    t0 = time.perf_counter()
    summary = embed_manifest(manifest_path, args.work / "emb_int8", EmbedConfig(runtime="onnx", precision="int8"))
    int8_seconds = time.perf_counter() - t0
    from geopin.dataset.manifest import read_manifest

    man = read_manifest(manifest_path)
    f32, _ = load_embeddings(args.work / "emb", man)
    int8, meta8 = load_embeddings(args.work / "emb_int8", man)
    if meta8["config"]["precision"] != "int8":
        print(f"error: the int8 embeddings ran at {meta8['config']['precision']}", file=sys.stderr)
        return 2
    ok = np.isfinite(f32).all(1) & np.isfinite(int8).all(1)
    man, f32, int8 = man[ok].reset_index(drop=True), np.asarray(f32[ok]), np.asarray(int8[ok])
    cos = (f32 * int8).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(int8, axis=1)
    lat, lon, groups = man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy()
    test_rows = {}

    def f32_train_int8_test(scenario, fold, train, test):
        mixed = f32.copy()
        mixed[test] = int8[test]
        test_rows[fold] = test
        return mixed

    cfg = EvalConfig(scenarios=("group",), folds=args.folds, seed=args.seed)
    reports = {}
    for key, emb, fold_emb in (("a", f32, None), ("b", f32, f32_train_int8_test), ("c", int8, None)):
        t = time.perf_counter()
        reports[key] = evaluate_cv(emb, lat, lon, groups, cfg, fold_embeddings=fold_emb)
        log.info("setting %s (%s): %.0f s", key, SETTINGS[key], time.perf_counter() - t)
    frames = {k: r["per_photo"]["group"] for k, r in reports.items()}
    rows = frames["a"].row.to_numpy()
    for k, df in frames.items():
        if not np.array_equal(df.row.to_numpy(), rows) or not np.array_equal(df.fold.to_numpy(), frames["a"].fold.to_numpy()):
            raise RuntimeError(f"setting {k} was not evaluated on the folds of setting a")
    km = {k: haversine_km(df.model_lat.to_numpy(), df.model_lon.to_numpy(), df.true_lat.to_numpy(), df.true_lon.to_numpy())
          for k, df in frames.items()}
    draws = BootstrapDraws.of(groups[rows], n_boot=1000, seed=args.seed)
    figures = {k: {"label": SETTINGS[k], "n": int(len(rows)), **setting_figures(km[k], km["a"], draws),
                   "summary": reports[k]["scenarios"]["group"]["methods"]["model"]} for k in SETTINGS}
    a, b = frames["a"], frames["b"]
    moved = haversine_km(a.model_lat.to_numpy(), a.model_lon.to_numpy(), b.model_lat.to_numpy(), b.model_lon.to_numpy())
    cc_a = country_of(a.model_lat.to_numpy(), a.model_lon.to_numpy())
    cc_b = country_of(b.model_lat.to_numpy(), b.model_lon.to_numpy())
    changes = {
        "photos": int(len(rows)),
        "best_guess_moved_over_1km": int((moved > 1).sum()),
        "best_guess_moved_over_25km": int((moved > 25).sum()),
        "best_guess_moved_over_750km": int((moved > 750).sum()),
        "country_changed": int((np.asarray(cc_a, dtype=object) != np.asarray(cc_b, dtype=object)).sum()),
        "moved_km_median_of_moved": float(np.median(moved[moved > 1])) if (moved > 1).any() else 0.0,
    }
    doc = {
        "photos": int(len(rows)), "photographers": int(draws.n_units), "folds": args.folds, "seed": args.seed,
        "scenario": "group (new photographers)", "interval": "95 % percentile bootstrap over photographers, 1000 draws; "
        "minus_a: paired differences to setting a over the same draws",
        "caveat": "the int8 calibration photos (256 photos by 173 photographers, scripts/calibrate_int8.py) are from "
                  "this same shared set",
        "feature_cosine_int8_to_f32": {"mean": float(cos.mean()), "min": float(cos.min()),
                                       "p01": float(np.percentile(cos, 1)), "median": float(np.median(cos))},
        "int8_embed": {"photos_embedded": summary.n_embedded, "from_cache": summary.n_cached,
                       "seconds": round(int8_seconds, 1), "photos_per_s": round(summary.photos_per_s, 1)},
        "settings": figures, "a_vs_b_changes": changes,
        "machine": {"cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)},
    }
    write_json(doc, args.out)

    def cell(iv, scale=1.0, digits=0):
        return f"{iv['estimate'] * scale:.{digits}f} [{iv['lo'] * scale:.{digits}f}, {iv['hi'] * scale:.{digits}f}]"

    print(f"{len(rows)} photos, {draws.n_units} photographers, {args.folds} folds by photographer; "
          f"int8/f32 feature cosine mean {cos.mean():.4f}, min {cos.min():.4f}")
    head = ["setting", "GeoScore", *[f"acc@{k} km %" for k in SHARES_KM], "median km"]
    print(" | ".join(head))
    for k, f in figures.items():
        print(" | ".join([f"({k}) {f['label']}", cell(f["geoscore"]),
                          *[cell(f[f"acc_{r}km"], 100, 1) for r in SHARES_KM], cell(f["median_km"])]))
        if k != "a":
            d = f["minus_a"]
            print(" | ".join([f"    ({k}) - (a) paired", cell(d["geoscore"], digits=1),
                              *[cell(d[f"acc_{r}km"], 100, 2) for r in SHARES_KM], cell(d["median_km"])]))
    print(f"(a) -> (b): best guess moved > 1 km for {changes['best_guess_moved_over_1km']} of {len(rows)} photos "
          f"(> 25 km: {changes['best_guess_moved_over_25km']}, > 750 km: {changes['best_guess_moved_over_750km']}); "
          f"country changed for {changes['country_changed']}")
    print(f"caveat: {doc['caveat']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
