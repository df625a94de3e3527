"""Nearest-neighbour query time on a synthetic gallery of 1,000,000 embeddings.

The gallery is geopin's own `Gallery` (FAISS, exact inner product on L2-normalised vectors), the same
object a trained model queries. Prints a table and writes bench/results/gallery.json.

    python bench/bench_gallery.py [--n 1000000] [--dim 1280] [--queries 50] [--k 32]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from geopin.io import write_json
from geopin.locate.heads import Gallery

log = logging.getLogger("bench_gallery")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gallery.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    # clustered vectors, like photo embeddings: 2,000 centres with noise
    centres = rng.standard_normal((2000, args.dim), dtype=np.float32)
    emb = np.empty((args.n, args.dim), dtype=np.float32)
    step = 100_000
    for s in range(0, args.n, step):
        m = min(step, args.n - s)
        emb[s : s + m] = centres[rng.integers(0, 2000, m)] + 0.8 * rng.standard_normal((m, args.dim), dtype=np.float32)
    gen_s = time.perf_counter() - t0
    queries = emb[rng.integers(0, args.n, args.queries)] + 0.3 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    res = {"n_gallery": args.n, "dim": args.dim, "k": args.k, "threads": os.cpu_count(), "generate_s": round(gen_s, 2),
           "memory_gb": round(emb.nbytes / 1e9, 2)}
    exact_idx = None
    for name, exact_max in (("exact", args.n), ("ivf", 0)):
        t0 = time.perf_counter()
        gallery = Gallery(emb, exact_max=exact_max)
        build_s = time.perf_counter() - t0
        gallery.search(queries[:1], args.k)  # warm-up
        single = []
        for q in queries:
            t0 = time.perf_counter()
            gallery.search(q[None, :], args.k)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, idx = gallery.search(queries, args.k)
        batch_s = time.perf_counter() - t0
        single_ms = np.array(single) * 1000
        res[f"{name}_index"] = type(gallery.index).__name__
        res[f"{name}_build_s"] = round(build_s, 2)
        res[f"{name}_single_query_ms_p50"] = round(float(np.percentile(single_ms, 50)), 1)
        res[f"{name}_single_query_ms_p95"] = round(float(np.percentile(single_ms, 95)), 1)
        res[f"{name}_batch_{args.queries}_ms_per_query"] = round(1000 * batch_s / args.queries, 1)
        if exact_idx is None:
            exact_idx = idx
        else:
            res[f"{name}_recall_at_1"] = float(np.mean(idx[:, 0] == exact_idx[:, 0]))
            res[f"{name}_recall_at_{args.k}"] = float(
                np.mean([len(set(a) & set(b)) / args.k for a, b in zip(idx, exact_idx)])
            )
        del gallery
    width = max(len(k) for k in res)
    for key, val in res.items():
        print(f"{key:<{width}}  {val}")
    write_json(res, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
