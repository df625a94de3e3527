"""Does the Ray engine keep up with the local path? photos/s of embed and predict, local vs 1 and 2 Ray workers.

    python bench/bench_engine.py                    # first 600 shared Im2GPS3k photos (generated ones if absent)
    python bench/bench_engine.py --n 300 --predict-n 150 --partition-size 64

The cluster (2 CPUs) is started once and its start-up time reported apart, as on a real cluster where
`ray start` runs once; each engine run includes starting its workers and loading the model in each.
Target (issue 15): engine on 2 workers >= 0.8 x the local path, on this 2-core machine. Photos are read
in place, never copied. Prints a table and writes bench/results/engine.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as `geopin embed` does

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", HERE.parent.parent / "shared" / "data" / "im2gps3k"))
log = logging.getLogger("bench_engine")


def _manifest(n: int, work: Path):
    """The first n shared photos, or n generated ones (three shapes) when the shared folder is absent."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    labels = SHARED / "labels.csv"
    if labels.exists():
        df = pd.read_csv(labels).head(n)
        return pd.DataFrame({"id": df["image"], "path": [str(SHARED / p) for p in df["image"]]}), "im2gps3k"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        size = [(640, 480), (480, 640), (500, 500)][i % 3]
        path = work / f"g{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize(size, Image.BILINEAR).save(path, quality=90)
        rows.append({"id": path.stem, "path": str(path)})
    return pd.DataFrame(rows), "generated"


def bench_embed(df, work: Path, partition_size: int) -> list[dict]:
    import numpy as np

    from geopin.features.embed import (
        EmbedConfig,
        embed_manifest,
        embed_manifest_engine,
        load_embeddings,
    )
    from geopin.scale.engine import EngineConfig

    rows = []
    t0 = time.perf_counter()
    local = embed_manifest(df, work / "emb-local", EmbedConfig(use_cache=False))
    wall = time.perf_counter() - t0
    rows.append({"task": "embed", "path": "local", "workers": 1, "seconds": wall, "photos_per_s": len(df) / wall,
                 "steady_photos_per_s": len(df) / local.embed_seconds})
    ref, _ = load_embeddings(work / "emb-local")
    for workers in (1, 2):
        out = work / f"emb-ray{workers}"
        t0 = time.perf_counter()
        summary = embed_manifest_engine(df, out, EmbedConfig(),
                                        EngineConfig("ray", workers=workers, partition_size=partition_size))
        wall = time.perf_counter() - t0
        emb, _ = load_embeddings(out)
        diff = float(np.nanmax(np.abs(np.asarray(emb) - np.asarray(ref)))) if len(df) else 0.0
        report = summary.engine_report
        rows.append({"task": "embed", "path": "ray", "workers": workers, "seconds": wall,
                     "photos_per_s": len(df) / wall, "worker_start_s": report.start_seconds,
                     "steady_photos_per_s": len(df) / (report.seconds - report.start_seconds),
                     "max_abs_diff_vs_local": diff, "same_failures": summary.n_failed})
    return rows


def bench_predict(paths: list[str], work: Path, partition_size: int) -> list[dict]:
    from geopin.locate.predict import PredictConfig, Predictor, predict_engine
    from geopin.scale.engine import EngineConfig

    rows = []
    t0 = time.perf_counter()
    predictor = Predictor(PredictConfig())
    t1 = time.perf_counter()
    local = list(predictor.predict_paths(paths))
    wall = time.perf_counter() - t0
    rows.append({"task": "predict", "path": "local", "workers": 1, "seconds": wall, "photos_per_s": len(paths) / wall,
                 "steady_photos_per_s": len(paths) / (time.perf_counter() - t1)})
    for workers in (1, 2):
        t0 = time.perf_counter()
        results, report = predict_engine(paths, work / f"pred-ray{workers}", PredictConfig(),
                                         EngineConfig("ray", workers=workers, partition_size=partition_size))
        wall = time.perf_counter() - t0
        same = [r.get("cell") for r in results] == [r.get("cell") for r in local]
        rows.append({"task": "predict", "path": "ray", "workers": workers, "seconds": wall,
                     "photos_per_s": len(paths) / wall, "worker_start_s": report.start_seconds,
                     "steady_photos_per_s": len(paths) / (report.seconds - report.start_seconds), "same_cells_as_local": same})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="photos to embed")
    ap.add_argument("--predict-n", type=int, default=300, help="photos to predict")
    ap.add_argument("--partition-size", type=int, default=32, help="32: 19 partitions of 600 photos, so the last one leaves a worker idle only briefly")
    ap.add_argument("--tasks", default="embed,predict", help="comma-separated: embed, predict")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "engine.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    import ray

    from geopin.io import write_json
    from geopin.scale.engine import EngineConfig, ray_shutdown, start_ray

    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        work = Path(tmp)
        df, source = _manifest(args.n, work)
        t0 = time.perf_counter()
        start_ray(EngineConfig("ray", workers=2))  # loopback only, as the engine's own throwaway cluster
        cluster_start = time.perf_counter() - t0
        try:
            rows = bench_embed(df, work, args.partition_size) if "embed" in args.tasks else []
            if "predict" in args.tasks:
                rows += bench_predict(df["path"].tolist()[: args.predict_n], work, args.partition_size)
        finally:
            ray_shutdown()
    ratios = {}
    for task in [t for t in ("embed", "predict") if any(r["task"] == t for r in rows)]:
        local = next(r for r in rows if r["task"] == task and r["path"] == "local")
        for r in rows:
            if r["task"] == task:
                r["vs_local"] = r["photos_per_s"] / local["photos_per_s"]
                r["steady_vs_local"] = r["steady_photos_per_s"] / local["steady_photos_per_s"]
        two = next(r for r in rows if r["task"] == task and r["workers"] == 2 and r["path"] == "ray")
        ratios[task] = {"end_to_end": two["vs_local"], "workers_running": two["steady_vs_local"]}
    lines = [f"{'task':8} {'path':6} {'workers':>7} {'seconds':>8} {'start s':>8} {'photos/s':>9} {'vs local':>9} "
             f"{'running photos/s':>17} {'vs local':>9}"]
    for r in rows:
        lines.append(f"{r['task']:8} {r['path']:6} {r['workers']:>7} {r['seconds']:8.1f} {r.get('worker_start_s', 0):8.1f} "
                     f"{r['photos_per_s']:9.1f} {r['vs_local']:9.2f} {r['steady_photos_per_s']:17.1f} {r['steady_vs_local']:9.2f}")
    log.info("photos: %d embedded, %d predicted (%s); Ray cluster of 2 CPUs started in %.1f s\n%s",
             len(df), min(len(df), args.predict_n), source, cluster_start, "\n".join(lines))
    result = {"photos": len(df), "predict_photos": min(len(df), args.predict_n), "source": source,
              "partition_size": args.partition_size, "cluster_start_s": cluster_start, "rows": rows,
              "ratio_engine2_vs_local": ratios, "target": 0.8, "cpus": os.cpu_count(), "machine": platform.machine(),
              "ray": ray.__version__}
    write_json(result, args.out)
    for task, r in ratios.items():
        log.info("%s: engine(2 workers)/local %.2f end to end, %.2f with the workers running (target >= 0.8)",
                 task, r["end_to_end"], r["workers_running"])
    log.info("-> %s", args.out)


if __name__ == "__main__":
    main()
