"""Rebuild the model bundled with geopin from the shared Im2GPS3k photos.

    python scripts/build_default_model.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-default]

Ingests labels.csv (group = photographer), embeds with EfficientNet-Lite0 (cached), reads the text on
every photo (OCR; `--readings` reuses a `geopin read` output for the same manifest), trains on all photos
with the posterior and the evidence sources' weights fit on photographer folds, fits the scene probe on
the labels' Places365 shares (indoor, natural, urban), and writes src/geopin/data/default_model (swapped in
whole, then read back and checked). The photos and labels stay in ../shared; the model keeps only cells,
weights, embeddings and locations.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from geopin.dataset.ingest import IngestConfig, ingest
from geopin.dataset.manifest import read_manifest
from geopin.evidence.ocr import OcrConfig
from geopin.evidence.readings import read_manifest_engine
from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings
from geopin.locate.scene import SceneProbe, scene_shares
from geopin.scale.engine import EngineConfig
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
    ap.add_argument("--readings", type=Path, default=None, help="a `geopin read` output for this manifest (default: read into WORK)")
    args = ap.parse_args()
    setup_logging()
    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"{labels}: not found; the default model is built from the shared Im2GPS3k photos")
    check_output_dir(args.out)  # fail now, not after embedding and training
    summary = ingest(labels, args.work / "dataset", IngestConfig(group_col="author"))
    log.info("ingest: kept %d of %d", summary.n_kept, summary.n_input)
    embed_manifest(summary.manifest_path, args.work / "emb", EmbedConfig())
    readings = args.readings
    if readings is None:
        readings = args.work / "readings"
        read_manifest_engine(summary.manifest_path, readings, OcrConfig(), engine=EngineConfig("local"))
    model = train(summary.manifest_path, args.work / "emb", args.out, TrainConfig(scenario="group"), readings=readings)
    model.scene = scene_probe(summary.manifest_path, args.work / "emb", labels)
    model.save(args.out)
    GeoModel.load(args.out)  # what the package will ship must read back and match its checksums
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    log.info("default model written to %s (%.1f MB, checksums verified): %s", args.out, size, model.params)


def scene_probe(manifest: Path, emb_dir: Path, labels: Path) -> SceneProbe:
    """The indoor / natural / urban probe on the training photos' embeddings (their Places365 shares)."""
    import pandas as pd

    man = read_manifest(manifest)
    emb, meta = load_embeddings(emb_dir, man)
    table = pd.read_csv(labels)
    shares = table.assign(id=table["image"].astype(str)).set_index("id")  # the manifest id is the table's image
    found = man["id"].isin(shares.index).to_numpy() & np.isfinite(emb).all(axis=1)
    if not found.any():
        raise SystemExit(f"{labels}: no scene shares for the manifest's photos (ids like {man['id'].iloc[0]!r})")
    probe = SceneProbe(backbone=str(meta.get("version", ""))).fit(np.asarray(emb)[found], scene_shares(shares.loc[man["id"][found]]))
    log.info("scene probe fit on %d photos", found.sum())
    return probe


if __name__ == "__main__":
    main()
