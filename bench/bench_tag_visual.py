"""The visual part of `geopin tag` on real photos: each photographer of the shared set as a photo library.

    python bench/bench_tag_visual.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-bench-tag-visual]
                                     [--min-photos 20] [--folds 5] [--seeds 1] [--sizes 2,3,5,10,20]
                                     [--n-boot 1000] [--threads 2] [--workers 2] [--retrain] [--limit-authors N]

The shared photos carry no times, so each photographer with at least --min-photos photos (43 of 173) is a
library: their photos are split at random in two halves; one half keeps its GPS (the references), the other
is hidden and tagged back by geopin.library.visual.visual_candidates; then the halves swap (per seed).

The bundled model was trained on every shared photo, so it is simulated without leakage: five models trained
like it (geopin's train_model, the bundled model's TrainConfig, pixels only) on the OTHER photographers
(folds by photographer, as evaluate_cv makes them); a library is answered by the model of its fold. Fold
models are saved in WORK and reused while the photos, folds and config are the same (--retrain: train again).

Answers compared on the same hidden photos:
  prior          the fold model's constant answer (the best single point for the other photographers)
  library prior  the references' own best constant point (where this person mostly shoots)
  bundled        the bundled-like model alone
  library        a model trained by geopin's train on the references alone (random inner folds)
  references     the bundled-like model with the references added to its retrieval gallery
  auto           what VisualConfig() picks for the number of references (its default threshold)
Reported: <=1/25/200 km and GeoScore with 95 % bootstrap intervals over photographers, paired differences
against the bundled-like model; the same per number of references (references subsampled to --sizes, first
half only) to find the threshold; stated confidence against the observed hit rate, by stated radius and by
confidence bin, with ECE. Prints the tables; writes bench/results/tag_visual.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from shared_photos import shared_embedded

from geopin.dataset.splits import group_kfold
from geopin.geo import haversine_km
from geopin.io import write_json
from geopin.library.photos import LibraryPhoto
from geopin.library.visual import VisualConfig, choose, visual_candidates
from geopin.locate.model import GeoModel
from geopin.locate.posterior import CONFIDENCE_KM, best_constant
from geopin.locate.train import TrainConfig, config_dict, train_model
from geopin.log import setup_logging
from geopin.metrics import (
    BootstrapDraws,
    bootstrap_ece,
    bootstrap_mean,
    geoscore,
    reliability_table,
)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_tag_visual")

MODELS = ("bundled", "library", "references")  # answered by visual_candidates
VARIANTS = ("prior", "library prior") + MODELS + ("auto",)
KM = (1, 25, 200)


# ------------------------------------------------------------------------------------------ fold models


def fold_models(emb, man, fold_of, folds: int, work: Path, retrain: bool) -> tuple[list[GeoModel], dict]:
    """Per author fold, a model trained like the bundled one on the other photographers (saved in WORK, reused)."""
    cfg = TrainConfig()  # the bundled model's (scripts/build_default_model.py): folds by photographer
    key = hashlib.sha256(json.dumps({"ids": man.id.astype(str).tolist(), "folds": fold_of.tolist(), "cfg": config_dict(cfg)},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    lat, lon, groups = man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy()
    models, info = [], {"key": key, "reused": [], "seconds": {}}
    for f in range(folds):
        path = work / "fold_models" / f"{key}_fold{f}"
        if (path / "model.json").is_file() and not retrain:
            models.append(GeoModel.load(path))
            info["reused"].append(f)
            continue
        tr = np.flatnonzero(fold_of != f)
        t0 = time.perf_counter()
        model = train_model(emb[tr], lat[tr], lon[tr], groups[tr], cfg, meta={"bench": "tag_visual", "fold": f})
        info["seconds"][f] = round(time.perf_counter() - t0, 1)
        model.save(path)
        models.append(model)
        log.info("fold %d/%d: bundled-like model on %d photos of the other photographers (%.0f s)", f + 1, folds, len(tr), info["seconds"][f])
    return models, info


# ------------------------------------------------------------------------------------------ libraries


def as_photos(man: pd.DataFrame, rows: np.ndarray, hidden: set[int]) -> list[LibraryPhoto]:
    """The library's photos as the scanner would describe them: hidden ones lose their GPS."""
    return [LibraryPhoto(path=str(man.path[r]), rel=str(man.id[r]), sha256=str(man.sha256[r]), camera="",
                         lat=None if r in hidden else float(man.lat[r]), lon=None if r in hidden else float(man.lon[r]),
                         gps_from="" if r in hidden else "exif") for r in rows]


