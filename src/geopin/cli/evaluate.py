"""`geopin evaluate`: cross-validated comparison of the model with the prior, baselines and oracle."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geopin.cli._common import input_errors
from geopin.dataset.manifest import read_manifest
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.evaluation.report import write_evaluation
from geopin.evaluation.similarity import similarity_by_distance
from geopin.evaluation.tables import evaluation_text
from geopin.features.embed import load_embeddings
from geopin.locate.train import manifest_clues


def evaluate_cmd(
    manifest: Path = typer.Argument(..., help="Manifest Parquet from `geopin ingest`."),
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="Folder written by `geopin embed` for this manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.json, per-photo predictions and PNG plots."),
    folds: int = typer.Option(EvalConfig.folds, help="Outer folds per scenario."),
    scenario: list[str] = typer.Option(list(EvalConfig.scenarios), help="'group' (new photographers) and/or 'random' (archive completion)."),
    seed: int = typer.Option(EvalConfig.seed, help="Seed of the folds and the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout."),
    readings: Path | None = typer.Option(
        None, "--readings", help="Text read off these photos (`geopin read`): each fold's model then weighs the evidence "
                                 "sources (weights fit on its own training photos), beside the same model on pixels only."),
    compare_embeddings: Path | None = typer.Option(
        None, "--compare-embeddings",
        help="A second embedding folder for the same manifest (e.g. before fine-tuning): its similarity-by-distance "
             "goes beside the first, with the paired difference of the near-minus-far gap."),
) -> None:
    """Compare model, classifier (per level, hierarchical), nearest neighbour, prior constant and oracle.

    With fewer photographers (or photos) than --folds, the folds the data allows are used and the
    report says so; every number comes with a 95 % interval over photographers. Also: embedding
    similarity against distance in km (do photos near each other look alike?), once on all photos.
    """
    with input_errors("evaluate", ValueError, FileNotFoundError, KeyError):
        cfg = EvalConfig(scenarios=tuple(scenario), folds=folds, seed=seed)
        man = read_manifest(manifest)
        emb, meta = load_embeddings(embeddings, man)
        ref, ref_meta = load_embeddings(compare_embeddings, man) if compare_embeddings else (None, {})
    import numpy as np

    ok = np.isfinite(emb).all(axis=1)
    both = ok if ref is None else ok & np.isfinite(ref).all(axis=1)  # similarity: rows both sets have
    sub = man[both]
    man = man[ok].reset_index(drop=True)
    groups = man["group"].to_numpy() if man["group"].notna().all() else None
    with input_errors("evaluate", ValueError, FileNotFoundError):
        clues = manifest_clues(man["id"].astype(str).tolist(), readings)[0] if readings is not None else None
        report = evaluate_cv(emb[ok], man.lat.to_numpy(), man.lon.to_numpy(), groups, cfg, clues=clues)
        report["similarity_km"] = similarity_by_distance(
            emb[both], sub.lat.to_numpy(), sub.lon.to_numpy(),
            sub["group"].to_numpy() if sub["group"].notna().all() else None, seed=seed,
            reference=None if ref is None else ref[both], label=_embedding_label(embeddings, meta),
            reference_label=_embedding_label(compare_embeddings, ref_meta))
    doc, plots, html = write_evaluation(report, man, out)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    typer.echo(evaluation_text(report))
    typer.echo(f"\nreport: {out / 'report.json'}; plots: {', '.join(p.name for p in plots)}; open {html} in a browser")


def _embedding_label(folder: Path | None, meta: dict) -> str:
    """How the report names an embedding set: its folder and backbone."""
    return "" if folder is None else f"{folder.name} ({meta.get('backbone', 'unknown backbone')})"
