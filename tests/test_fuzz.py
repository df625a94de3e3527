"""Fuzzing the parsers of untrusted input (issue 13, item 14): EXIF GPS, tables, image decoding.

Each parser has a contract: a value, or one documented error type with a reason, never any other
exception. The property tests below check it on a few hundred mutated inputs each (bounded: the
file runs in about 30 s on 2 cores); `bench/fuzz.py` runs the same targets coverage-guided for
longer. Every crash either finds becomes a regression test here with the exact input as a literal.
Seeds, mutations and contracts are shared with the bench in tests/fuzzing.py.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import time
from pathlib import Path

import fuzzing
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from geopin.dataset.exif import ExifGpsError, read_exif_gps
from geopin.dataset.ingest import REJECT_REASONS
from geopin.dataset.manifest import read_manifest
from geopin.io import read_table

# Pillow warns about every corrupt tag it skips; on fuzzed input that is expected, not news.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def photo(path: Path, size: tuple[int, int] = (80, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 40)).save(path, "JPEG")
    return path


def ingest_outcome(table: Path, out: Path) -> str | tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest, rejects) of ingesting `table` (every row accounted for), or "input_error" when it was refused."""
    if fuzzing.ingest_contract(table, out) == "input_error":
        return "input_error"
    return read_manifest(out / "manifest.parquet"), pd.read_parquet(out / "rejects.parquet")


# ---------------------------------------------------------------------------------------------
# regression tests: exact inputs that broke a contract (found by the fuzzers, see docs/reliability.md)

# 1x1 PNG whose eXIf chunk does not start with a TIFF header: Pillow raised SyntaxError from getexif().
PNG_EXIF_BAD_TIFF_HEADER = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00:~\x9bU"
    b"\x00\x00\x00\neXIfXX\x00*\x00\x00\x00\x08\x00\x00\x99p\xbf=\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00"
    b"\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00IEND\xaeB`\x82")
# PNG header claiming 30000 x 30000 pixels: Image.open raised DecompressionBombError (not an OSError).
PNG_BOMB_HEADER = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00u0\x00\x00u0\x08\x00\x00\x00\x00CL\xa7f\x00\x00\x00"
    b"\x00IEND\xaeB`\x82")


def test_exif_unreadable_exif_block_is_an_exif_gps_error(tmp_path):
    path = write(tmp_path / "bad_exif.png", PNG_EXIF_BAD_TIFF_HEADER)
    with pytest.raises(ExifGpsError) as info:
        read_exif_gps(path)
    assert info.value.reason == "coords_not_numeric"
    assert "EXIF" in info.value.detail and "TIFF" in info.value.detail
    with pytest.raises(ExifGpsError):  # an already-open image takes the same path
        read_exif_gps(Image.open(io.BytesIO(PNG_EXIF_BAD_TIFF_HEADER)))


def test_exif_of_a_decompression_bomb_header_is_an_exif_gps_error(tmp_path):
    path = write(tmp_path / "bomb.png", PNG_BOMB_HEADER)
    with pytest.raises(ExifGpsError) as info:
        read_exif_gps(path)
    assert info.value.reason == "decompression_bomb"


@pytest.mark.parametrize("data, reason", [(b"not an image at all\n", "not_an_image"),
                                          (b"\x89PNG\r\n\x1a\n\x00\x00", "not_an_image"),
                                          (b"", "empty_file")], ids=["text", "cut_png", "empty"])
def test_exif_of_a_file_that_is_not_an_image_is_an_exif_gps_error(tmp_path, data, reason):
    path = write(tmp_path / "x.jpg", data)
    with pytest.raises(ExifGpsError) as info:
        read_exif_gps(path)
    assert info.value.reason == reason and info.value.reason in REJECT_REASONS


def test_exif_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_exif_gps(tmp_path / "nowhere.jpg")


