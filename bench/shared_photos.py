"""The shared Im2GPS3k photos, ingested by photographer and embedded: what the accuracy benches start from.

Imported by the bench scripts (run as `python bench/NAME.py`, so this folder is on their path).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.dataset.ingest import IngestConfig, ingest
from geopin.dataset.manifest import read_manifest
from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings
from geopin.io import write_parquet

log = logging.getLogger("bench")


def shared_embedded(shared: Path, work: Path, limit: int | None = None, seed: int = 0,
                    embed_cfg: EmbedConfig | None = None) -> tuple[Path, pd.DataFrame, np.ndarray, dict]:
    """(manifest path, manifest, embeddings, embeddings meta) of the shared photos with an embedding; with
    `limit`, a seeded random subset of that many photos (a quick check, never the benchmark)."""
    labels = shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"skipped: {labels} not found (the benchmark needs the shared Im2GPS3k photos)")
    summary = ingest(labels, work / "dataset", IngestConfig(group_col="author"))
    manifest_path, emb_dir = summary.manifest_path, work / "emb"
    if limit is not None:
        full = read_manifest(manifest_path)
        pick = np.sort(np.random.default_rng(seed).permutation(len(full))[:limit])
        manifest_path = work / f"subset_{limit}" / "manifest.parquet"
        write_parquet(full.iloc[pick].reset_index(drop=True), manifest_path)
        emb_dir = manifest_path.parent / "emb"
        log.warning("--limit %d: %d of %d photos (a quick check, not the benchmark)", limit, len(pick), len(full))
    embed_manifest(manifest_path, emb_dir, embed_cfg or EmbedConfig())
    man = read_manifest(manifest_path)
    emb, meta = load_embeddings(emb_dir, man)
    ok = np.isfinite(emb).all(axis=1)
    return manifest_path, man[ok].reset_index(drop=True), np.asarray(emb[ok]), meta
