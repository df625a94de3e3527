"""Evidence read off the photo (geopin.evidence) on held-out photographers: does each source earn its weight?

    python bench/bench_evidence.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-bench] [--folds 5]
                                   [--readings DIR]   # a `geopin read` output for the same photos (default: made in WORK)
                                   [--no-speed]       # skip the predict timing

Five folds by photographer over the shared Im2GPS3k photos. Each fold's model is trained on its training
photos with their clues (each source's weight fit out of fold on inner folds of those photos only), then its
test photos are answered:
  * pixels only (no clue counts), all sources, each source alone, and all but each source (the weights fit
    with all of them; an ablation, not a refit);
  * GeoScore, <=25 km, <=750 km and country accuracy, each with a 95 % interval over photographers, and the
    paired difference against pixels only (the same draws of photographers, so a difference is not noise);
  * ECE at each radius for pixels only and all sources;
  * per source: the share of photos it fires on, and its own accuracy there (its top spot within 25 km of the
    truth, or its top country the true one).
Then predict p50 for a 384 px and a 12 MP photo with a sign, with text on and off, in the same run.
Prints the tables; writes bench/results/evidence.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.countries import country_of
from geopin.dataset.splits import group_kfold
from geopin.evidence.readings import read_manifest_engine
from geopin.geo import haversine_km
from geopin.io import write_json
from geopin.locate.model import GeoModel
from geopin.locate.posterior import CONFIDENCE_KM
from geopin.locate.train import TrainConfig, manifest_clues, manifest_readings, text_gate_of, train_model
from geopin.log import setup_logging
from shared_photos import shared_embedded
from geopin.metrics import BootstrapDraws, bootstrap_ece, bootstrap_mean, geoscore
from geopin.scale.engine import EngineConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the rendered-sign photos of the mechanism tests
log = logging.getLogger("bench_evidence")


def _answers(model: GeoModel, emb: np.ndarray, clues, weights: dict[str, float]):
    m = GeoModel(model.heads, replace(model.params, clue_weights=weights), model.calibration, model.meta)
    _, _, _, dec, conf = m.decide(emb, clues)
    return dec.lat, dec.lon, conf


def run_folds(emb, man, clues, folds: int, seed: int, found: list | None = None) -> tuple[pd.DataFrame, dict]:
    """Per test photo: the truth and each variant's guess (and stated confidences for pixels/all). With `found`
    (each photo's Reading), also "all sources, gated": the text gate fit on the fold's training readings decides
    which test photos are read, the others count as read with nothing found (what predict does by default)."""
    lat, lon, groups = man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy()
    fold_of = group_kfold(groups, k=folds, seed=seed)
    sources = sorted({c.source for cl in clues for c in cl})
    rows, weights_per_fold = [], []
    for f in range(folds):
        tr, te = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        t0 = time.perf_counter()
        model = train_model(emb[tr], lat[tr], lon[tr], groups[tr], TrainConfig(scenario="group"), clues=[clues[r] for r in tr])
        w = dict(model.params.clue_weights)
        weights_per_fold.append({"fold": f, "weights": w, "report": model.meta["fit_report"].get("clue_weights", {})})
        te_clues = [clues[r] for r in te]
        gated_clues = None
        if found is not None:
            gate = text_gate_of(emb[tr], [found[r] for r in tr], [clues[r] for r in tr], groups[tr], TrainConfig(scenario="group"))
            read = gate.wants(emb[te]) if gate is not None else np.ones(len(te), dtype=bool)
            gated_clues = [c if read[j] else [] for j, c in enumerate(te_clues)]
            has_text = np.array([found[r] is not None and len(found[r].lines) > 0 for r in te])
            has_clue = np.array([bool(c) for c in te_clues])
            weights_per_fold[-1]["gate"] = {"read_share": float(read.mean()), "text_recall": float(read[has_text].mean()),
                                            "clue_recall": float(read[has_clue].mean()) if has_clue.any() else None,
                                            "clue_photos": int(has_clue.sum())}
        variants = {"pixels only": {}, "all sources": w}
        if gated_clues is not None:
            variants["all sources, gated"] = w
        for s in sources:
            variants[f"only {s}"] = {s: w.get(s, 0.0)}
            variants[f"all but {s}"] = {k: v for k, v in w.items() if k != s}
        df = pd.DataFrame({"row": te, "fold": f, "true_lat": lat[te], "true_lon": lon[te], "group": groups[te]})
        for name, weights in variants.items():
            p_lat, p_lon, conf = _answers(model, emb[te], gated_clues if name == "all sources, gated" else te_clues, weights)
            df[f"{name}|lat"], df[f"{name}|lon"] = p_lat, p_lon
            if name in ("pixels only", "all sources", "all sources, gated"):
                for r_i, r in enumerate(CONFIDENCE_KM):
                    df[f"{name}|conf_{int(r)}"] = conf[:, r_i]
        rows.append(df)
        log.info("fold %d/%d: %d test photos, weights %s (%.0f s)", f + 1, folds, len(te), w, time.perf_counter() - t0)
    return pd.concat(rows).sort_values("row").reset_index(drop=True), {"folds": weights_per_fold}


def variant_metrics(df: pd.DataFrame, draws: BootstrapDraws) -> dict:
    t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
    true_cc = country_of(t_lat, t_lon)
    names = [c[: -len("|lat")] for c in df.columns if c.endswith("|lat")]
    base = None
    out = {}
    for name in names:
        km = haversine_km(df[f"{name}|lat"].to_numpy(), df[f"{name}|lon"].to_numpy(), t_lat, t_lon)
        cc = country_of(df[f"{name}|lat"].to_numpy(), df[f"{name}|lon"].to_numpy())
        vals = np.stack([geoscore(km), km <= 25, km <= 750, (cc == true_cc) & (true_cc != "")], axis=1).astype(float)
        if base is None:
            base = vals
        iv = bootstrap_mean(vals, draws)
        diff = bootstrap_mean(vals - base, draws)
        out[name] = {
            "geoscore": iv[0].to_dict(), "within_25km": iv[1].to_dict(), "within_750km": iv[2].to_dict(), "country": iv[3].to_dict(),
            "vs_pixels_only": {"geoscore": diff[0].to_dict(), "within_25km": diff[1].to_dict(), "within_750km": diff[2].to_dict(),
                               "country": diff[3].to_dict()},
            "changed_guesses": int((np.abs(df[f"{name}|lat"] - df["pixels only|lat"]) + np.abs(df[f"{name}|lon"] - df["pixels only|lon"]) > 1e-9).sum()),
        }
        if f"{name}|conf_25" in df:
            out[name]["ece"] = {}
            for r in CONFIDENCE_KM:
                hit = km <= r
                e = bootstrap_ece(df[f"{name}|conf_{int(r)}"].to_numpy(), hit, draws)
                out[name]["ece"][str(int(r))] = {**e.to_dict(), "stated": float(df[f"{name}|conf_{int(r)}"].mean()), "observed": float(hit.mean())}
    return out


def paired_difference(df: pd.DataFrame, a: str, b: str, draws: BootstrapDraws) -> dict:
    """a - b per photo (GeoScore, <=25 km, country), as means with intervals over the same photographer draws."""
    t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
    true_cc = country_of(t_lat, t_lon)
    vals = []
    for name in (a, b):
        km = haversine_km(df[f"{name}|lat"].to_numpy(), df[f"{name}|lon"].to_numpy(), t_lat, t_lon)
        cc = country_of(df[f"{name}|lat"].to_numpy(), df[f"{name}|lon"].to_numpy())
        vals.append(np.stack([geoscore(km), km <= 25, (cc == true_cc) & (true_cc != "")], axis=1).astype(float))
    diff = bootstrap_mean(vals[0] - vals[1], draws)
    return {"geoscore": diff[0].to_dict(), "within_25km": diff[1].to_dict(), "country": diff[2].to_dict()}


def source_accuracy(man: pd.DataFrame, clues) -> dict:
    """Per source: share of photos it fires on and how often what it points to is right there."""
    t_lat, t_lon = man.lat.to_numpy(), man.lon.to_numpy()
    true_cc = country_of(t_lat, t_lon)
    out: dict[str, dict] = {}
    for i, cl in enumerate(clues):
        for s in {c.source for c in cl}:
            mine = [c for c in cl if c.source == s]
            right = False
            for c in mine:
                if c.spots:
                    top = max(c.spots, key=lambda sp: sp.weight)
                    right |= bool(haversine_km(top.lat, top.lon, t_lat[i], t_lon[i]) <= 25)
                else:
                    best = max(c.countries.values())
                    right |= c.countries.get(str(true_cc[i]), 0.0) >= best
            d = out.setdefault(s, {"photos": 0, "right": 0, "examples": []})
            d["photos"] += 1
            d["right"] += int(right)
            if len(d["examples"]) < 12:
                d["examples"].append({"read": mine[0].read, "points_to": mine[0].points_to, "true_country": str(true_cc[i]), "right": right})
    n = len(clues)
    for s, d in out.items():
        d["share"] = d["photos"] / n
        d["accuracy"] = d["right"] / d["photos"] if d["photos"] else None
    return dict(sorted(out.items()))


def predict_speed(work: Path, rounds: int = 5) -> dict:
    """p50 seconds per photo with text on and off, for a 384 px and a 12 MP photo with a sign (same run)."""
    from signs import sign_photo  # tests/signs.py: the photos of the mechanism tests

    from geopin.locate.predict import PredictConfig, Predictor

    photos = {}
    for label, size in (("384 px", (384, 256)), ("12 MP", (4000, 3000))):
        path = work / f"sign_{size[0]}.jpg"
        sign_photo("PRAIANO", size).save(path, quality=90)
        photos[label] = path
    on, off = Predictor(PredictConfig(text="always")), Predictor(PredictConfig(text="never"))
    out = {}
    for label, path in photos.items():
        times: dict[str, list[float]] = {"text on": [], "text off": []}
        next(on.predict_paths([path])), next(off.predict_paths([path]))  # warm
        for _ in range(rounds):  # interleaved, so a busy moment hits both
            for name, p in (("text on", on), ("text off", off)):
                t0 = time.perf_counter()
                next(p.predict_paths([path]))
                times[name].append(time.perf_counter() - t0)
        out[label] = {k: statistics.median(v) for k, v in times.items()}
        out[label]["ratio"] = out[label]["text on"] / out[label]["text off"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench"))
    ap.add_argument("--readings", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evidence.json")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    setup_logging()
    logging.getLogger("geopin.dataset.cells").setLevel(logging.WARNING)
    manifest_path, man, emb, _ = shared_embedded(args.shared, args.work)
    readings = args.readings
    if readings is None:
        readings = args.work / "readings"
        read_manifest_engine(manifest_path, readings, engine=EngineConfig("local"))
    found = manifest_readings(man["id"].astype(str).tolist(), readings)
    clues, info = manifest_clues(man["id"].astype(str).tolist(), readings, found)
    t0 = time.perf_counter()
    df, weights = run_folds(emb, man, clues, args.folds, args.seed, found)
    draws = BootstrapDraws.of(df.group.to_numpy(), n_boot=1000, seed=args.seed)
    metrics = variant_metrics(df, draws)
    fired = np.array([bool(clues[r]) for r in df.row])
    fired_draws = BootstrapDraws.of(df.group.to_numpy()[fired], n_boot=1000, seed=args.seed) if fired.sum() > 1 else None
    on_fired = variant_metrics(df[fired].reset_index(drop=True), fired_draws) if fired_draws else {}
    doc = {
        "n": int(len(df)), "folds": args.folds, "seconds": round(time.perf_counter() - t0, 1), "evidence": info,
        "sources": source_accuracy(man, clues), "weights": weights, "variants": metrics,
        "variants_on_photos_with_clues": {k: v for k, v in on_fired.items() if k in ("pixels only", "all sources", "all sources, gated")},
        "n_with_clues": int(fired.sum()),
    }
    if "all sources, gated|lat" in df:
        doc["gated_vs_all"] = paired_difference(df, "all sources, gated", "all sources", draws)
    if not args.no_speed:
        with tempfile.TemporaryDirectory() as tmp:
            doc["predict_p50_s"] = predict_speed(Path(tmp))
    write_json(doc, args.out)
    print_tables(doc)
    print(f"\nwrote {args.out}")


def _iv(d: dict, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(scale * d['estimate'])} [{fmt.format(scale * d['lo'])}, {fmt.format(scale * d['hi'])}]"


def print_tables(doc: dict) -> None:
    print(f"\n== evidence on {doc['n']} photos, {doc['folds']} folds by photographer ({doc['n_with_clues']} photos with a clue)")
    print(f"{'source':<14}{'fires on':>10}{'right there':>13}")
    for s, d in doc["sources"].items():
        print(f"{s:<14}{d['share']:>10.1%}{d['accuracy']:>13.1%}")
    print(f"\n{'variant':<24}{'GeoScore':>20}{'vs pixels only':>20}{'<=25 km %':>20}{'vs pixels':>18}{'country %':>20}{'vs pixels':>18}{'changed':>8}")
    for name, m in doc["variants"].items():
        v = m["vs_pixels_only"]
        print(f"{name:<24}{_iv(m['geoscore']):>20}{_iv(v['geoscore']):>20}{_iv(m['within_25km'], 100, '{:.1f}'):>20}"
              f"{_iv(v['within_25km'], 100, '{:.1f}'):>18}{_iv(m['country'], 100, '{:.1f}'):>20}{_iv(v['country'], 100, '{:.1f}'):>18}{m['changed_guesses']:>8}")
    for name in ("pixels only", "all sources", "all sources, gated"):
        e = doc["variants"].get(name, {}).get("ece", {})
        print(f"ECE {name:<14}" + "  ".join(f"{r} km {100 * x['estimate']:.1f} pts (stated {x['stated']:.1%}, observed {x['observed']:.1%})" for r, x in e.items()))
    for name, m in doc["variants_on_photos_with_clues"].items():
        print(f"on photos with a clue, {name:<14} GeoScore {_iv(m['geoscore'])}, vs pixels only {_iv(m['vs_pixels_only']['geoscore'])}")
    print("weights per fold:", [f["weights"] for f in doc["weights"]["folds"]])
    gates = [f["gate"] for f in doc["weights"]["folds"] if "gate" in f]
    if gates:
        print("text gate per fold (held-out photos): " + "; ".join(
            f"reads {g['read_share']:.0%}, text recall {g['text_recall']:.0%}, clue recall "
            + ("-" if g["clue_recall"] is None else f"{g['clue_recall']:.0%} of {g['clue_photos']}") for g in gates))
    if "all sources, gated" in doc["variants"]:
        gated, full = doc["variants"]["all sources, gated"], doc["variants"]["all sources"]
        print(f"gated - all sources GeoScore: {gated['vs_pixels_only']['geoscore']['estimate'] - full['vs_pixels_only']['geoscore']['estimate']:+.1f} "
              f"(paired: gated - all = {doc['gated_vs_all']['geoscore']['estimate']:+.1f} [{doc['gated_vs_all']['geoscore']['lo']:+.1f}, "
              f"{doc['gated_vs_all']['geoscore']['hi']:+.1f}])")
    for label, t in (doc.get("predict_p50_s") or {}).items():
        print(f"predict p50, {label}: text on {t['text on']:.2f} s, off {t['text off']:.2f} s, ratio {t['ratio']:.1f}x")


if __name__ == "__main__":
    main()
