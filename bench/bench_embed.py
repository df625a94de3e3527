"""Is the embed pipeline limited by the network? Forward pass alone vs decode + preprocess + forward.

    python bench/bench_embed.py                       # first 512 photos of the shared Im2GPS3k labels
    python bench/bench_embed.py --n 2652 --compare ""  # all photos, no Lite2 comparison
    python bench/bench_embed.py --manifest M.parquet   # any manifest (id, path[, sha256])
    python bench/bench_embed.py --folder DIR           # every JPEG/PNG under a folder

(1) forward pass alone on pre-decoded tensors, batched by the same shape buckets, with the same threads;
(2) the full `embed_manifest` (cache disabled) on the same photos. Target: (2) >= 0.8 x (1).
Optionally (3) forward throughput of another backbone (default EfficientNet-Lite2) on the same photos.
Prints a table and writes bench/results/embed.json. Photos are read in place, never copied.
"""

from __future__ import annotations

import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, which on a busy 2-core machine made
# small batches 10-30x slower (spinning threads steal the core the other thread needs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", HERE.parent.parent / "shared" / "data" / "im2gps3k"))


def _manifest(args):
    import pandas as pd

    if args.manifest:
        from geopin.features.embed import read_manifest

        return read_manifest(args.manifest).head(args.n)
    if args.folder:
        paths = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n]
        return pd.DataFrame({"id": [str(p) for p in paths], "path": [str(p) for p in paths]})
    labels = SHARED / "labels.csv"
    if not labels.exists():
        return None
    df = pd.read_csv(labels).head(args.n)
    return pd.DataFrame({"id": df["image"], "path": [str(SHARED / p) for p in df["image"]]})


def prepare_batches(backbone, df, cfg) -> tuple[dict, list]:
    """Decode and preprocess every photo up front, then batch by shape exactly as the pipeline buckets do."""
    import torch

    from geopin.features.embed import load_image, make_views

    buckets: dict[tuple, list] = {}
    for path in df["path"]:
        try:
            img = load_image(Path(path), cfg.mode, cfg.long_side, backbone.native_size)
        except (OSError, ValueError):
            continue
        for view in make_views(img, backbone, cfg):
            buckets.setdefault(tuple(view.shape), []).append(view)
    batches = [
        torch.stack(views[i : i + cfg.batch_size])
        for views in buckets.values()
        for i in range(0, len(views), cfg.batch_size)
    ]
    return buckets, batches


def time_forward(backbone, buckets: dict, batches: list, cfg) -> float:
    """Seconds for the network alone over the pre-stacked batches (after one warm-up batch per shape)."""
    import torch

    from geopin.runtime import keep_freed_memory, torch_threads

    with torch_threads(cfg.threads), keep_freed_memory(), torch.inference_mode():
        for shape in buckets:  # oneDNN builds its kernels once per input shape; the pipeline pays this too
            backbone.model(torch.zeros((min(2, cfg.batch_size), *shape)))
        t0 = time.perf_counter()
        for batch in batches:
            backbone.model(batch)
        return time.perf_counter() - t0


def time_pipeline(backbone, df, cfg):
    from geopin.features.embed import embed_manifest

    with tempfile.TemporaryDirectory(prefix="geopin-bench-embed-") as tmp:
        return embed_manifest(df, Path(tmp) / "out", cfg, backbone=backbone)


