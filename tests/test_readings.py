"""The readings file (one writer, one reader) and reading a whole manifest on the engine, with real OCR."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_ocr import sign
from typer.testing import CliRunner

from geopin.evidence.base import Reading, TextLine
from geopin.evidence.ocr import OcrConfig
from geopin.evidence.readings import (
    READINGS_FILE,
    read_manifest_engine,
    read_readings,
    readings_meta,
    readings_table,
    write_readings,
)
from geopin.scale.engine import PARTS_DIR, EngineConfig

READING = Reading(
    lines=(
        TextLine("PRAIANO", 0.99, (10.0, 20.0, 300.0, 80.0), "rapidocr", "Latin"),
        TextLine("ВЛАДИВОСТОК", 0.93, (10.0, 100.0, 400.0, 160.0), "tesseract", "Cyrillic"),
    ),
    width=1200,
    height=800,
)


def test_readings_round_trip(tmp_path):
    rows = [
        {"id": "a", "path": "/photos/a.jpg", "reading": READING},
        {"id": "b", "path": "/photos/b.jpg", "reading": Reading(width=384, height=256)},
        {"id": "c", "path": "/photos/c.jpg", "error": "file not found: /photos/c.jpg"},
    ]
    path = write_readings(rows, tmp_path, meta={"engines": ["rapidocr"]})
    assert path == tmp_path / READINGS_FILE
    assert read_readings(tmp_path) == {"a": READING, "b": Reading(width=384, height=256)}
    table = readings_table(path)
    assert table["id"].tolist() == ["a", "b", "c"]
    assert table["error"].tolist() == [None, None, "file not found: /photos/c.jpg"]
    assert table["reading"].iloc[2] is None
    assert readings_meta(path) == {"engines": ["rapidocr"]}
    stored = pq.read_table(path).column("reading").to_pylist()[0]
    assert "ВЛАДИВОСТОК" in stored  # readable JSON, not escapes


def test_a_row_is_read_or_failed_never_both(tmp_path):
    with pytest.raises(ValueError, match="row 0 .'x'.: give a reading or an error"):
        write_readings([{"id": "x", "path": "p", "reading": READING, "error": "also broken"}], tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        write_readings([{"id": "x", "path": "p"}], tmp_path)
    assert not (tmp_path / READINGS_FILE).exists()


def test_other_files_are_refused_by_name(tmp_path):
    other = tmp_path / "manifest.parquet"
    pd.DataFrame({"id": ["a"], "path": ["p"]}).to_parquet(other)
    with pytest.raises(ValueError, match=r"manifest.parquet: missing column\(s\) reading, error"):
        readings_table(other)
    with pytest.raises(FileNotFoundError, match="geopin read"):
        read_readings(tmp_path / "empty")


@pytest.fixture
def small_manifest(tmp_path):
    """Three photos with paths relative to the manifest: a sign, a blank wall, and a corrupt file."""
    photos = tmp_path / "photos"
    photos.mkdir()
    sign("PRAIANO").resize((600, 400)).save(photos / "sign.jpg", quality=95)
    Image.new("RGB", (400, 300), (128, 128, 128)).save(photos / "blank.jpg")
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": ["sign", "corrupt", "blank"],
                  "path": ["photos/sign.jpg", "photos/corrupt.jpg", "photos/blank.jpg"]}).to_csv(manifest, index=False)
    return manifest


def test_engine_reads_a_manifest_and_resumes(small_manifest, tmp_path):
    out = tmp_path / "readings"
    cfg, engine = OcrConfig(tesseract="never"), EngineConfig("local", partition_size=2)
    summary = read_manifest_engine(small_manifest, out, cfg, engine)
    assert (summary.n, summary.n_read, summary.n_failed, summary.n_with_text) == (3, 2, 1, 1)
    assert summary.engine["computed"] == 2

    table = readings_table(out)
    assert table["id"].tolist() == ["sign", "corrupt", "blank"]  # manifest order
    assert table["path"].iloc[0] == str(small_manifest.parent / "photos" / "sign.jpg")  # resolved against the manifest
    assert "corrupt.jpg" in table["error"].iloc[1]
    readings = read_readings(out)
    assert set(readings) == {"sign", "blank"}
    assert "PRAIANO" in [line.text for line in readings["sign"].lines]
    assert readings["blank"] == Reading(width=400, height=300)
    assert readings_meta(out)["engines"] == ["rapidocr"]

    again = read_manifest_engine(small_manifest, out, cfg, engine)  # nothing left to read
    assert (again.engine["computed"], again.engine["skipped"]) == (0, 2)
    assert read_readings(out) == readings

    (out / PARTS_DIR / "part-00001.parquet").unlink()  # as if killed before the second partition was written
    resumed = read_manifest_engine(small_manifest, out, cfg, engine)
    assert (resumed.engine["computed"], resumed.engine["skipped"]) == (1, 1)
    assert read_readings(out) == readings

    other = read_manifest_engine(small_manifest, out, OcrConfig(tesseract="never", min_score=0.99), engine)
    assert other.engine["computed"] == 2  # another config: nothing reused


def test_read_command(small_manifest, tmp_path):
    from geopin.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["read", "--help"], terminal_width=200)
    assert help_text.exit_code == 0, help_text.output
    assert "--tesseract" in help_text.output and "Read the text on every photo" in help_text.output

    out = tmp_path / "cli"
    result = runner.invoke(app, ["read", str(small_manifest), "--out", str(out), "--tesseract", "never", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert (summary["n"], summary["n_failed"], summary["n_with_text"]) == (3, 1, 1)
    assert summary["engines"] == ["rapidocr"]

    bad = runner.invoke(app, ["read", str(small_manifest), "--out", str(out), "--tesseract", "sometimes"])
    assert bad.exit_code == 2
    assert "tesseract mode 'sometimes'" in bad.output