def test_table_trailing_comma_on_every_row_does_not_shift_columns(tmp_path):
    # Excel-style trailing delimiters: pandas took the first column as an index and shifted the rest.
    path = write(tmp_path / "t.csv", b"image,lat,lon\na.jpg,10,20,\nb.jpg,1,2,\n")
    df = read_table(path)
    assert df["image"].tolist() == ["a.jpg", "b.jpg"]
    assert df["lat"].tolist() == [10, 1] and df["lon"].tolist() == [20, 2]


def test_table_first_row_longer_than_header_is_an_error_not_a_shift(tmp_path):
    # pandas silently read image=20, lat=30, lon=40 here (the first two fields became an index).
    path = write(tmp_path / "t.csv", b"image,lat,lon\na.jpg,10,20,30,40\nb.jpg,1,2\n")
    with pytest.raises(ValueError, match="more fields than the header") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_table_later_row_longer_than_header_names_file_and_line(tmp_path):
    path = write(tmp_path / "t.csv", b"image,lat,lon\na.jpg,1,2\nb.jpg,10,20,30,40\n")
    with pytest.raises(ValueError, match="line 3") as info:
        read_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, data", [
    ("dup.csv", b"image,lat,lat,lon\na.jpg,10,99,20\n"),
    ("dup_quoted.csv", b'"image","lat","lon","lon"\na.jpg,10,20,30\n'),
], ids=["plain", "quoted"])
def test_table_duplicate_column_names_are_refused(tmp_path, name, data):
    # pandas renamed the second 'lat' to 'lat.1' and ingest silently used the first one.
    path = write(tmp_path / name, data)
    with pytest.raises(ValueError, match="duplicate column") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_parquet_duplicate_column_names_are_refused_by_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["a.jpg"]), pa.array([1.0]), pa.array([2.0]), pa.array([3.0])],
                            names=["image", "lat", "lat", "lon"]), path)
    with pytest.raises(ValueError, match="duplicate column.*'lat'") as info:
        read_table(path)
    assert str(path) in str(info.value)


TABLE_ERRORS = [
    ("empty.csv", b"", "empty"),
    ("blank.csv", b"\n\n\n", "empty"),
    ("latin1.csv", "image,lat,lon\ncaf\xe9.jpg,10,20\n".encode("latin-1"), "not UTF-8.*line 2"),
    ("garbage.csv", bytes(range(128, 256)) * 8, "not UTF-8.*line 1"),
    ("open_quote.csv", b'image,lat,lon\n"a.jpg,10,20\n', "cannot parse"),
    ("semicolon.csv", b"image;lat;lon\na.jpg;10;20\n", "separated by ';'"),
    ("corrupt.parquet", b"PAR1garbagePAR1", "not a readable Parquet"),
    ("text.parquet", b"image,lat,lon\n", "not a readable Parquet"),
    ("empty.parquet", b"", "not a readable Parquet"),
]


@pytest.mark.parametrize("name, data, match", TABLE_ERRORS, ids=[case[0] for case in TABLE_ERRORS])
def test_table_errors_are_value_errors_naming_the_file(tmp_path, name, data, match):
    path = write(tmp_path / name, data)
    with pytest.raises(ValueError, match=match) as info:
        read_table(path)
    assert str(path) in str(info.value)
    assert ingest_outcome(path, tmp_path / "out") == "input_error"


