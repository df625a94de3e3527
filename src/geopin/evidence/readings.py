"""The readings file: what OCR read off every photo of a manifest, so text is read once and used many times.

`<out>/readings.parquet`, one row per manifest row, in manifest order:
  * `id`: the manifest id;  `path`: the photo read;
  * `reading`: JSON of `Reading.to_dict()` (lines, width, height), null when the photo could not be read;
  * `error`: null, or why the photo could not be read ("file not found: ...", "cannot read text from ...").
The parquet's metadata key `geopin.ocr` holds the OCR config and engines it was read with.

`write_readings` is its one writer and `read_readings` / `readings_table` its readers. `read_manifest_engine`
fills it from a manifest on the scale engine (local or Ray): resumable parts under `<out>/parts/`, one
TextReader per worker, and a photo that cannot be read becomes a row with its error, never the job's end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geopin.dataset.manifest import FOR_EMBED, read_manifest
from geopin.evidence.base import Reading
from geopin.evidence.ocr import OcrConfig, TextReader, tesseract_problem
from geopin.features.embed import output_lock
from geopin.io import atomic_path
from geopin.log import progress
from geopin.scale.engine import (
    PARTS_DIR,
    EngineConfig,
    map_partitions,
    partition,
    read_parts,
    report_brief,
)

logger = logging.getLogger(__name__)

READINGS_FILE = "readings.parquet"
READINGS_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("reading", pa.string()), ("error", pa.string())])
_META_KEY = b"geopin.ocr"
# what the engine's parts hold: the manifest row too, so the parts can be checked to be the manifest in order
_PART_SCHEMA = pa.schema([("row", pa.int64()), *READINGS_SCHEMA])
# Bump when the reading of a photo changes for the same config (new preprocessing of crops, ...): it is part of
# the parts' fingerprint, so a rerun recomputes instead of mixing old and new readings.
READER_VERSION = "1"


def readings_path(path: str | Path) -> Path:
    """The readings file itself, given it or the folder holding it."""
    path = Path(path)
    return path / READINGS_FILE if path.is_dir() or path.suffix != ".parquet" else path


def write_readings(rows: Iterable[Mapping[str, Any]], path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write rows (id, path, and `reading` as a Reading or None, `error` as None or the reason) atomically.

    A row needs exactly one of reading and error: a photo was either read (maybe with no line) or not.
    `meta` (the OCR config, engines) is stored in the file's metadata. Returns the file written.
    """
    path = readings_path(path)
    table_rows = []
    for i, r in enumerate(rows):
        reading, error = r.get("reading"), r.get("error")
        if (reading is None) == (error is None):
            raise ValueError(f"readings row {i} ({r.get('id')!r}): give a reading or an error, exactly one of them")
        if reading is not None and not isinstance(reading, Reading):
            raise TypeError(f"readings row {i} ({r.get('id')!r}): reading should be a Reading, got {type(reading).__name__}")
        table_rows.append({"id": str(r["id"]), "path": str(r.get("path") or ""),
                           "reading": None if reading is None else json.dumps(reading.to_dict(), ensure_ascii=False),
                           "error": None if error is None else str(error)})
    return _write_rows(table_rows, path, meta)


