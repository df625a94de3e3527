"""The learning stages at scale: train, model load and predict-on-embeddings at 10 k to 1 M photos.

Synthetic photos stand in for real ones: positions around a few thousand city centres (Zipf-sized,
so adaptive cells split), photographers tied to a home city, and 1280-d float32 embeddings (EfficientNet-
Lite0's width) that are a random projection of a smooth function of the position plus noise. They are
written as the files `geopin train` reads (manifest.parquet, embeddings.npy/.json), and `geopin train`
runs on them as a user would run it, in its own process, so the peak memory is that process's.

    python bench/bench_scale.py --part train --sizes 10000,100000,1000000 [--work /tmp/geopin-scale]
    python bench/bench_scale.py --part gallery [--limit N]   # clustered gallery vs every photo, shared set
    python bench/bench_scale.py --part download|embed|predict [--sizes N]   # local vs Ray on 1 and 2 workers

Prints a table (size, train s, peak GiB, model MB, load s, load peak GiB, predict photos/s) and writes
bench/results/bench_scale_train.json (rows of earlier runs at other sizes are kept). The parts
`download` (URL ingest from a loopback server), `embed` and `predict` (photo files) compare the local
path with the Ray engine on 1 and 2 workers; `--sizes N` sets their number of photos (defaults 2,000 /
600 / 600).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.io import write_json, write_parquet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DIM = 1280  # EfficientNet-Lite0
GIB = 1 << 30
log = logging.getLogger("bench_scale")


# ------------------------------------------------------------------------------------------ data


def synthetic_set(n: int, work: Path, seed: int = 0, n_cities: int = 3000) -> tuple[Path, Path]:
    """Write (or reuse) a synthetic set of n photos: (manifest.parquet, embeddings folder)."""
    from geopin.dataset.manifest import MANIFEST_COLUMNS
    from geopin.features.embed import EMBEDDINGS_JSON, EMBEDDINGS_NPY, ids_digest

    folder = work / f"n{n}"
    manifest, emb_dir = folder / "manifest.parquet", folder / "emb"
    if (emb_dir / EMBEDDINGS_JSON).is_file() and manifest.is_file():
        return manifest, emb_dir
    emb_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # city centres: uniform on the sphere between 55 S and 70 N, sizes Zipf-like (a few huge, many small)
    c_lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-55)), np.sin(np.radians(70)), n_cities)))
    c_lon = rng.uniform(-180, 180, n_cities)
    weight = 1.0 / np.arange(1, n_cities + 1) ** 0.9
    city = rng.choice(n_cities, size=n, p=weight / weight.sum())
    # photographers: about 60 photos each on average, each with a home city (their photos' city)
    per_city = np.bincount(city, minlength=n_cities)
    g_count = np.maximum(1, per_city // 60)
    g_offset = np.r_[0, np.cumsum(g_count)[:-1]]
    group = g_offset[city] + (rng.integers(0, 1 << 30, n) % g_count[city])
    # positions: an exponential distance (mean 8 km) from the centre, a uniform bearing; 5 % spread wide
    r_km = rng.exponential(8.0, n) * np.where(rng.random(n) < 0.05, 25.0, 1.0)
    bearing = rng.uniform(0, 2 * np.pi, n)
    lat = np.clip(c_lat[city] + (r_km / 111.0) * np.cos(bearing), -89.9, 89.9)
    lon = (c_lon[city] + (r_km / (111.0 * np.maximum(np.cos(np.radians(lat)), 0.05))) * np.sin(bearing) + 180) % 360 - 180
    ids = np.char.add("p", np.arange(n).astype(str))
    man = pd.DataFrame(
        {
            "id": ids,
            "path": np.char.add(ids, ".jpg"),
            "lat": lat,
            "lon": lon,
            "group": np.char.add("g", group.astype(str)),
            "width": 640,
            "height": 480,
            "sha256": ids,
            "source_row": np.arange(n),
        }
    )[list(MANIFEST_COLUMNS)]
    # embeddings: random Fourier features of the unit position vector (continental to city scale),
    # projected to 1280 dims, a photographer's own style, plus noise: what a photo says and what it does not
    feats = 384
    scales = np.repeat([1.0, 4.0, 16.0, 64.0, 256.0], feats // 5 + 1)[:feats]
    w = rng.standard_normal((3, feats)) * scales[None, :]
    b = rng.uniform(0, 2 * np.pi, feats)
    proj = (rng.standard_normal((feats, DIM)) / np.sqrt(feats)).astype(np.float32)
    style = rng.standard_normal((int(group.max()) + 1, 16)).astype(np.float32)
    style_proj = (rng.standard_normal((16, DIM)) * 0.3 / 4).astype(np.float32)
    arr = np.lib.format.open_memmap(emb_dir / (EMBEDDINGS_NPY + ".tmp"), mode="w+", dtype=np.float32, shape=(n, DIM))
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        la, lo = np.radians(lat[s:e]), np.radians(lon[s:e])
        xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)
        z = np.cos(xyz @ w + b).astype(np.float32)
        x = z @ proj + style[group[s:e]] @ style_proj + rng.standard_normal((e - s, DIM), dtype=np.float32)
        arr[s:e] = np.maximum(x + 0.5, 0.0)  # non-negative, like pooled ReLU features
    arr.flush()
    del arr
    os.replace(emb_dir / (EMBEDDINGS_NPY + ".tmp"), emb_dir / EMBEDDINGS_NPY)
    meta = {"backbone": "synthetic", "version": "bench_scale-1", "dim": DIM, "n": n, "ids_sha256": ids_digest(man["id"]), "normalised": False}
    write_parquet(man, manifest)
    write_json(meta, emb_dir / EMBEDDINGS_JSON)
    log.info("synthetic set of %d photos (%d cities, %d photographers) in %.0f s", n, n_cities, int(group.max()) + 1, time.perf_counter() - t0)
    return manifest, emb_dir


# ------------------------------------------------------------------------------------------ processes


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """Run a command in its own process: (wall seconds, peak RSS GiB of that process, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss * 1024 / GIB, proc.returncode


def own_peak_gib() -> float:
    """This process's peak resident memory since it started (VmHWM of its address space).

    Not ru_maxrss: Linux carries the parent's high-water mark into a forked child's ru_maxrss across
    exec, so a child of a bench that had generated 1 M embeddings read 5.76 GiB just after loading a
    1.67 GiB model.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # not Linux


def child_load_predict(model_dir: Path, emb_dir: Path, n_query: int, out: Path) -> None:
    """In a fresh process: load the model (time, peak memory), then predict on n_query embeddings."""
    from geopin.features.embed import load_embeddings
    from geopin.locate.model import GeoModel

    t0 = time.perf_counter()
    model = GeoModel.load(model_dir)
    load_s = time.perf_counter() - t0
    load_peak = own_peak_gib()
    emb, _ = load_embeddings(emb_dir)
    rows = np.sort(np.random.default_rng(1).choice(len(emb), size=min(n_query, len(emb)), replace=False))
    q = np.asarray(emb[rows], dtype=np.float32)
    model.predict_embeddings(q[:8])  # warm caches (fine cells, score matrix)
    t0 = time.perf_counter()
    model.predict_embeddings(q)
    pred_s = time.perf_counter() - t0
    res = {
        "load_s": round(load_s, 2),
        "load_peak_gib": round(load_peak, 2),
        "predict_n": len(q),
        "predict_s": round(pred_s, 1),
        "predict_photos_per_s": round(len(q) / pred_s, 1),
        "predict_peak_gib": round(own_peak_gib(), 2),
        "gallery_n": len(model.heads.gallery),
        "gallery_index": type(model.heads.gallery.index).__name__,
        "classes": [int(c) for c in model.heads.classifier.n_classes],
    }
    write_json(res, out)


# ------------------------------------------------------------------------------------------ parts


def part_train(args) -> list[dict]:
    """`geopin train` at each size, then the model's load and predict-on-embeddings, each in its own process."""
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        # in its own process: a forked child's ru_maxrss starts at its parent's peak, so a parent that had
        # generated 1 M embeddings (5 GiB) would be counted in every peak measured below
        gen = [sys.executable, __file__, "--child-generate", str(n), str(args.work), str(args.seed)]
        if subprocess.run(gen).returncode != 0:
            raise SystemExit(f"generating the synthetic set of {n} photos failed: {' '.join(gen)}")
        manifest, emb_dir = synthetic_set(n, args.work, args.seed)  # reuses what the child wrote
        gen_s = time.perf_counter() - t0
        model_dir = args.work / f"n{n}" / "model"
        cmd = [sys.executable, "-m", "geopin", "train", str(manifest), "--embeddings", str(emb_dir), "--out", str(model_dir), "--json"]
        log.info("size %d: %s", n, " ".join(cmd))
        train_s, train_peak, code = run_measured(cmd)
        row = {"size": n, "generate_s": round(gen_s, 1), "train_s": round(train_s, 1), "train_peak_gib": round(train_peak, 2), "train_exit": code}
        if code == 0:
            row["model_mb"] = round(sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6, 1)
            doc = json.loads((model_dir / "model.json").read_text())
            row["fit_report"] = {k: doc["meta"]["fit_report"].get(k) for k in ("loglik", "loglik_prior_only", "n")}
            row["params"] = doc["params"]
            out = args.work / f"n{n}" / "load_predict.json"
            cmd = [sys.executable, __file__, "--child-load-predict", str(model_dir), str(emb_dir), str(args.queries), str(out)]
            lp_s, lp_peak, lp_code = run_measured(cmd)
            if lp_code == 0:
                row.update(json.loads(out.read_text()))
            row["load_predict_exit"] = lp_code
        rows.append(row)
        _save(args.out, rows, args)
        print(table(rows), flush=True)
    return rows


def part_gallery(args) -> list[dict]:
    """Clustered gallery (k-means representatives per finest cell) against every photo, on the shared set.

    The same by-photographer and random folds as bench_accuracy.py, the same embeddings; the paired
    GeoScore difference per photo is summarised with its standard error over photographers.
    """
    from geopin.dataset.ingest import IngestConfig, ingest
    from geopin.dataset.manifest import read_manifest
    from geopin.evaluation.crossval import EvalConfig, evaluate_cv
    from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings
    from geopin.geo import haversine_km
    from geopin.locate.train import TrainConfig
    from geopin.metrics import geoscore

    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"skipped: {labels} not found (the gallery part needs the shared Im2GPS3k photos)")
    work = args.work / "shared"
    summary = ingest(labels, work / "dataset", IngestConfig(group_col="author"))
    man = read_manifest(summary.manifest_path)
    if args.limit:
        pick = np.sort(np.random.default_rng(args.seed).permutation(len(man))[: args.limit])
        man = man.iloc[pick].reset_index(drop=True)
        sub = work / f"subset_{args.limit}" / "manifest.parquet"
        write_parquet(man, sub)
        manifest_path, emb_dir = sub, sub.parent / "emb"
    else:
        manifest_path, emb_dir = summary.manifest_path, work / "emb"
    embed_manifest(manifest_path, emb_dir, EmbedConfig())
    emb, _ = load_embeddings(emb_dir, man)
    ok = np.isfinite(emb).all(axis=1)
    man, emb = man[ok].reset_index(drop=True), np.asarray(emb[ok])
    lat, lon, groups = man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy()
    reports = {}
    for per_cell in [0] + args.per_cell:
        t0 = time.perf_counter()
        cfg = EvalConfig(folds=5, seed=args.seed, train=TrainConfig(gallery_per_cell=per_cell), n_boot=200)
        reports[per_cell] = (evaluate_cv(emb, lat, lon, groups, cfg), time.perf_counter() - t0)
        log.info("gallery_per_cell=%d: %.0f s", per_cell, time.perf_counter() - t0)
    rows = []
    for per_cell, (rep, secs) in reports.items():
        for sc, df in rep["per_photo"].items():
            km = haversine_km(df.model_lat, df.model_lon, df.true_lat, df.true_lon)
            base = reports[0][0]["per_photo"][sc]
            diff = geoscore(km) - geoscore(haversine_km(base.model_lat, base.model_lon, base.true_lat, base.true_lon))
            g = pd.DataFrame({"d": diff, "g": groups[df.row.to_numpy()]}).groupby("g")["d"].agg(["sum", "count"])
            se = float(np.sqrt(((g["sum"] - diff.mean() * g["count"]) ** 2).sum()) / len(diff))
            m = rep["scenarios"][sc]["methods"]
            rows.append(
                {
                    "scenario": sc,
                    "gallery_per_cell": per_cell,
                    "n": len(df),
                    "geoscore": round(m["model"]["geoscore"], 1),
                    "acc_25km": round(float(np.mean(km <= 25)), 4),
                    "acc_750km": round(float(np.mean(km <= 750)), 4),
                    "nn_geoscore": round(m["nearest_neighbour"]["geoscore"], 1) if "nearest_neighbour" in m else None,
                    "diff_vs_every_photo": round(float(diff.mean()), 1),
                    "diff_se_photographers": round(se, 1),
                    "w_knn": round(rep["scenarios"][sc]["mix_weights"]["w_knn"], 3),
                    "seconds": round(secs, 1),
                }
            )
    write_json({"bench": "bench_scale --part gallery", "limit": args.limit, "rows": rows}, args.out)
    print(pd.DataFrame(rows).to_string(index=False))
    return rows


