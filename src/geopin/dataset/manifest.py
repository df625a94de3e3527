"""The manifest: one row per kept photo. Its one reader and its one writer.

Every stage after ingest reads a manifest through `read_manifest`, so one set of rules holds everywhere:
the table may be Parquet (what ingest writes) or CSV (a user's own), the columns a stage needs must be
there, coordinates and sizes must be numeric, ids must be unique, relative paths are read against the
manifest's own folder, and a sha256 that is not 64 hex digits counts as missing (to be computed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geopin.io import atomic_path, read_table

MANIFEST_COLUMNS = ("id", "path", "lat", "lon", "group", "width", "height", "sha256", "source_row")
MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("group", pa.string()), ("width", pa.int64()), ("height", pa.int64()), ("sha256", pa.string()),
    ("source_row", pa.int64()),
])
NUMERIC_COLUMNS = ("lat", "lon", "width", "height", "source_row")
# What each reader needs at the least: the whole manifest by default; embed only ids and paths; cells the points.
FOR_EMBED = ("id", "path")
FOR_POINTS = ("id", "lat", "lon")


def read_manifest(source: str | os.PathLike | pd.DataFrame, columns: Sequence[str] = MANIFEST_COLUMNS,
                  unique_ids: bool = True) -> pd.DataFrame:
    """The manifest, checked: `columns` must be present (the error names the file and the columns).

    unique_ids=False lets a row-wise reader (embed: one vector per row, equal photos embedded once) take a
    table that lists an id twice; every reader that keys by id keeps the check.

    Returns every column the table has (those of MANIFEST_COLUMNS first, in order), with `id` as str,
    `path` absolute and `sha256` lower-case hex or None.
    """
    if isinstance(source, pd.DataFrame):
        df, base, name = source.reset_index(drop=True).copy(), Path.cwd(), "manifest"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a manifest: run `geopin ingest` first)")
        try:
            df = read_table(path)
        except ValueError as exc:
            raise ValueError(str(exc).replace("readable Parquet table", "readable Parquet manifest")) from None
        base, name = path.resolve().parent, str(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)} (a geopin manifest here needs "
                         f"{', '.join(map(repr, columns))}; this one has {', '.join(map(str, df.columns))})")
    for col in NUMERIC_COLUMNS:
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
            raise ValueError(f"{name}: column {col!r} should be numeric, found {df[col].dtype}")
    if "id" in df.columns:
        df["id"] = df["id"].astype(str)
    if "id" in df.columns and unique_ids:
        dup = df["id"][df["id"].duplicated()]
        if not dup.empty:
            raise ValueError(f"{name}: {dup.size} duplicate id(s) in the manifest, e.g. {dup.iloc[0]!r}")
    if "path" in df.columns:
        df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].astype(str)]
    if "sha256" in df.columns or "path" in df.columns:
        shas = df["sha256"] if "sha256" in df.columns else [None] * len(df)
        # object dtype: pandas 3 would store str-and-None as a str column with NaN, and NaN is no "missing" hash
        df["sha256"] = pd.Series([s.lower() if isinstance(s, str) and len(s) == 64 else None for s in shas],
                                 index=df.index, dtype=object)
    first = [c for c in MANIFEST_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def write_manifest(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write a manifest table (MANIFEST_SCHEMA) atomically: a reader sees the old file or the new one."""
    if table.schema != MANIFEST_SCHEMA:
        table = table.select(list(MANIFEST_COLUMNS)).cast(MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