def tag_library(man, emb, targets: np.ndarray, refs: np.ndarray, fold_model: GeoModel, cfg: VisualConfig) -> tuple[dict, dict]:
    """Each model's candidates for the hidden photos of one library, and the summaries."""
    rows = np.r_[targets, refs]
    photos = as_photos(man, rows, set(targets.tolist()))
    t_idx, r_idx = list(range(len(targets))), list(range(len(targets), len(rows)))
    out, summaries = {}, {}
    for kind in MODELS:
        cands, summary = visual_candidates(photos, emb[rows], t_idx, r_idx, replace(cfg, strategy=kind), model=fold_model)
        out[kind] = [cands[photos[i].rel] for i in t_idx]
        summaries[kind] = summary
    return out, summaries


_STATE: dict = {}  # what the library workers read: set before the pool forks, so it is shared, not pickled


def _library_job(job: tuple) -> tuple[list[pd.DataFrame], list[dict]]:
    """One library (author, seed, half): the hidden half tagged back from the other, at each reference count."""
    import torch

    torch.set_num_threads(1)
    a_i, author, seed, h = job
    man, emb, models, fold_of, sizes, cfg = (_STATE[k] for k in ("man", "emb", "models", "fold_of", "sizes", "cfg"))
    lat, lon = man.lat.to_numpy(), man.lon.to_numpy()
    mine = np.flatnonzero(man.group.to_numpy() == author)
    model = models[int(fold_of[mine[0]])]
    perm = np.random.default_rng([seed, a_i]).permutation(mine)
    halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
    targets, all_refs = halves[h], halves[1 - h]
    counts = sorted({m for m in sizes if m < len(all_refs)} | {len(all_refs)}) if h == 0 else [len(all_refs)]
    rows, notes = [], []
    for m in counts:
        refs = all_refs[:m]  # a random subset: the permutation is random
        t0 = time.perf_counter()
        cands, summaries = tag_library(man, emb, targets, refs, model, cfg)
        library_model = summaries["library"]["model"]
        if library_model != "library":
            notes.append({"author": author, "references": int(m), "library": summaries["library"]["why"]})
        prior = model.heads.places.best_constant
        lib_prior = best_constant(lat[refs], lon[refs])
        df = pd.DataFrame({"row": targets, "author": author, "seed": seed, "half": h, "references": m,
                           "full": m == len(all_refs), "true_lat": lat[targets], "true_lon": lon[targets],
                           "library_fell_back": library_model != "library"})
        df["prior|lat"], df["prior|lon"] = prior
        df["library prior|lat"], df["library prior|lon"] = lib_prior
        for kind, cs in cands.items():
            df[f"{kind}|lat"] = [c.lat for c in cs]
            df[f"{kind}|lon"] = [c.lon for c in cs]
            df[f"{kind}|radius"] = [c.radius_km for c in cs]
            df[f"{kind}|conf"] = [c.confidence for c in cs]
            for r in CONFIDENCE_KM:
                df[f"{kind}|within_{int(r)}"] = [c.detail["within_km"][str(int(r))] for c in cs]
        auto = choose(m, cfg)[0]
        for col in [c for c in df.columns if c.startswith(f"{auto}|")]:
            df["auto|" + col.split("|", 1)[1]] = df[col]
        df["auto_model"] = auto
        rows.append(df)
        log.info("%s seed %d half %d: %d hidden, %d references (%.1f s)", author, seed, h, len(targets), m, time.perf_counter() - t0)
    return rows, notes


