"""Seeds, mutations and contracts for fuzzing geopin's parsers of untrusted input.

Shared by the bounded property tests (tests/test_fuzz.py, hypothesis) and the long coverage-guided
run (bench/fuzz.py, atheris), so both check exactly the same promises:

- EXIF GPS (`read_exif_gps` on a photo file): a position in range, None, or ExifGpsError whose
  reason is an ingest reject reason;
- tables (`read_table`): a DataFrame, or a ValueError that names the file;
- ingest of a table: a manifest and rejects that account for every row, or an IngestInputError
  that names the table;
- decoding (`decode_rgb`): 8-bit RGB no larger than the pixel limit, or ImageError with a known reason.

A contract function returns a short outcome label and lets any other exception through: that
exception is the finding.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imagefiles import gps_exif_bytes, gps_ifd

from geopin.dataset.exif import ExifGpsError, read_exif_gps
from geopin.dataset.ingest import REJECT_REASONS, IngestConfig, IngestInputError, ingest
from geopin.dataset.manifest import read_manifest
from geopin.io import read_table

# ---------------------------------------------------------------------------------------------
# contracts


def exif_contract(path: Path) -> str:
    try:
        position = read_exif_gps(path)
    except ExifGpsError as exc:
        assert exc.reason in REJECT_REASONS, f"unknown reason {exc.reason!r}"
        assert exc.detail, "ExifGpsError without a detail"
        return exc.reason
    if position is None:
        return "none"
    lat, lon = position
    assert isinstance(lat, float) and isinstance(lon, float), position
    assert math.isfinite(lat) and math.isfinite(lon), position
    assert -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0), position
    return "position"


def table_contract(path: Path) -> str:
    try:
        df = read_table(path)
    except ValueError as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc}"
        return "error"
    assert isinstance(df, pd.DataFrame)
    assert df.columns.is_unique, list(df.columns)
    if path.suffix == ".parquet":  # read by its schema: the fields, in order (pandas' own index fields aside)
        import pyarrow.parquet as pq

        fields = pq.read_schema(path).names
        assert [str(c) for c in df.columns] == [f for f in fields if f in set(map(str, df.columns))], \
            (list(df.columns), fields)
        dropped = [f for f in fields if f not in set(map(str, df.columns))]
        assert all(PANDAS_INDEX_FIELD.fullmatch(f) for f in dropped), (dropped, fields)
    return "table"


PANDAS_INDEX_FIELD = re.compile(r"__index_level_\d+__")


def ingest_contract(table: Path, out: Path) -> str:
    try:
        summary = ingest(table, out, IngestConfig(workers=1, chunk_size=64))
    except IngestInputError as exc:
        assert str(table) in str(exc), f"error does not name the table: {exc}"
        return "input_error"
    manifest = read_manifest(out / "manifest.parquet")
    rejects = pd.read_parquet(out / "rejects.parquet")
    assert len(manifest) == summary.n_kept and len(rejects) == summary.n_rejected
    assert summary.n_kept + summary.n_rejected == summary.n_input
    assert set(rejects["reason"]) <= set(REJECT_REASONS)
    assert sorted(manifest["source_row"].tolist() + rejects["source_row"].tolist()) == list(range(summary.n_input))
    return "kept" if summary.n_kept else "all_rejected"


def decode_contract(data: bytes, max_pixels: int) -> str:
    from geopin.dataset.images import IMAGE_ERROR_REASONS, ImageError, decode_rgb

    try:
        img = decode_rgb(data, max_pixels=max_pixels, name="fuzz-input")
    except ImageError as exc:
        assert exc.reason in IMAGE_ERROR_REASONS, exc.reason
        return exc.reason
    assert img.mode == "RGB", img.mode
    assert 1 <= img.width * img.height <= max_pixels, img.size
    return "rgb"


# ---------------------------------------------------------------------------------------------
# mutations: (kind, position, value) triples, so hypothesis can shrink them


MUTATION_KINDS = ("set", "flip", "word", "cut", "insert", "delete")
SPECIAL_WORDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                 b"\x00\x00\x00\x01", b"\xff\xff", b"\x00\x00", b"\x7f\xff")


def mutate(data: bytes, ops: list[tuple[int, int, int]], start: int = 0) -> bytes:
    """`data` with each (kind, position, value) applied in turn; positions wrap into [start, len)."""
    buf = bytearray(data)
    for kind, pos, value in ops:
        span = len(buf) - start
        if span <= 0:
            break
        i = start + pos % span
        name = MUTATION_KINDS[kind % len(MUTATION_KINDS)]
        if name == "set":
            buf[i] = value & 0xFF
        elif name == "flip":
            buf[i] ^= 1 << (value % 8)
        elif name == "word":
            word = SPECIAL_WORDS[value % len(SPECIAL_WORDS)]
            buf[i:i + len(word)] = word
        elif name == "cut":
            del buf[max(start, i):]
        elif name == "insert":
            buf[i:i] = (value & 0xFFFFFFFF).to_bytes(4, "little")[: 1 + value % 4]
        else:
            del buf[i:i + 1 + value % 16]
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# EXIF seeds


def _plain_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


PLAIN_JPEG = _plain_jpeg()


def jpeg_with_exif_payload(exif: bytes) -> bytes:
    """A JPEG whose APP1 segment holds `exif` verbatim (cut to the 64 KB a segment can hold)."""
    exif = exif[:65533]
    return PLAIN_JPEG[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + PLAIN_JPEG[2:]


def _plain_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 30)).save(buf, "PNG")
    return buf.getvalue()


PLAIN_PNG = _plain_png()


def png_with_exif_payload(exif: bytes) -> bytes:
    """A PNG with an eXIf chunk holding `exif` (its "Exif\\0\\0" prefix dropped, as PNG stores it)."""
    body = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    return PLAIN_PNG[:33] + chunk + PLAIN_PNG[33:]  # after the signature and IHDR


def exif_seeds() -> list[bytes]:
    """Real EXIF blocks as cameras and piexif write them, with GPS (and without), both byte orders."""
    import piexif

    seeds = [gps_exif_bytes(48.8584, 2.2945), gps_exif_bytes(-33.8568, 151.2153, artist="Ann Lee"),
             gps_exif_bytes(40.446111, -79.982222), gps_exif_bytes(None, None, artist="no gps")]
    full = {"0th": {piexif.ImageIFD.Make: b"Canon", piexif.ImageIFD.Orientation: 6},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2019:07:01 12:00:00"},
            "GPS": {**gps_ifd(64.1466, -21.9426), piexif.GPSIFD.GPSAltitude: (1203, 10)},
            "1st": {}, "thumbnail": None}
    seeds.append(piexif.dump(full))
    seeds.append(b"Exif\x00\x00" + tiff_gps_block([
        (1, 2, 2, b"S\x00"), (2, 5, 3, rationals((33, 1), (51, 1), (2436, 100))),
        (3, 2, 2, b"E\x00"), (4, 5, 3, rationals((151, 1), (12, 1), (5508, 100)))], "<"))
    return seeds


#: TIFF field types and their sizes in bytes (1 BYTE .. 13 IFD); others are invalid on purpose.
TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def rationals(*pairs: tuple[int, int], signed: bool = False, endian: str = ">") -> bytes:
    fmt = endian + ("i" if signed else "I")
    return b"".join(struct.pack(fmt, n) + struct.pack(fmt, d) for n, d in pairs)


def tiff_gps_block(entries: list[tuple[int, int, int, bytes]], endian: str = ">") -> bytes:
    """A TIFF header, IFD0 pointing at a GPS IFD, and that IFD with the given raw entries.

    Each entry is (tag, type, count, payload): written as given, so type, count and payload may
    disagree the way a broken camera or a hostile file makes them disagree.
    """
    head = (b"MM\x00\x2a" if endian == ">" else b"II\x2a\x00") + struct.pack(endian + "I", 8)
    gps_at = 8 + 2 + 12 + 4
    ifd0 = struct.pack(endian + "H", 1) + struct.pack(endian + "HHII", 0x8825, 4, 1, gps_at) + b"\x00" * 4
    data_at = gps_at + 2 + 12 * len(entries) + 4
    table, data = [struct.pack(endian + "H", len(entries))], b""
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            field = payload.ljust(4, b"\x00")
        else:
            field = struct.pack(endian + "I", data_at + len(data))
            data += payload + b"\x00" * (len(payload) % 2)
        table.append(struct.pack(endian + "HHI", tag & 0xFFFF, typ & 0xFFFF, count & 0xFFFFFFFF) + field)
    table.append(b"\x00" * 4)
    return head + ifd0 + b"".join(table) + data


# ---------------------------------------------------------------------------------------------
# table seeds


def table_seeds() -> dict[str, bytes]:
    """Small real tables: CSV variants and Parquet files as pandas writes them."""
    df = pd.DataFrame({"image": [f"p{i}.jpg" for i in range(6)], "lat": np.linspace(-60, 60, 6),
                       "lon": np.linspace(-150, 150, 6), "author": list("aabbcc")})
    seeds = {"plain.csv": df.to_csv(index=False).encode(),
             "bom.csv": ("\ufeff" + df.to_csv(index=False)).encode(),
             "quoted.csv": df.to_csv(index=False, quoting=1, lineterminator="\r\n").encode(),
             "tab.tsv": df.to_csv(index=False, sep="\t").encode()}
    for name, kwargs in (("plain.parquet", {}), ("zstd.parquet", {"compression": "zstd"}),
                         ("index.parquet", {"index": True})):
        buf = io.BytesIO()
        df.to_parquet(buf, **kwargs)
        seeds[name] = buf.getvalue()
    return seeds


# ---------------------------------------------------------------------------------------------
# image seeds


def _picture(size: tuple[int, int] = (32, 24)) -> Image.Image:
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def image_seeds() -> dict[str, bytes]:
    """Small real files in every format decode_rgb meets, in the variants that take other code paths."""
    import piexif

    rgb = _picture()
    variants: dict[str, tuple[Image.Image, str, dict]] = {
        "baseline.jpg": (rgb, "JPEG", {"quality": 90}),
        "progressive.jpg": (rgb, "JPEG", {"progressive": True}),
        "rotated.jpg": (rgb, "JPEG", {"exif": piexif.dump({"0th": {piexif.ImageIFD.Orientation: 6}})}),
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {}),
        "gray.jpg": (rgb.convert("L"), "JPEG", {}),
        "rgb.png": (rgb, "PNG", {}),
        "palette.png": (rgb.convert("P"), "PNG", {}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "gray16.png": (Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "PNG", {}),
        "raw.tif": (rgb, "TIFF", {}),
        "lzw.tif": (rgb, "TIFF", {"compression": "tiff_lzw"}),
        "jpeg.tif": (rgb, "TIFF", {"compression": "jpeg"}),
        "packbits.tif": (rgb, "TIFF", {"compression": "packbits"}),
        "float.tif": (Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255), "TIFF", {}),
        "still.gif": (rgb.convert("P"), "GIF", {}),
        "lossy.webp": (rgb, "WEBP", {"quality": 80}),
        "lossless.webp": (rgb, "WEBP", {"lossless": True}),
        "rgb.bmp": (rgb, "BMP", {}),
        "palette.bmp": (rgb.convert("P"), "BMP", {}),
    }
    seeds = {}
    for name, (img, fmt, kwargs) in variants.items():
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        seeds[name] = buf.getvalue()
    buf = io.BytesIO()
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    seeds["animated.gif"] = buf.getvalue()
    return seeds


def set_dimensions(data: bytes, width: int, height: int) -> bytes:
    """`data` with the width and height fields of its header replaced (PNG CRC kept valid).

    How a decompression bomb or a lying header is made; formats not handled here come back unchanged.
    """
    buf = bytearray(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        buf[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))
    elif data[:2] == b"\xff\xd8":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0:
                buf[at + 5:at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                break
    elif data[:3] == b"GIF":
        buf[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = data.find(b"\x2c", 13)  # first image descriptor
        if at > 0:
            buf[at + 5:at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    elif data[:2] == b"BM":
        buf[18:26] = struct.pack("<ii", _int32(width), _int32(height))
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8 " and len(buf) >= 30:  # lossy: 14-bit sizes after the start code
        buf[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif data[:4] == b"RIFF" and data[12:16] == b"VP8L":
        bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14) | (buf[24] & 0xF0) << 24
        buf[21:25] = struct.pack("<I", bits & 0xFFFFFFFF)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        _tiff_set_dimensions(buf, width, height)
    return bytes(buf)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _tiff_set_dimensions(buf: bytearray, width: int, height: int) -> None:
    endian = "<" if buf[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(endian + "I", buf, 4)
    if ifd + 2 > len(buf):
        return
    (count,) = struct.unpack_from(endian + "H", buf, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(buf):
            return
        tag, typ = struct.unpack_from(endian + "HH", buf, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                struct.pack_into(endian + "H", buf, at + 8, value & 0xFFFF)
            else:
                struct.pack_into(endian + "I", buf, at + 8, value & 0xFFFFFFFF)


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
