"""Throughput of `geopin ingest` on the shared Im2GPS3k labels (2,652 Flickr JPEGs, 384 px long side).

    python bench/bench_ingest.py            # plain checks
    python bench/bench_ingest.py --faces    # with the Haar face filter

Prints a table and merges the run into bench/results/ingest.json under "plain" or "faces".
The manifest goes to a temporary folder: the research photos are never copied into the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_LABELS = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", HERE.parent.parent / "shared" / "data" / "im2gps3k")) / "labels.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--faces", action="store_true", help="enable the face filter")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if not args.labels.exists():
        print(f"{args.labels}: not found (set GEOPIN_SHARED_IM2GPS)", file=sys.stderr)
        return 2

    from geopin.dataset.ingest import IngestConfig, ingest

    cfg = IngestConfig(group_col="author", faces=args.faces, workers=args.workers, chunk_size=args.chunk_size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="geopin-bench-ingest-") as tmp:
        t0 = time.perf_counter()
        summary = ingest(args.labels, Path(tmp) / "out", cfg)
        wall = time.perf_counter() - t0
    mode = "faces" if args.faces else "plain"
    row = {
        "photos": summary.n_input,
        "kept": summary.n_kept,
        "rejected": {k: v for k, v in summary.reasons.items() if v},
        "seconds": round(wall, 2),
        "photos_per_s": round(summary.n_input / wall, 1),
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "faces": args.faces,
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before": round(load_before, 2),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    cols = ["mode", "photos", "kept", "seconds", "photos/s", "workers"]
    vals = [mode, row["photos"], row["kept"], f"{row['seconds']:.2f}", f"{row['photos_per_s']:.1f}", row["workers"]]
    widths = [max(len(str(c)), len(str(v))) for c, v in zip(cols, vals)]
    print("  ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    print("  ".join(f"{v!s:>{w}}" for v, w in zip(vals, widths)))
    if row["loadavg_1min_before"] > args.workers * 0.5:
        print(f"note: load average {row['loadavg_1min_before']} before the run; other work shared the cores")

    from geopin.io import write_json

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[mode] = row
    write_json(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
