"""`geopin train`: fit the heads, the posterior and its calibration on cached embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.cells import Granularity
from geopin.locate.heads import ClassifierConfig
from geopin.locate.model import check_output_dir
from geopin.locate.train import TrainConfig, train


def train_cmd(
    manifest: Path = typer.Argument(..., help="Manifest Parquet from `geopin ingest`."),
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="Folder written by `geopin embed` for this manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (replaced atomically)."),
    scenario: str = typer.Option(
        TrainConfig.scenario, help="How held-out photos for fitting the posterior are chosen: 'group' (new photographers) or 'random' (archive completion)."
    ),
    granularity: Optional[list[str]] = typer.Option(None, help="NAME:MAX:MIN, repeatable, coarse to fine; default scales with the data."),
    k: int = typer.Option(TrainConfig.k, help="Neighbours retrieved per photo."),
    inner_folds: int = typer.Option(TrainConfig.inner_folds, help="Folds for the out-of-fold posterior fit."),
    epochs: int = typer.Option(ClassifierConfig.epochs, help="Classifier epochs."),
    hidden: int = typer.Option(ClassifierConfig.hidden, help="Classifier hidden width (0 = linear heads)."),
    split: Optional[Path] = typer.Option(None, help="Split Parquet (id, split) from `geopin split`; train on rows whose split is --split-value."),
    split_value: str = typer.Option("train", help="Which split value to train on."),
    seed: int = typer.Option(TrainConfig.seed, help="Seed of the classifier and the inner folds."),
    readings: Optional[Path] = typer.Option(None, "--readings", help="Text read off the training photos (`geopin read`): each evidence source's weight is then fit on held-out photos; without it no source counts."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Train a model: geocell classifier, retrieval gallery and a calibrated posterior."""
    with input_errors("train", ValueError, FileNotFoundError, KeyError):
        check_output_dir(out)  # a read-only or wrong --out fails now, not after the training
        grans = [Granularity.parse(g) for g in granularity] if granularity else None
        cfg = TrainConfig(
            granularities=grans,
            classifier=ClassifierConfig(epochs=epochs, hidden=hidden, seed=seed),
            k=k,
            scenario=scenario,
            inner_folds=inner_folds,
            seed=seed,
        )
        model = train(manifest, embeddings, out, cfg, split=split, split_value=split_value, readings=readings)
    summary = {
        "model": str(out),
        "n_train": model.meta["n_train"],
        "classes": {g: int((model.heads.cells.granularity == g).sum()) for g in model.heads.granularities},
        "params": model.params.to_dict(),
        "fit": model.meta["fit_report"],
        "seconds": model.meta["seconds"],
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        p = model.params
        typer.echo(f"model written to {out} ({summary['n_train']} photos, {summary['seconds']} s)")
        typer.echo("classes: " + ", ".join(f"{g} {n}" for g, n in summary["classes"].items()))
        typer.echo(
            f"posterior weights: prior {p.w_prior:.2f}, classifier {p.w_clf:.2f} (T={p.t_clf}), "
            f"neighbours {p.w_knn:.2f} (T={p.t_knn})"
        )
        if readings is not None:
            weights = ", ".join(f"{s} {w:g}" for s, w in sorted(p.clue_weights.items())) or "no source fired"
            typer.echo(f"evidence weights (fit on held-out photos): {weights}")
