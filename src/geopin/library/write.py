"""Writing a position where photo tools read it: an XMP sidecar `NAME.EXT.xmp` (default) or the file's EXIF.

exiv2 (pyexiv2) writes every tag, in memory; geopin only supplies an empty XMP packet for a new sidecar. Each
write checks that exiv2's new bytes read back as meant, puts them under a temporary name beside the target
and renames that over the target, with the journal recording the intent, the backup and both hashes first (see journal.py). A photo
that already has a position is never touched, unless that position is geopin's own and replace_geopin is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from geopin import __version__
from geopin.dataset.exif import coord_problem
from geopin.io import sha256_file
from geopin.library.journal import Journal, copy_exact
from geopin.library.photos import (
    GEOPIN_PREFIX,
    LibraryPhoto,
    exif_gps,
    exiv2,
    metadata_of,
    read_metadata,
    read_photo,
    xmp_gps,
)

log = logging.getLogger(__name__)

MODES = ("xmp", "exif")
#: formats whose EXIF geopin writes in exif mode: exiv2 writes them in place reliably. Raw files and HEIC get
#: sidecars only (exiv2 cannot write HEIC; rewriting a camera's raw file is not worth the risk).
EXIF_WRITABLE = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp"})

#: the smallest XMP packet exiv2 opens as a sidecar; exiv2 fills in every tag.
EMPTY_XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>\n'
    '</x:xmpmeta>\n'
    '<?xpacket end="w"?>\n'
)

_G = f"Xmp.{GEOPIN_PREFIX}"
#: tags that name the run rather than the answer: a rerun with the same answer leaves the file as it is
_RUN_TAGS = frozenset({f"{_G}.Run", f"{_G}.Version"})


@dataclass(frozen=True)
class Placement:
    """The answer to write for one photo. `confidence` is the calibrated probability that the truth lies
    within `radius_km`; `source` names the evidence ("time", "gpx+time", "visual", ...)."""

    lat: float
    lon: float
    radius_km: float
    confidence: float
    source: str
    run_id: str


@dataclass(frozen=True)
class WriteOutcome:
    rel: str
    status: str  # "written", "unchanged" or "skipped"
    reason: str = ""  # why skipped/unchanged, e.g. "has_gps: ...", "read_only: ..."
    target: str = ""  # the file written (or that would have been)


# ------------------------------------------------------------------------------------------------ tag values

def xmp_coord(value: float, axis: str) -> str:
    """Decimal degrees as XMP's "DDD,MM.mmmmmmmmK" (exiv2's own form), rounded once in integer units of
    1e-8 minute (2e-10 degree), so a reader gets back the degrees meant to far better than 1e-7."""
    units = round(abs(value) * 60 * 10**8)
    degrees, rest = divmod(units, 60 * 10**8)
    letter = ("N" if value >= 0 else "S") if axis == "lat" else ("E" if value >= 0 else "W")
    return f"{degrees},{rest // 10**8}.{rest % 10**8:08d}{letter}"


def exif_coord(value: float) -> str:
    """abs(degrees) as EXIF's three rationals "d/1 m/1 s/1000000" (seconds to 1e-6: 3e-10 degree)."""
    units = round(abs(value) * 3600 * 10**6)
    degrees, rest = divmod(units, 3600 * 10**6)
    minutes, micro = divmod(rest, 60 * 10**6)
    return f"{degrees}/1 {minutes}/1 {micro}/1000000"


def _metres(radius_km: float) -> str:
    """The radius as a rational number of metres, to the decimetre (GPSHPositioningError)."""
    return f"{max(1, round(radius_km * 10_000))}/10"


def geopin_tags(p: Placement) -> dict[str, str]:
    """geopin's namespace: the evidence behind the position, and the marker that geopin placed it."""
    return {f"{_G}.Source": p.source, f"{_G}.Confidence": f"{p.confidence:.4f}",
            f"{_G}.RadiusKm": f"{p.radius_km:.4f}", f"{_G}.Position": f"{p.lat:.8f},{p.lon:.8f}",
            f"{_G}.Run": p.run_id, f"{_G}.Version": __version__}


def sidecar_tags(p: Placement) -> dict[str, str]:
    """What a sidecar gets: the exif: GPS tags darktable, digiKam and ExifTool read, plus geopin's."""
    return {"Xmp.exif.GPSVersionID": "2.3.0.0",
            "Xmp.exif.GPSLatitude": xmp_coord(p.lat, "lat"), "Xmp.exif.GPSLongitude": xmp_coord(p.lon, "lon"),
            "Xmp.exif.GPSMapDatum": "WGS-84", "Xmp.exif.GPSHPositioningError": _metres(p.radius_km),
            **geopin_tags(p)}


