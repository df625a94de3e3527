"""The OCR reader on signs rendered by the test: real rapidocr, real tesseract where installed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from geopin.evidence.base import Reading
from geopin.evidence.ocr import (
    OcrConfig,
    OcrUnavailable,
    TextReader,
    keep_line,
    tesseract_problem,
    latin_lookalike,
    words_to_line,
)

LATIN_FONT = Path(__import__("matplotlib").get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
CJK_FONTS = (  # Debian fonts-noto-cjk, fonts-wqy-zenhei
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)


def sign(text: str, size: tuple[int, int] = (1200, 800), font: Path | str = LATIN_FONT, pt: int = 110) -> Image.Image:
    """A "photo": a white sign with dark text, centred on a green background."""
    img = Image.new("RGB", size, (90, 120, 90))
    draw = ImageDraw.Draw(img)
    face = ImageFont.truetype(str(font), pt)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    w, h = x1 - x0, y1 - y0
    cx, cy = size[0] // 2, size[1] // 2
    draw.rectangle((cx - w // 2 - 40, cy - h // 2 - 40, cx + w // 2 + 40, cy + h // 2 + 40), fill=(250, 250, 250))
    draw.text((cx - w // 2 - x0, cy - h // 2 - y0), text, font=face, fill=(10, 10, 10))
    return img


def cjk_font() -> str:
    for path in CJK_FONTS:
        if Path(path).is_file():
            return path
    pytest.skip(f"no CJK font found (looked for {', '.join(CJK_FONTS)}): apt-get install fonts-noto-cjk")


@pytest.fixture(scope="module")
def reader() -> TextReader:
    """One reader for the module (loading the engines takes a few seconds); tesseract when installed."""
    r = TextReader(OcrConfig())
    yield r
    r.close()


def texts(reading: Reading, engine: str | None = None) -> list[str]:
    return [line.text for line in reading.lines if engine is None or line.engine == engine]


def test_latin_sign_is_read_where_it_stands(reader):
    reading = reader.read(sign("PRAIANO"))
    assert (reading.width, reading.height) == (1200, 800)
    line = next(line for line in reading.lines if line.engine == "rapidocr")
    assert line.text == "PRAIANO"
    assert line.script == "Latin"
    assert line.score >= 0.8
    x0, y0, x1, y1 = line.box  # the text sits around the centre of the photo
    assert x0 < 600 < x1 and y0 < 400 < y1
    assert x1 - x0 < 1000 and y1 - y0 < 300


def test_small_photo_is_read(reader):
    """The shared photos are 384 px on the long side."""
    assert "PRAIANO" in texts(reader.read(sign("PRAIANO").resize((384, 256))), "rapidocr")


def test_cyrillic_is_read_by_tesseract(reader):
    if not reader.uses_tesseract:
        pytest.skip(f"tesseract is not usable here: {tesseract_problem()}")
    reading = reader.read(sign("ВЛАДИВОСТОК"))
    line = next((line for line in reading.lines if line.text == "ВЛАДИВОСТОК"), None)
    assert line is not None, f"read {texts(reading)}"
    assert (line.engine, line.script) == ("tesseract", "Cyrillic")


def test_kanji_are_read(reader):
    reading = reader.read(sign("京都", font=cjk_font(), pt=160))
    assert "京都" in texts(reading, "rapidocr")
    assert next(line for line in reading.lines if line.text == "京都").script == "Han"


def test_blank_photo_gives_no_lines_and_no_engine_chatter(reader, capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="RapidOCR"):
        reading = reader.read(Image.new("RGB", (800, 600), (128, 128, 128)))
    assert reading == Reading(lines=(), width=800, height=600)
    assert "RapidOCR" not in capfd.readouterr().err  # its own colour handler prints to stderr
    assert not [r for r in caplog.records if r.name == "RapidOCR"]


def test_path_is_read_upright_at_full_size(reader, tmp_path):
    """A photo stored sideways with an EXIF orientation is read the way it is seen."""
    upright = sign("PRAIANO", size=(1000, 700))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held upright writes, for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif)
    reading = reader.read(path)
    assert (reading.width, reading.height) == (1000, 700)
    assert "PRAIANO" in texts(reading, "rapidocr")


def test_bad_files_are_named(reader, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        reader.read(tmp_path / "nowhere.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is no photo")
    with pytest.raises(ValueError, match="broken.jpg"):
        reader.read(broken)


def test_tesseract_always_without_models_fails_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path))  # tesseract reads its models from here, and there are none
    problem = tesseract_problem()
    assert problem is not None
    with pytest.raises(OcrUnavailable, match="tesseract.*(apt-get|pip) install"):
        TextReader(OcrConfig(tesseract="always"))


def test_config_rejects_unknown_modes():
    with pytest.raises(ValueError, match="tesseract mode 'sometimes'"):
        OcrConfig(tesseract="sometimes")
    with pytest.raises(ValueError, match="min_score"):
        OcrConfig(min_score=1.5)


@given(st.text(max_size=12), st.floats(0, 1))
def test_kept_lines_are_confident_and_long_enough(text, score):
    cfg = OcrConfig()
    if keep_line(text, score, cfg):
        assert score >= cfg.min_score
        assert sum(ch.isalnum() for ch in text) >= cfg.min_alnum_dense


def test_line_rules():
    cfg = OcrConfig()
    assert keep_line("PRAIANO", 0.95, cfg)
    assert not keep_line("PRAIANO", 0.5, cfg)
    assert not keep_line("A1", 0.99, cfg)  # a fragment
    assert keep_line("京都", 0.9, cfg)  # two Han characters are a word
    assert not keep_line("京", 0.9, cfg)


def test_sign_edges_read_as_marks_are_dropped():
    assert words_to_line([("|", 30.0), ("Київ", 96.0), ("|", 20.0)]) == ("Київ", 0.96)
    assert words_to_line([("[ВЛАДИВОСТОК", 90.0)]) == ("ВЛАДИВОСТОК", 0.9)
    assert words_to_line([("40", 95.0), ("МРН", 85.0)]) == ("40 МРН", 0.9)
    assert words_to_line([("|", 80.0), ("=", 70.0)]) is None


@given(st.lists(st.tuples(st.text(max_size=8), st.floats(-1, 100)), max_size=5))
def test_tesseract_lines_have_words_and_a_score_in_range(words):
    line = words_to_line(words)
    if line is not None:
        text, score = line
        assert 0.0 <= score <= 1.0
        assert text and text[0] not in "|[]{}!" and text[-1] not in "|[]{}!"
        assert any(ch.isalnum() for ch in text)


def test_latin_lookalikes_are_told_from_real_script():
    for text in ("ОРЕМ", "ΤΗΑΝΚ YOU", "50ВЈЕСТ ТО", "нот", "PRAIANO"):
        assert latin_lookalike(text), text
    for text in ("МИРА", "ΑΘΗΝΑ", "ВЛАДИВОСТОК", "京都", "2493", ""):
        assert not latin_lookalike(text), text