def _write_rows(rows: list[dict], path: Path, meta: Mapping[str, Any] | None) -> Path:
    """The file itself, from rows whose reading is JSON already (the engine's parts hold it so)."""
    table = pa.Table.from_pylist(rows, schema=READINGS_SCHEMA)
    if meta is not None:
        table = table.replace_schema_metadata({_META_KEY: json.dumps(dict(meta), default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def readings_table(path: str | Path) -> pd.DataFrame:
    """Every row of a readings file (the file or its folder): id, path, reading (a Reading, or None), error."""
    path = readings_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (run `geopin read` first)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: not a readable Parquet readings file: {exc}") from None
    missing = [c for c in READINGS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (a readings file has {', '.join(READINGS_SCHEMA.names)})")
    columns = {name: table.column(name).to_pylist() for name in READINGS_SCHEMA.names}  # nulls stay None
    readings = []
    for i, (rid, text) in enumerate(zip(columns["id"], columns["reading"])):
        if text is None:
            readings.append(None)
            continue
        try:
            readings.append(Reading.from_dict(json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: row {i} ({rid!r}): unreadable reading: {type(exc).__name__}: {exc}") from None
    return pd.DataFrame({"id": pd.Series(columns["id"], dtype=object), "path": pd.Series(columns["path"], dtype=object),
                         "reading": pd.Series(readings, dtype=object), "error": pd.Series(columns["error"], dtype=object)})


def read_readings(path: str | Path) -> dict[str, Reading]:
    """id -> Reading for every photo that was read (photos that failed are left out: see readings_table)."""
    df = readings_table(path)
    return {rid: reading for rid, reading in zip(df["id"], df["reading"]) if reading is not None}


def readings_meta(path: str | Path) -> dict[str, Any]:
    """The OCR config and engines a readings file was made with ({} when it records none)."""
    raw = (pq.read_schema(readings_path(path)).metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


# ----------------------------------------------------------------------------------------------------------
# reading a manifest on the engine


@dataclass
class ReadSummary:
    out_dir: Path
    readings_path: Path
    n: int  # manifest rows
    n_read: int  # photos read (with or without text)
    n_with_text: int  # photos with at least one line
    n_lines: int
    n_failed: int
    engines: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # row, id, path, reason (the first 100)
    seconds: float = 0.0
    read_seconds: float = 0.0  # the engine's own time (partitions computed, including model loading)
    photos_per_s: float = 0.0
    engine: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"], d["readings_path"] = str(self.out_dir), str(self.readings_path)
        return d


def _read_setup(cfg: OcrConfig) -> TextReader:
    """Per worker, once: the OCR engines."""
    return TextReader(cfg)


def read_rows(reader: TextReader, items: list[dict]) -> list[dict]:
    """One partition (dicts with row, id, path) -> rows of the parts: the reading as JSON, or the error."""
    out = []
    for item in items:
        row = {"row": item["row"], "id": item["id"], "path": item["path"], "reading": None, "error": None}
        try:
            reading = reader.read(item["path"])
        except FileNotFoundError:
            row["error"] = f"file not found: {item['path']}"
        except OSError as exc:
            row["error"] = f"cannot read {item['path']}: {exc.strerror or exc}"
        except ValueError as exc:  # not a usable photo (ocr names it and the reason)
            row["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - an engine failing on one photo costs that photo, not its partition
            logger.warning("OCR failed on %s: %s: %s", item["path"], type(exc).__name__, exc)
            row["error"] = f"OCR failed: {type(exc).__name__}: {exc}"
        else:
            row["reading"] = json.dumps(reading.to_dict(), ensure_ascii=False)
        out.append(row)
    return out


def _error_row(item: dict, message: str) -> dict:
    return {**item, "reading": None, "error": message}


def ocr_fingerprint(cfg: OcrConfig) -> dict[str, Any]:
    """What decides a photo's reading besides the photo: the config, the engines and their versions."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    uses_tesseract = cfg.tesseract == "always" or (cfg.tesseract == "auto" and tesseract_problem() is None)
    return {"kind": "read", "reader": READER_VERSION, "ocr": {**cfg.to_dict(), "threads": None},
            "rapidocr": ver("rapidocr"), "tesseract": ver("tesserocr") if uses_tesseract else None}


def read_manifest_engine(manifest: str | Path | pd.DataFrame, out_dir: str | Path, cfg: OcrConfig | None = None,
                         engine: EngineConfig | None = None) -> ReadSummary:
    """Read the text on every photo of a manifest into `<out_dir>/readings.parquet` (rows in manifest order).

    Runs on the scale engine (`local`: this process; `ray`: one TextReader per worker): partitions are written
    to `<out_dir>/parts/` as they finish, so a rerun reads only the photos not read yet. One run at a time
    writes out_dir (a second raises OutputBusy).
    """
    cfg = cfg or OcrConfig()
    engine = engine or EngineConfig("local")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    df = read_manifest(manifest, FOR_EMBED, unique_ids=False)  # paths made absolute against the manifest's folder
    items = [{"row": i, "id": str(rid), "path": str(p)} for i, (rid, p) in enumerate(zip(df["id"], df["path"]))]
    fingerprint = ocr_fingerprint(cfg)
    worker_cfg = dataclasses.replace(cfg, threads=engine.cpus_per_worker) if engine.name == "ray" else cfg
    parts = partition(items, engine.partition_size)
    with output_lock(out_dir):
        with _PartsProgress(out_dir / PARTS_DIR, [len(p) for p in parts]):
            report = map_partitions(
                read_rows, parts, out_dir / PARTS_DIR, engine, setup=functools.partial(_read_setup, worker_cfg),
                fingerprint=fingerprint, on_error=_error_row, schema=_PART_SCHEMA,
            )
        table = read_parts(out_dir / PARTS_DIR, report.n_partitions) if parts else _PART_SCHEMA.empty_table()
        n = len(items)
        if table.num_rows != n or table.column("row").to_pylist() != list(range(n)):
            raise RuntimeError(f"{out_dir / PARTS_DIR}: the parts hold {table.num_rows} rows, not the manifest's {n} in order")
        rows = table.select(READINGS_SCHEMA.names).to_pylist()
        errors = {i: r["error"] for i, r in enumerate(rows) if r["error"] is not None}
        lines = [len(json.loads(r["reading"])["lines"]) if r["reading"] else 0 for r in rows]
        engines = ["rapidocr", "tesseract"] if fingerprint["tesseract"] else ["rapidocr"]
        meta = {"ocr": cfg.to_dict(), "engines": engines, "rapidocr": fingerprint["rapidocr"],
                "tesseract": fingerprint["tesseract"], "reader": READER_VERSION, "n": n}
        path = _write_rows(rows, out_dir / READINGS_FILE, meta)
    failures = [{"row": i, "id": items[i]["id"], "path": items[i]["path"], "reason": e} for i, e in sorted(errors.items())]
    for f in failures[:20]:
        logger.warning("row %d (%s): %s", f["row"], f["id"], f["reason"])
    if len(failures) > 20:
        logger.warning("... and %d more photos could not be read (their rows in %s say why)", len(failures) - 20, path)
    n_read = n - len(errors)
    summary = ReadSummary(
        out_dir=out_dir, readings_path=path, n=n, n_read=n_read, n_with_text=sum(1 for k in lines if k),
        n_lines=sum(lines), n_failed=len(errors), engines=engines, failures=failures[:100],
        seconds=time.perf_counter() - t_start, read_seconds=report.seconds,
        photos_per_s=(sum(len(parts[i]) for i in report.computed) / report.seconds) if report.seconds > 0 else 0.0,
        engine={**engine.to_dict(), **report_brief(report)},
    )
    logger.info("read %d photos -> %s: %d with text (%d lines), %d failed, in %.1f s",
                n, path, summary.n_with_text, summary.n_lines, summary.n_failed, summary.seconds)
    return summary


class _PartsProgress:
    """A progress bar of photos read, from the part files as they appear (the same for local and Ray workers)."""

    def __init__(self, parts_dir: Path, sizes: list[int], every: float = 1.0) -> None:
        self.parts_dir, self.sizes, self.every = parts_dir, sizes, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _done(self) -> int:
        done = 0
        for p in self.parts_dir.glob("part-*.parquet"):
            try:
                index = int(p.stem.split("-")[1])
            except (IndexError, ValueError):
                continue
            if index < len(self.sizes):  # finished before this run (resumed) counts as done too
                done += self.sizes[index]
        return done

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.bar.n = self._done()
            self.bar.refresh()

    def __enter__(self) -> _PartsProgress:
        self.bar = progress(total=sum(self.sizes), desc="read", unit="photo")
        if not self.bar.disable:  # no terminal: no bar, no thread
            self._thread = threading.Thread(target=self._watch, name="geopin-read-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()


__all__ = ["READINGS_FILE", "READINGS_SCHEMA", "ReadSummary", "write_readings", "read_readings", "readings_table",
           "readings_meta", "readings_path", "read_rows", "read_manifest_engine", "ocr_fingerprint"]