def exif_tags(p: Placement) -> dict[str, str]:
    """What the file's EXIF gets in exif mode (geopin's marker goes into the file's XMP)."""
    return {"Exif.GPSInfo.GPSVersionID": "2 3 0 0",
            "Exif.GPSInfo.GPSLatitudeRef": "N" if p.lat >= 0 else "S",
            "Exif.GPSInfo.GPSLatitude": exif_coord(p.lat),
            "Exif.GPSInfo.GPSLongitudeRef": "E" if p.lon >= 0 else "W",
            "Exif.GPSInfo.GPSLongitude": exif_coord(p.lon),
            "Exif.GPSInfo.GPSMapDatum": "WGS-84", "Exif.GPSInfo.GPSHPositioningError": _metres(p.radius_km)}


# ------------------------------------------------------------------------------------------------ writing

def sidecar_path(photo_path: str | os.PathLike) -> Path:
    """The sidecar geopin writes: `NAME.EXT.xmp` (an existing `NAME.EXT.XMP` is used as it is spelled)."""
    path = Path(photo_path)
    upper = path.with_name(path.name + ".XMP")
    lower = path.with_name(path.name + ".xmp")
    return upper if upper.is_file() and not lower.exists() else lower


def write_placement(photo: LibraryPhoto, placement: Placement, *, mode: str = "xmp", journal: Journal,
                    replace_geopin: bool = False) -> WriteOutcome:
    """Write `placement` for `photo` into its sidecar (mode "xmp") or its EXIF (mode "exif").

    The photo is read again first: whatever the plan said, a photo that has a position now is skipped (unless
    the position is geopin's own and replace_geopin is set), and writing the answer already there is
    "unchanged". Read-only files or folders, formats exiv2 cannot write and files that change under us are
    skipped with the reason; a failure while writing leaves the target as it was."""
    if mode not in MODES:
        raise ValueError(f"write mode {mode!r}: use one of {', '.join(MODES)}")
    if placement.run_id != journal.run_id:
        raise ValueError(f"placement of run {placement.run_id!r} given to the journal of run {journal.run_id!r}")
    path = Path(photo.path)
    target = sidecar_path(path) if mode == "xmp" else path
    outcome = _check(photo, placement, mode, target, journal, replace_geopin)
    if outcome is not None:
        log.debug("%s: %s %s", photo.rel, outcome.status, outcome.reason)
        return outcome
    return _write(photo, placement, mode, target, journal)


def _check(photo: LibraryPhoto, p: Placement, mode: str, target: Path, journal: Journal,
           replace_geopin: bool) -> WriteOutcome | None:
    """The outcome when nothing is to be written, else None."""
    def skip(reason: str, status: str = "skipped") -> WriteOutcome:
        return WriteOutcome(photo.rel, status, reason, str(target))

    bad = coord_problem(p.lat, p.lon)
    if bad is not None:
        return skip(f"invalid_position: {bad[1]}")
    if (journal.root / photo.rel) != Path(photo.path):
        raise ValueError(f"{photo.path}: not {photo.rel!r} under the journal's library root {journal.root}")
    current = read_photo(photo.path, journal.root)
    if current.problem:
        return skip(f"{current.problem}: {current.detail}")
    if current.has_gps:
        if not current.placed_by_geopin:
            return skip(f"has_gps: {photo.path} already has a position ({current.gps_from}"
                        f"{' ' + current.sidecar if current.gps_from == 'sidecar' else ''}); never touched")
        here = ((mode == "xmp" and current.gps_from == "sidecar" and Path(current.sidecar) == target)
                or (mode == "exif" and current.gps_from == "exif"))
        if here and _same_answer(target, p, mode):
            return skip(f"geopin's position from run {current.geopin_run} is this answer already", "unchanged")
        if not replace_geopin:
            return skip(f"placed_by_geopin: run {current.geopin_run} placed it; not replaced (replace_geopin off)")
        if not here:
            where = "the file's EXIF" if current.gps_from == "exif" else f"the sidecar {current.sidecar}"
            return skip(f"placed_by_geopin: run {current.geopin_run} wrote the position into {where}; "
                        f"replace it with the write mode that wrote it")
    elif mode == "exif" and current.gps_tags:
        return skip(f"gps_tags: {photo.path} holds GPS tags that are no usable position ({current.note}); "
                    f"not overwritten in exif mode (a sidecar is)")
    if mode == "exif" and _suffix(target) not in EXIF_WRITABLE:
        return skip(f"format_not_writable: geopin writes EXIF into {', '.join(sorted(EXIF_WRITABLE))} only, "
                    f"not {_suffix(target) or 'files without extension'}; use sidecars (--write xmp)")
    read_only = _read_only(target)
    if read_only:
        return skip(read_only)
    if mode == "xmp" and target.exists():
        try:
            read_metadata(target)
        except (RuntimeError, OSError) as exc:
            return skip(f"broken_sidecar: {target} cannot be read as XMP ({exc}); left as it is")
    return None


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _same_answer(target: Path, p: Placement, mode: str) -> bool:
    """Whether `target` already holds exactly the tags this placement would write (run id aside)."""
    try:
        exif, xmp, _ = read_metadata(target)
    except (RuntimeError, OSError):
        return False
    want = sidecar_tags(p) if mode == "xmp" else {**exif_tags(p), **geopin_tags(p)}
    have = {**exif, **xmp}
    return all(have.get(k) == v for k, v in want.items() if k not in _RUN_TAGS)


