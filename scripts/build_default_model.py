"""Rebuild the model bundled with geopin from the shared Im2GPS3k photos.

    python scripts/build_default_model.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-default]

Ingests labels.csv (group = photographer), embeds with EfficientNet-Lite0 (cached), trains on all
photos with the posterior fit on photographer folds, and writes src/geopin/data/default_model (swapped
in whole, then read back and checked). The photos and labels stay in ../shared; the model keeps only
cells, weights, embeddings and locations.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from geopin.dataset.ingest import IngestConfig, ingest
from geopin.features.embed import EmbedConfig, embed_manifest
from geopin.locate.model import GeoModel, check_output_dir, default_model_dir
from geopin.locate.train import TrainConfig, train
from geopin.log import setup_logging

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("build_default_model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-default"))
    ap.add_argument("--out", type=Path, default=default_model_dir())
    args = ap.parse_args()
    setup_logging()
    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"{labels}: not found; the default model is built from the shared Im2GPS3k photos")
    check_output_dir(args.out)  # fail now, not after embedding and training
    summary = ingest(labels, args.work / "dataset", IngestConfig(group_col="author"))
    log.info("ingest: kept %d of %d", summary.n_kept, summary.n_input)
    embed_manifest(summary.manifest_path, args.work / "emb", EmbedConfig())
    model = train(summary.manifest_path, args.work / "emb", args.out, TrainConfig(scenario="group"))
    GeoModel.load(args.out)  # what the package will ship must read back and match its checksums
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    log.info("default model written to %s (%.1f MB, checksums verified): %s", args.out, size, model.params)


if __name__ == "__main__":
    main()
