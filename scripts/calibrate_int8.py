"""Compute a backbone's int8 calibration table and ship it as package data (geopin/data/int8/<backbone>.json).

    python scripts/calibrate_int8.py                         # efficientnet_lite0 on 256 shared photos
    python scripts/calibrate_int8.py --backbone efficientnet_lite2 --n 256 --seed 0

The table holds, for every activation the int8 quantizer needs, its lowest and highest value over a fixed,
seeded sample of the shared Im2GPS3k photos (at most --per-author photos from each photographer, so that many
photographers' cameras and scenes are in it), computed by ONNX Runtime's own MinMax calibrator on the
pre-processed f32 export (geopin.features.quantize). The result depends only on that sample, the weights, torch
and onnxruntime: never on a user's photos. It holds no pixels and no file names (only a hash of the sample's
names, so a rerun can be checked to have drawn the same one). Run it again when `--precision int8` says the
table does not fit the export (another torch or onnxruntime names the tensors otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOPIN_SHARED_IM2GPS", ROOT.parent / "shared" / "data" / "im2gps3k"))
log = logging.getLogger("calibrate_int8")


def sample(labels, n: int, per_author: int, seed: int) -> list[str]:
    """Up to `per_author` photos from each photographer, photographers and photos in a seeded order, until n."""
    import numpy as np

    rng = np.random.default_rng(seed)
    authors = sorted(labels["author"].astype(str).unique())
    rng.shuffle(authors)
    by_author = {a: sorted(g["image"]) for a, g in labels.groupby(labels["author"].astype(str))}
    picked: list[str] = []
    for rnd in range(per_author):
        for a in authors:
            photos = by_author[a]
            if rnd == 0:
                rng.shuffle(photos)
            if rnd < len(photos) and len(picked) < n:
                picked.append(photos[rnd])
    return picked


def main(argv: list[str] | None = None) -> int:
    import onnxruntime
    import pandas as pd
    import torch

    from geopin.dataset.images import ImageError, decode_rgb
    from geopin.features.backbones import DEFAULT_BACKBONE, create_backbone
    from geopin.features.onnx_forward import INPUT, checked_session, export_path
    from geopin.features.quantize import SETTINGS, TABLE_FORMAT, calibrate, pre_process, shipped_table_path
    from geopin.io import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder with labels.csv (image, author) and the photos")
    ap.add_argument("--n", type=int, default=256, help="photos in the sample")
    ap.add_argument("--per-author", type=int, default=2, help="most photos from one photographer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: the package's data/int8/<backbone>.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    labels_path = args.shared / "labels.csv"
    if not labels_path.exists():
        print(f"error: {labels_path} not found (set GEOPIN_SHARED_IM2GPS or --shared)", file=sys.stderr)
        return 2
    labels = pd.read_csv(labels_path)
    names = sample(labels, args.n, args.per_author, args.seed)
    authors = labels.set_index("image").loc[names, "author"].astype(str).nunique()
    log.info("%d photos by %d photographers", len(names), authors)

    backbone = create_backbone(args.backbone)
    checked_session(backbone, os.cpu_count() or 1)  # the f32 export, made (or read) and checked against PyTorch
    f32 = export_path(backbone)

    def feeds():
        for name in names:
            try:
                img = decode_rgb(args.shared / name)
            except (OSError, ImageError) as exc:
                log.warning("skipping %s: %s", name, exc)
                continue
            yield {INPUT: backbone.preprocess(img).numpy()[None]}

    with tempfile.TemporaryDirectory(prefix="geopin-calibrate-") as tmp:
        pre = pre_process(f32, Path(tmp) / "pre.onnx")
        ranges = calibrate(pre, feeds(), Path(tmp))
    out = args.out or shipped_table_path(backbone.name)
    table = {
        "format": TABLE_FORMAT,
        "backbone": backbone.name,
        "version": backbone.version,
        "settings": SETTINGS,
        "made_with": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "sample": {
            "source": "shared Im2GPS3k photos (labels.csv)", "photos": len(names), "photographers": int(authors),
            "per_author": args.per_author, "seed": args.seed, "mode": backbone.config.mode,
            "long_side": backbone.config.long_side,
            "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        },
        "ranges": {k: [lo, hi] for k, (lo, hi) in sorted(ranges.items())},
    }
    write_json(table, out)
    print(f"{len(ranges)} tensor ranges from {len(names)} photos by {authors} photographers -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