# Parquet files whose pandas metadata is garbled (the fuzzer flipped bytes of it): pyarrow's pandas
# layer raised KeyError('columns') and TypeError("data type 'flpat64' not understood").
PARQUET_PANDAS_META_KEYERROR = base64.b64decode(
    "UEFSMRUEFRAVEEwVAhUAEgAAAAAAAAAA8D8VABUSFRIsFQIVEBUGFQYcAAAAAgAAAAIBAQIAFQQZLDUAGAZzY2hlbWEVAgAVCiUC"
    "GANsYXQAFgIZHBkcJgAcFQoZNQAGEBkYA2xhdBUAFgIWZBZkJjQmCCksFQQVABUCABUAFRAVAgA8KQYZJgACAAAAFmQWAiYIFmQA"
    "GSwYBnBhbmRhcxgVeyJpbmRleF9jb2xYbW5zIjogW119ABgMQVJST1c6c2NoZW1hGIwCLy8vLy84QUFBQUFRQUFBQUFBQUtBQTRB"
    "QmdBRkFBZ0FDZ0FBQUFBQkJBQVFBQUFBQUFBS0FBd0FBQUFFQUFnQUNnQUFBRXdBQUFBRUFBQUFBUUFBQUF3QUFBQUlBQXdBQkFB"
    "SUFBZ0FBQUFrQUFBQUJBQUFBQlVBQUFCN0ltbHVaR1Y0WDJOdmJGaHRibk1pT2lCYlhYMEFBQUFHQUFBQWNHRnVaR0Z6QUFBQkFB"
    "QUFGQUFBQUJBQUZBQUlBQVlBQndBTUFBQUFFQUFRQUFBQUFBQUJBeEFBQUFBY0FBQUFCQUFBQUFBQUFBQURBQUFBYkdGMEFBQUFC"
    "Z0FJQUFZQUJnQUFBQUFBQWdBPQAYIHBhcnF1ZXQtY3BwLWFycm93IHZlcnNpb24gMjYuMC4xGRwcAAAAyAEAAFBBUjE=")
PARQUET_PANDAS_META_TYPEERROR = base64.b64decode(
    "UEFSMRUEFRAVEEwVAhUAEgAAAAAAAAAA8D8VABUSFRIsFQIVEBUGFQYcAAAAAgAAAAIBAQIAFQQZLDUAGAZzY2hlbWEVAgAVCiUC"
    "GANsYXQAFgIZHBkcJgAcFQoZNQAGEBkYA2xhdBUAFgIWZBZkJjQmCCksFQQVABUCABUAFRAVAgA8KQYZJgACAAAAFmQWAiYIFmQA"
    "GSwYBnBhbmRhcxhmeyJpbmRleF9jb2x1bW5zIjogW10sICJjb2x1bW5zIjogW3sibmFtZSI6ICJsYXQiLCAicGFuZGFzX3R5cGUi"
    "OiAiZmxwYXQ2NCIsICJudW1weV90eXBlIjogImZscGF0NjQifV19ABgMQVJST1c6c2NoZW1hGPgCLy8vLy94QUJBQUFRQUFBQUFB"
    "QUtBQTRBQmdBRkFBZ0FDZ0FBQUFBQkJBQVFBQUFBQUFBS0FBd0FBQUFFQUFnQUNnQUFBSndBQUFBRUFBQUFBUUFBQUF3QUFBQUlB"
    "QXdBQkFBSUFBZ0FBQUIwQUFBQUJBQUFBR1lBQUFCN0ltbHVaR1Y0WDJOdmJIVnRibk1pT2lCYlhTd2dJbU52YkhWdGJuTWlPaUJi"
    "ZXlKdVlXMWxJam9nSW14aGRDSXNJQ0p3WVc1a1lYTmZkSGx3WlNJNklDSm1iSEJoZERZMElpd2dJbTUxYlhCNVgzUjVjR1VpT2lB"
    "aVpteHdZWFEyTkNKOVhYMEFBQVlBQUFCd1lXNWtZWE1BQUFFQUFBQVVBQUFBRUFBVUFBZ0FCZ0FIQUF3QUFBQVFBQkFBQUFBQUFB"
    "RURFQUFBQUJ3QUFBQUVBQUFBQUFBQUFBTUFBQUJzWVhRQUFBQUdBQWdBQmdBR0FBQUFBQUFDQUE9PQAYIHBhcnF1ZXQtY3BwLWFy"
    "cm93IHZlcnNpb24gMjYuMC4xGRwcAAAAhQIAAFBBUjE=")


@pytest.mark.parametrize("data", [PARQUET_PANDAS_META_KEYERROR, PARQUET_PANDAS_META_TYPEERROR],
                         ids=["KeyError", "TypeError"])
def test_parquet_with_garbled_pandas_metadata_is_a_value_error(tmp_path, data):
    path = write(tmp_path / "t.parquet", data)
    with pytest.raises(ValueError, match="not a readable Parquet") as info:
        read_table(path)
    assert str(path) in str(info.value)
    assert ingest_outcome(path, tmp_path / "out") == "input_error"


