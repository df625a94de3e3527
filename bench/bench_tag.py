"""How many photos per second does `geopin tag` place and write, on a generated library of 10,000 photos?

    python bench/bench_tag.py                    # 10,000 photos: dry run (cold and warm cache), write, undo
    python bench/bench_tag.py --n 2000 --visual  # also ask the visual model (the bundled one)

The library is tests/libgen.py's `make_big_library`: 40 % phone photos with GPS and offset tags, 60 % from two
cameras without GPS (one clock 1 h 07 min fast), tiny JPEGs in 100-photo folders. Stages timed in one run:
- `exiftool -fast -j -r` over the library: how long the photo tools' own reader takes to read the same metadata
  (the reference every speed is given against, measured in this run);
- dry run, cold: scan + embedding every photo (for the camera clocks; and the visual model with --visual) +
  candidates + reports; then warm: the same with the embedding cache filled (what a rerun or the review costs);
- write: XMP sidecars through the journal; then undo, checked bit for bit against the originals' hashes.
Prints a table and writes bench/results/tag.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the generated library: a test helper


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="photos in the generated library")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--visual", action="store_true", help="ask the visual model too")
    ap.add_argument("--work", type=Path, default=None, help="folder for the library (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tag.json")
    return ap.parse_args(argv)


def _sha_all(root: Path) -> dict[str, str]:
    from geopin.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
            and ".geopin" not in p.parts}


def main(argv=None) -> int:
    args = parse_args(argv)
    from libgen import make_big_library

    from geopin.library.tag import TagConfig, apply_plan, plan_library, undo_last, write_reports
    from geopin.locate.predict import PredictConfig, Predictor
    from geopin.log import setup_logging

    setup_logging(quiet=True)
    own_tmp = None
    if args.work is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="geopin-bench-tag-")
        args.work = Path(own_tmp.name)
    root = args.work / "library"
    if root.exists():
        shutil.rmtree(root)
    cache = args.work / "cache"  # a cache of its own: "cold" must not find vectors of an earlier run
    if cache.exists():
        shutil.rmtree(cache)
    os.environ["GEOPIN_CACHE"] = str(cache)
    rows: dict[str, dict] = {}

    t0 = time.perf_counter()
    make_big_library(root, n=args.n, seed=args.seed)
    rows["generate"] = {"seconds": time.perf_counter() - t0}
    before = _sha_all(root)
    exiftool = shutil.which("exiftool")
    if exiftool:
        t0 = time.perf_counter()
        subprocess.run([exiftool, "-fast", "-j", "-r", "-q", "-DateTimeOriginal", "-OffsetTimeOriginal",
                        "-GPSLatitude", "-GPSLongitude", "-Make", "-Model", str(root)],
                       check=True, stdout=subprocess.DEVNULL)
        rows["exiftool read (reference)"] = {"seconds": time.perf_counter() - t0}
    predictor = Predictor(PredictConfig(text="never"))
    cfg = TagConfig(visual=args.visual)
    for name in ("dry run, cold cache", "dry run, warm cache"):
        t0 = time.perf_counter()
        plan = plan_library(root, cfg, progress=False, predictor=predictor)
        write_reports(plan, cfg)
        rows[name] = {"seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    report = apply_plan(plan, cfg, progress=False)
    rows["write xmp sidecars"] = {"seconds": time.perf_counter() - t0, "written": report.get("written", 0)}
    t0 = time.perf_counter()
    undone = undo_last(root, cfg)
    rows["undo"] = {"seconds": time.perf_counter() - t0}
    after = _sha_all(root)
    ref = rows.get("exiftool read (reference)", {}).get("seconds")
    for row in rows.values():
        row["photos_per_s"] = args.n / row["seconds"] if row["seconds"] > 0 else None
        row["x_exiftool_read_time"] = row["seconds"] / ref if ref else None
    result = {
        "n": args.n, "visual": args.visual, "seed": args.seed,
        "placed": sum(p.placed for p in plan.proposals), "to_place": len(plan.proposals),
        "written": report.get("written", 0), "by_source": plan.summary.get("by_source"),
        "undo_restored_bit_for_bit": before == after, "undo": undone,
        "stages": rows, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python bench/bench_tag.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"geopin tag on {args.n:,} generated photos ({'with' if args.visual else 'without'} the visual model): "
          f"{result['written']:,} of {result['to_place']:,} written")
    print(f"{'stage':28} {'seconds':>9} {'photos/s':>9} {'x exiftool read':>16}")
    for name, row in rows.items():
        ratio = f"{row['x_exiftool_read_time']:.1f}" if row.get("x_exiftool_read_time") else "-"
        print(f"{name:28} {row['seconds']:9.1f} {row['photos_per_s']:9.0f} {ratio:>16}")
    print(f"undo restored every file bit for bit: {before == after}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from geopin.io import write_json

    write_json(result, args.out)
    print(f"wrote {args.out}")
    if own_tmp is not None:
        own_tmp.cleanup()
    return 0 if before == after else 1


if __name__ == "__main__":
    raise SystemExit(main())
