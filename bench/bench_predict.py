"""How long does one photo take to predict with the model loaded, on PyTorch and on ONNX Runtime; do the guesses change?

    python bench/bench_predict.py                         # bundled model, 50 shared Im2GPS3k photos, all 2,652 compared
    python bench/bench_predict.py --model DIR --n 100     # another model folder
    python bench/bench_predict.py --photos DIR            # any folder of photos (searched recursively)
    python bench/bench_predict.py --guesses 0             # latency only: skip embedding every shared photo twice
    python bench/bench_predict.py --omp-wait-policy PASSIVE --threads 1

One Predictor (text never read: `--text never`) is loaded once; its embed config is switched between the
runtimes ("torch", "onnx"), so both use the same model, photos and decoding. For each photo, `predict_paths([photo])`
is timed end to end on both runtimes, in alternating order (the load of other processes drifting over time hits
each alike); then, on the same decoded photo, `embed_images` alone on each. The first photo of each runtime is
untimed (kernel set-up, and the ONNX export when it is not cached yet).

Then every shared photo is embedded on both runtimes (the embed pipeline, cache off) and predicted from its
embeddings: the largest feature difference and how many guesses differ (the best-guess point by more than 1 km,
the most probable cell, the country) are counted. Without shared photos, photos are generated with Pillow and
the guess comparison runs on them. Prints a table and writes bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", HERE.parent.parent / "shared" / "data" / "im2gps3k"))
RUNTIMES = ("torch", "onnx")
#: what is timed: the two runtimes at f32, and ONNX Runtime at int8 (`--precision int8`: other features, whose
#: accuracy bench/bench_int8_accuracy.py measures; not compared guess by guess here)
TIMED = RUNTIMES + ("onnx-int8",)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--photos", type=Path, default=None, help="folder of photos (default: shared Im2GPS3k, else generated)")
    ap.add_argument("--n", type=int, default=50, help="photos to time")
    ap.add_argument("--warmup", type=int, default=3, help="untimed predictions first, per runtime")
    ap.add_argument("--guesses", type=int, default=None,
                    help="photos whose guesses are compared between runtimes (default: all shared photos; 0: skip)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="which shared photos are sampled")
    ap.add_argument("--omp-wait-policy", choices=["default", "PASSIVE", "ACTIVE"], default="default",
                    help="OMP_WAIT_POLICY for torch (set before torch loads); default: leave the environment as is")
    ap.add_argument("--threads", type=int, default=None, help="threads of the forward pass (default: all cores)")
    ap.add_argument("--text-photos", type=int, default=None,
                    help="photos timed with text never / auto (the text gate) / always read (default: --n; 0: skip)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "predict.json")
    return ap.parse_args(argv)


def generated_photos(folder: Path, n: int) -> list[Path]:
    """Landscape-like JPEGs at the shared photos' size (384 px long side), each different."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
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
    return generated_photos(scratch / "timed", args.n + args.warmup), "generated with Pillow (no shared photos found)"


def guess_photos(args, scratch: Path) -> tuple[list[Path], str]:
    """The photos whose guesses are compared: every shared photo (or the first --guesses), else generated ones."""
    labels = SHARED / "labels.csv"
    if labels.exists():
        import pandas as pd

        images = pd.read_csv(labels)["image"]
        if args.guesses is not None:
            images = images.head(args.guesses)
        return [SHARED / p for p in images], f"shared Im2GPS3k ({SHARED})"
    return generated_photos(scratch / "guesses", args.guesses or 60), "generated with Pillow"


