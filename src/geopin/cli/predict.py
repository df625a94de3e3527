"""`geopin predict` and `geopin demo`: where was this photo taken?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.images import IMAGE_SUFFIXES
from geopin.locate.predict import (
    EXAMPLE_PHOTO,
    EXAMPLE_TRUTH,
    PRECISION_HELP,
    TEXT_HELP,
    PredictConfig,
    Predictor,
    distance_to_truth_km,
    expand_paths,
    predict_engine,
)
from geopin.scale.engine import EngineConfig, EngineUnavailable


def _table(results: list[dict]) -> str:
    """The same answer as the JSON: the guess first, then the other candidate places by probability."""
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        conf = "  ".join(f"{k} km {v:4.0%}" for k, v in r["within_km"].items())
        where = ", ".join(x for x in (r.get("country_name"), r.get("continent")) if x) or "unknown country"
        lines.append(f"{r['path']}")
        lines.append(f"  in words     {r['summary']}")
        lines.append(f"  best guess   {r['lat']:9.4f} {r['lon']:10.4f}  {where}  cell {r['cell'] or '-'}")
        lines.append(f"  confidence   {conf}  (that the truth lies within each distance of the guess)")
        for e in r.get("evidence") or []:
            counted = f"weight {e['weight']:g}, {e['probability_before']:.0%} -> {e['probability_after']:.0%} there" if e["weight"] > 0 else "not weighed"
            lines.append(f"  evidence     {e['source']}: read \"{e['read']}\" -> {e['points_to']}  ({counted})")
        if r.get("evidence_error"):
            lines.append(f"  evidence     {r['evidence_error']}")
        for i, t in enumerate(r["top_k"]):
            label = "places       guess" if i == 0 else "             also "
            name = f"  {t['name']}" if t.get("name") else (f"  near {t['near']}" if t.get("near") else "")
            lines.append(
                f"  {label} {t['lat']:9.4f} {t['lon']:10.4f}  {t['country'] or '??':2}  {t['probability']:5.1%}  cell {t['cell'] or '-'}{name}"
            )
        if r.get("exif_gps"):
            g = r["exif_gps"]
            lines.append(f"  exif_gps     {g['lat']:9.4f} {g['lon']:10.4f}  (the photo carries GPS; the guess uses pixels only)")
    return "\n".join(lines)


def predict_cmd(
    paths: list[Path] = typer.Argument(..., help="Photos or folders (searched recursively)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    top_k: int = typer.Option(PredictConfig.top_k, "--top-k", "-k", help="How many candidate places to list."),
    as_json: bool = typer.Option(False, "--json", help="JSON array of results on stdout."),
    text: str = typer.Option(PredictConfig.text, "--text", help=TEXT_HELP),
    precision: Optional[str] = typer.Option(PredictConfig.precision, "--precision", help=PRECISION_HELP),
    engine: str = typer.Option(EngineConfig.name, "--engine", help="local: this process. ray: partitions on a Ray cluster, one model per worker; writes <out>/parts/part-NNNNN.parquet (a rerun skips finished parts), <out>/predictions.parquet and <out>/predictions.json. Needs `pip install 'geopin\\[cluster]'`; see docs/cluster.md."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder of the engine's parts and predictions (required with --engine ray)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: 'auto' (started on this node with `ray start`), HOST:PORT of the head, or ray://HOST:10001; default: start a local cluster of --engine-workers CPUs."),
    engine_workers: int = typer.Option(EngineConfig.workers, "--engine-workers", help="Ray workers, each holding one model and using 1 CPU."),
    partition_size: int = typer.Option(EngineConfig.partition_size, "--partition-size", help="Photos per partition: the unit of retry, resume and output file."),
) -> None:
    """Predict where each photo was taken: best guess, top-k places, within-km confidences.

    Exits 2 when the arguments hold no photo at all, 1 when every photo failed.
    """
    photos = expand_paths(paths)  # before the model loads: "nothing to do" must be quick
    if not photos:
        typer.echo(f"geopin predict: no photos in {', '.join(map(str, paths))} "
                   f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in folders recursively)", err=True)
        raise typer.Exit(2)
    with input_errors("predict", ValueError, FileNotFoundError, EngineUnavailable):
        engine_cfg = EngineConfig(engine, address=address, workers=engine_workers, partition_size=partition_size)
        if engine_cfg.name != "local" and out is None:
            raise ValueError(f"--engine {engine} needs --out (the folder of its parts, the resume, and the predictions)")
    if engine_cfg.name != "local":
        with input_errors("predict", ValueError, FileNotFoundError, EngineUnavailable):
            results, _ = predict_engine(photos, out, PredictConfig(model_dir=model, top_k=top_k, text=text, precision=precision), engine_cfg)
        typer.echo(json.dumps(results, indent=2) if as_json else _table(results))
        if results and all("error" in r for r in results):
            raise typer.Exit(1)
        return
    with input_errors("predict"):
        predictor = Predictor(PredictConfig(model_dir=model, top_k=top_k, text=text, precision=precision))
    results = []
    for r in predictor.predict_paths(photos):
        results.append(r)
        if not as_json:
            typer.echo(_table([r]))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    if results and all("error" in r for r in results):
        raise typer.Exit(1)


def demo_cmd(
    as_json: bool = typer.Option(False, "--json", help="JSON result on stdout."),
) -> None:
    """Predict the bundled example photo (a Cape Canaveral launch pad) and print the distance to the truth."""
    with input_errors("demo"):
        predictor = Predictor(PredictConfig())
    r = next(predictor.predict_paths([EXAMPLE_PHOTO]))
    if "error" in r:
        typer.echo(f"error: {r['error']}", err=True)
        raise typer.Exit(1)
    r["truth"] = {"lat": EXAMPLE_TRUTH[0], "lon": EXAMPLE_TRUTH[1]}
    r["error_km"] = distance_to_truth_km(r, EXAMPLE_TRUTH)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(_table([r]))
    typer.echo(f"  truth        {EXAMPLE_TRUTH[0]:9.4f} {EXAMPLE_TRUTH[1]:10.4f}  US  (Space Launch Complex 40, Cape Canaveral)")
    typer.echo(f"  distance from best guess to truth: {r['error_km']:.0f} km")