def _with_cluster(fn):
    """Start the 2-CPU Ray cluster once, as `ray start` runs once on a real cluster; its start-up is reported apart."""
    from geopin.scale.engine import EngineConfig, ray_shutdown, start_ray

    t0 = time.perf_counter()
    start_ray(EngineConfig("ray", workers=2))  # loopback only, as the engine's own throwaway cluster
    start_s = time.perf_counter() - t0
    try:
        rows = fn()
    finally:
        ray_shutdown()
    for r in rows:
        r["cluster_start_s"] = round(start_s, 1)
    return rows


def part_download(args) -> list[dict]:
    """Download + check photos from the loopback server: ingest's local path vs the engine on 1 and 2 workers."""
    import shutil
    import tempfile

    from geopin.dataset.ingest import IngestConfig, ingest
    from geopin.scale.engine import EngineConfig
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic photos: a test helper
    from synthetic import PhotoServer, SyntheticConfig, synthetic_photos

    n = args.sizes[0] if args.sizes != [10000, 100000, 1000000] else 2000
    positions, photos = synthetic_photos(SyntheticConfig(n=n, seed=args.seed))
    rows: list[dict] = []
    with PhotoServer(photos) as server, tempfile.TemporaryDirectory(prefix="bench_scale_dl_") as tmp:
        table = pd.DataFrame({"image": [f"{server.url}/p/{name}" for name in positions["name"]],
                              "lat": positions["lat"], "lon": positions["lon"]})
        table.to_csv(Path(tmp) / "urls.csv", index=False)

        def run(label: str, workers: int, engine) -> dict:
            out = Path(tmp) / label
            t0 = time.perf_counter()
            summary = ingest(Path(tmp) / "urls.csv", out, IngestConfig(engine=engine))
            wall = time.perf_counter() - t0
            shutil.rmtree(out, ignore_errors=True)
            row = {"task": "download+check", "path": label.split("-")[0], "workers": workers, "photos": n,
                   "kept": summary.n_kept, "seconds": round(wall, 2), "photos_per_s": round(n / wall, 1)}
            if summary.engine and "start_seconds" in summary.engine:  # starting the workers: counted in seconds
                row["workers_start_s"] = summary.engine["start_seconds"]
            return row

        rows.append(run("local", os.cpu_count() or 1, None))
        rows += _with_cluster(lambda: [run(f"ray-{w}", w, EngineConfig("ray", workers=w, partition_size=128))
                                       for w in (1, 2)])
    return _engine_rows(rows, args)