def stats(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


def time_latency(predictor, cfgs: dict, photos: list[Path], warmup: int) -> tuple[dict, dict, list[str]]:
    """End-to-end and embed-alone milliseconds per runtime, the runtimes alternating which goes first."""
    from PIL import Image

    from geopin.features.embed import embed_images

    e2e = {r: [] for r in cfgs}
    embed = {r: [] for r in cfgs}
    errors: list[str] = []
    for i, p in enumerate(photos):
        order = list(cfgs) if i % 2 == 0 else list(reversed(cfgs))
        with Image.open(p) as im:
            im.load()
            img = im.convert("RGB")
        for runtime in order:
            predictor.embed_cfg = cfgs[runtime]
            t = time.perf_counter()
            (res,) = list(predictor.predict_paths([p]))
            e2e_ms = (time.perf_counter() - t) * 1e3
            if "error" in res:
                errors.append(res["error"])
                break
            t = time.perf_counter()
            embed_images([img], predictor.backbone, cfgs[runtime])
            embed_ms = (time.perf_counter() - t) * 1e3
            if i >= warmup:
                e2e[runtime].append(e2e_ms)
                embed[runtime].append(embed_ms)
    return e2e, embed, errors


TEXT_MODES = ("never", "auto", "always")


def time_text_modes(args, embed_cfg, photos: list[Path], warmup: int) -> dict:
    """End-to-end ms per photo with text never read, read where the model's text gate expects text ("auto", the
    default) and always read: the same photos, modes interleaved, ONNX Runtime; and how many photos each read."""
    from geopin.locate.predict import PredictConfig, Predictor

    predictors = {}
    for mode in TEXT_MODES:
        p = Predictor(PredictConfig(model_dir=args.model, top_k=args.top_k, text=mode))
        p.embed_cfg = embed_cfg
        if p.reads_text:
            p.prepare_text()
        predictors[mode] = p
    ms = {m: [] for m in TEXT_MODES}
    read = {m: 0 for m in TEXT_MODES}
    for i, path in enumerate(photos):
        order = TEXT_MODES if i % 2 == 0 else tuple(reversed(TEXT_MODES))
        for mode in order:
            t = time.perf_counter()
            (res,) = list(predictors[mode].predict_paths([path]))
            took = (time.perf_counter() - t) * 1e3
            if i >= warmup and "error" not in res:
                ms[mode].append(took)
                read[mode] += int(bool(res.get("text_read")))
    gate = predictors["auto"].model.text_gate
    return {"modes": {m: {**stats(ms[m]), "photos_read": read[m]} for m in TEXT_MODES},
            "gate": None if gate is None else {"threshold": gate.threshold, "trained": gate.quality}}


def compare_guesses(predictor, cfgs: dict, photos: list[Path], top_k: int, scratch: Path) -> dict:
    """Embed every photo on each runtime (embed pipeline, cache off), predict from the embeddings, count differences."""
    import numpy as np
    import pandas as pd

    from geopin.features.embed import embed_manifest
    from geopin.geo import haversine_km

    df = pd.DataFrame({"id": [str(p) for p in photos], "path": [str(p) for p in photos]})
    emb, seconds = {}, {}
    for runtime, cfg in cfgs.items():
        cfg = dataclasses.replace(cfg, use_cache=False, batch_size=32)
        summary = embed_manifest(df, scratch / f"emb-{runtime}", cfg, backbone=predictor.backbone)
        emb[runtime] = np.load(summary.embeddings_path)
        seconds[runtime] = round(summary.embed_seconds, 2)
    ok = np.isfinite(emb["torch"]).all(axis=1) & np.isfinite(emb["onnx"]).all(axis=1)
    diff = np.abs(emb["torch"][ok] - emb["onnx"][ok])
    res = {r: predictor.model.predict_embeddings(emb[r][ok], top_k=top_k) for r in cfgs}
    a, b = res["torch"], res["onnx"]
    km = haversine_km(np.array([r["lat"] for r in a]), np.array([r["lon"] for r in a]),
                      np.array([r["lat"] for r in b]), np.array([r["lon"] for r in b]))
    cell = [(x.get("most_likely") or {}).get("cell") != (y.get("most_likely") or {}).get("cell") for x, y in zip(a, b)]
    country = [x.get("country") != y.get("country") for x, y in zip(a, b)]
    return {
        "photos": int(ok.sum()),
        "failed": int((~ok).sum()),
        "embed_seconds": seconds,
        "max_abs_embedding_difference": float(diff.max()) if diff.size else None,
        "mean_abs_embedding_difference": float(diff.mean()) if diff.size else None,
        "guess_point_differs_any": int(np.sum(km > 0)),
        "guess_point_differs_over_1km": int(np.sum(km > 1.0)),
        "guess_point_max_km": round(float(km.max()), 4) if km.size else None,
        "most_likely_cell_differs": int(np.sum(cell)),
        "guess_country_differs": int(np.sum(country)),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # torch is not imported yet

    import onnxruntime
    import torch

    from geopin.io import write_json
    from geopin.locate.model import default_model_dir
    from geopin.locate.predict import PredictConfig, Predictor

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        predictor = Predictor(PredictConfig(model_dir=args.model, top_k=args.top_k, text="never"))
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    load_s = time.perf_counter() - t0
    base = dataclasses.replace(predictor.embed_cfg, threads=args.threads)
    cfgs = {r: dataclasses.replace(base, runtime=r) for r in RUNTIMES}
    timed = {**cfgs, "onnx-int8": dataclasses.replace(base, runtime="onnx", precision="int8")}
    model, backbone = predictor.model, predictor.backbone

    with tempfile.TemporaryDirectory(prefix="geopin-bench-predict-") as scratch:
        scratch = Path(scratch)
        photos, source = choose_photos(args, scratch)
        e2e, embed, errors = time_latency(predictor, timed, photos, args.warmup)
        if not e2e["torch"]:
            sys.exit(f"error: every photo failed, first: {errors[0] if errors else 'no photos'}")
        n_text = args.n if args.text_photos is None else args.text_photos
        text = time_text_modes(args, cfgs["onnx"], photos[: n_text + args.warmup], args.warmup) if n_text else None
        guesses = None
        if args.guesses != 0:
            gphotos, gsource = guess_photos(args, scratch)
            guesses = {"source": gsource, **compare_guesses(predictor, cfgs, gphotos, args.top_k, scratch)}
    load_after = os.getloadavg()

    rows = {f"{stage} {r}": stats(v[r]) for stage, v in (("end_to_end", e2e), ("embed", embed)) for r in TIMED}
    ratio = {stage: round(stats(v["torch"])["p50_ms"] / stats(v["onnx"])["p50_ms"], 3)
             for stage, v in (("end_to_end", e2e), ("embed", embed))}
    ratio_int8 = {stage: round(stats(v["torch"])["p50_ms"] / stats(v["onnx-int8"])["p50_ms"], 3)
                  for stage, v in (("end_to_end", e2e), ("embed", embed))}
    model_dir = Path(args.model) if args.model else default_model_dir()
    result = {
        "benchmark": "one-photo predict latency, model loaded, text never read; PyTorch vs ONNX Runtime interleaved",
        "photos": source,
        "n_photos": len(e2e["torch"]),
        "n_failed": len(errors),
        "warmup": args.warmup,
        "model_dir": str(model_dir),
        "model": {"n_train": model.meta.get("n_train"), "gallery": len(model.heads.gallery_lat),
                  "fine_cells": len(model.fine_cells)},
        "backbone": backbone.version,
        "embed_config": {"mode": base.mode, "long_side": base.long_side, "tta": list(base.tta), "threads": base.threads},
        "top_k": args.top_k,
        "predictor_load_s": round(load_s, 2),
        "stages_ms": rows,
        "p50_speedup_torch_over_onnx": ratio,
        "p50_speedup_torch_over_onnx_int8": ratio_int8,
        "goal_end_to_end_p50_ms": 35,
        "guesses": guesses,
        "text_modes": text,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "threads": base.threads or os.cpu_count(),
            "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "note": "machine may be shared with other jobs; see loadavg",
        },
        "command": "python bench/bench_predict.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }

    print(f"predict latency, one photo per call, text never read, model loaded ({len(e2e['torch'])} photos: {source})")
    print(f"model {model_dir}; backbone {backbone.name}; load {load_s:.1f} s; {base.threads or os.cpu_count()} threads, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"{'stage':<20} {'runtime':<8} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'max ms':>9}")
    for stage, v in (("end_to_end", e2e), ("embed", embed)):
        for r in TIMED:
            s = stats(v[r])
            print(f"{stage:<20} {r:<8} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} {s['mean_ms']:9.1f} {s['max_ms']:9.1f}")
        print(f"{'':<20} {'ratio':<8} {ratio[stage]:9.2f}   (torch p50 / onnx p50); int8 {ratio_int8[stage]:.2f}")
    if text is not None:
        print("\nwith text, ONNX Runtime, the same photos, modes interleaved:")
        print(f"{'text':<20} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'read':>9}")
        for m, s in text["modes"].items():
            print(f"{m:<20} {s['p50_ms']:9.1f} {s['p95_ms']:9.1f} {s['mean_ms']:9.1f} {s['photos_read']:>5}/{s['n']}")
    if guesses is not None:
        g = guesses
        print(f"\nguesses on {g['photos']} photos ({g['source']}): max |embedding difference| {g['max_abs_embedding_difference']:.2g}; "
              f"best guess moved >1 km: {g['guess_point_differs_over_1km']} (any: {g['guess_point_differs_any']}, "
              f"max {g['guess_point_max_km']} km); most likely cell differs: {g['most_likely_cell_differs']}; "
              f"country differs: {g['guess_country_differs']}")
    if errors:
        print(f"{len(errors)} photos failed, first: {errors[0]}")
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
