"""GPS position in EXIF: read it as cameras write it, and write it for tests.

Cameras store latitude and longitude as three unsigned rationals (degrees, minutes, seconds) plus an
N/S or E/W reference letter. Real files get this wrong in many ways (no reference, zero denominators,
90+ degrees, a 0/0 fix written while the receiver had no signal), so reading either gives a position,
None when the file has no position at all, or an `ExifGpsError` whose `reason` is one of the
coordinate reasons of the ingest reject vocabulary (or, from `read_exif_gps` on a file, an image
reason such as not_an_image when the bytes are no photo at all). Whatever the bytes, nothing else
comes out: the reader is fuzzed against that contract in tests/test_fuzz.py and bench/fuzz.py.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any

from PIL import Image

GPS_IFD = 0x8825  # ExifTags.IFD.GPSInfo
ARTIST_TAG = 0x013B  # ExifTags.Base.Artist
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


class ExifGpsError(ValueError):
    """Malformed GPS position in EXIF; `reason` is an ingest reject reason (coords_*)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def coord_problem(lat: float, lon: float) -> tuple[str, str] | None:
    """(reason, detail) when a decimal lat/lon pair cannot be a photo's position, else None.

    Shared by the table and the EXIF path of ingest so both reject the same things.
    (0, 0) is rejected because it is what a GPS without a fix, or a careless export, writes.
    """
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return "coords_out_of_range", f"lat={lat!r}, lon={lon!r} is not finite"
    if not -90.0 <= lat <= 90.0:
        return "coords_out_of_range", f"lat={lat!r} outside [-90, 90]"
    if not -180.0 <= lon <= 180.0:
        return "coords_out_of_range", f"lon={lon!r} outside [-180, 180]"
    if lat == 0.0 and lon == 0.0:
        return "coords_null_island", "lat=0, lon=0 (null island: usually a missing fix)"
    return None


def read_exif_gps(path_or_image: str | os.PathLike | Image.Image) -> tuple[float, float] | None:
    """(lat, lon) in decimal degrees from a photo's EXIF, or None when it carries no position.

    Only the header is read (no pixel decoding; no pixel limit beyond Pillow's own bomb check).
    Raises ExifGpsError for a position that is present but malformed (coords_* reasons), for an
    unreadable EXIF block (coords_not_numeric) and for a file that is no readable image (the
    geopin.dataset.images reasons: empty_file, not_an_image, decompression_bomb, ...). Only a path that
    cannot be read at all raises OSError (FileNotFoundError, PermissionError).
    """
    if isinstance(path_or_image, Image.Image):
        return gps_from_exif(parsed_exif(path_or_image))
    from geopin.dataset.images import ImageError, open_image

    try:
        img = open_image(path_or_image, max_pixels=_NO_PIXEL_LIMIT)
    except ImageError as exc:
        raise ExifGpsError(exc.reason, exc.detail) from None
    with img:
        return gps_from_exif(parsed_exif(img))


#: read_exif_gps decodes no pixels, so it needs no limit of its own (Pillow's bomb check still applies).
_NO_PIXEL_LIMIT = 2**62


def parsed_exif(img: Image.Image) -> Image.Exif:
    """img.getexif(), with any parser failure on a corrupt block turned into an ExifGpsError.

    The one EXIF reader: ingest, predict and anything reading a position go through it, so a corrupt
    block is `coords_not_numeric` everywhere (docs/reliability.md).
    """
    try:
        return img.getexif()
    except Exception as exc:  # noqa: BLE001 - Pillow's EXIF parser raises SyntaxError, struct.error, ... on garbage
        raise ExifGpsError("coords_not_numeric",
                           f"unreadable EXIF block: {type(exc).__name__}: {exc}") from None


def gps_from_exif(exif: Image.Exif) -> tuple[float, float] | None:
    """The position in an already-parsed EXIF block; see read_exif_gps."""
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception as exc:  # noqa: BLE001 - a GPS offset pointing at garbage fails in many ways
        raise ExifGpsError("coords_not_numeric", f"unreadable GPS IFD: {type(exc).__name__}: {exc}") from None
    if not gps:
        return None
    lat_dms, lon_dms = gps.get(_GPS_LAT), gps.get(_GPS_LON)
    if lat_dms is None and lon_dms is None:
        return None  # GPS block without a position (e.g. only a version or altitude)
    if lat_dms is None or lon_dms is None:
        missing = "GPSLatitude" if lat_dms is None else "GPSLongitude"
        raise ExifGpsError("coords_missing", f"{missing} missing from EXIF GPS")
    lat = _dms_to_degrees(lat_dms, "GPSLatitude", 90)
    lon = _dms_to_degrees(lon_dms, "GPSLongitude", 180)
    lat *= _ref_sign(gps.get(_GPS_LAT_REF), "GPSLatitudeRef", "N", "S")
    lon *= _ref_sign(gps.get(_GPS_LON_REF), "GPSLongitudeRef", "E", "W")
    problem = coord_problem(lat, lon)
    if problem is not None:
        raise ExifGpsError(*problem)
    return lat, lon


def _ref_sign(ref: Any, name: str, positive: str, negative: str) -> float:
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", errors="replace")
    if ref is None or (isinstance(ref, str) and not ref.strip("\x00 ")):
        raise ExifGpsError("coords_missing", f"{name} missing from EXIF GPS")
    letter = str(ref).strip("\x00 ").upper()
    if letter == positive:
        return 1.0
    if letter == negative:
        return -1.0
    raise ExifGpsError("coords_not_numeric", f"{name}={ref!r}, expected {positive!r} or {negative!r}")


def _dms_to_degrees(value: Any, name: str, limit: int) -> float:
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        raise ExifGpsError("coords_not_numeric", f"{name} has {len(parts)} values, expected 3 (d, m, s)")
    numbers = [_rational(p, name) for p in parts]
    for label, number, top in zip(("degrees", "minutes", "seconds"), numbers, (limit, 60, 60)):
        if number < 0 or (label != "degrees" and number >= top):
            raise ExifGpsError("coords_out_of_range", f"{name} {label}={float(number):g} outside [0, {top})")
    total = sum(n / scale for n, scale in zip(numbers, (1, 60, 3600)))
    if total > limit:
        raise ExifGpsError("coords_out_of_range", f"{name}={float(total):g} degrees exceeds {limit}")
    return float(total)


def _rational(part: Any, name: str) -> Fraction:
    """Exact value of one EXIF rational, whatever shape the reader handed it over in."""
    num = getattr(part, "numerator", None)
    den = getattr(part, "denominator", None)
    if isinstance(part, (tuple, list)) and len(part) == 2:
        num, den = part
    if isinstance(part, float) and math.isfinite(part):
        return Fraction(part)
    if not isinstance(num, int) or not isinstance(den, int):
        raise ExifGpsError("coords_not_numeric", f"{name} value {part!r} is not a rational")
    if den == 0:
        raise ExifGpsError("coords_not_numeric", f"{name} has a zero denominator ({num}/0)")
    return Fraction(num, den)


def read_artist(exif: Image.Exif) -> str | None:
    """The EXIF Artist (photographer), stripped; None when absent or blank."""
    value = exif.get(ARTIST_TAG)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 \t\r\n")
    return value or None