def _engine_part(task: str, args) -> list[dict]:
    """embed or predict of real photos (the shared set when present): local vs the engine on 1 and 2 workers."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_engine  # the same measurement bench_engine.py makes; one implementation

    n = args.sizes[0] if args.sizes != [10000, 100000, 1000000] else 600
    with tempfile.TemporaryDirectory(prefix=f"bench_scale_{task}_") as tmp:
        df, source = bench_engine._manifest(n, Path(tmp))
        if task == "embed":
            rows = _with_cluster(lambda: bench_engine.bench_embed(df, Path(tmp), 32))
        else:
            rows = _with_cluster(lambda: bench_engine.bench_predict(df["path"].tolist(), Path(tmp), 32))
    for r in rows:
        r.update(photos=len(df), source=source)
    return _engine_rows(rows, args)


def part_embed(args) -> list[dict]:
    """Photos/s of embed: the local path vs the Ray engine on 1 and 2 workers."""
    return _engine_part("embed", args)


def part_predict(args) -> list[dict]:
    """Photos/s of predict from photo files: the local path vs the Ray engine on 1 and 2 workers."""
    return _engine_part("predict", args)


def _engine_rows(rows: list[dict], args) -> list[dict]:
    local = next(r for r in rows if r["path"] == "local")
    for r in rows:
        r["vs_local"] = round(r["photos_per_s"] / local["photos_per_s"], 2)
    cols = [c for c in ("task", "path", "workers", "photos", "seconds", "photos_per_s", "vs_local", "cluster_start_s")
            if any(c in r for r in rows)]
    print(pd.DataFrame(rows)[cols].to_string(index=False))
    write_json({"bench": f"bench_scale --part {args.part}", "cpus": os.cpu_count(), "rows": rows}, args.out)
    return rows


PARTS = {"train": part_train, "download": part_download, "embed": part_embed, "predict": part_predict, "gallery": part_gallery}


# ------------------------------------------------------------------------------------------ output

COLUMNS = (
    ("size", "size", "{:,}"),
    ("train s", "train_s", "{:.0f}"),
    ("peak GiB", "train_peak_gib", "{:.2f}"),
    ("model MB", "model_mb", "{:.0f}"),
    ("load s", "load_s", "{:.2f}"),
    ("load peak GiB", "load_peak_gib", "{:.2f}"),
    ("predict photos/s", "predict_photos_per_s", "{:.0f}"),
)


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in sorted(rows, key=lambda r: r["size"]):
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(path: Path, rows: list[dict], args) -> None:
    """Merge these rows into the results file by size: a run at one size keeps the others' rows."""
    old = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    by_size = {r["size"]: r for r in old}
    by_size.update({r["size"]: r for r in rows})
    doc = {
        "bench": "bench_scale --part train",
        "dim": DIM,
        "cpus": os.cpu_count(),
        "queries": args.queries,
        "rows": [by_size[k] for k in sorted(by_size)],
    }
    write_json(doc, path)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-generate":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        synthetic_set(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) == 6 and sys.argv[1] == "--child-load-predict":
        logging.basicConfig(level=logging.WARNING)
        child_load_predict(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS), default="train")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated numbers of photos.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-scale"), help="Where the synthetic sets and models go.")
    ap.add_argument("--queries", type=int, default=10_000, help="Embeddings per predict batch.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="--part gallery: a seeded subset of the shared photos.")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k", help="--part gallery: the shared photos.")
    ap.add_argument("--per-cell", default="8", help="--part gallery: representatives per finest cell to compare (comma-separated).")
    ap.add_argument("--out", type=Path, default=None, help="Results JSON (default: bench/results/bench_scale_<part>.json).")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.per_cell = [int(s) for s in args.per_cell.split(",") if s.strip()]
    args.out = args.out or RESULTS / f"bench_scale_{args.part}.json"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    rows = PARTS[args.part](args)
    if args.part == "train":
        print(table(rows))


if __name__ == "__main__":
    main()
