"""Embed throughput on PyTorch, on ONNX Runtime at f32 and at int8, and is the pipeline limited by the network?

    python bench/bench_embed.py                       # first 512 photos of the shared Im2GPS3k labels
    python bench/bench_embed.py --n 2652               # all photos
    python bench/bench_embed.py --compare efficientnet_lite2  # also another backbone's forward (both runtimes)
    python bench/bench_embed.py --manifest M.parquet   # any manifest (id, path[, sha256])
    python bench/bench_embed.py --folder DIR           # every JPEG/PNG under a folder

For each run ("torch", "onnx": EmbedConfig.runtime at f32; "int8": runtime onnx at EmbedConfig.precision int8):
(1) the forward pass alone on pre-decoded tensors, batched by the same shape buckets, with the same threads; (2)
the full `embed_manifest` (cache disabled) on the same photos. Target: (2) >= 0.8 x (1), and ONNX Runtime's (2)
>= 2 x PyTorch's (issue 23). Repeats interleave the runs, so that load drifting over time hits each alike; the
best repeat is reported. The largest difference between the f32 runtimes' embeddings, and the cosine of the int8
embeddings to PyTorch's, are reported too. The ONNX export and its int8 copy are made (or read from the cache)
before timing. Prints a table and writes bench/results/embed.json. Photos are read in place, never copied.
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
# run name -> (EmbedConfig.runtime, EmbedConfig.precision)
RUNS = {"torch": ("torch", "f32"), "onnx": ("onnx", "f32"), "int8": ("onnx", "int8")}
RUNTIMES = tuple(RUNS)


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
    """Seconds for the network alone (on cfg.runtime) over the pre-stacked batches, after one warm-up per shape."""
    import torch

    from geopin.features.embed import batch_forward
    from geopin.runtime import keep_freed_memory, torch_threads

    forward = batch_forward(backbone, cfg)
    with torch_threads(cfg.threads), keep_freed_memory(), torch.inference_mode():
        for shape in buckets:  # oneDNN and ONNX Runtime prepare kernels per input shape; the pipeline pays this too
            forward(torch.zeros((min(2, cfg.batch_size), *shape)))
        t0 = time.perf_counter()
        for batch in batches:
            forward(batch)
        return time.perf_counter() - t0


def time_pipeline(backbone, df, cfg):
    """(summary, embeddings) of the full embed_manifest on cfg.runtime (cache off)."""
    import numpy as np

    from geopin.features.embed import embed_manifest

    with tempfile.TemporaryDirectory(prefix="geopin-bench-embed-") as tmp:
        summary = embed_manifest(df, Path(tmp) / "out", cfg, backbone=backbone)
        return summary, np.array(np.load(summary.embeddings_path))


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
    parser.add_argument("--compare", default="", help="second backbone for forward throughput on both runtimes (default: none)")
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

    import dataclasses

    import numpy as np
    import onnxruntime
    import torch

    from geopin.features.backbones import BackboneUnavailable, create_backbone
    from geopin.features.embed import EmbedConfig, batch_forward
    from geopin.io import write_json

    base = EmbedConfig(
        backbone=args.backbone, mode=args.mode, long_side=args.long_side, batch_size=args.batch_size,
        threads=args.threads, workers=args.workers, use_cache=False,
    )
    cfgs = {r: dataclasses.replace(base, runtime=rt, precision=pr) for r, (rt, pr) in RUNS.items()}
    load_before = os.getloadavg()[0]
    backbone = create_backbone(args.backbone)
    threads = base.threads or os.cpu_count() or 1
    for r, cfg in cfgs.items():
        forward = batch_forward(backbone, cfg)  # exports (or loads) the ONNX files outside the timings
        if (forward.resolve(), forward.precision_used) != RUNS[r]:
            print(f"error: {r} ({cfg.runtime} at {cfg.precision}) is not available for {args.backbone}", file=sys.stderr)
            return 2
    buckets, batches = prepare_batches(backbone, df, base)
    other = None
    if args.compare:
        try:
            other = create_backbone(args.compare)
        except BackboneUnavailable as exc:
            print(f"comparison skipped: {exc}", file=sys.stderr)
        else:
            ocfgs = {r: dataclasses.replace(c, backbone=args.compare) for r, c in cfgs.items() if c.precision == "f32"}
            obuckets, obatches = prepare_batches(other, df, ocfgs["torch"])
    # Repeats interleave the runs (and alternate which runtime goes first), so that load from other processes
    # drifting over time hits each alike.
    fwd_times = {r: [] for r in RUNTIMES}
    other_times = {r: [] for r in RUNTIMES}
    pipes = {r: [] for r in RUNTIMES}
    for rep in range(args.repeats):
        for r in (RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]):
            fwd_times[r].append(time_forward(backbone, buckets, batches, cfgs[r]))
            pipes[r].append(time_pipeline(backbone, df, cfgs[r]))
            if other is not None and r in ocfgs:
                other_times[r].append(time_forward(other, obuckets, obatches, ocfgs[r]))
    result = {"photos": len(df), "config": base.to_dict(), "runtimes": {}}
    rows = []
    for r in RUNTIMES:
        fwd = _forward_row(buckets, batches, fwd_times[r], threads)
        best, _ = min(pipes[r], key=lambda p: p[0].embed_seconds)
        pipe = {
            "photos": best.n_embedded,
            "failed": best.n_failed,
            "seconds": round(best.embed_seconds, 3),
            "seconds_all": [round(p[0].embed_seconds, 3) for p in pipes[r]],
            "forward_seconds_inside": round(best.forward_seconds, 3),
            "photos_per_s": round(best.photos_per_s, 2),
        }
        ratio = pipe["photos_per_s"] / fwd["photos_per_s"]
        result["runtimes"][r] = {"forward_alone": fwd, "pipeline": pipe, "pipeline_over_forward": round(ratio, 3)}
        rows.append((f"{args.backbone} forward alone", r, fwd["photos"], fwd["seconds"], fwd["photos_per_s"]))
        rows.append((f"{args.backbone} full pipeline", r, pipe["photos"], pipe["seconds"], pipe["photos_per_s"]))
        if other is not None and other_times[r]:
            ofwd = _forward_row(obuckets, obatches, other_times[r], threads)
            result["runtimes"][r]["compare_forward_alone"] = {"backbone": args.compare, **ofwd}
            rows.append((f"{args.compare} forward alone", r, ofwd["photos"], ofwd["seconds"], ofwd["photos_per_s"]))
    t, o, q = (result["runtimes"][r] for r in ("torch", "onnx", "int8"))
    emb_t, emb_o, emb_q = (pipes[r][0][1] for r in ("torch", "onnx", "int8"))
    both = np.isfinite(emb_t).all(axis=1) & np.isfinite(emb_o).all(axis=1) & np.isfinite(emb_q).all(axis=1)
    max_diff = float(np.abs(emb_t[both] - emb_o[both]).max()) if both.any() else None
    cos = (emb_t[both] * emb_q[both]).sum(1) / np.linalg.norm(emb_t[both], axis=1) / np.linalg.norm(emb_q[both], axis=1)

    def over_torch(x: dict) -> dict:
        return {k: round(x[k]["photos_per_s"] / t[k]["photos_per_s"], 3) for k in ("forward_alone", "pipeline")}

    speedup, speedup8 = over_torch(o), over_torch(q)
    result.update({
        "onnx_over_torch": speedup,
        "int8_over_torch": speedup8,
        "max_abs_embedding_difference": max_diff,
        "int8_cosine_to_torch": {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4)} if both.any() else None,
        "targets": {"pipeline_over_forward": 0.8, "onnx_over_torch_pipeline": 2.0},
        "meets_targets": {"pipeline_over_forward": {r: result["runtimes"][r]["pipeline_over_forward"] >= 0.8 for r in RUNTIMES},
                          "onnx_over_torch_pipeline": speedup["pipeline"] >= 2.0,
                          "int8_over_torch_pipeline": speedup8["pipeline"] >= 2.0},
    })
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    write_json(result, args.out)

    torch_pps = {name: pps for name, r, _, _, pps in rows if r == "torch"}
    print(f"{'run':<36} {'runtime':<8} {'photos':>7} {'seconds':>9} {'photos/s':>9} {'x torch':>8}")
    for name, r, n, sec, pps in rows:
        print(f"{name:<36} {r:<8} {n:>7} {sec:>9.2f} {pps:>9.2f} {pps / torch_pps[name]:>8.2f}")
    for name, sp in (("onnx f32", speedup), ("onnx int8", speedup8)):
        print(f"{name} / torch photos/s: forward alone {sp['forward_alone']:.2f}, full pipeline {sp['pipeline']:.2f} (target >= 2)")
    print(f"pipeline / forward: torch {t['pipeline_over_forward']:.2f}, onnx {o['pipeline_over_forward']:.2f}, "
          f"int8 {q['pipeline_over_forward']:.2f} (target >= 0.8)")
    if both.any():
        print(f"int8 embeddings' cosine to torch's: mean {cos.mean():.4f}, min {cos.min():.4f}")
    print(f"max |embedding difference| torch vs onnx f32: {max_diff:.2g} ; {args.mode} mode, long side {args.long_side}, "
          f"batch {args.batch_size}, {threads} threads ; load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
