"""`geopin build`: one command from a table or photo folder to a trained, evaluated model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from geopin.cli._common import input_errors
from geopin.dataset.cells import Granularity
from geopin.dataset.faces import FaceDetectorUnavailable
from geopin.dataset.fetch import FetchConfig
from geopin.features.backbones import BackboneUnavailable
from geopin.features.embed import OutputBusy
from geopin.pipeline.build import BuildConfig, BuildStopped, build
from geopin.scale.engine import EngineConfig, EngineUnavailable


def build_cmd(
    source: Path = typer.Argument(..., help="A CSV/Parquet table (image, lat, lon[, author]) or a folder of "
                                            "geotagged photos."),
    out: Path = typer.Option(..., "--out", "-o", help="Build folder: dataset/, cells/, split.parquet, emb/, "
                                                      "model/, eval/ and build.json."),
    group_col: str | None = typer.Option(None, help="Table: group (photographer) column; default 'author' "
                                                       "when the table has it, else none."),
    group_from: str = typer.Option(BuildConfig.group_from,
                                   help="Folder: group from 'subfolder', 'artist' (EXIF) or 'none'."),
    lat_col: str = typer.Option(BuildConfig.lat_col, help="Table: latitude column."),
    lon_col: str = typer.Option(BuildConfig.lon_col, help="Table: longitude column."),
    image_col: str = typer.Option(BuildConfig.image_col, help="Table: image path column."),
    image_root: Path | None = typer.Option(None, help="Table: folder that relative image paths start from."),
    granularity: list[str] | None = typer.Option(None, help="NAME:MAX:MIN, repeatable, coarse to fine; "
                                                               "default scales with the data."),
    folds: int = typer.Option(BuildConfig.folds,
                              help="Folds for the split and the evaluation (fewer when the data allows fewer)."),
    evaluate: bool = typer.Option(BuildConfig.evaluate, "--evaluate/--no-evaluate",
                                  help="Cross-validated evaluation at the end."),
    read_text: bool = typer.Option(BuildConfig.read_text, "--read-text/--no-read-text",
                                   help="Read the text on every photo (OCR) so that training weighs the evidence "
                                        "sources (place names, scripts, phone numbers, ...) out of fold."),
    backbone: str = typer.Option(BuildConfig.backbone, "--backbone", "-b", help="Registered backbone."),
    long_side: int = typer.Option(BuildConfig.long_side, help="Long side in pixels of the photos fed to the backbone."),
    cache_dir: Path | None = typer.Option(None, help="Embedding cache root (default: $GEOPIN_CACHE/embeddings)."),
    epochs: int = typer.Option(BuildConfig.epochs, help="Classifier epochs."),
    hidden: int = typer.Option(BuildConfig.hidden, help="Classifier hidden width (0 = linear heads)."),
    k: int = typer.Option(BuildConfig.k, help="Neighbours retrieved per photo."),
    inner_folds: int = typer.Option(BuildConfig.inner_folds, help="Folds for the out-of-fold posterior fit."),
    workers: int = typer.Option(0, help="Ingest worker processes (0 = one per core)."),
    timeout: float = typer.Option(FetchConfig.timeout_s, "--timeout", help="URL rows: the longest silence of a "
                                  "download and each URL's retry budget: a dead or stalled URL is rejected as "
                                  "download_timeout after about this many seconds."),
    seed: int = typer.Option(BuildConfig.seed, help="Seed of the split, the training and the evaluation."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
    engine: str = typer.Option(EngineConfig.name, "--engine", help="Where ingest and embed run: local (this machine) "
                               "or ray (partitions on a Ray cluster; the photos, downloads included, must be at the same "
                               "path on every worker; see docs/cluster.md). The results, and so what a rerun skips, "
                               "do not depend on it."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join: 'auto', HOST:PORT of the head, "
                                       "or ray://HOST:10001; default: start a local cluster of --engine-workers CPUs."),
    engine_workers: int = typer.Option(EngineConfig.workers, "--engine-workers",
                                       help="Ray workers (1 CPU each; embed: one backbone each)."),
    partition_size: int = typer.Option(EngineConfig.partition_size, "--partition-size",
                                       help="Photos per partition: the unit of retry, resume and output file."),
) -> None:
    """Ingest, cells, split, embed, read, train and evaluate; a rerun skips the stages whose inputs did not change.

    Exits 1 when a stage leaves nothing to build on (e.g. ingest kept no photo), 2 on unusable input.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with input_errors("build", ValueError, FileNotFoundError, KeyError, BackboneUnavailable, FaceDetectorUnavailable,
                      EngineUnavailable):
        cfg = BuildConfig(
            lat_col=lat_col, lon_col=lon_col, image_col=image_col, group_col=group_col, group_from=group_from,
            image_root=image_root, workers=workers or None, fetch=FetchConfig(timeout_s=timeout),
            granularities=tuple(Granularity.parse(g) for g in granularity) if granularity else None,
            folds=folds, seed=seed, evaluate=evaluate, read_text=read_text, backbone=backbone, long_side=long_side,
            cache_dir=cache_dir, k=k, inner_folds=inner_folds, epochs=epochs, hidden=hidden,
            engine=EngineConfig(engine, address=address, workers=engine_workers, partition_size=partition_size),
        )
        try:
            result = build(source, out, cfg)
        except (BuildStopped, OutputBusy) as exc:
            typer.echo(f"geopin build: {exc}", err=True)
            raise typer.Exit(1) from None
    if as_json:
        doc = {key: value for key, value in result.items() if key != "evaluation_text"}
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    for name, rec in result["stages"].items():
        typer.echo(f"{name:<9} {rec['status']:<8} {rec['seconds']:.1f} s")
    typer.echo(f"split: {result['split']['label']}")
    if "evaluation_text" in result:
        typer.echo(result["evaluation_text"])
        typer.echo(f"\nreport: {result['evaluation']['report']}; open {result['evaluation']['html']} in a browser")
    typer.echo(f"model: {result['model']}  (use: geopin predict PHOTO --model {result['model']})")
