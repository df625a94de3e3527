"""Real image files of the kinds that used to break decoding: high bit depth, HEIC, huge headers.

Shared by the image, ingest, embed and predict tests. Every 16-bit file holds an 8-bit picture times
257 (65535 / 255), so its true 8-bit decoding is known exactly and equals the 8-bit twin's.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TRUE_MEAN = 57  # the mean grey level the 16-bit test photos must decode to (Pillow used to give 255)


def picture8(size: tuple[int, int] = (160, 120), seed: int = 0, channels: int = 1) -> np.ndarray:
    """A smooth, textured 8-bit picture (h, w[, c]) whose mean is TRUE_MEAN within a grey level."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (max(1, h // 8), max(1, w // 8)) + ((channels,) if channels > 1 else ())
    coarse = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    arr = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    arr = (arr - arr.mean()) * (40.0 / max(arr.std(), 1e-6)) + TRUE_MEAN
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def write_high_bit_files(folder: Path, size: tuple[int, int] = (160, 120), seed: int = 0) -> dict[str, Path]:
    """16/32-bit and float photos (gray and 48-bit colour) plus their 8-bit twins, by name."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    gray = picture8(size, seed)
    colour = picture8(size, seed + 1, channels=3)
    g16 = gray.astype(np.uint16) * 257
    files = {
        "gray8.png": (Image.fromarray(gray), {}),
        "rgb8.png": (Image.fromarray(colour), {}),
        "gray16.png": (Image.fromarray(g16), {}),  # mode I;16
        "gray16.tif": (Image.fromarray(g16), {}),
        "gray16b.tif": (Image.frombytes("I;16B", size, g16.astype(">u2").tobytes()), {}),
        "int32.tif": (Image.fromarray(g16.astype(np.int32)), {}),  # mode I, 16-bit values
        "float.tif": (Image.fromarray(g16.astype(np.float32)), {}),  # mode F, 16-bit range
        "float01.tif": (Image.fromarray(gray.astype(np.float32) / 255.0), {}),  # mode F in [0, 1]
    }
    out = {}
    for name, (img, kw) in files.items():
        img.save(folder / name, **kw)
        out[name] = folder / name
    c16 = colour.astype(np.uint16) * 257
    for name in ("rgb48.png", "rgb48.tif"):  # Pillow cannot write 48-bit colour; OpenCV can (BGR order)
        assert cv2.imwrite(str(folder / name), np.ascontiguousarray(c16[:, :, ::-1]))
        out[name] = folder / name
    return out


def twin_of(name: str) -> str:
    """The 8-bit file that holds the same picture as a high-bit-depth one."""
    return "rgb8.png" if name.startswith("rgb") else "gray8.png"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: only a header check can judge it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def big_png(path: Path, width: int = 12_000, height: int = 12_000) -> Path:
    """A complete, valid, tiny-on-disk grey PNG of width x height pixels (144 MP by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height), 120).save(path, compress_level=1)
    return path


def heic_bytes(img: Image.Image, exif: bytes | None = None) -> bytes:
    """img encoded as HEIC by pillow-heif itself (skips the caller's test when pillow-heif is absent)."""
    import pytest

    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    kw = {"exif": exif} if exif is not None else {}
    img.save(buf, format="HEIF", quality=95, **kw)
    return buf.getvalue()


FOUR_SITES = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153), (35.6586, 139.7454)]


def site_photo(site: int, rng: np.random.Generator) -> Image.Image:
    """A small photo whose colour and stripes say which of FOUR_SITES it shows (plus noise)."""
    h, w = 64, 96
    base = np.array([[200, 60, 40], [40, 160, 60], [40, 80, 200], [220, 200, 40]][site], float)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin((xx * np.cos(site) + yy * np.sin(site)) / (3 + site)) * 50
    img = base[None, None, :] + stripes[..., None] + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def three_photographer_dataset(root: Path) -> Path:
    """24 geotagged photos of FOUR_SITES by 3 photographers (subfolders), ingested; returns the dataset folder."""
    from geopin.dataset.ingest import IngestConfig, ingest

    photos = root / "photos"
    rng = np.random.default_rng(1)
    for s, (la, lo) in enumerate(FOUR_SITES):
        for i in range(6):
            who = photos / f"photographer{i % 3}"
            who.mkdir(parents=True, exist_ok=True)
            exif = gps_exif_bytes(la + rng.normal(0, 0.01), lo + rng.normal(0, 0.01))
            site_photo(s, rng).save(who / f"site{s}_{i}.jpg", exif=exif, quality=90)
    ingest(photos, root / "ds", IngestConfig(group_from="subfolder"))
    return root / "ds"


# ---------------------------------------------------------------- EXIF GPS as a camera writes it

SECONDS_DENOMINATOR = 10_000  # seconds written as s / 10,000: 1e-4 arc-seconds is about 3 mm on the ground


def dms_rationals(degrees: float, seconds_denominator: int = SECONDS_DENOMINATOR) -> tuple[tuple[int, int], ...]:
    """abs(degrees) as ((d, 1), (m, 1), (s, den)) rationals, rounded exactly once in integer units."""
    units_per_degree = 3600 * seconds_denominator
    total = round(abs(degrees) * units_per_degree)
    d, rest = divmod(total, units_per_degree)
    m, s = divmod(rest, 60 * seconds_denominator)
    return ((d, 1), (m, 1), (s, seconds_denominator))


def gps_ifd(lat: float, lon: float) -> dict[int, Any]:
    """A piexif GPS IFD for (lat, lon). Writes what it is given, even out-of-range values."""
    import piexif

    return {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: "N" if lat >= 0 else "S",
        piexif.GPSIFD.GPSLatitude: dms_rationals(lat),
        piexif.GPSIFD.GPSLongitudeRef: "E" if lon >= 0 else "W",
        piexif.GPSIFD.GPSLongitude: dms_rationals(lon),
    }


def gps_exif_bytes(lat: float | None, lon: float | None, *, artist: str | None = None,
                   gps: dict[int, Any] | None = None) -> bytes:
    """EXIF bytes (for `Image.save(..., exif=...)`) with a GPS position as a camera writes it.

    `gps` replaces the generated GPS IFD, so tests can write malformed positions; lat=lon=None
    with no `gps` writes no GPS block at all.
    """
    import piexif

    zeroth: dict[int, Any] = {}
    if artist is not None:
        zeroth[piexif.ImageIFD.Artist] = artist
    if gps is None and lat is not None and lon is not None:
        gps = gps_ifd(lat, lon)
    return piexif.dump({"0th": zeroth, "Exif": {}, "GPS": gps or {}, "1st": {}, "thumbnail": None})
