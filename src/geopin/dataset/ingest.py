"""Stage 1: turn a table of geotagged photos, or a folder of photos with GPS EXIF, into a manifest.

Every input photo ends either in `manifest.parquet` (decoded in full, big enough, with a valid
position and a content hash that later stages key their caches on) or in `rejects.parquet` /
`rejects.csv` with a reason from REJECT_REASONS: nothing is dropped silently.

Work is split into chunks of photos processed on all cores. Each finished chunk is written
atomically to `<out>/.ingest-work/<fingerprint>/part-NNNNN.parquet`; the fingerprint covers the
input and every setting that changes results, so an interrupted run resumes where it stopped. The
final files are written once, at the end, after duplicates are removed in input order (the result
does not depend on which worker finished first). With `IngestConfig.engine` set to "ray" the same
per-chunk code runs as `geopin.scale.engine` partitions on a cluster, each downloading its own URL rows
first; its parts are kept in `<out>/parts/` (see docs/cluster.md).

Empty (zero-byte) files get their own reason, `empty_file`, because "the copy failed" and "this is
not an image" call for different fixes. Decode failures after a readable header (cut-off bytes,
corrupt entropy data) are all `truncated`; the detail carries Pillow's message. Photos are opened and
decoded by `geopin.dataset.images`, exactly as embed and predict decode them (16-bit photos scaled, not
clipped; HEIC through pillow-heif; the same pixel limit).

A folder is walked by `geopin.dataset.images.walk_folder`: symlinked folders are followed, none is visited
twice, and every entry that is not a photo is listed with its reason in `ignored.csv` (a dangling
symlink named like a photo is a `file_missing` reject instead).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import ImageFile

from geopin.dataset.exif import ExifGpsError, coord_problem, gps_from_exif, parsed_exif, read_artist
from geopin.dataset.fetch import FetchConfig, FetchInputError, FetchResult, is_url
from geopin.dataset.images import (
    IMAGE_SUFFIXES,
    PILLOW_MAX_PIXELS,
    ImageError,
    decode_rgb,
    open_image,
    symlink_target,
    walk_folder,
)
from geopin.dataset.manifest import MANIFEST_COLUMNS, MANIFEST_SCHEMA, write_manifest
from geopin.io import atomic_path, read_table, write_json
from geopin.log import progress
from geopin.scale.engine import PARTS_DIR, EngineConfig, EngineReport, report_brief

log = logging.getLogger(__name__)

REJECT_COLUMNS = ("id", "path", "source_row", "reason", "detail")
REJECT_REASONS = (
    "coords_missing",
    "coords_not_numeric",
    "coords_out_of_range",
    "coords_null_island",
    "file_missing",
    "empty_file",
    "not_an_image",
    "truncated",
    "too_small",
    "decompression_bomb",
    "unsupported_format",
    "duplicate",
    "faces",
    "download_failed",  # a URL row: HTTP error, connection refused, no such object (geopin.dataset.fetch)
    "download_timeout",
    "too_large",  # a URL row: more than the download byte cap
    "worker_failed",  # --engine: the partition's worker raised or died twice; the detail says how (a rerun retries it)
)
__all__ = ["IMAGE_SUFFIXES", "PILLOW_MAX_PIXELS", "REJECT_REASONS", "IngestConfig", "IngestInputError",
           "IngestSummary", "ingest"]  # the suffixes and the pixel limit: geopin.dataset.images
GROUP_FROM = ("none", "subfolder", "artist")
WORK_DIR_NAME = ".ingest-work"
MANIFEST_NAME, REJECTS_NAME, REJECTS_CSV_NAME, SUMMARY_NAME, IGNORED_NAME = (
    "manifest.parquet", "rejects.parquet", "rejects.csv", "ingest_summary.json", "ignored.csv")
# Bump when the per-photo checks change, so parts from older code are not reused.
_RESULT_VERSION = 2

REJECTS_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("source_row", pa.int64()), ("reason", pa.string()),
    ("detail", pa.string()),
])
# One row per input photo, kept (reason null) or not, as stored in the part files.
_PART_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("source_row", pa.int64()), ("lat", pa.float64()),
    ("lon", pa.float64()), ("group", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
    ("sha256", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
])


class IngestInputError(ValueError):
    """The input as a whole is unusable (missing table, missing column, no photos)."""


@dataclass
class IngestConfig:
    """How to read the input and what to keep. Defaults work for a CSV with image,lat,lon columns."""

    lat_col: str = "lat"
    lon_col: str = "lon"
    image_col: str = "image"
    group_col: str | None = None  # table: e.g. the photographer; None = no group
    image_root: Path | None = None  # table: base for relative paths (default: the table's folder)
    group_from: str = "none"  # folder: "none" | "subfolder" (first folder under the root) | "artist" (EXIF)
    min_side: int = 64
    max_pixels: int = PILLOW_MAX_PIXELS
    faces: bool = False
    face_threshold: float = 0.035
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_size: int = 256
    store: Path | None = None  # table of URLs: where downloads go (default <out>/photos), see geopin.dataset.fetch
    fetch: FetchConfig = field(default_factory=FetchConfig)
    # None or "local": chunks on this machine's processes, URLs fetched first by the driver (with a ledger).
    # "ray": partitions on a cluster, each downloading its own URLs into `store` (which every worker must see).
    engine: EngineConfig | None = None

    @property
    def on_engine(self) -> bool:
        return self.engine is not None and self.engine.name != "local"

    def validate(self) -> None:
        if self.group_from not in GROUP_FROM:
            raise IngestInputError(f"group_from={self.group_from!r}: expected one of {', '.join(GROUP_FROM)}")
        if self.min_side < 1 or self.max_pixels < 1 or self.chunk_size < 1 or self.workers < 1:
            raise IngestInputError("min_side, max_pixels, chunk_size and workers must be positive")
        if not 0.0 < self.face_threshold <= 1.0:
            raise IngestInputError(f"face_threshold={self.face_threshold}: expected a fraction in (0, 1]")


@dataclass
class IngestSummary:
    source: str
    n_input: int
    n_kept: int
    n_rejected: int
    reasons: dict[str, int]
    seconds: float
    photos_per_s: float  # photos processed in this run (not resumed ones) per wall-clock second
    manifest_path: str
    rejects_path: str
    rejects_csv_path: str
    n_resumed: int = 0  # photos taken over from the finished parts of an interrupted run
    n_ignored_files: int = 0  # folder input: files without an image suffix
    workers: int = 1
    fingerprint: str = ""
    engine: dict[str, Any] | None = None  # --engine: the engine's settings and what it did (partitions computed, ...)
    ignored_path: str = ""  # ignored.csv: every walked entry that is not a photo, with its reason
    ignored_reasons: dict[str, int] = field(default_factory=dict)  # count by reason (no image suffix, hidden, ...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Task:
    """One input photo as the workers see it; lat/lon are the raw table values."""

    id: str
    path: str
    source_row: int
    raw_lat: Any = None
    raw_lon: Any = None
    group: str | None = None
    problem: tuple[str, str] | None = None  # (reason, detail) known from the folder walk, e.g. a dangling link


@dataclass(frozen=True)
class _Ignored:
    """A walked entry that is not a photo: written to ignored.csv."""

    path: str  # relative to the input folder
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class _Options:
    from_exif: bool
    group_from_artist: bool
    min_side: int
    max_pixels: int
    faces: bool
    face_threshold: float


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# public API


def ingest(source: Path, out_dir: Path, cfg: IngestConfig | None = None) -> IngestSummary:
    """Build `<out_dir>/manifest.parquet` and the rejects files from a table or a photo folder."""
    cfg = cfg or IngestConfig()
    cfg.validate()
    started = time.perf_counter()
    source, out_dir = Path(os.path.abspath(source)), Path(os.path.abspath(out_dir))
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated photos "
                    "will decode as grey-filled and be kept instead of rejected")
    if cfg.faces:
        from geopin.dataset.faces import check_face_detector

        check_face_detector()  # fail before any work, not once per photo
    if source.is_dir():
        tasks, input_digest, ignored = _folder_tasks(source, out_dir, cfg)
        opts = _options(cfg, from_exif=True)
    elif source.is_file():
        tasks, input_digest = _table_tasks(source, cfg)
        ignored = []
        opts = _options(cfg, from_exif=False)
    else:
        raise IngestInputError(f"{source}: no such file or folder")
    ignored_reasons = _count(i.reason for i in ignored)
    if not tasks:
        what = "table has no rows" if source.is_file() else (
            f"folder has no photos (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; ignored "
            f"{_counts_text(ignored_reasons) or 'nothing'})")
        raise IngestInputError(f"{source}: {what}")
    has_urls = any(t.problem is None and is_url(t.path) for t in tasks)
    store = Path(os.path.abspath(cfg.store)) if cfg.store else out_dir / "photos"
    if has_urls and not cfg.on_engine:
        tasks = _fetch_tasks(tasks, source, store, cfg)
    elif has_urls:
        _prepare_store(tasks, source, store, cfg)

    fingerprint = _fingerprint(source, input_digest, cfg)
    work = out_dir / WORK_DIR_NAME / fingerprint
    report = None
    if cfg.on_engine:
        chunks = [tasks[i:i + cfg.engine.partition_size] for i in range(0, len(tasks), cfg.engine.partition_size)]
        log.info("ingest %s: %d photos in %d partitions on the %s engine, parts in %s",
                 source, len(tasks), len(chunks), cfg.engine.name, out_dir / PARTS_DIR)
        parts, n_resumed, report = _run_engine(chunks, out_dir / PARTS_DIR, opts, fingerprint, cfg,
                                               store if has_urls else None)
    else:
        chunks = [tasks[i:i + cfg.chunk_size] for i in range(0, len(tasks), cfg.chunk_size)]
        log.info("ingest %s: %d photos in %d chunks, %d workers, work dir %s",
                 source, len(tasks), len(chunks), cfg.workers, work)
        parts, n_resumed = _run_chunks(chunks, work, opts, cfg.workers)
    seconds_work = time.perf_counter() - started

    table = pa.concat_tables(parts[i] for i in range(len(chunks)))
    kept, rejects = _split_and_dedup(table)
    if kept.num_rows + rejects.num_rows != len(tasks):  # cannot happen; never hide it if it does
        raise RuntimeError(f"ingest lost photos: {kept.num_rows} kept + {rejects.num_rows} rejected "
                           f"!= {len(tasks)} input")
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_path, rejects_csv_path, manifest_path, ignored_path = (
        out_dir / REJECTS_NAME, out_dir / REJECTS_CSV_NAME, out_dir / MANIFEST_NAME, out_dir / IGNORED_NAME)
    _write_table(rejects, rejects_path)
    with atomic_path(rejects_csv_path) as tmp:
        rejects.to_pandas().to_csv(tmp, index=False)
    with atomic_path(ignored_path) as tmp:
        pd.DataFrame([dataclasses.asdict(i) for i in ignored], columns=["path", "reason", "detail"]).to_csv(
            tmp, index=False)
    write_manifest(kept, manifest_path)

    reasons = {r: 0 for r in REJECT_REASONS}
    for reason in rejects.column("reason").to_pylist():
        reasons[reason] += 1
    seconds = time.perf_counter() - started
    n_processed = len(tasks) - n_resumed
    summary = IngestSummary(
        source=str(source), n_input=len(tasks), n_kept=kept.num_rows, n_rejected=rejects.num_rows,
        reasons=reasons, seconds=round(seconds, 3),
        photos_per_s=round(n_processed / seconds_work, 1) if n_processed and seconds_work > 0 else 0.0,
        manifest_path=str(manifest_path), rejects_path=str(rejects_path),
        rejects_csv_path=str(rejects_csv_path), n_resumed=n_resumed,
        n_ignored_files=ignored_reasons.get("no image suffix", 0), workers=cfg.workers, fingerprint=fingerprint,
        ignored_path=str(ignored_path), ignored_reasons=ignored_reasons,
        engine=None if report is None else {**cfg.engine.to_dict(), **report_brief(report)},
    )
    write_json(summary.to_dict(), out_dir / SUMMARY_NAME)
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # only when no other fingerprint's work is left
    log.info("ingest done: %d input = %d kept + %d rejected (%s); %.1f photos/s over %d processed, "
             "%d resumed, %.1f s", summary.n_input, summary.n_kept, summary.n_rejected,
             _counts_text(reasons) or "no rejects", summary.photos_per_s, n_processed, n_resumed, seconds)
    if ignored:
        log.info("ignored %d entries that are not photos (%s), listed in %s",
                 len(ignored), _counts_text(ignored_reasons), ignored_path)
    if not summary.n_kept:
        log.error("ingest kept no photos of %d: %s; see %s", summary.n_input, _counts_text(reasons),
                  rejects_csv_path)
    return summary


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))


def _counts_text(counts: dict[str, int]) -> str:
    """'coords_missing 2, not_an_image 1': the non-zero counts, for messages."""
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


# ---------------------------------------------------------------------------------------------
# inputs


def _options(cfg: IngestConfig, *, from_exif: bool) -> _Options:
    return _Options(from_exif=from_exif, group_from_artist=from_exif and cfg.group_from == "artist",
                    min_side=cfg.min_side, max_pixels=cfg.max_pixels, faces=cfg.faces,
                    face_threshold=cfg.face_threshold)


def _table_tasks(table_path: Path, cfg: IngestConfig) -> tuple[list[_Task], str]:
    if cfg.group_from != "none":
        log.warning("group_from=%r only applies to folder input; use group_col for tables", cfg.group_from)
    try:
        df = read_table(table_path)
    except (ValueError, OSError) as exc:
        raise IngestInputError(f"{table_path}: cannot read table: {exc}") from exc
    needed = [cfg.image_col, cfg.lat_col, cfg.lon_col] + ([cfg.group_col] if cfg.group_col else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise IngestInputError(
            f"{table_path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"it has {', '.join(map(repr, map(str, df.columns)))}")
    base = Path(os.path.abspath(cfg.image_root)) if cfg.image_root else table_path.parent
    groups = df[cfg.group_col] if cfg.group_col else None
    tasks = []
    for row, (image, lat, lon) in enumerate(zip(df[cfg.image_col], df[cfg.lat_col], df[cfg.lon_col])):
        group = None if groups is None else _clean_group(groups.iat[row])
        if _is_blank(image):
            tasks.append(_Task(id="", path="", source_row=row, raw_lat=lat, raw_lon=lon, group=group))
            continue
        if is_url(image):  # downloaded before the checks: see _fetch_tasks
            tasks.append(_Task(id=image.strip(), path=image.strip(), source_row=row, raw_lat=lat, raw_lon=lon,
                               group=group))
            continue
        given_id = None
        if isinstance(image, str) and image.strip().lower().startswith("file://"):
            given_id = image.strip()  # the id is the URL as given, as for http(s):// rows; the path is read
            image = url2pathname(urlparse(given_id).path)
        abs_path = Path(os.path.normpath(base / str(image)))  # an absolute image path replaces base
        tasks.append(_Task(id=given_id or _relative_id(abs_path, base), path=str(abs_path), source_row=row,
                           raw_lat=lat, raw_lon=lon, group=group))
    digest = hashlib.sha256(table_path.read_bytes()).hexdigest()
    return tasks, f"table:{digest}:base={base}"


def _fetch_tasks(tasks: list[_Task], source: Path, store: Path, cfg: IngestConfig) -> list[_Task]:
    """Download the URL rows on the driver (the local path), then check them like local photos.

    Each becomes a task on its stored local file, checked like any photo, or carries the download's
    reject reason; its id stays the URL.
    """
    from geopin.dataset.fetch import fetch_urls

    try:
        results, _ = fetch_urls([t.path for t in tasks if _to_fetch(t)], store, cfg.fetch)
    except (FetchInputError, ValueError) as exc:
        raise IngestInputError(f"{source}: cannot download its URLs: {exc}") from exc
    return [_fetched(t, results[t.path], store) if _to_fetch(t) else t for t in tasks]


def _to_fetch(task: _Task) -> bool:
    """A URL row worth downloading: valid position only (no bandwidth for rows rejected anyway)."""
    return task.problem is None and is_url(task.path) and _coords_ok(task)


def _fetched(task: _Task, res: FetchResult, store: Path) -> _Task:
    """The task on its stored file, or carrying the download's reject reason; its id stays the URL."""
    if res.ok:
        return dataclasses.replace(task, path=str(store / res.path))
    return dataclasses.replace(task, problem=(res.reason, res.detail or ""))


