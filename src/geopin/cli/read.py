"""`geopin read`: a thin wrapper over geopin.evidence.readings.read_manifest_engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.evidence.ocr import TESSERACT_MODES, OcrConfig, OcrUnavailable
from geopin.evidence.readings import READINGS_FILE, read_manifest_engine
from geopin.features.embed import OutputBusy
from geopin.scale.engine import EngineConfig, EngineUnavailable


def read_cmd(
    manifest: Path = typer.Argument(..., help="Manifest (Parquet or CSV) with id and path columns, as written by `geopin ingest`."),
    out: Path = typer.Option(..., "--out", "-o", help=f"Output folder for {READINGS_FILE} (and parts/, the resume)."),
    tesseract: str = typer.Option(OcrConfig.tesseract, "--tesseract", help=f"Re-read each text box with tesseract's non-Latin script models: {'|'.join(TESSERACT_MODES)} (auto: when tesserocr and the models are installed; always: an error when they are not)."),
    min_score: float = typer.Option(OcrConfig.min_score, "--min-score", help="Drop lines read with less confidence (0..1)."),
    threads: int = typer.Option(OcrConfig.threads, "--threads", help="OCR threads of the local engine (on ray: --cpus-per-worker)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable summary to stdout."),
    engine: str = typer.Option(EngineConfig.name, "--engine", help="local: this process. ray: partitions on a Ray cluster, one OCR reader per worker. Either way parts are written to <out>/parts/part-NNNNN.parquet and a rerun skips finished parts. Ray needs `pip install 'geopin\\[cluster]'`; see docs/cluster.md."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join: 'auto' (started on this node with `ray start`), HOST:PORT of the head, or ray://HOST:10001; default: start a local cluster of --engine-workers CPUs."),
    engine_workers: int = typer.Option(EngineConfig.workers, "--engine-workers", help="Ray workers, each holding one OCR reader."),
    cpus_per_worker: int = typer.Option(EngineConfig.cpus_per_worker, "--cpus-per-worker", help="Ray CPUs (and OCR threads) of each worker."),
    partition_size: int = typer.Option(EngineConfig.partition_size, "--partition-size", help="Photos per partition: the unit of retry, resume and output file."),
) -> None:
    """Read the text on every photo of a manifest (OCR, resumable) into readings.parquet for the evidence sources."""
    with input_errors("read", ValueError, FileNotFoundError, OcrUnavailable, EngineUnavailable):
        cfg = OcrConfig(tesseract=tesseract, min_score=min_score, threads=threads)
        engine_cfg = EngineConfig(engine, address=address, workers=engine_workers, partition_size=partition_size,
                                  cpus_per_worker=cpus_per_worker)
        try:
            summary = read_manifest_engine(manifest, out, cfg, engine_cfg)
        except OutputBusy as exc:  # another run writes --out: nothing was touched
            typer.echo(f"geopin read: {exc}", err=True)
            raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo(
            f"{summary.n} photos -> {summary.readings_path} ({'+'.join(summary.engines)}): {summary.n_with_text} with text "
            f"({summary.n_lines} lines), {summary.n_failed} failed, {summary.seconds:.1f} s"
        )