def run(man, emb, models, fold_of, authors, seeds: int, sizes: list[int], cfg: VisualConfig, workers: int) -> tuple[pd.DataFrame, list]:
    """One row per (hidden photo, references used): the truth and every variant's answer. Libraries run in
    `workers` processes of one thread each (training a library model is many small steps: threads idle)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    _STATE.update(man=man, emb=emb, models=models, fold_of=fold_of, sizes=sizes, cfg=cfg)
    jobs = [(a_i, author, seed, h) for a_i, author in enumerate(authors) for seed in range(seeds) for h in (0, 1)]
    jobs.sort(key=lambda j: -(j[3] == 0))  # the first halves (many reference counts) first: the slowest jobs
    rows, notes = [], []
    if workers <= 1:
        results = map(_library_job, jobs)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
        results = pool.map(_library_job, jobs)
    for k, (r, n) in enumerate(results):
        rows += r
        notes += n
        if (k + 1) % 10 == 0:
            log.info("%d/%d libraries tagged", k + 1, len(jobs))
    if workers > 1:
        pool.shutdown()
    return pd.concat(rows, ignore_index=True).sort_values(["author", "seed", "half", "references", "row"], kind="stable").reset_index(drop=True), notes


# ------------------------------------------------------------------------------------------ metrics


def _km(df: pd.DataFrame, name: str) -> np.ndarray:
    return haversine_km(df[f"{name}|lat"].to_numpy(), df[f"{name}|lon"].to_numpy(), df.true_lat.to_numpy(), df.true_lon.to_numpy())


def accuracy(df: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Per variant: <=1/25/200 km and GeoScore with intervals over photographers, and paired differences vs bundled."""
    draws = BootstrapDraws.of(df.author.to_numpy(), n_boot=n_boot, seed=seed)
    vals = {}
    for name in VARIANTS:
        km = _km(df, name)
        vals[name] = np.stack([km <= k for k in KM] + [geoscore(km)], axis=1).astype(float)
    out = {}
    for name in VARIANTS:
        iv = bootstrap_mean(vals[name], draws)
        diff = bootstrap_mean(vals[name] - vals["bundled"], draws)
        keys = [f"within_{k}km" for k in KM] + ["geoscore"]
        out[name] = {k: v.to_dict() for k, v in zip(keys, iv)}
        out[name]["vs_bundled"] = {k: v.to_dict() for k, v in zip(keys, diff)}
    return {"n": len(df), "photographers": int(df.author.nunique()), "variants": out}