def _forward_row(buckets: dict, batches: list, times: list[float], threads: int) -> dict:
    n = sum(len(b) for b in batches)
    return {
        "photos": n,
        "batches": len(batches),
        "shapes": {f"{s[1]}x{s[2]}": len(v) for s, v in sorted(buckets.items(), key=lambda kv: -len(kv[1]))},
        "seconds": round(min(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        "photos_per_s": round(n / min(times), 2),
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    from geopin.features.backbones import DEFAULT_BACKBONE, DEFAULT_LONG_SIDE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path, help="manifest with id, path (default: shared Im2GPS3k labels)")
    source.add_argument("--folder", type=Path, help="folder of photos")
    parser.add_argument("--n", type=int, default=512, help="number of photos")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--compare", default="efficientnet_lite2", help="second backbone for forward throughput ('' to skip)")
    parser.add_argument("--mode", default="whole")
    parser.add_argument("--long-side", type=int, default=DEFAULT_LONG_SIDE)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats; the best is reported")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    df = _manifest(args)
    if df is None:
        print(f"skipped: shared photos not found at {SHARED} (set GEOPIN_SHARED_IM2GPS, or pass --manifest/--folder)")
        return 0
    if df.empty:
        print("skipped: no photos found", file=sys.stderr)
        return 2

    import torch

    from geopin.features.backbones import BackboneUnavailable, create_backbone
    from geopin.features.embed import EmbedConfig
    from geopin.io import write_json

    cfg = EmbedConfig(
        backbone=args.backbone, mode=args.mode, long_side=args.long_side, batch_size=args.batch_size,
        threads=args.threads, workers=args.workers, use_cache=False,
    )
    load_before = os.getloadavg()[0]
    backbone = create_backbone(args.backbone)
    threads = cfg.threads or os.cpu_count() or 1
    buckets, batches = prepare_batches(backbone, df, cfg)
    other = ocfg = None
    if args.compare:
        try:
            other = create_backbone(args.compare)
        except BackboneUnavailable as exc:
            print(f"comparison skipped: {exc}", file=sys.stderr)
        else:
            ocfg = EmbedConfig(**{**cfg.to_dict(), "backbone": args.compare, "cache_dir": None, "tta": ()})
            obuckets, obatches = prepare_batches(other, df, ocfg)
    # Repeats interleave the runs, so that load from other processes drifting over time hits each alike.
    fwd_times, other_times, pipes = [], [], []
    for _ in range(args.repeats):
        fwd_times.append(time_forward(backbone, buckets, batches, cfg))
        pipes.append(time_pipeline(backbone, df, cfg))
        if other is not None:
            other_times.append(time_forward(other, obuckets, obatches, ocfg))
    fwd = _forward_row(buckets, batches, fwd_times, threads)
    best = min(pipes, key=lambda s: s.embed_seconds)
    pipe = {
        "photos": best.n_embedded,
        "failed": best.n_failed,
        "seconds": round(best.embed_seconds, 3),
        "seconds_all": [round(s.embed_seconds, 3) for s in pipes],
        "forward_seconds_inside": round(best.forward_seconds, 3),
        "photos_per_s": round(best.photos_per_s, 2),
    }
    ratio = pipe["photos_per_s"] / fwd["photos_per_s"]
    rows = [
        (f"{args.backbone} forward alone", fwd["photos"], fwd["seconds"], fwd["photos_per_s"], 1.0),
        (f"{args.backbone} full pipeline", pipe["photos"], pipe["seconds"], pipe["photos_per_s"], ratio),
    ]
    result = {
        "photos": len(df),
        "config": cfg.to_dict(),
        "forward_alone": fwd,
        "pipeline": pipe,
        "pipeline_over_forward": round(ratio, 3),
        "target": 0.8,
        "meets_target": ratio >= 0.8,
    }
    if other is not None:
        ofwd = _forward_row(obuckets, obatches, other_times, threads)
        result["compare_forward_alone"] = {"backbone": args.compare, **ofwd}
        rows.append((f"{args.compare} forward alone", ofwd["photos"], ofwd["seconds"], ofwd["photos_per_s"],
                     ofwd["photos_per_s"] / fwd["photos_per_s"]))
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    write_json(result, args.out)

    print(f"{'run':<36} {'photos':>7} {'seconds':>9} {'photos/s':>9} {'ratio':>6}")
    for name, n, sec, pps, r in rows:
        print(f"{name:<36} {n:>7} {sec:>9.2f} {pps:>9.2f} {r:>6.2f}")
    print(f"pipeline / forward = {ratio:.2f} (target >= 0.8) ; {args.mode} mode, long side {args.long_side}, "
          f"batch {args.batch_size}, {fwd['threads']} torch threads ; load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
