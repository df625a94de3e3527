"""Load time of a model folder whose gallery is large enough for the IVF index, and of the bundled model.

Format 2 stored the gallery's vectors and built the FAISS index again at every load (k-means for an
IVF gallery: minutes). Format 3 saves the trained index and checks every file's size and sha256.
This measures, on a synthetic gallery of clustered vectors (like photo embeddings):
  - "format 2": reading the float16 vectors and building the index, what its load did;
  - "format 3": GeoModel.load of the saved folder, with and without the checksum verification;
and the same two loads for the bundled model. Prints a table, writes bench/results/model_load.json.

    python bench/bench_model_load.py [--n 300000] [--dim 1280] [--exact-max 200000] [--repeats 3]
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

from geopin.io import write_json
from geopin.locate.heads import Gallery
from geopin.locate.model import (
    GeoModel,
    ModelError,
    default_model_dir,
    read_model_json,
    verify_files,
)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_model_load")


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        out[s : s + m] = centres[rng.integers(0, 2000, m)] + 0.8 * rng.standard_normal((m, dim), dtype=np.float32)
    return out


def small_model(dim: int) -> GeoModel:
    """A real trained model (cells, classifier, posterior) on a few generated photos, to carry the big gallery."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import FAST, synthetic

    from geopin.locate.train import train_model

    df, emb = synthetic(n_per_site=20)
    emb = np.hstack([emb, np.zeros((len(emb), dim - emb.shape[1]), np.float32)])
    return train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--exact-max", type=int, default=200_000, help="Gallery size above which the index is IVF.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="Where to write the model folders (default: a temp dir).")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model_load.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res: dict = {"n_gallery": args.n, "dim": args.dim, "exact_max": args.exact_max, "repeats": args.repeats}

    # the bundled model (2,652 photos, exact gallery)
    bundled = default_model_dir()
    try:
        GeoModel.load(bundled)  # warm imports and the page cache
        res["bundled_mb"] = round(sum(p.stat().st_size for p in bundled.iterdir()) / 1e6, 1)
        res["bundled_load_ms"] = round(1e3 * timed(lambda: GeoModel.load(bundled), 7)[0], 1)
        res["bundled_load_noverify_ms"] = round(1e3 * timed(lambda: GeoModel.load(bundled, verify=False), 7)[0], 1)
    except ModelError as exc:
        log.warning("bundled model not measured: %s", exc)
        res["bundled_mb"] = res["bundled_load_ms"] = res["bundled_load_noverify_ms"] = None

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        work = Path(work)
        emb = clustered(args.n, args.dim)
        gallery = Gallery(emb, exact_max=args.n)  # exact, no k-means: only for the centred unit vectors
        vectors = gallery.vectors()
        del emb, gallery
        # format 2: the float16 vectors in gallery.npz, and the index built again at every load
        np.savez(work / "vectors_f16.npz", vectors=vectors.astype(np.float16))
        del vectors

        def format2_gallery() -> Gallery:
            with np.load(work / "vectors_f16.npz") as z:
                v = z["vectors"].astype(np.float32)
            return Gallery(vectors=v, mu=np.zeros(args.dim, np.float32), exact_max=args.exact_max)

        t0 = time.perf_counter()
        big = format2_gallery()  # once only: an IVF build takes minutes
        res["format2_gallery_load_s"] = round(time.perf_counter() - t0, 2)
        res["index"] = type(big.index).__name__
        log.info("format 2 gallery load (read + build %s): %.1f s", res["index"], res["format2_gallery_load_s"])

        base = small_model(args.dim)
        rng = np.random.default_rng(1)
        h = base.heads
        pick = rng.integers(0, len(h.gallery_lat), args.n)
        heads = replace(
            h,
            gallery=big,
            gallery_lat=h.gallery_lat[pick],
            gallery_lon=h.gallery_lon[pick],
            gallery_place=h.gallery_place[pick],
            gallery_country=h.gallery_country[pick],
        )
        model = GeoModel(heads, base.params, base.calibration, base.meta)
        t0 = time.perf_counter()
        folder = model.save(work / "model")
        res["format3_save_s"] = round(time.perf_counter() - t0, 2)
        res["format3_mb"] = round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1)
        del model, heads, big
        doc = read_model_json(folder)
        res["format3_verify_s"] = round(timed(lambda: verify_files(folder, doc), args.repeats)[0], 2)
        res["format3_load_s"] = round(timed(lambda: GeoModel.load(folder), args.repeats)[0], 2)
        res["format3_load_noverify_s"] = round(timed(lambda: GeoModel.load(folder, verify=False), args.repeats)[0], 2)
        res["speedup"] = round(res["format2_gallery_load_s"] / res["format3_load_s"], 1)

    rows = [
        ("bundled model (2,652 photos, exact)", f"{res['bundled_load_ms']} ms", f"{res['bundled_load_noverify_ms']} ms", f"{res['bundled_mb']} MB"),
        (f"format 2: read + build {res['index']} ({args.n:,} x {args.dim})", f"{res['format2_gallery_load_s']} s", "-", "-"),
        (f"format 3: GeoModel.load ({args.n:,} x {args.dim})", f"{res['format3_load_s']} s", f"{res['format3_load_noverify_s']} s", f"{res['format3_mb']} MB"),
    ]
    print(f"{'what':58} {'load':>10} {'no verify':>10} {'size':>10}")
    for r in rows:
        print(f"{r[0]:58} {r[1]:>10} {r[2]:>10} {r[3]:>10}")
    print(f"sha256 + size check of every file: {res['format3_verify_s']} s; save: {res['format3_save_s']} s; speed-up {res['speedup']}x")
    write_json(res, args.out)


if __name__ == "__main__":
    main()