@pytest.mark.parametrize("data", [PARQUET_PANDAS_META_KEYERROR, PARQUET_PANDAS_META_TYPEERROR],
                         ids=["KeyError", "TypeError"])
def test_manifest_with_garbled_pandas_metadata_is_a_value_error(tmp_path, data):
    # read_manifest (used by every stage after ingest) let the same KeyError/TypeError through.
    path = write(tmp_path / "manifest.parquet", data)
    with pytest.raises(ValueError, match="not a readable Parquet manifest") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def _pandas_parquet(path: Path, edit=None, **to_parquet) -> Path:
    """The seed table (image, lat, lon, author) as pandas writes it, its footer's pandas metadata passed
    through `edit` (the schema itself untouched)."""
    import json

    import pyarrow.parquet as pq

    df = pd.DataFrame({"image": ["p0.jpg", "p1.jpg"], "lat": [-60.0, 60.0], "lon": [-150.0, 150.0],
                       "author": ["a", "b"]})
    df.to_parquet(path, **to_parquet)
    if edit is not None:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"pandas"])
        edit(meta)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()}),
                       path)
    return path


def test_parquet_whose_pandas_metadata_renames_a_column_is_refused(tmp_path):
    # Found by `bench/fuzz.py --seconds 25` (parquet target): the schema's columns are image, lat, lon, author, the
    # footer's pandas metadata calls the second one "image", and pandas read image, image, lon, author: lat gone.
    def rename_lat(meta):
        meta["columns"][1]["name"] = "image"

    path = _pandas_parquet(tmp_path / "t.parquet", rename_lat)
    import pyarrow.parquet as pq

    assert pq.read_schema(path).names == ["image", "lat", "lon", "author"]
    assert pd.read_parquet(path).columns.tolist() == ["image", "image", "lon", "author"]  # the silent misread
    with pytest.raises(ValueError, match="pandas metadata disagrees with its schema.*'lat'") as info:
        read_table(path)
    assert str(path) in str(info.value)
    assert ingest_outcome(path, tmp_path / "out") == "input_error"
    with pytest.raises(ValueError, match="not a readable Parquet manifest: its pandas metadata disagrees"):
        read_manifest(path)


def test_parquet_is_read_by_its_schema_not_its_pandas_metadata(tmp_path):
    """Metadata that moves a column into the index or retypes it does not change what is read; pandas' own
    stored index (index=True) is not a column; a named index is (the data is in the file)."""
    def lat_as_index(meta):
        meta["index_columns"] = ["lat"]

    def lat_as_text(meta):
        meta["columns"][1]["numpy_type"] = "string"  # pandas turned the numbers into strings

    for name, edit, kwargs in (("index.parquet", None, {"index": True}), ("lat_index.parquet", lat_as_index, {}),
                               ("lat_text.parquet", lat_as_text, {})):
        df = read_table(_pandas_parquet(tmp_path / name, edit, **kwargs))
        assert df.columns.tolist() == ["image", "lat", "lon", "author"], name
        assert df["lat"].tolist() == [-60.0, 60.0] and pd.api.types.is_float_dtype(df["lat"]), name
    named = tmp_path / "named.parquet"
    pd.DataFrame({"image": ["p0.jpg"], "lat": [1.0], "lon": [2.0]}).set_index("image").to_parquet(named)
    assert read_table(named).columns.tolist() == ["lat", "lon", "image"]


def test_table_utf16_with_bom_is_read(tmp_path):
    # Excel's "Unicode text" export; it used to fail as "not UTF-8".
    path = write(tmp_path / "t.csv", "image,lat,lon\ncafé.jpg,10,20\n".encode("utf-16"))
    assert read_table(path).to_dict("records") == [{"image": "café.jpg", "lat": 10, "lon": 20}]