def by_references(df: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    """The first half's libraries per number of references: GeoScore of each model, library minus the others."""
    out = []
    first = df[df.half == 0]
    for m in sorted(first.references.unique()):
        sub = first[first.references == m].reset_index(drop=True)
        if sub.author.nunique() < 5:  # a size only the largest libraries reach says little
            continue
        draws = BootstrapDraws.of(sub.author.to_numpy(), n_boot=n_boot, seed=seed)
        g = {name: geoscore(_km(sub, name)) for name in ("prior", "library prior") + MODELS}
        row = {"n_references": int(m), "photographers": int(sub.author.nunique()), "n": len(sub),
               "library_fell_back": int(sub.groupby("author").library_fell_back.first().sum())}
        for name, v in g.items():
            row[name] = bootstrap_mean(v, draws).to_dict()
        row["library - references"] = bootstrap_mean(g["library"] - g["references"], draws).to_dict()
        row["library - bundled"] = bootstrap_mean(g["library"] - g["bundled"], draws).to_dict()
        row["references - bundled"] = bootstrap_mean(g["references"] - g["bundled"], draws).to_dict()
        for name in ("library", "references"):  # is the candidate's confidence still honest at this size?
            hit = _km(sub, name) <= sub[f"{name}|radius"].to_numpy()
            row[f"{name} stated"], row[f"{name} observed"] = float(sub[f"{name}|conf"].mean()), float(hit.mean())
        out.append(row)
    return out


def honesty(df: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Stated confidence against the observed hit rate: by stated radius, by confidence bin, and per radius's mass."""
    draws = BootstrapDraws.of(df.author.to_numpy(), n_boot=n_boot, seed=seed)
    out = {}
    for name in MODELS + ("auto",):
        km = _km(df, name)
        radius, conf = df[f"{name}|radius"].to_numpy(), df[f"{name}|conf"].to_numpy()
        hit = km <= radius
        by_radius = []
        for r in CONFIDENCE_KM:
            sel = radius == r
            if sel.any():
                by_radius.append({"radius_km": r, "n": int(sel.sum()), "stated": float(conf[sel].mean()), "observed": float(hit[sel].mean())})
        table = reliability_table(conf, hit, 5)
        bins = [{"lo": float(t.lo), "hi": float(t.hi), "n": int(t.n), "stated": float(t.mean_prob), "observed": float(t.hit_rate)}
                for t in table.itertuples() if t.n > 0]
        per_mass = {}
        for r in CONFIDENCE_KM:
            p = df[f"{name}|within_{int(r)}"].to_numpy()
            e = bootstrap_ece(p, km <= r, draws)
            per_mass[str(int(r))] = {**e.to_dict(), "stated": float(p.mean()), "observed": float((km <= r).mean())}
        out[name] = {"stated": float(conf.mean()), "observed": float(hit.mean()), "ece": bootstrap_ece(conf, hit, draws).to_dict(),
                     "by_radius": by_radius, "by_bin": bins, "masses": per_mass}
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench-tag-visual"))
    ap.add_argument("--min-photos", type=int, default=20, help="photos a photographer needs to be a library")
    ap.add_argument("--folds", type=int, default=5, help="author folds of the bundled-like models")
    ap.add_argument("--seeds", type=int, default=1, help="random half splits per library (each tags both halves)")
    ap.add_argument("--sizes", default="2,3,5,10,20", help="reference counts of the threshold curve (first half only)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the fold models' training")
    ap.add_argument("--workers", type=int, default=2, help="processes tagging libraries (one thread each)")
    ap.add_argument("--retrain", action="store_true", help="train the fold models again instead of reusing WORK's")
    ap.add_argument("--limit-authors", type=int, default=None, help="a quick check on the first N libraries (not the benchmark)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tag_visual.json")
    args = ap.parse_args()
    setup_logging()
    for name in ("geopin.dataset.cells", "geopin.locate.train", "geopin.locate.posterior", "geopin.library.visual"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    _, man, emb, _ = shared_embedded(args.shared, args.work)
    groups = man.group.to_numpy()
    fold_of = group_kfold(groups, k=args.folds, seed=args.seed)
    counts = man.group.value_counts()
    authors = sorted(counts[counts >= args.min_photos].index.tolist(), key=lambda a: (-counts[a], a))
    if args.limit_authors:
        authors = authors[: args.limit_authors]
        log.warning("--limit-authors %d: a quick check, not the benchmark", args.limit_authors)
    t0 = time.perf_counter()
    models, fold_info = fold_models(emb, man, fold_of, args.folds, args.work, args.retrain)
    fold_info["total_seconds"] = round(time.perf_counter() - t0, 1)
    cfg = VisualConfig()
    t0 = time.perf_counter()
    df, notes = run(man, emb, models, fold_of, authors, args.seeds, [int(s) for s in args.sizes.split(",") if s], cfg, args.workers)
    df.to_parquet(args.work / "tag_visual_rows.parquet")  # every answer, to read the tables again without rerunning
    tag_seconds = time.perf_counter() - t0
    full = df[df.full].reset_index(drop=True)
    doc = {
        "libraries": len(authors), "photos": int(man.group.isin(authors).sum()), "seeds": args.seeds, "folds": args.folds,
        "min_photos": args.min_photos, "visual_config": {"min_references": cfg.min_references, "min_mass": cfg.min_mass},
        "references_per_library": {"min": int(full.groupby(["author", "seed", "half"]).references.first().min()),
                                   "median": float(full.groupby(["author", "seed", "half"]).references.first().median()),
                                   "max": int(full.groupby(["author", "seed", "half"]).references.first().max())},
        "auto_models": full.auto_model.value_counts().to_dict(),
        "accuracy": accuracy(full, args.n_boot, args.seed),
        "by_references": by_references(df, args.n_boot, args.seed),
        "honesty": honesty(full, args.n_boot, args.seed),
        "library_fallbacks": notes,
        "fold_models": fold_info,
        "seconds": {"tagging": round(tag_seconds, 1), "total": round(time.perf_counter() - t_start, 1)},
        "limit_authors": args.limit_authors,
    }
    out = args.out if not args.limit_authors else args.work / "results_limited" / args.out.name
    write_json(doc, out)
    print_tables(doc)
    print(f"\nwrote {out}")


def _iv(d: dict, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(scale * d['estimate'])} [{fmt.format(scale * d['lo'])}, {fmt.format(scale * d['hi'])}]"


def print_tables(doc: dict) -> None:
    acc = doc["accuracy"]
    r = doc["references_per_library"]
    print(f"\n== {doc['libraries']} photographers as libraries, {acc['n']} hidden photos tagged back "
          f"({r['min']}-{r['max']} references, median {r['median']:.0f}); auto used {doc['auto_models']}")
    head = f"{'answer':<15}" + "".join(f"{f'<={k} km %':>20}" for k in KM) + f"{'GeoScore':>20}{'GeoScore vs bundled':>22}{'<=25 km vs bundled':>20}"
    print(head)
    for name, m in acc["variants"].items():
        cells = "".join(f"{_iv(m[f'within_{k}km'], 100, '{:.1f}'):>20}" for k in KM)
        v = m["vs_bundled"]
        print(f"{name:<15}{cells}{_iv(m['geoscore']):>20}{_iv(v['geoscore']):>22}{_iv(v['within_25km'], 100, '{:.1f}'):>20}")
    print("\n== GeoScore by number of references (first halves; references subsampled)")
    print(f"{'refs':>5}{'libs':>5}{'prior':>8}{'lib prior':>10}{'bundled':>8}{'library':>8}{'refs':>8}"
          f"{'library - refs':>22}{'library - bundled':>22}{'refs - bundled':>22}{'fell back':>10}{'library stated/obs':>20}{'refs stated/obs':>17}")
    for row in doc["by_references"]:
        print(f"{row['n_references']:>5}{row['photographers']:>5}{row['prior']['estimate']:>8.0f}{row['library prior']['estimate']:>10.0f}"
              f"{row['bundled']['estimate']:>8.0f}{row['library']['estimate']:>8.0f}{row['references']['estimate']:>8.0f}"
              f"{_iv(row['library - references']):>22}{_iv(row['library - bundled']):>22}{_iv(row['references - bundled']):>22}"
              f"{row['library_fell_back']:>10}{row['library stated']:>13.0%}/{row['library observed']:<6.0%}"
              f"{row['references stated']:>10.0%}/{row['references observed']:<6.0%}")
    print("\n== stated confidence against observed (the candidate's radius and confidence)")
    for name, h in doc["honesty"].items():
        radii = "  ".join(f"{int(b['radius_km'])} km: n={b['n']} stated {b['stated']:.0%} observed {b['observed']:.0%}" for b in h["by_radius"])
        print(f"{name:<11} stated {h['stated']:.1%} observed {h['observed']:.1%}  ECE {_iv(h['ece'], 100, '{:.1f}')} pts | {radii}")
        bins = "  ".join(f"[{b['lo']:.1f},{b['hi']:.1f}) n={b['n']} {b['stated']:.0%}->{b['observed']:.0%}" for b in h["by_bin"])
        print(f"{'':<11} by bin: {bins}")
        masses = "  ".join(f"{k} km {v['stated']:.0%}->{v['observed']:.0%} (ECE {100 * v['estimate']:.1f})" for k, v in h["masses"].items())
        print(f"{'':<11} masses: {masses}")
    s = doc["seconds"]
    print(f"\nfold models: reused {doc['fold_models']['reused']}, trained in {doc['fold_models']['seconds']} s; "
          f"tagging {s['tagging']:.0f} s; total {s['total']:.0f} s")


if __name__ == "__main__":
    main()
