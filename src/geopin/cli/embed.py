"""`geopin embed` and `geopin backbones`: thin wrappers over geopin.features.embed and geopin.features.backbones."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.features.backbones import (
    BackboneUnavailable,
    backbone_status,
    list_backbones,
)
from geopin.features.embed import (
    EmbedConfig,
    OutputBusy,
    embed_manifest,
    embed_manifest_engine,
)
from geopin.features.onnx_forward import ExportFailed
from geopin.scale.engine import EngineConfig, EngineUnavailable


def embed(
    manifest: Path = typer.Argument(..., help="Manifest (Parquet or CSV) with id, path and sha256 columns, as written by `geopin ingest`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for embeddings.npy and embeddings.json."),
    backbone: str = typer.Option(EmbedConfig.backbone, "--backbone", "-b", help="Registered backbone (see `geopin backbones`)."),
    mode: str = typer.Option(EmbedConfig.mode, "--mode", help="whole: the full photo at its own aspect ratio; center_crop: the network's native square."),
    long_side: int = typer.Option(EmbedConfig.long_side, "--long-side", help="Long side in pixels of whole-mode inputs."),
    batch_size: int = typer.Option(EmbedConfig.batch_size, "--batch-size", help="Photos per forward pass (within one input shape)."),
    tta: str = typer.Option(",".join(EmbedConfig.tta), "--tta", help="Test-time augmentation, comma-separated: flip,crops (features are averaged)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Embedding cache root (default: $GEOPIN_CACHE/embeddings, else ~/.cache/geopin/embeddings)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads for the forward pass (default: all cores)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode threads (default: min(4, cores))."),
    runtime: str = typer.Option(EmbedConfig.runtime, "--runtime", help="Forward pass: onnx (ONNX Runtime; the network is exported once and cached under $GEOPIN_CACHE/onnx), torch, or auto (onnx when the export works and agrees with PyTorch, else torch, saying why)."),
    precision: str = typer.Option(EmbedConfig.precision, "--precision", help="Forward pass numbers: f32, or int8 (ONNX Runtime static quantization with ranges shipped for the backbone: about 2x faster, features within cosine ~0.99 of f32 but not the same; cached apart, and recorded so that a model trained on one precision is not fed the other)."),
    shard_size: int = typer.Option(EmbedConfig.shard_size, "--shard-size", help="Photos per cache shard (the most an interruption can lose)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary to stdout."),
    engine: str = typer.Option(EngineConfig.name, "--engine", help="local: this process (cached by content). ray: partitions on a Ray cluster, one backbone per worker, written to <out>/parts/part-NNNNN.parquet (a rerun skips finished parts), then the same embeddings.npy/.json. Needs `pip install 'geopin\\[cluster]'`; see docs/cluster.md."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: 'auto' (started on this node with `ray start`), HOST:PORT of the head, or ray://HOST:10001; default: start a local cluster of --engine-workers CPUs."),
    engine_workers: int = typer.Option(EngineConfig.workers, "--engine-workers", help="Ray workers, each holding one backbone and using 1 CPU (torch threads) per photo batch."),
    partition_size: int = typer.Option(EngineConfig.partition_size, "--partition-size", help="Photos per partition: the unit of retry, resume and output file."),
) -> None:
    """Compute backbone features for every photo of a manifest (cached by content; resumable)."""
    _sleeping_openmp_threads()
    with input_errors("embed", ValueError, FileNotFoundError, BackboneUnavailable, EngineUnavailable, ExportFailed):
        cfg = EmbedConfig(
            backbone=backbone, mode=mode, long_side=long_side, batch_size=batch_size,
            tta=tuple(t.strip() for t in tta.split(",") if t.strip()), cache_dir=cache_dir,
            threads=threads, workers=workers, shard_size=shard_size, use_cache=not no_cache, runtime=runtime,
            precision=precision,
        )
        engine_cfg = EngineConfig(engine, address=address, workers=engine_workers, partition_size=partition_size)
        try:
            if engine_cfg.name == "local":
                summary = embed_manifest(manifest, out, cfg)
            else:
                summary = embed_manifest_engine(manifest, out, cfg, engine_cfg)
        except OutputBusy as exc:  # another run writes --out: nothing was touched
            typer.echo(f"geopin embed: {exc}", err=True)
            raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(
            f"{summary.n} photos -> {summary.embeddings_path} ({summary.backbone}, dim {summary.dim}): "
            f"{summary.n_embedded} embedded ({summary.photos_per_s:.1f} photos/s), {summary.n_cached} from cache, "
            f"{summary.n_failed} failed"
        )


def _sleeping_openmp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (read once, when torch loads; a user's setting wins).

    Spinning threads compete with the decode threads for the cores; on a busy 2-core machine they made the
    forward pass of small batches 10-30x slower.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        logging.getLogger(__name__).debug("torch was imported before `geopin embed` could set OMP_WAIT_POLICY")


def backbones(json_out: bool = typer.Option(False, "--json", help="Print a machine-readable list to stdout.")) -> None:
    """List registered backbones and whether their weights are available on this machine."""
    rows = [backbone_status(name) for name in list_backbones()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "available" if r["available"] else f"unavailable: {r['reason']}"
        typer.echo(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  {state}")