def test_table_bom_quoted_newline_and_huge_field(tmp_path):
    photo(tmp_path / "a.jpg")
    data = ("\ufeffimage,lat,lon\na.jpg,10,20\n\"two\nlines.jpg\",1,2\n" + "x" * 2_000_000 + ",3,4\n").encode()
    path = write(tmp_path / "t.csv", data)
    manifest, rejects = ingest_outcome(path, tmp_path / "out")
    assert manifest["id"].tolist() == ["a.jpg"]
    assert rejects["reason"].tolist() == ["file_missing", "file_missing"]
    assert rejects["source_row"].tolist() == [1, 2]


def test_ingest_nul_byte_in_an_image_path_rejects_that_row_only(tmp_path):
    # Path.read_bytes raised ValueError("embedded null byte") and ended the whole ingest.
    photo(tmp_path / "a.jpg")
    path = write(tmp_path / "t.csv", b'image,lat,lon\n"a\x00.jpg",10,20\na.jpg,10,20\n')
    manifest, rejects = ingest_outcome(path, tmp_path / "out")
    assert manifest["id"].tolist() == ["a.jpg"]
    assert rejects["reason"].tolist() == ["file_missing"]
    assert "NUL" in rejects["detail"].iloc[0]


# ---------------------------------------------------------------------------------------------
# property tests: a few hundred mutated inputs per parser (bench/fuzz.py runs them for longer)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXIF_SEEDS = fuzzing.exif_seeds()
TABLE_SEEDS = fuzzing.table_seeds()
IMAGE_SEEDS = fuzzing.image_seeds()
#: The pixel limit the decoding tests apply: small, so a lying header that slips past it would show.
FUZZ_MAX_PIXELS = 1 << 20
#: Seconds one input may take to decode (these files are tiny; a hang or quadratic path shows here).
DECODE_SECONDS = 5.0

