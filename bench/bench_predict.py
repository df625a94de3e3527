"""How long does one photo take to predict with the model already loaded (an API server's or a CLI loop's case)?

    python bench/bench_predict.py                         # bundled model, 50 shared Im2GPS3k photos
    python bench/bench_predict.py --model DIR --n 100     # another model folder
    python bench/bench_predict.py --photos DIR            # any folder of photos (searched recursively)
    python bench/bench_predict.py --omp-wait-policy PASSIVE --threads 1

The Predictor is loaded once. For each photo, `predict_paths([photo])` is timed end to end (decode, EXIF,
embed, posterior, decisions); then, separately on the same photo, decode alone, embed alone (`embed_images`
on the decoded image) and the posterior alone (`model.predict_embeddings` on the precomputed embedding);
"other" is end to end minus those three, so timing noise can make it slightly negative.
Without shared photos, photos are generated with Pillow. Prints a table and writes bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", HERE.parent.parent / "shared" / "data" / "im2gps3k"))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--photos", type=Path, default=None, help="folder of photos (default: shared Im2GPS3k, else generated)")
    ap.add_argument("--n", type=int, default=50, help="photos to time")
    ap.add_argument("--warmup", type=int, default=3, help="untimed predictions first (kernel set-up, caches)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="which shared photos are sampled")
    ap.add_argument("--omp-wait-policy", choices=["default", "PASSIVE", "ACTIVE"], default="default",
                    help="OMP_WAIT_POLICY for torch (set before torch loads); default: leave the environment as is")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the forward pass (default: all cores)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "predict.json")
    return ap.parse_args(argv)


def generated_photos(folder: Path, n: int) -> list[Path]:
    """Landscape-like JPEGs at the shared photos' size (384 px long side), each different."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        w, h = (384, 288) if i % 3 else (288, 384)
        y = np.linspace(0.0, 1.0, h)[:, None, None]
        horizon = rng.uniform(0.3, 0.7)
        arr = np.where(y < horizon, rng.uniform(90, 240, 3) * (1 - 0.35 * y), rng.uniform(20, 170, 3) * (0.6 + 0.4 * y))
        arr = arr * np.ones((1, w, 1)) + rng.normal(0, 12, (h, w, 3))
        path = folder / f"generated_{i:03d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        out.append(path)
    return out


def choose_photos(args, scratch: Path) -> tuple[list[Path], str]:
    from geopin.locate.predict import expand_paths

    if args.photos is not None:
        found = [p for p in expand_paths([args.photos]) if p.is_file()]
        if not found:
            sys.exit(f"error: no photos under {args.photos}")
        want = args.n + args.warmup  # a small folder is cycled through: N timed calls all the same
        return [found[i % len(found)] for i in range(want)], f"folder {args.photos} ({len(found)} photos)"
    labels = SHARED / "labels.csv"
    if labels.exists():
        import pandas as pd

        df = pd.read_csv(labels)
        df = df.sample(min(len(df), args.n + args.warmup), random_state=args.seed)
        return [SHARED / p for p in df["image"]], f"shared Im2GPS3k ({SHARED}), seed {args.seed}"
    return generated_photos(scratch, args.n + args.warmup), "generated with Pillow (no shared photos found)"