def _read_only(target: Path) -> str:
    """Why `target` may not be written, or "": a read-only file or folder is the owner's word (as root too,
    where the kernel would let us write: we never chmod or override)."""
    folder = target.parent
    if not _writable(folder):
        return f"read_only: folder {folder} is not writable"
    if target.exists() and not _writable(target):
        return f"read_only: {target} is read-only"
    return ""


def _writable(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(path, os.W_OK)


def _write(photo: LibraryPhoto, p: Placement, mode: str, target: Path, journal: Journal) -> WriteOutcome:
    existed = target.exists()
    try:
        old = target.read_bytes() if existed else None
    except OSError as exc:
        return WriteOutcome(photo.rel, "skipped", f"unreadable: {target}: {exc.strerror or exc}", str(target))
    sha_before = hashlib.sha256(old).hexdigest() if old is not None else None
    seq, temp, backup = journal.intent(target, kind="sidecar" if mode == "xmp" else "original", existed=existed,
                                       sha_before=sha_before, photo=photo.rel, backup=existed)
    renamed = False
    try:
        if backup is not None and copy_exact(target, backup) != sha_before:
            return _abort(journal, seq, photo, target, f"changed_while_writing: {target} changed during the backup")
        new = _new_bytes(old, p, mode)
        problem = _verify(new, p, mode)
        if problem:
            return _abort(journal, seq, photo, target, f"write_failed: {target}: {problem}")
        _write_temp(temp, new, like=target if existed else None)
        journal.ready(seq, hashlib.sha256(new).hexdigest())
        if existed and mode == "xmp" and sha256_file(target) != sha_before:
            return _abort(journal, seq, photo, target, f"changed_while_writing: {target} changed under geopin")
        os.replace(temp, target)  # not followed by a folder fsync: a rename lost to a power cut leaves the
        renamed = True            # target as before, which the journal's hashes tell undo
        journal.done(seq, "written")
        return WriteOutcome(photo.rel, "written", "", str(target))
    except (OSError, RuntimeError) as exc:  # disk full, exiv2 refusing the format, a folder gone
        return _abort(journal, seq, photo, target, f"write_failed: {target}: {exc}")
    finally:
        if not renamed and temp.exists():
            temp.unlink()


def _abort(journal: Journal, seq: int, photo: LibraryPhoto, target: Path, reason: str) -> WriteOutcome:
    log.warning("%s: not written: %s", photo.rel, reason)
    journal.done(seq, "aborted", reason)
    return WriteOutcome(photo.rel, "skipped", reason, str(target))


def _new_bytes(old: bytes | None, p: Placement, mode: str) -> bytes:
    """The target's new bytes, written by exiv2 in memory: the old file (or an empty XMP packet) plus our tags."""
    data = old if old is not None else EMPTY_XMP_PACKET.encode("utf-8")
    with exiv2().ImageData(data) as img:
        if mode == "xmp":
            # exiv2 mirrors a sidecar's exif: tags into Exif on reading and, on writing, copies that Exif back
            # over them: an existing GPSLatitude would win over ours (and others would be reformatted). With
            # the mirror cleared, the sidecar's XMP is written as it was, plus our tags.
            img.clear_exif()
            img.modify_xmp(sidecar_tags(p))
        else:
            access = img.get_access_mode()
            if access.get("exif") not in ("write", "read+write") or access.get("xmp") not in ("write", "read+write"):
                raise RuntimeError(f"exiv2 cannot write EXIF and XMP into {img.get_mime_type()} files")
            img.modify_exif(exif_tags(p))
            img.modify_xmp(geopin_tags(p))
        return img.get_bytes()


def _write_temp(temp: Path, data: bytes, like: Path | None) -> None:
    """`data` in `temp`, created exclusively (never a file someone else holds), synced, with the permissions
    of the file it will replace (its mtime becomes now, as with exiftool: the file did change)."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if like is not None:
        shutil.copymode(like, temp)


def _verify(new: bytes, p: Placement, mode: str) -> str:
    """Read the new bytes back with exiv2: they must give the position meant and geopin's marker."""
    try:
        exif, xmp, _ = metadata_of(new)
    except RuntimeError as exc:
        return f"the new file does not read back: {exc}"
    got = xmp_gps(xmp, "XMP") if mode == "xmp" else exif_gps(exif)
    if not isinstance(got, tuple) or abs(got[0] - p.lat) > 1e-7 or abs(got[1] - p.lon) > 1e-7:
        return f"the new file reads back the position {got!r}, not ({p.lat}, {p.lon})"
    if xmp.get(f"{_G}.Run") != p.run_id:
        return "the new file lacks geopin's marker"
    return ""