# (kind, position, value) for fuzzing.mutate: mostly byte edits, sometimes cuts, inserts and deletes.
mutation_kind = st.sampled_from([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5])
ops = st.lists(st.tuples(mutation_kind, st.integers(0, 1 << 16), st.integers(0, (1 << 32) - 1)),
               min_size=1, max_size=4)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder per module: hypothesis runs many examples per test, each overwrites its file."""
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(seed=st.sampled_from(EXIF_SEEDS), mutation=ops)
def test_fuzz_exif_mutated_block_in_a_jpeg(scratch, seed, mutation):
    exif = fuzzing.mutate(seed, mutation, start=6)  # keep the "Exif\0\0" tag so Pillow parses the rest
    path = fuzzing.write_file(scratch / "exif.jpg", fuzzing.jpeg_with_exif_payload(exif))
    event(fuzzing.exif_contract(path))


u32 = st.one_of(st.sampled_from([0, 1, 60, 3600, 10_000, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
s32 = st.one_of(st.sampled_from([0, 1, -1, 60, -60, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
specials = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1.0, 45.5, 5e-324])


@st.composite
def gps_value(draw, ref: bool):
    """(type, count, payload) of one GPS field: usually the right shape, often not."""
    if ref:
        kind = draw(st.sampled_from(["ascii", "ascii", "byte", "short", "empty"]))
        if kind == "ascii":
            text = draw(st.sampled_from([b"N\0", b"S\0", b"E\0", b"W\0", b"n\0", b"X\0", b"\0\0", b"NS\0", b" W\0",
                                         b"\xff\0", b"N", b"EAST\0"]))
            return 2, draw(st.sampled_from([len(text), 0, 1, 2**31])), text
        if kind == "byte":
            return 1, 1, bytes([draw(st.integers(0, 255))])
        if kind == "short":
            return 3, 1, struct.pack(">H", draw(st.integers(0, 65535)))
        return 2, 0, b""
    n = draw(st.sampled_from([3, 3, 3, 1, 2, 4, 0]))
    kind = draw(st.sampled_from(["rational", "rational", "srational", "double", "long", "ascii", "undefined"]))
    if kind == "rational":
        return 5, n, fuzzing.rationals(*draw(st.lists(st.tuples(u32, u32), min_size=n, max_size=n)))
    if kind == "srational":
        return 10, n, fuzzing.rationals(*draw(st.lists(st.tuples(s32, s32), min_size=n, max_size=n)), signed=True)
    if kind == "double":
        return 12, n, b"".join(struct.pack(">d", v) for v in draw(st.lists(specials, min_size=n, max_size=n)))
    if kind == "long":
        return 4, n, b"".join(struct.pack(">I", v) for v in draw(st.lists(u32, min_size=n, max_size=n)))
    if kind == "ascii":
        return 2, 8, b"48.8584\0"
    return 7, 24, draw(st.binary(min_size=24, max_size=24))


@st.composite
def gps_entries(draw):
    entries = []
    for tag in (1, 2, 3, 4):
        if draw(st.integers(0, 9)) == 0:
            continue  # the tag is missing
        typ, count, payload = draw(gps_value(ref=tag in (1, 3)))
        if draw(st.integers(0, 9)) == 0:
            typ = draw(st.sampled_from([0, 6, 8, 9, 11, 13, 14, 255, 65535]))  # a type that does not fit
        entries.append((tag, typ, count, payload))
    if draw(st.booleans()):
        entries.append((draw(st.sampled_from([0, 5, 6, 29, 2, 65535])), 5, 1, fuzzing.rationals((1, 0))))
    return draw(st.permutations(entries))


@FUZZ
@given(entries=gps_entries())
def test_fuzz_exif_hand_built_gps_fields(scratch, entries):
    """Zero denominators, negatives, huge values, NaN, wrong types and ref letters, missing tags."""
    block = b"Exif\x00\x00" + fuzzing.tiff_gps_block(entries)
    path = fuzzing.write_file(scratch / "gps.jpg", fuzzing.jpeg_with_exif_payload(block))
    outcome = fuzzing.exif_contract(path)
    event(outcome)
    tags = {tag for tag, *_ in entries}
    if not tags & {2, 4}:
        assert outcome in ("none", "coords_missing"), outcome


@FUZZ
@given(seed=st.sampled_from(EXIF_SEEDS[:2]), fmt=st.sampled_from(["PNG", "WEBP", "TIFF", "JPEG"]), mutation=ops)
def test_fuzz_exif_in_any_container(scratch, seed, fmt, mutation):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, fmt, exif=seed)
    path = fuzzing.write_file(scratch / f"whole.{fmt.lower()}", fuzzing.mutate(buf.getvalue(), mutation))
    event(fuzzing.exif_contract(path))


csv_atoms = st.sampled_from([b",", b",", b",", b'"', b"\n", b"\r\n", b"\r", b"\x00", b";", b"\t", b"a.jpg", b"12.5",
                             b"-200", b"image", b"lat", b"lon", b"\xef\xbb\xbf", b"\xff\xfe", b"\xe9", b"\xc3\xa9",
                             b" ", b"#", b"nan", b"1e999", b"x" * 300, b"\xf0\x9f\x98\x80"])
csv_bytes = st.one_of(st.binary(max_size=300), st.lists(csv_atoms, max_size=60).map(b"".join))


@FUZZ
@given(body=csv_bytes, with_header=st.booleans(), suffix=st.sampled_from([".csv", ".tsv", ".txt"]))
def test_fuzz_read_table_any_csv_bytes(scratch, body, with_header, suffix):
    data = (b"image,lat,lon\n" if with_header else b"") + body
    event(fuzzing.table_contract(fuzzing.write_file(scratch / f"t{suffix}", data)))


@FUZZ
@given(name=st.sampled_from(sorted(TABLE_SEEDS)), mutation=ops)
def test_fuzz_read_table_mutated_real_tables(scratch, name, mutation):
    path = fuzzing.write_file(scratch / name, fuzzing.mutate(TABLE_SEEDS[name], mutation))
    event(fuzzing.table_contract(path))


cell = st.one_of(st.sampled_from(["a.jpg", "a.jpg", "b.jpg", "missing.jpg", "", " ", "a\x00.jpg", "sub/../a.jpg",
                                  "48.85", "-33.9", "0", "91", "-181", "nan", "inf", "1e400", "abc", "12,5",
                                  '"', "two\nlines", "\ufeff", "x" * 5000, "True"]),
                 st.floats(allow_nan=True), st.integers(-10**20, 10**20), st.text(max_size=12))


photo_names = st.sampled_from(["a.jpg", "b.jpg"])
column_cells = {"image": st.one_of(photo_names, photo_names, cell),
                "lat": st.one_of(st.floats(-90, 90), st.floats(-90, 90), cell),
                "lon": st.one_of(st.floats(-180, 180), st.floats(-180, 180), cell)}


@st.composite
def odd_rows(draw, header: list[str]):
    """One row: values that fit its column's name most of the time, sometimes one field short or long."""
    row = [draw(column_cells.get(name, cell)) for name in header]
    change = draw(st.sampled_from(["same"] * 60 + ["short", "long"]))
    return row[:-1] if change == "short" else row + [draw(cell)] if change == "long" else row


