"""`geopin ingest`: build the photo manifest from a table or a folder of geotagged photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.faces import FaceDetectorUnavailable
from geopin.dataset.fetch import FetchConfig
from geopin.dataset.ingest import IngestConfig, IngestInputError, ingest
from geopin.scale.engine import EngineConfig, EngineUnavailable


def ingest_cmd(
    source: Path = typer.Argument(..., help="A CSV/Parquet table of image paths with lat/lon, or a folder of "
                                            "photos with GPS in their EXIF (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for manifest.parquet, rejects.parquet/.csv."),
    lat_col: str = typer.Option(IngestConfig.lat_col, help="Table: latitude column."),
    lon_col: str = typer.Option(IngestConfig.lon_col, help="Table: longitude column."),
    image_col: str = typer.Option(IngestConfig.image_col, help="Table: image path column (relative paths resolve "
                                  "against the table's folder or --image-root)."),
    group_col: Optional[str] = typer.Option(None, help="Table: group column, e.g. the photographer."),
    image_root: Optional[Path] = typer.Option(None, help="Table: folder that relative image paths start from."),
    group_from: str = typer.Option(IngestConfig.group_from, help="Folder: group from 'subfolder' (first folder "
                                   "under SOURCE), 'artist' (EXIF Artist) or 'none'."),
    faces: bool = typer.Option(IngestConfig.faces, "--faces/--no-faces", help="Drop photos whose faces cover more "
                               "than --face-threshold of the image."),
    face_threshold: float = typer.Option(IngestConfig.face_threshold,
                                         help="Face filter: largest allowed fraction of the image area."),
    min_side: int = typer.Option(IngestConfig.min_side,
                                 help="Reject photos whose smaller side is below this many pixels."),
    max_pixels: Optional[int] = typer.Option(None, help="Reject photos above this many pixels (default: Pillow's limit)."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
    chunk_size: int = typer.Option(IngestConfig.chunk_size,
                                   help="Photos per unit of work (and per resumable part file)."),
    store: Optional[Path] = typer.Option(None, help="URL rows: folder the downloads are stored in, by content "
                                                    "hash, with a ledger so a rerun fetches nothing twice "
                                                    "(default: OUT/photos). With --engine ray every worker "
                                                    "writes here: it must be the same shared folder on every node."),
    download_workers: int = typer.Option(FetchConfig.workers, help="URL rows: downloads at once."),
    retries: int = typer.Option(FetchConfig.retries, help="URL rows: retries after a timeout, connection error, "
                                "HTTP 429 or 5xx (exponential backoff); 4xx answers are not retried."),
    timeout: float = typer.Option(FetchConfig.timeout_s, "--timeout", help="URL rows: the longest silence of a "
                                  "download and each URL's retry budget: a dead or stalled URL is rejected as "
                                  "download_timeout after about this many seconds."),
    max_bytes: int = typer.Option(FetchConfig.max_bytes, help="URL rows: larger downloads are rejected as too_large."),
    storage_option: list[str] = typer.Option([], "--storage-option", help="URL rows: KEY=VALUE passed to the fsspec "
                                             "filesystem (repeatable), e.g. endpoint_url=http://127.0.0.1:9000 "
                                             "for an S3-compatible server. s3:// credentials come from the usual "
                                             "AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                             "AWS_PROFILE, ~/.aws); the endpoint also from AWS_ENDPOINT_URL. "
                                             "s3:// needs the s3 extra: pip install 'geopin\\[s3]'."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    engine: str = typer.Option(EngineConfig.name, "--engine", help="local: this machine's processes (URLs fetched "
                               "first, with a ledger in --store). ray: partitions on a Ray cluster, each downloading its own URLs "
                               "into --store (which must be the same shared folder on every worker) and checking its "
                               "photos, written to OUT/parts/part-NNNNN.parquet (a rerun skips finished parts), then "
                               "the same manifest and rejects. Needs `pip install 'geopin\\[cluster]'`; see "
                               "docs/cluster.md."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join: 'auto' (started on this node "
                                          "with `ray start`), HOST:PORT of the head, or ray://HOST:10001; default: "
                                          "start a local cluster of --engine-workers CPUs."),
    engine_workers: int = typer.Option(EngineConfig.workers, "--engine-workers",
                                       help="Ray workers, each checking one partition at a time on 1 CPU."),
    partition_size: int = typer.Option(EngineConfig.partition_size, "--partition-size",
                                       help="Photos per partition: the unit of retry, resume and output file."),
) -> None:
    """Check every photo (position, decodable, size, duplicates, optionally faces) and write the manifest.

    A table's image column may hold URLs (http(s)://, s3://, gs://, ... any fsspec URL), mixed with
    local paths: they are downloaded first (see --store), then checked like local photos; a failed
    download is a reject (download_failed, download_timeout, too_large) with its detail. With
    --engine ray each partition downloads its own URLs on its worker, then checks them.

    Exits 1 (after writing the rejects) when no photo was kept, 2 when the input itself is unusable.
    An interrupted run resumes from its finished parts when rerun with the same input and options.
    """
    with input_errors("ingest", ValueError):
        engine_cfg = EngineConfig(engine, address=address, workers=engine_workers, partition_size=partition_size)

    options = {}
    for item in storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            typer.echo(f"geopin ingest: --storage-option {item!r}: expected KEY=VALUE", err=True)
            raise typer.Exit(2)
        options[key.strip()] = value
    fetch = FetchConfig(workers=download_workers, retries=retries, timeout_s=timeout, max_bytes=max_bytes,
                        storage_options=options)
    given = {"max_pixels": max_pixels, "workers": workers}  # 0 or None: the config's own default
    cfg = IngestConfig(
        lat_col=lat_col, lon_col=lon_col, image_col=image_col, group_col=group_col, image_root=image_root,
        group_from=group_from, min_side=min_side, faces=faces, face_threshold=face_threshold,
        chunk_size=chunk_size, store=store, fetch=fetch, engine=engine_cfg,
        **{name: value for name, value in given.items() if value},
    )
    with input_errors("ingest", IngestInputError, FaceDetectorUnavailable, EngineUnavailable):
        summary = ingest(source, out, cfg)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(_summary_table(summary))
    if not summary.n_kept:  # nothing to build on: say why, and fail the shell pipeline
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary.reasons.items() if n)
        typer.echo(f"geopin ingest: kept no photos of {summary.n_input} ({reasons}); "
                   f"see {summary.rejects_csv_path}", err=True)
        raise typer.Exit(1)


def _summary_table(summary) -> str:
    lines = [("photos", f"{summary.n_input}"), ("kept", f"{summary.n_kept}"),
             ("rejected", f"{summary.n_rejected}")]
    lines += [(f"  {reason}", f"{n}") for reason, n in summary.reasons.items() if n]
    if summary.ignored_reasons:
        lines.append(("ignored", f"{sum(summary.ignored_reasons.values())} (not photos)"))
        lines += [(f"  {reason}", f"{n}") for reason, n in summary.ignored_reasons.items()]
    if summary.n_resumed:
        lines.append(("resumed", f"{summary.n_resumed}"))
    lines += [("photos/s", f"{summary.photos_per_s:.1f} ({summary.workers} workers)"),
              ("seconds", f"{summary.seconds:.1f}"), ("manifest", summary.manifest_path),
              ("rejects", summary.rejects_csv_path)]
    if summary.ignored_reasons:
        lines.append(("ignored list", summary.ignored_path))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
