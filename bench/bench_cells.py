"""Benchmark: adaptive S2 cells on synthetic clustered photos (default 1M).

    python bench/bench_cells.py [--n 1000000] [--seed 0] [--out bench/results/bench_cells.json]

Prints a table (time per step and per granularity, classes, kept photos) and writes the same as JSON.
The photos mimic a photo-sharing site: a few hundred "places" of Pareto-distributed popularity, each
spread from tens of metres to hundreds of kilometres.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from geopin.countries import country_of
from geopin.dataset.cells import (
    build_cells,
    default_granularities,
    leaf_cell_ids,
    locate,
)
from geopin.io import write_json


def synthetic_photos(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = 300
    c_lat = np.degrees(np.arcsin(rng.uniform(-0.9, 0.95, k)))
    c_lon = rng.uniform(-180, 180, k)
    weight = rng.pareto(1.2, k) + 0.05
    which = rng.choice(k, n, p=weight / weight.sum())
    spread_deg = np.exp(rng.uniform(np.log(0.0005), np.log(3.0), k))[which]
    lat = np.clip(c_lat[which] + rng.normal(size=n) * spread_deg, -90, 90)
    stretch = 1 / np.cos(np.radians(np.clip(c_lat[which], -85, 85)))
    lon = (c_lon[which] + rng.normal(size=n) * spread_deg * stretch + 180) % 360 - 180
    return lat, lon


def s2sphere_leaf_seconds(lat: np.ndarray, lon: np.ndarray) -> float:
    import s2sphere

    t0 = time.perf_counter()
    for a, b in zip(lat, lon):
        s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(float(a), float(b)))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_cells.json")
    args = parser.parse_args()

    lat, lon = synthetic_photos(args.n, args.seed)
    t0 = time.perf_counter()
    country_of(0.0, 0.0)  # load the place index once, outside the timings below
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaf_cell_ids(lat, lon)
    leaf_s = time.perf_counter() - t0
    sample = min(20_000, args.n)
    ref_s = s2sphere_leaf_seconds(lat[:sample], lon[:sample]) * args.n / sample

    grans = default_granularities(args.n)
    t0 = time.perf_counter()
    part = build_cells(lat, lon, grans)
    total_s = time.perf_counter() - t0

    rows = []
    for g in grans:
        table = part.table(g.name)
        t0 = time.perf_counter()
        located = locate(lat, lon, part, g.name)
        locate_s = time.perf_counter() - t0
        rows.append(
            {
                "granularity": g.name,
                "max_photos": g.max_photos,
                "min_photos": g.min_photos,
                "classes": len(table),
                "photos_kept": int((located >= 0).sum()),
                "build_s": round(part.seconds[g.name], 3),
                "locate_s": round(locate_s, 3),
            }
        )
    result = {
        "n_photos": args.n,
        "seed": args.seed,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "country_index_load_s": round(load_s, 3),
        "leaf_ids_s": round(leaf_s, 3),
        "leaf_ids_s2sphere_estimated_s": round(ref_s, 1),
        "build_cells_total_s": round(total_s, 3),
        "build_cells_sort_and_leaf_s": round(part.seconds["leaf_ids"], 3),
        "granularities": rows,
    }

    print(f"{args.n:,} synthetic photos; place index load {load_s:.2f} s")
    print(f"leaf S2 ids: {leaf_s:.2f} s vectorised (s2sphere per point: ~{ref_s:.0f} s, from {sample:,})")
    print(f"build_cells, all granularities: {total_s:.2f} s (leaf ids + sort {part.seconds['leaf_ids']:.2f} s)")
    header = ["granularity", "max", "min", "classes", "kept", "build s", "locate s"]
    body = [[r["granularity"], r["max_photos"], r["min_photos"], r["classes"], r["photos_kept"], r["build_s"],
             r["locate_s"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    for line in [header, *body]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