@st.composite
def odd_tables(draw):
    """A header that usually has the needed columns (sometimes twice, sometimes not), rows of odd cells."""
    keep = st.sampled_from([True] * 19 + [False])  # a needed column is missing 1 time in 20
    needed = [c for c in ("image", "lat", "lon") if draw(keep)]
    extra = draw(st.lists(st.sampled_from(["author"] * 4 + ["extra"] * 4 + ["", "lat", "image"]), max_size=2))
    header = draw(st.permutations(needed + extra)) or ["image"]
    rows = draw(st.lists(odd_rows(header), min_size=1, max_size=12))
    return header, rows


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=odd_tables(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
       line_end=st.sampled_from(["\n", "\r\n"]), quoting=st.sampled_from([0, 1, 2]))
def test_fuzz_ingest_odd_tables(tmp_path_factory, table, encoding, line_end, quoting):
    """Every row ends in the manifest or the rejects, or the whole table is refused by name."""
    import csv

    root = tmp_path_factory.mktemp("ingest")
    photo(root / "a.jpg")
    photo(root / "b.jpg", size=(70, 70))
    header, rows = table
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=line_end, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    path = fuzzing.write_file(root / "t.csv", text.getvalue().encode(encoding, errors="surrogatepass"))
    outcome = fuzzing.ingest_contract(path, root / "out")
    event(outcome)
    clean = (all(header.count(c) == 1 for c in ("image", "lat", "lon")) and len(set(header)) == len(header)
             and all(len(r) <= len(header) for r in rows)
             and not any(isinstance(c, str) and "\r" in c for r in rows for c in r))
    if clean:  # nothing wrong with the table as a whole: each problem is one row's, and a reject
        assert outcome != "input_error", (header, rows)


@FUZZ
@given(name=st.sampled_from(sorted(IMAGE_SEEDS)), mutation=ops)
def test_fuzz_decode_rgb_mutated_real_files(name, mutation):
    data = fuzzing.mutate(IMAGE_SEEDS[name], mutation)
    started = time.perf_counter()
    event(fuzzing.decode_contract(data, FUZZ_MAX_PIXELS))
    assert time.perf_counter() - started < DECODE_SECONDS


dimension = st.one_of(st.sampled_from([0, 1, 2, 1023, 1024, 1025, 32767, 65535, 2**31 - 1, 2**31, 2**32 - 1]),
                      st.integers(0, 2**32 - 1))


@FUZZ
@given(name=st.sampled_from(sorted(IMAGE_SEEDS)), width=dimension, height=dimension,
       mutation=st.lists(st.tuples(mutation_kind, st.integers(0, 1 << 16), st.integers(0, 2**32 - 1)),
                         max_size=2))
def test_fuzz_decode_rgb_lying_headers(name, width, height, mutation):
    """Huge, zero and negative sizes in the header: refused before decoding, or decoded within the limit."""
    data = fuzzing.mutate(fuzzing.set_dimensions(IMAGE_SEEDS[name], width, height), mutation)
    started = time.perf_counter()
    event(fuzzing.decode_contract(data, FUZZ_MAX_PIXELS))
    assert time.perf_counter() - started < DECODE_SECONDS
