"""`geopin finetune`: fine-tune the backbone's last blocks on a manifest's training photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.features.backbones import BackboneUnavailable
from geopin.locate.finetune import FinetuneConfig, finetune


def finetune_cmd(
    manifest: Path = typer.Argument(..., help="Manifest Parquet from `geopin ingest`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (weights.pt, finetune.json); use it as --backbone finetuned:DIR."),
    split: Optional[Path] = typer.Option(None, help="Split Parquet (id, split) from `geopin split`; fine-tune on rows whose split is --split-value (default: every photo)."),
    split_value: str = typer.Option("train", help="Which split value to fine-tune on."),
    backbone: str = typer.Option(FinetuneConfig.backbone, "--backbone", "-b", help="Base backbone (an EfficientNet-Lite)."),
    train_blocks: int = typer.Option(FinetuneConfig.train_blocks, help="Last MBConv blocks trained (with the head conv)."),
    views: int = typer.Option(FinetuneConfig.views, help="Augmented views per photo, computed once through the frozen blocks and cached."),
    crop_size: int = typer.Option(FinetuneConfig.crop_size, help="Side of each training view (a multiple of 32)."),
    flip: bool = typer.Option(FinetuneConfig.flip, "--flip/--no-flip", help="Mirror half of the views (off: text and driving side carry the place)."),
    epochs: int = typer.Option(FinetuneConfig.epochs, help="Training epochs (the best one on held-out photographers is kept)."),
    max_minutes: Optional[float] = typer.Option(FinetuneConfig.max_minutes, help="Wall-time budget: stop after the epoch that would overrun it."),
    lr: float = typer.Option(FinetuneConfig.lr, help="Learning rate of the trained blocks (the cell head: 10x)."),
    batch_size: int = typer.Option(FinetuneConfig.batch_size, help="Views per training step."),
    contrastive_weight: float = typer.Option(FinetuneConfig.contrastive_weight, help="Weight of the GPS-contrastive (GeoCLIP-style) term; 0: off."),
    val_fraction: float = typer.Option(FinetuneConfig.val_fraction, help="Photographers held out of the training photos to pick the epoch."),
    device: str = typer.Option(FinetuneConfig.device, help="auto (GPU when torch sees one), cpu or cuda."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where cached activations go (default: <geopin cache>/finetune-prefix)."),
    seed: int = typer.Option(FinetuneConfig.seed, help="Seed of the views, the held-out photographers and the training."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary."),
) -> None:
    """Fine-tune the last blocks of the backbone on haversine-smoothed geocell labels (resumable from its cache)."""
    from geopin.dataset.splits import read_split

    with input_errors("finetune", ValueError, FileNotFoundError, KeyError, BackboneUnavailable):
        cfg = FinetuneConfig(
            backbone=backbone, train_blocks=train_blocks, views=views, crop_size=crop_size, flip=flip, epochs=epochs,
            max_minutes=max_minutes, lr=lr, batch_size=batch_size, contrastive_weight=contrastive_weight,
            val_fraction=val_fraction, seed=seed, device=device, cache_dir=cache_dir,
        )
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: manifest not found (run `geopin ingest` first)")
        train_ids = None
        if split is not None:
            train_ids = read_split(split, split_value)
        summary = finetune(manifest, out, cfg, train_ids=train_ids)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    last = summary["history"][summary["best_epoch"]]
    typer.echo(
        f"fine-tuned {summary['base_backbone']} ({summary['train_blocks']} blocks) on {summary['n_photos']} photos "
        f"in {summary['seconds']} s -> {out}"
    )
    typer.echo(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}: {json.dumps(last)}")
    if summary["stopped_on_time"]:
        typer.echo(f"stopped on time (--max-minutes {max_minutes})")
    if summary["n_failed"]:
        typer.echo(f"{summary['n_failed']} photo(s) skipped (see {out / 'finetune.json'})")
    typer.echo(f"use it: geopin embed MANIFEST --backbone finetuned:{out.resolve()} --out EMB")