def _prepare_store(tasks: list[_Task], source: Path, store: Path, cfg: IngestConfig) -> None:
    """--engine: the checks fetch_urls makes before any download, done once on the driver; the workers download."""
    from geopin.dataset.fetch import check_schemes, remove_partial_downloads

    try:
        cfg.fetch.validate()
        check_schemes({t.path.strip() for t in tasks if _to_fetch(t)}, cfg.fetch)
    except (FetchInputError, ValueError) as exc:
        raise IngestInputError(f"{source}: cannot download its URLs: {exc}") from exc
    store.mkdir(parents=True, exist_ok=True)
    remove_partial_downloads(store, cfg.fetch)


def _coords_ok(task: _Task) -> bool:
    try:
        _parse_coords(task.raw_lat, task.raw_lon)
    except _Reject:
        return False
    return True


def _folder_tasks(root: Path, out_dir: Path, cfg: IngestConfig) -> tuple[list[_Task], str, list[_Ignored]]:
    """Photos (and image-named entries that cannot be read) as tasks; everything else as ignored entries."""
    if cfg.group_col:
        log.warning("group_col=%r only applies to table input; use group_from for folders", cfg.group_col)
    listing = hashlib.sha256()
    tasks: list[_Task] = []
    ignored: list[_Ignored] = []
    for entry in sorted(walk_folder(root, skip=out_dir), key=lambda e: e.rel):
        if entry.kind == "ignored":
            ignored.append(_Ignored(entry.rel, entry.reason, entry.detail))
            continue
        problem = (entry.reason, entry.detail) if entry.kind == "missing" else None
        if problem is None:
            try:
                st = entry.path.stat()
                listing.update(f"{entry.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError as exc:  # gone since the walk saw it
                problem = ("file_missing", f"cannot stat: {exc.strerror or exc}")
        if problem is not None:
            listing.update(f"{entry.rel}\0{problem}\n".encode())
        group = None
        if cfg.group_from == "subfolder" and "/" in entry.rel:
            group = entry.rel.split("/", 1)[0]
        tasks.append(_Task(id=entry.rel, path=str(entry.path), source_row=-1, group=group, problem=problem))
    if ignored:
        log.info("%s: ignored %d entries that are not photos (%s), e.g. %s", root, len(ignored),
                 _counts_text(_count(i.reason for i in ignored)), ", ".join(i.path for i in ignored[:3]))
    return tasks, f"folder:{listing.hexdigest()}:group_from={cfg.group_from}", ignored


def _relative_id(abs_path: Path, base: Path) -> str:
    try:
        return abs_path.relative_to(base).as_posix()
    except ValueError:
        return abs_path.as_posix()


def _is_blank(value: Any) -> bool:
    """None, NaN, pandas NA or an empty string: a cell with nothing in it."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _clean_group(value: Any) -> str | None:
    if _is_blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric group column read as float: "12", not "12.0"
    return str(value).strip()


def _fingerprint(source: Path, input_digest: str, cfg: IngestConfig) -> str:
    settings = dataclasses.asdict(cfg)
    settings.pop("workers")  # results do not depend on it
    settings.pop("engine")  # nor on where the chunks run
    settings["fetch"].pop("workers")
    settings["store"] = os.path.abspath(cfg.store) if cfg.store else None
    settings["image_root"] = os.path.abspath(cfg.image_root) if cfg.image_root else None
    blob = json.dumps({"v": _RESULT_VERSION, "source": str(source), "input": input_digest,
                       "cfg": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# running chunks, resuming


def _run_chunks(chunks: list[list[_Task]], work: Path, opts: _Options, workers: int
                ) -> tuple[dict[int, pa.Table], int]:
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(".part-*.tmp"):  # left by a run killed while writing a part
        stale.unlink(missing_ok=True)
    parts: dict[int, pa.Table] = {}
    for k, chunk in enumerate(chunks):
        done = _load_part(work / _part_name(k), chunk)
        if done is not None:
            parts[k] = done
    n_resumed = sum(t.num_rows for t in parts.values())
    todo = [k for k in range(len(chunks)) if k not in parts]
    if parts:
        log.info("resuming: %d of %d chunks (%d photos) already done in %s",
                 len(parts), len(chunks), n_resumed, work)
    total = sum(len(c) for c in chunks)
    with progress(total=total, initial=n_resumed, desc="ingest", unit="photo") as bar:
        for k, rows in _map_chunks(todo, chunks, opts, workers):
            table = pa.Table.from_pylist(rows, schema=_PART_SCHEMA)
            with atomic_path(work / _part_name(k)) as tmp:
                pq.write_table(table, tmp)
            parts[k] = table
            bar.update(len(rows))
    return parts, n_resumed


def _run_engine(chunks: list[list[_Task]], parts_dir: Path, opts: _Options, fingerprint: str, cfg: IngestConfig,
                store: Path | None) -> tuple[dict[int, pa.Table], int, EngineReport]:
    """The chunks as engine partitions (`<out>/parts/part-NNNNN.parquet`, kept: a rerun skips finished ones).

    Each partition downloads its own URL rows into the shared store, then checks every row with the local
    path's code; a partition that fails twice is kept as `worker_failed` rows and retried by the next run.
    """
    from functools import partial

    from geopin.scale.engine import map_partitions, part_path

    fn = partial(_engine_chunk, opts=opts, store=None if store is None else str(store), fetch=cfg.fetch)
    report = map_partitions(fn, chunks, parts_dir, cfg.engine, fingerprint={"kind": "ingest", "ingest": fingerprint},
                            schema=_PART_SCHEMA, on_error=_worker_failed_row)
    parts = {k: pq.read_table(part_path(parts_dir, k)).replace_schema_metadata(None) for k in range(len(chunks))}
    n_resumed = sum(parts[k].num_rows for k in report.skipped)
    if report.failed:
        log.error("ingest: %d partition(s) failed on their workers; their %d photos are worker_failed rejects "
                  "until a rerun of the same command retries them", len(report.failed),
                  sum(parts[k].num_rows for k in report.failed))
    return parts, n_resumed, report


def _engine_chunk(tasks: list[_Task], opts: _Options, store: str | None, fetch: FetchConfig) -> list[dict]:
    """One engine partition: download its own URL rows (each distinct URL once), then `_process_chunk` as locally.

    No ledger: workers on many machines cannot share one append-only file; the finished partition is the record.
    """
    from geopin.dataset.fetch import fetch_many

    urls = list(dict.fromkeys(t.path.strip() for t in tasks if _to_fetch(t)))
    if not urls:
        return _process_chunk(tasks, opts)
    results = {res.url: res for res in fetch_many(urls, Path(store), fetch)}
    return _process_chunk([_fetched(t, results[t.path.strip()], Path(store)) if _to_fetch(t) else t
                           for t in tasks], opts)


def _worker_failed_row(task: _Task, message: str) -> dict:
    """The row of a photo whose whole partition failed (a worker that raised or died twice): a reject, not a loss."""
    return {"id": task.id, "path": task.path, "source_row": task.source_row, "lat": None, "lon": None,
            "group": task.group, "width": None, "height": None, "sha256": None, "reason": "worker_failed",
            "detail": message}


def _map_chunks(todo: list[int], chunks: list[list[_Task]], opts: _Options, workers: int
                ) -> Iterator[tuple[int, list[dict]]]:
    """(chunk index, results) in completion order, keeping only a few chunks in flight."""
    if workers == 1 or len(todo) <= 1:
        for k in todo:
            yield k, _process_chunk(chunks[k], opts)
        return
    queue = iter(todo)
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict[cf.Future, int] = {}

        def submit_next() -> None:
            k = next(queue, None)
            if k is not None:
                pending[pool.submit(_process_chunk, chunks[k], opts)] = k

        for _ in range(2 * workers):
            submit_next()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                k = pending.pop(fut)
                try:
                    rows = fut.result()
                except cf.process.BrokenProcessPool as exc:
                    raise RuntimeError(
                        f"an ingest worker died (out of memory or a crashing decoder) on chunk {k}; "
                        f"finished chunks are kept, rerun to resume") from exc
                yield k, rows
                submit_next()


def _part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _load_part(path: Path, chunk: list[_Task]) -> pa.Table | None:
    """A finished part, or None when absent or not the results for this exact chunk."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, schema=_PART_SCHEMA)
    except (OSError, pa.ArrowException) as exc:
        log.warning("%s: unreadable part, redoing it (%s)", path, exc)
        return None
    if table.num_rows != len(chunk) or table.column("id").to_pylist() != [t.id for t in chunk]:
        log.warning("%s: part does not match its chunk, redoing it", path)
        return None
    return table


# ---------------------------------------------------------------------------------------------
# per photo (runs in the workers)


def _process_chunk(tasks: list[_Task], opts: _Options) -> list[dict]:
    return [_process_one(task, opts) for task in tasks]


def _process_one(task: _Task, opts: _Options) -> dict:
    row = {"id": task.id, "path": task.path, "source_row": task.source_row, "lat": None, "lon": None,
           "group": task.group, "width": None, "height": None, "sha256": None, "reason": None,
           "detail": None}
    try:
        if not opts.from_exif:
            row["lat"], row["lon"] = _parse_coords(task.raw_lat, task.raw_lon)
        row.update(_check_photo(task, opts))
    except _Reject as rej:
        row["reason"], row["detail"] = rej.reason, rej.detail
    return row


def _parse_coords(raw_lat: Any, raw_lon: Any) -> tuple[float, float]:
    values = []
    for name, raw in (("lat", raw_lat), ("lon", raw_lon)):
        if _is_blank(raw):
            raise _Reject("coords_missing", f"{name} is empty")
        if isinstance(raw, bool):
            raise _Reject("coords_not_numeric", f"{name}={raw!r} is not a number")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise _Reject("coords_not_numeric", f"{name}={raw!r} is not a number") from None
        if math.isnan(value):
            raise _Reject("coords_missing", f"{name} is NaN")
        values.append(value)
    problem = coord_problem(values[0], values[1])
    if problem:
        raise _Reject(*problem)
    return values[0], values[1]


def _check_photo(task: _Task, opts: _Options) -> dict:
    """Read, decode and measure one photo (through geopin.dataset.images); raise _Reject with the first problem found."""
    if task.problem is not None:
        raise _Reject(*task.problem)
    if not task.path:
        raise _Reject("file_missing", "no image path given")
    if "\x00" in task.path:  # from a table cell; the OS raises ValueError, not OSError, for it
        raise _Reject("file_missing", "path contains a NUL byte: no file can have that name")
    data = _read_file(Path(task.path))
    try:
        img = open_image(data, max_pixels=opts.max_pixels, name=task.path)
    except ImageError as exc:
        raise _Reject(exc.reason, exc.detail) from None

    out: dict[str, Any] = {}
    with img:
        if opts.from_exif:
            try:
                exif = parsed_exif(img)
                position = gps_from_exif(exif)
            except ExifGpsError as exc:
                raise _Reject(exc.reason, exc.detail) from None
            if position is None:
                raise _Reject("coords_missing", "no GPS position in EXIF")
            out["lat"], out["lon"] = position
            if opts.group_from_artist:
                out["group"] = read_artist(exif)
        width, height = img.size
        if min(width, height) < opts.min_side:
            raise _Reject("too_small", f"{width}x{height}, smaller side under {opts.min_side} px")
        try:  # the full decode: a photo that cannot be decoded to its last pixel is not kept
            rgb = decode_rgb(img, max_pixels=opts.max_pixels, name=task.path)
        except ImageError as exc:
            raise _Reject(exc.reason, exc.detail) from None
        if opts.faces:
            from geopin.dataset.faces import face_area_fraction

            fraction = face_area_fraction(rgb)
            if fraction > opts.face_threshold:
                raise _Reject("faces", f"faces cover {fraction:.1%} of the image (> {opts.face_threshold:.1%})")
    # upright (EXIF orientation applied): width and height as the photo is shown
    out.update(width=rgb.width, height=rgb.height, sha256=hashlib.sha256(data).hexdigest())
    return out


def _read_file(path: Path) -> bytes:
    """The file's bytes, or _Reject(file_missing) saying why not (never blocking on a FIFO)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise _Reject("file_missing", "is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise _Reject("file_missing", "not a regular file (a FIFO, socket or device)")
        return path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise _Reject("file_missing", f"dangling symlink -> {symlink_target(path)}") from None
        raise _Reject("file_missing", "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Reject("file_missing", f"symlink loop -> {symlink_target(path)}") from None
        raise _Reject("file_missing", f"cannot read: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------
# final tables


def _split_and_dedup(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Kept photos and rejects in input order; a repeat of an earlier kept photo's bytes is a duplicate."""
    rows = table.to_pylist()
    first_by_hash: dict[str, str] = {}
    kept, rejects = [], []
    for row in rows:
        if row["reason"] is None:
            first = first_by_hash.get(row["sha256"])
            if first is None:
                first_by_hash[row["sha256"]] = row["id"]
                kept.append({c: row[c] for c in MANIFEST_COLUMNS})
                continue
            row["reason"] = "duplicate"
            row["detail"] = f"same bytes (sha256 {row['sha256'][:12]}...) as kept photo {first!r}"
        rejects.append({c: row[c] for c in REJECT_COLUMNS})
    return (pa.Table.from_pylist(kept, schema=MANIFEST_SCHEMA),
            pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA))


def _write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)

