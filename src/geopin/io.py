"""File helpers shared by every stage: nothing is ever left half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of one file, streamed (photos, tables and model files alike; never loaded whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A reader therefore sees either the old file or the complete new one, never a torn write. The temporary
    file is created with mode 0o666 less the umask, by the kernel, as a plain open() would: the process-wide
    umask is never read or changed (os.umask is a read-modify-write, racy beside other threads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _create_beside(path: Path) -> Path:
    """A new empty file `.<name>.<random>.tmp` next to `path` (O_EXCL: never one another writer holds)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name} after 100 tries")


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet table, chosen by the file's suffix.

    Whatever the bytes, the result is a DataFrame or a ValueError that names the file and the
    problem (FileNotFoundError when there is no file). Nothing is read silently wrong: pandas'
    implicit index (a first data row longer than the header shifts every column) is off and such a
    row is an error; duplicate column names are refused (pandas renames the second to 'x.1' and a
    caller would use the first without a word); one column whose name holds ';' is the wrong
    separator. UTF-8 (with or without BOM) and UTF-16 with a BOM (Excel's "Unicode text") are read.
    A Parquet table's columns are its schema's fields (pandas metadata that would rename them is an error).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise ValueError(f"{path}: unsupported table format {suffix!r} (use .csv, .tsv or .parquet)")


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SEPARATORS = (",", ";", "\t", "|")


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    kind = "TSV" if sep == "\t" else "CSV"
    with open(path, "rb") as fh:
        encoding = "utf-16" if fh.read(2) in _UTF16_BOMS else "utf-8"
    options: dict[str, Any] = {"sep": sep, "encoding": encoding, "index_col": False}
    try:
        with warnings.catch_warnings():
            # index_col=False turns the column shift into this warning (and drops the extra fields)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
            df = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty {kind} file (no header row)") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {_decode_problem(path, encoding)}") from None
    except pd.errors.ParserWarning:
        raise ValueError(f"{path}: the first data row has more fields than the header's "
                         f"{len(header.columns)} columns (a value with an unquoted {sep!r} in it?)") from None
    except ValueError as exc:  # pandas.errors.ParserError and the like
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        raise ValueError(f"{path}: cannot parse as {kind}: {detail}") from None
    names = [str(name) for name in header.iloc[0]] if len(header) else []
    duplicates = _duplicates(names)
    if duplicates:
        raise ValueError(f"{path}: duplicate column name(s) {', '.join(map(repr, duplicates))}: "
                         f"which one is meant is ambiguous")
    if len(df.columns) == 1:
        name = str(df.columns[0])
        other = next((s for s in _SEPARATORS if s != sep and s in name), None)
        if other is not None:
            raise ValueError(f"{path}: one column named {name!r}: the file seems to be separated by "
                             f"{other!r}, not {sep!r}")
    return df


def _decode_problem(path: Path, encoding: str) -> str:
    """Where the text stops being `encoding`, by line, for the error message."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return (f"not {encoding.upper()} text: byte {data[exc.start]:#04x} on line {line} ({exc.reason}); "
                f"save the table as UTF-8")
    return f"not {encoding.upper()} text; save the table as UTF-8"


def _duplicates(names: list[str]) -> list[str]:
    """Names given to more than one column (blank names, which nothing refers to, excepted)."""
    counts = Counter(names)
    return [name for name, n in counts.items() if n > 1 and name.strip()]


def _read_parquet(path: Path) -> pd.DataFrame:
    """The table as its Parquet (Arrow) schema says: the columns are the schema's fields, never renamed, moved
    into the index or retyped by the pandas metadata a writer left in the footer; metadata that disagrees with
    the schema is an error (the file was written or edited by something broken)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # KeyError and TypeError come from pyarrow's pandas layer when the file's pandas metadata is garbled
    unreadable = (pa.ArrowException, OSError, ValueError, KeyError, TypeError)
    try:
        names = pq.read_schema(path).names
    except unreadable as exc:
        raise ValueError(f"{path}: not a readable Parquet table: {type(exc).__name__}: {exc}") from None
    duplicates = _duplicates(names)
    if duplicates:
        raise ValueError(f"{path}: duplicate column name(s) {', '.join(map(repr, duplicates))}: "
                         f"which one is meant is ambiguous")
    try:
        table = pq.read_table(path)
        pandas_index = _check_pandas_metadata(path, table)
        df = table.drop_columns(pandas_index).to_pandas(ignore_metadata=True)
    except _MetadataDisagrees:
        raise
    except unreadable as exc:
        raise ValueError(f"{path}: not a readable Parquet table: {type(exc).__name__}: {exc}") from None
    return df


_PANDAS_INDEX_FIELD = re.compile(r"__index_level_\d+__")


class _MetadataDisagrees(ValueError):
    pass


def _check_pandas_metadata(path: Path, table: Any) -> list[str]:
    """ValueError when the footer's pandas metadata would read the columns under other names than the schema's
    (a rename, a duplicate); the fields holding pandas' own unnamed index (`__index_level_0__`), to drop."""
    meta = (table.schema.metadata or {}).get(b"pandas")
    if meta is None:  # written by pyarrow, polars, Spark...: nothing to disagree with
        return []
    info = json.loads(meta)
    if not (isinstance(info, dict) and isinstance(info.get("columns"), list)
            and isinstance(info.get("index_columns", []), list)):
        raise ValueError("its pandas metadata is not the JSON object pandas writes")  # noqa: TRY004 - the contract
    # what pandas' reader would make of the metadata, on no rows (cheap); its KeyError/TypeError on garbled
    # metadata is the caller's "not a readable Parquet table"
    shown = table.slice(0, 0).to_pandas()
    index_fields = [c for c in info.get("index_columns", []) if isinstance(c, str)]
    expected = [name for name in table.schema.names if name not in index_fields]
    got = [str(c) for c in shown.columns]
    if got != expected:
        raise _MetadataDisagrees(f"{path}: not a readable Parquet table: its pandas metadata disagrees with its "
                                 f"schema: the schema's columns {', '.join(map(repr, expected))} would be read as "
                                 f"{', '.join(map(repr, got))}")
    return [name for name in index_fields if name in table.schema.names and _PANDAS_INDEX_FIELD.fullmatch(name)]


def json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def cache_root() -> Path:
    """geopin's cache root: $GEOPIN_CACHE if set, else ~/.cache/geopin (embeddings, the gazetteer index, ...)."""
    root = os.environ.get("GEOPIN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "geopin"
