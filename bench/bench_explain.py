"""Explanation timings: Grad-CAM, occlusion and explain_photo end to end on a 384-px photo; characterize throughput.

The photo is the bundled public-domain example resized to a 384-px long side; characterize runs on
generated photos (3 countries x 4 photos, 5 crops each). Bounded: well under 3 minutes on 2 cores.

    python bench/bench_explain.py [--repeats 3]

Prints a table and writes bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from geopin.explain.characterize import CharacterizeConfig, characterize  # noqa: E402
from geopin.explain.maps import explain_photo, gradcam, occlusion_map  # noqa: E402
from geopin.features.embed import load_image  # noqa: E402
from geopin.io import write_json, write_parquet  # noqa: E402
from geopin.locate.predict import EXAMPLE_PHOTO, PredictConfig, Predictor  # noqa: E402

log = logging.getLogger("bench_explain")
RESULTS = Path(__file__).resolve().parent / "results" / "explain.json"


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def generated_manifest(folder: Path, per_country: int = 4) -> Path:
    towns = {"FR": (48.8566, 2.3522), "JP": (35.6895, 139.6917), "US": (40.7128, -74.0060)}
    rows = []
    for ci, (cc, (lat, lon)) in enumerate(towns.items()):
        for k in range(per_country):
            rng = np.random.default_rng(10 * ci + k)
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            path = folder / f"{cc}_{k}.jpg"
            coarse.resize((640, 480), Image.BICUBIC).save(path, quality=90)
            rows.append({"id": path.stem, "path": str(path), "lat": lat, "lon": lon})
    return write_parquet(pd.DataFrame(rows), folder / "manifest.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    predictor = Predictor(PredictConfig())
    img = load_image(EXAMPLE_PHOTO, "whole", 384)
    img.thumbnail((384, 384), Image.BICUBIC)
    gradcam(predictor, img)  # warm-up
    res = {
        "photo": {"source": EXAMPLE_PHOTO.name, "size": list(img.size)},
        "gradcam": timed(lambda: gradcam(predictor, img), max(5, args.repeats)),
        "occlusion": timed(lambda: occlusion_map(predictor, img), args.repeats),
    }
    last = {}

    def run_explain():
        last["r"] = explain_photo(predictor, img)

    res["explain_photo"] = timed(run_explain, args.repeats)
    res["explain_photo"]["parts_s"] = last["r"]["seconds"]
    res["explain_photo"]["occlusion_passes"] = last["r"]["occlusion"]["passes"]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generated_manifest(Path(tmp))
        t = time.perf_counter()
        summary = characterize(manifest, None, Path(tmp) / "out", predictor=predictor,
                               cfg=CharacterizeConfig(min_photos=2, max_photos=4, crops_per_country=8, clusters=3))
        seconds = time.perf_counter() - t
    res["characterize"] = {
        "countries": len(summary["countries"]),
        "photos": sum(c["n_used"] for c in summary["countries"]),
        "crops": summary["crops_embedded"],
        "seconds": seconds,
        "photos_per_s": sum(c["n_used"] for c in summary["countries"]) / seconds,
        "crops_per_s": summary["crops_per_s"],
    }
    res["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                      "torch": torch.__version__, "load_avg": os.getloadavg()}
    write_json(res, RESULTS)
    print(f"explanations on a {img.width}x{img.height} photo ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(f"{'what':<26}{'median':>10}{'min':>10}{'max':>10}")
    for key in ("gradcam", "occlusion", "explain_photo"):
        r = res[key]
        print(f"{key:<26}{r['median_s']:>9.2f}s{r['min_s']:>9.2f}s{r['max_s']:>9.2f}s")
    print(f"  occlusion forward passes: {res['explain_photo']['occlusion_passes']}")
    c = res["characterize"]
    print(f"characterize: {c['countries']} countries, {c['photos']} photos, {c['crops']} crops in {c['seconds']:.1f}s "
          f"({c['photos_per_s']:.2f} photos/s, {c['crops_per_s']:.1f} crops/s)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
