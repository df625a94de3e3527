"""What a library photo says about itself: its clock time, camera and GPS, read with exiv2 (pyexiv2).

exiv2 is the reader photo software trusts (darktable and digiKam use it), so the library sees the same tags
they do. A position may live in the file's EXIF, in its embedded XMP, or in a sidecar beside it
(`NAME.EXT.xmp` as darktable and digiKam write it, or Lightroom's `NAME.xmp`). Reading never raises for a bad
file: the photo comes back with a `problem` code and a `detail` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

from geopin.dataset.exif import coord_problem
from geopin.log import progress as progress_bar

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif", ".webp",
    ".dng", ".arw", ".cr2", ".nef", ".orf", ".rw2", ".raf",
})

#: geopin's XMP namespace: the marker that a position was written by `geopin tag` (and with what evidence).
GEOPIN_NS = "https://geopin.dev/ns/tag/1.0/"
GEOPIN_PREFIX = "geopin"


@dataclass(frozen=True)
class LibraryPhoto:
    """One file of the library as its metadata describes it. Times are the camera's clock reading, as written."""

    path: str  # absolute path of the photo
    rel: str  # path relative to the library root, with "/" (the id in plans, journals and the page)
    sha256: str  # of the file's bytes ("" when unreadable)
    camera: str  # "Make Model", or "" when the file names no camera
    taken: datetime | None = None  # naive: DateTimeOriginal (+ SubSecTimeOriginal), else CreateDate
    time_tag: str = ""  # which tag `taken` came from, e.g. "Exif.Photo.DateTimeOriginal"
    utc_offset_s: int | None = None  # OffsetTimeOriginal (else OffsetTime) in seconds east of UTC
    gps_utc: datetime | None = None  # naive UTC from GPSDateStamp + GPSTimeStamp (phones write it)
    lat: float | None = None  # a position the photo already has (file EXIF/XMP or its sidecar)
    lon: float | None = None
    gps_from: str = ""  # "exif", "xmp" or "sidecar" when lat/lon are set
    placed_by_geopin: bool = False  # the position was written by an earlier `geopin tag` (never a reference)
    problem: str = ""  # why the photo cannot be used (e.g. "not_an_image", "broken_exif"); "" when fine
    detail: str = ""  # the words for the problem
    sidecar: str = ""  # absolute path of the XMP sidecar found beside the photo ("" when none)
    geopin_run: str = ""  # the run id in geopin's marker on the position, when placed_by_geopin
    gps_tags: bool = False  # the file's EXIF/XMP holds GPS latitude/longitude tags, even if unusable (0/0, garbage)
    note: str = ""  # what was read but ignored (an invalid GPS fix, an unreadable sidecar, a garbled date)
    broken_exif: bool = False  # an EXIF block exiv2 could not read at all (the pixels may still be fine)

    @property
    def has_gps(self) -> bool:
        return self.lat is not None and self.lon is not None

    @property
    def is_reference(self) -> bool:
        """A position to learn from and interpolate between: GPS that geopin did not write, a readable file."""
        return self.has_gps and not self.placed_by_geopin and not self.problem


# ------------------------------------------------------------------------------------------------ exiv2 setup

_EXIV2_READY = False


def exiv2():
    """pyexiv2, set up once: exiv2's own stderr warnings muted (its exceptions carry the reasons we report) and
    geopin's namespace registered so `Xmp.geopin.*` can be read and written. (BMFF/HEIC reading is always on
    in pyexiv2 >= 2.14; enableBMFF() is deprecated there and only prints a warning.)"""
    global _EXIV2_READY
    import pyexiv2

    if not _EXIV2_READY:
        pyexiv2.set_log_level(4)
        pyexiv2.registerNs(GEOPIN_NS, GEOPIN_PREFIX)
        _EXIV2_READY = True
    return pyexiv2


def read_metadata(path: str | os.PathLike) -> tuple[dict, dict, str]:
    """(exif, xmp, note) of one file as exiv2 reads them. Raises RuntimeError (exiv2) or OSError."""
    return metadata_of(Path(path).read_bytes())