def stats(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {
        "n": int(len(a)),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # torch is not imported yet

    import numpy as np
    import torch
    from PIL import Image

    from geopin.features.embed import embed_images
    from geopin.io import write_json
    from geopin.locate.model import default_model_dir
    from geopin.locate.predict import PredictConfig, Predictor

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        predictor = Predictor(PredictConfig(model_dir=args.model, top_k=args.top_k))
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    load_s = time.perf_counter() - t0
    if args.threads is not None:
        predictor.embed_cfg.threads = args.threads  # what EmbedConfig(threads=...) would give the Predictor
    model, backbone, ecfg = predictor.model, predictor.backbone, predictor.embed_cfg

    with tempfile.TemporaryDirectory(prefix="geopin-bench-predict-") as scratch:
        photos, source = choose_photos(args, Path(scratch))
        warm, timed = photos[: args.warmup], photos[args.warmup :]
        for p in warm:
            list(predictor.predict_paths([p]))

        e2e, decode, embed, sizes, embs, errors = [], [], [], [], [], []
        for p in timed:
            t = time.perf_counter()
            (res,) = list(predictor.predict_paths([p]))
            e2e_ms = (time.perf_counter() - t) * 1e3
            if "error" in res:
                errors.append(res["error"])
                continue
            t = time.perf_counter()
            with Image.open(p) as im:
                im.load()
                img = im.convert("RGB")
            decode_ms = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            emb = embed_images([img], backbone, ecfg)
            embed_ms = (time.perf_counter() - t) * 1e3
            e2e.append(e2e_ms)
            decode.append(decode_ms)
            embed.append(embed_ms)
            sizes.append(img.size)
            embs.append(emb[0])

    if not e2e:
        sys.exit(f"error: every photo failed, first: {errors[0] if errors else 'no photos'}")
    emb_all = np.stack(embs)
    posterior = []
    for i in range(len(emb_all)):
        t = time.perf_counter()
        model.predict_embeddings(emb_all[i : i + 1], top_k=args.top_k)
        posterior.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    model.predict_embeddings(emb_all, top_k=args.top_k)
    batched_posterior_ms = (time.perf_counter() - t) * 1e3 / len(emb_all)
    other = [a - b - c - d for a, b, c, d in zip(e2e, decode, embed, posterior)]
    load_after = os.getloadavg()

    rows = {
        "end_to_end": stats(e2e),
        "decode": stats(decode),
        "embed": stats(embed),
        "posterior": stats(posterior),
        "other (exif, glue)": stats(other),
    }
    share = {k: round(float(np.mean(v) / np.mean(e2e)), 3) for k, v in (("decode", decode), ("embed", embed), ("posterior", posterior))}
    model_dir = Path(args.model) if args.model else default_model_dir()
    result = {
        "benchmark": "one-photo predict latency, model loaded",
        "photos": source,
        "n_photos": len(e2e),
        "n_failed": len(errors),
        "warmup": len(warm),
        "median_photo_px": [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))],
        "model_dir": str(model_dir),
        "model": {
            "n_train": model.meta.get("n_train"),
            "gallery": len(model.heads.gallery_lat),
            "fine_cells": len(model.fine_cells),
            "granularities": model.heads.granularities,
            "k": model.heads.k,
        },
        "backbone": backbone.version,
        "embed_config": {"mode": ecfg.mode, "long_side": ecfg.long_side, "tta": list(ecfg.tta)},
        "top_k": args.top_k,
        "predictor_load_s": round(load_s, 2),
        "stages_ms": rows,
        "mean_share_of_end_to_end": share,
        "posterior_batched_ms_per_photo": round(batched_posterior_ms, 3),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": ecfg.threads or torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "note": "machine may be shared with other jobs; see loadavg",
        },
        "command": "python bench/bench_predict.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }

    print(f"predict latency, one photo per call, model loaded ({len(e2e)} photos: {source})")
    print(f"model {model_dir} ({result['model']['gallery']} gallery photos, {result['model']['fine_cells']} fine cells); "
          f"backbone {backbone.name}; load {load_s:.1f} s")
    print(f"torch threads {ecfg.threads or torch.get_num_threads()}, OMP_WAIT_POLICY={result['environment']['omp_wait_policy']}, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"{'stage':<20} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'max ms':>9} {'share':>7}")
    for name, s in rows.items():
        sh = share.get(name)
        print(f"{name:<20} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} {s['mean_ms']:9.1f} {s['max_ms']:9.1f} "
              f"{'' if sh is None else f'{sh:6.0%}':>7}")
    print(f"\nposterior batched over {len(emb_all)} photos: {batched_posterior_ms:.2f} ms/photo")
    if errors:
        print(f"{len(errors)} photos failed, first: {errors[0]}")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