def metadata_of(data: bytes) -> tuple[dict, dict, str]:
    """(exif, xmp, note) of a file's bytes as exiv2 reads them. Read from memory, not by path: the file is
    read once (its hash comes from the same bytes), and names that are not UTF-8 work (pyexiv2 encodes
    paths as UTF-8). Text that is not UTF-8 (old cameras write Latin-1) is read as Latin-1 rather than lost.
    Raises RuntimeError for what exiv2 cannot read (and for files of 2 GB or more, which pyexiv2 refuses)."""
    pyexiv2 = exiv2()
    note = ""
    if len(data) >= 2**31:
        raise RuntimeError(f"{len(data)} bytes: exiv2 reads files below 2 GB")
    with pyexiv2.ImageData(data) as img:
        try:
            exif = img.read_exif()
        except UnicodeDecodeError:
            exif, note = img.read_exif(encoding="latin-1"), "EXIF text is not UTF-8: read as Latin-1"
        try:
            xmp = img.read_xmp()
        except UnicodeDecodeError:
            xmp, note = img.read_xmp(encoding="latin-1"), "XMP text is not UTF-8: read as Latin-1"
    return exif, xmp, note


# ------------------------------------------------------------------------------------------------ reading

def read_photo(path: str | os.PathLike, root: str | os.PathLike) -> LibraryPhoto:
    """One photo's time, camera and position. Never raises for a bad file: `problem` says what is wrong
    (unreadable, not_an_image, broken_exif) and `detail` names the file and the reason."""
    path = Path(path).absolute()
    rel = path.relative_to(Path(root).absolute()).as_posix()
    base = {"path": str(path), "rel": rel}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LibraryPhoto(**base, sha256="", camera="", problem="unreadable",
                            detail=f"{path}: cannot read: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return LibraryPhoto(**base, sha256=sha, camera="", problem="not_an_image", detail=f"{path}: empty file")
    try:
        exif, xmp, note = metadata_of(data)
    except RuntimeError as exc:  # exiv2's errors: unknown type, corrupt structures
        problem = "broken_exif" if _looks_like_image(data[:16]) else "not_an_image"
        words = "metadata unreadable" if problem == "broken_exif" else "not an image exiv2 knows"
        return LibraryPhoto(**base, sha256=sha, camera="", problem=problem, detail=f"{path}: {words}: {exc}")
    notes = [note] if note else []
    broken = not exif and _exif_block_broken(data)
    if broken:  # exiv2 read from memory gives up on a corrupt IFD quietly: the pixels may still be fine
        notes.append("the EXIF block is there but unreadable (no time, camera or GPS could be read from it)")
    fields = _time_fields(exif, xmp, notes)
    fields.update(_position_fields(path, exif, xmp, notes))
    return LibraryPhoto(**base, sha256=sha, camera=camera_name(exif.get("Exif.Image.Make"),
                                                                   exif.get("Exif.Image.Model")),
                        note="; ".join(notes), broken_exif=broken, **fields)


def _exif_block_broken(data: bytes) -> bool:
    """Whether the file's EXIF block (a JPEG's APP1 "Exif" segment, or a TIFF itself) has a first directory
    that cannot be read: a bad header, or more entries than the block holds. An empty but valid block is fine."""
    import struct

    k = data.find(b"Exif\x00\x00", 0, 65536)
    if k >= 2 and data[k - 4:k - 2] == b"\xff\xe1":
        (seg_len,) = struct.unpack(">H", data[k - 2:k])
        tiff = data[k + 6:k - 2 + seg_len]
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        tiff = data
    else:
        return False
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return True
    magic, ifd = struct.unpack(order + "HI", tiff[2:8])
    if magic != 42 or ifd + 2 > len(tiff):
        return True
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    return ifd + 2 + 12 * count > len(tiff)


def scan_library(root: str | os.PathLike, *, progress: bool = True) -> list[LibraryPhoto]:
    """Every photo under `root`, read, sorted by rel. Hidden folders (`.geopin`, `.git`, ...) and hidden files
    (macOS `._IMG.JPG` resource forks, half-written temporaries) are skipped, and so are `.xmp` sidecars
    themselves (they are read with their photo)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    files = sorted(photo_files(root), key=lambda p: p.relative_to(root).as_posix())
    bar = progress_bar(files, desc="reading photos", unit="photo", total=len(files), disable=None if progress else True)
    return [read_photo(p, root) for p in bar]


def photo_files(root: Path) -> Iterator[Path]:
    """The photo files under `root` (by extension, case-insensitive), not in hidden folders, not hidden."""
    def walk_error(exc: OSError) -> None:
        log.warning("%s: cannot list folder: %s", exc.filename, exc.strerror)

    for folder, dirs, names in os.walk(root, onerror=walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in PHOTO_EXTENSIONS:
                yield Path(folder) / name


def sidecar_candidates(path: str | os.PathLike) -> list[Path]:
    """Where a sidecar of `path` may be, in the order they count: `NAME.EXT.xmp` (darktable, digiKam; the one
    geopin writes) then `NAME.xmp` (Lightroom), each also with an upper-case `.XMP`."""
    path = Path(path)
    return [path.with_name(path.name + ".xmp"), path.with_name(path.name + ".XMP"),
            path.with_suffix(".xmp"), path.with_suffix(".XMP")]


def find_sidecar(path: str | os.PathLike) -> Path | None:
    for candidate in sidecar_candidates(path):
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ camera

def camera_name(make: str | None, model: str | None) -> str:
    """"Make Model" with the make said once: ("Canon", "Canon EOS 80D") -> "Canon EOS 80D",
    ("NIKON CORPORATION", "NIKON D750") -> "NIKON D750", ("Apple", "iPhone 12") -> "Apple iPhone 12"."""
    make = " ".join((make or "").replace("\x00", " ").split())
    model = " ".join((model or "").replace("\x00", " ").split())
    if not make:
        return model
    if not model:
        return make
    first = make.split()[0].lower()
    if model.lower().startswith(make.lower()) or model.lower().split()[0] == first:
        return model
    return f"{make} {model}"


# ------------------------------------------------------------------------------------------------ time

_EXIF_TIMES = (  # (time tag, its sub-second tag, its offset tag), by trust
    ("Exif.Photo.DateTimeOriginal", "Exif.Photo.SubSecTimeOriginal", "Exif.Photo.OffsetTimeOriginal"),
    ("Exif.Photo.DateTimeDigitized", "Exif.Photo.SubSecTimeDigitized", "Exif.Photo.OffsetTimeDigitized"),
    ("Exif.Image.DateTime", "Exif.Photo.SubSecTime", "Exif.Photo.OffsetTime"),
)
_XMP_TIMES = ("Xmp.exif.DateTimeOriginal", "Xmp.photoshop.DateCreated", "Xmp.xmp.CreateDate")
_EXIF_DATETIME = re.compile(r"\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*$")
_OFFSET = re.compile(r"\s*([+-])(\d{2}):?(\d{2})\s*$")


def parse_exif_datetime(text: str | None, subsec: str | None = None) -> datetime | None:
    """'2023:05:01 12:00:00' (+ SubSec digits '25' = 0.25 s) as a naive datetime; None for blank, zeroed
    ('0000:00:00 00:00:00') or impossible dates."""
    m = _EXIF_DATETIME.match(text or "")
    if not m:
        return None
    try:
        when = datetime(*(int(g) for g in m.groups()[:6]))
    except ValueError:
        return None
    digits = m.group(7) or "".join(ch for ch in (subsec or "") if ch.isdigit())
    if digits:
        when += timedelta(microseconds=round(int(digits[:9]) / 10 ** len(digits[:9]) * 1e6))
    return when


def parse_offset(text: str | None) -> int | None:
    """'+02:00' -> 7200, '-05:30' -> -19800 (seconds east of UTC); None when absent or malformed."""
    m = _OFFSET.match(text or "")
    if not m:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes >= 60:
        return None
    return (1 if m.group(1) == "+" else -1) * (hours * 3600 + minutes * 60)


def _time_fields(exif: dict, xmp: dict, notes: list[str]) -> dict:
    out: dict = {}
    for tag, subsec_tag, offset_tag in _EXIF_TIMES:
        raw = exif.get(tag)
        when = parse_exif_datetime(raw, exif.get(subsec_tag))
        if when is None:
            if raw and raw.strip(" \x00:0"):
                notes.append(f"{tag}={raw!r} is no date")
            continue
        offset = parse_offset(exif.get(offset_tag))
        if offset is None:
            offset = parse_offset(exif.get("Exif.Photo.OffsetTime"))
        out.update(taken=when, time_tag=tag, utc_offset_s=offset)
        break
    else:
        for tag in _XMP_TIMES:
            parsed = _parse_xmp_datetime(xmp.get(tag))
            if parsed is not None:
                out.update(taken=parsed[0], time_tag=tag, utc_offset_s=parsed[1])
                break
    gps_utc = _gps_utc(exif.get("Exif.GPSInfo.GPSDateStamp"), exif.get("Exif.GPSInfo.GPSTimeStamp"))
    if gps_utc is not None:
        out["gps_utc"] = gps_utc
    return out


def _parse_xmp_datetime(text: str | None) -> tuple[datetime, int | None] | None:
    """XMP dates are ISO 8601 ('2023-05-01T12:00:00.25+02:00'); a date alone is no time of day."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())  # 3.11 reads "Z"
    except ValueError:
        return None
    offset = when.utcoffset()
    return when.replace(tzinfo=None), (int(offset.total_seconds()) if offset is not None else None)


def _gps_utc(date: str | None, time: str | None) -> datetime | None:
    """GPSDateStamp '2023:05:01' + GPSTimeStamp '10/1 0/1 3012/100' as a naive UTC datetime."""
    if not date or not time:
        return None
    m = re.match(r"\s*(\d{4}):(\d{2}):(\d{2})", date)
    parts = _rationals(time)
    if not m or parts is None or len(parts) != 3:
        return None
    try:
        day = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    h, mi, s = parts
    if not (0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 61):
        return None
    return day + timedelta(seconds=float(h * 3600 + mi * 60 + s))


# ------------------------------------------------------------------------------------------------ position

def _rationals(text: str | None) -> list[Fraction] | None:
    """'48/1 51/1 302400/10000' as exact fractions; None when any part is not a rational with a nonzero
    denominator."""
    if not text:
        return None
    out = []
    for part in text.split():
        num, _, den = part.partition("/")
        try:
            value = Fraction(int(num), int(den or "1"))
        except (ValueError, ZeroDivisionError):
            return None
        out.append(value)
    return out


def exif_gps(exif: dict) -> tuple[float, float] | str | None:
    """(lat, lon) from Exif.GPSInfo, None when the file has no position tags, or the reason a present
    position is unusable (no reference, garbage, out of range, 0/0)."""
    lat_raw, lon_raw = exif.get("Exif.GPSInfo.GPSLatitude"), exif.get("Exif.GPSInfo.GPSLongitude")
    if lat_raw is None and lon_raw is None:
        return None
    coords = []
    for raw, ref_tag, signs, limit in ((lat_raw, "Exif.GPSInfo.GPSLatitudeRef", "NS", 90),
                                       (lon_raw, "Exif.GPSInfo.GPSLongitudeRef", "EW", 180)):
        name = ref_tag.removesuffix("Ref").rsplit(".", 1)[1]
        if raw is None:
            return f"EXIF {name} missing"
        parts = _rationals(raw)
        if parts is None or not 1 <= len(parts) <= 3:
            return f"EXIF {name}={raw!r} is not degrees, minutes, seconds"
        if any(p < 0 for p in parts) or any(p >= 60 for p in parts[1:]):
            return f"EXIF {name}={raw!r} out of range"
        ref = (exif.get(ref_tag) or "").strip("\x00 ").upper()[:1]
        if ref not in signs:
            return f"EXIF {ref_tag.rsplit('.', 1)[1]}={exif.get(ref_tag)!r}, expected {signs[0]} or {signs[1]}"
        value = float(sum(p / scale for p, scale in zip(parts, (1, 60, 3600))))
        coords.append(-value if ref == signs[1] else value)
    problem = coord_problem(*coords)
    if problem is not None:
        return f"EXIF GPS {problem[1]}"
    return coords[0], coords[1]


_XMP_COORD = re.compile(r"\s*(\d+(?:\.\d+)?)(?:,(\d+(?:\.\d+)?))?(?:,(\d+(?:\.\d+)?))?\s*([NSEWnsew])\s*$")


def parse_xmp_coord(text: str | None, axis: str) -> float | None:
    """An XMP GPSLatitude/GPSLongitude ('48,51.504N', '48,51,30.24N'; a plain signed decimal as some tools
    write it) in decimal degrees, or None."""
    if not isinstance(text, str):
        return None
    m = _XMP_COORD.match(text)
    if m:
        d, mi, s, ref = m.groups()
        if ref.upper() not in ("NS" if axis == "lat" else "EW"):
            return None
        minutes, seconds = float(mi or 0), float(s or 0)
        if minutes >= 60 or seconds >= 60:
            return None
        value = float(d) + minutes / 60 + seconds / 3600
        return -value if ref.upper() in "SW" else value
    try:
        return float(text)
    except ValueError:
        return None


def xmp_gps(xmp: dict, where: str) -> tuple[float, float] | str | None:
    lat_raw, lon_raw = xmp.get("Xmp.exif.GPSLatitude"), xmp.get("Xmp.exif.GPSLongitude")
    if lat_raw is None and lon_raw is None:
        return None
    lat, lon = parse_xmp_coord(lat_raw, "lat"), parse_xmp_coord(lon_raw, "lon")
    if lat is None or lon is None:
        return f"{where} GPSLatitude={lat_raw!r}, GPSLongitude={lon_raw!r} unreadable"
    problem = coord_problem(lat, lon)
    return f"{where} GPS {problem[1]}" if problem is not None else (lat, lon)


def geopin_marker(xmp: dict, lat: float, lon: float) -> str:
    """The run id of geopin's marker when it vouches for this very position; "" when there is no marker or the
    position was moved since (a person dragged the pin in digiKam: then it is theirs, a reference)."""
    run = xmp.get(f"Xmp.{GEOPIN_PREFIX}.Run")
    if not isinstance(run, str) or not run:
        return ""
    position = xmp.get(f"Xmp.{GEOPIN_PREFIX}.Position")
    if isinstance(position, str):
        try:
            plat, plon = (float(v) for v in position.split(","))
        except ValueError:
            return ""
        if abs(plat - lat) > 1e-6 or abs(plon - lon) > 1e-6:
            return ""
    return run


def _position_fields(path: Path, exif: dict, xmp: dict, notes: list[str]) -> dict:
    out: dict = {"gps_tags": not ({"Exif.GPSInfo.GPSLatitude", "Exif.GPSInfo.GPSLongitude",
                                  "Xmp.exif.GPSLatitude", "Xmp.exif.GPSLongitude"}.isdisjoint(exif.keys() | xmp.keys()))}
    sources: list[tuple[str, object, dict]] = [("exif", exif_gps(exif), xmp), ("xmp", xmp_gps(xmp, "XMP"), xmp)]
    sidecar = find_sidecar(path)
    if sidecar is not None:
        out["sidecar"] = str(sidecar)
        try:
            _, side_xmp, _ = read_metadata(sidecar)
            sources.append(("sidecar", xmp_gps(side_xmp, f"sidecar {sidecar.name}"), side_xmp))
        except (RuntimeError, OSError) as exc:
            notes.append(f"sidecar {sidecar} unreadable: {exc}")
    for where, found, marker_xmp in sources:
        if isinstance(found, str):
            notes.append(f"{found}: ignored")
        elif found is not None:
            lat, lon = found
            run = geopin_marker(marker_xmp, lat, lon)
            out.update(lat=lat, lon=lon, gps_from=where, placed_by_geopin=bool(run), geopin_run=run)
            break
    return out


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"IIU\x00",
          b"FUJIFILMCCD-RAW")


def _looks_like_image(head: bytes) -> bool:
    """Whether a file starts as a photo format does (then exiv2's failure is broken metadata, not a stray
    file)."""
    if head.startswith(_MAGIC):
        return True
    return (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp"
