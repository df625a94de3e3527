"""One way to find, open and decode photos, shared by ingest, embed and predict.

Before this module each stage had its own suffix list and its own decoding, so a photo could be
rejected by ingest and accepted by predict (a 144 MP "decompression bomb"), or kept by all three and
embedded as garbage (a 16-bit PNG, clipped to white by Pillow's `convert("RGB")`). Here:

- `IMAGE_SUFFIXES` is the one list of photo suffixes;
- `open_image` reads the header only and applies the pixel limit by width x height *before* any
  decoding; HEIC/HEIF (every iPhone) opens through pillow-heif, registered on first use;
- `decode_rgb` decodes in full to upright 8-bit RGB: EXIF orientation applied, 16-bit and 32-bit
  samples scaled by their bit depth (not clipped), alpha composited on white;
- every problem with the bytes is an `ImageError` whose `reason` is an ingest reject reason;
- `walk_folder` lists a folder for photos, following symlinked folders without ever visiting one
  twice, and says why each other entry is not a photo.

Ordinary 8-bit JPEG/PNG photos decode to exactly the pixels Pillow gives (the bundled model's
embeddings depend on that); reduced-scale JPEG decoding (`draft`) is kept for speed.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Lower-case photo suffixes (with the dot): the one list every stage uses.
IMAGE_SUFFIXES: frozenset[str] = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif",
    ".heic", ".heif", ".hif", ".avif",
})
#: Pillow's own default for Image.MAX_IMAGE_PIXELS (about 89.5 megapixels).
PILLOW_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
#: The values ImageError.reason takes (each is also an ingest reject reason).
IMAGE_ERROR_REASONS = ("empty_file", "not_an_image", "truncated", "decompression_bomb", "unsupported_format",
                       "too_small")

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
                          b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_TIFF_BITS_PER_SAMPLE = 258


class ImageError(ValueError):
    """A photo whose bytes cannot be used; `reason` is one of IMAGE_ERROR_REASONS, `detail` says why."""

    def __init__(self, reason: str, detail: str, name: str | None = None) -> None:
        if reason not in IMAGE_ERROR_REASONS:
            raise ValueError(f"unknown ImageError reason {reason!r}; expected one of {', '.join(IMAGE_ERROR_REASONS)}")
        self.reason = reason
        self.detail = detail
        self.name = name or "<image>"
        super().__init__(f"{self.name}: {reason}: {detail}")


# ---------------------------------------------------------------------------------------------
# decoders registered on first use


_plugins_lock = threading.Lock()
_plugins_ready = False
_heif_problem: str | None = None  # why HEIC/HEIF cannot be decoded here; None when it can


def _ensure_plugins() -> None:
    """Register pillow-heif once per process (lazily: importing geopin stays fast)."""
    global _plugins_ready, _heif_problem
    if _plugins_ready:
        return
    with _plugins_lock:
        if _plugins_ready:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
        except ImportError as exc:
            _heif_problem = f"the HEIF decoder pillow-heif is not installed (pip install pillow-heif): {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken plugin must cost HEIC support, never every photo
            _heif_problem = f"the HEIF decoder pillow-heif failed to load: {type(exc).__name__}: {exc}"
        if _heif_problem:
            log.warning("HEIC/HEIF photos will be rejected: %s", _heif_problem)
        # geopin applies its own pixel limit (max_pixels) before decoding; Pillow's warning is noise.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _plugins_ready = True


# ---------------------------------------------------------------------------------------------
# opening and decoding


def open_image(source: bytes | str | os.PathLike, *, max_pixels: int = PILLOW_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """The photo with its header read and nothing decoded; raises ImageError for unusable bytes.

    The pixel limit is checked on width x height from the header, so a decompression bomb costs
    nothing. A path that cannot be read raises OSError (FileNotFoundError, ...): that is a missing
    file, not a bad image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        name = name or str(source)
        try:
            data = Path(source).read_bytes()
        except ValueError:  # "embedded null byte": no file can have that name
            raise FileNotFoundError(errno.ENOENT, "path contains a NUL byte", name) from None
    if not data:
        raise ImageError("empty_file", "zero bytes", name)
    _ensure_plugins()
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", _bomb_detail(str(exc), max_pixels), name) from None
    except UnidentifiedImageError:
        raise _unidentified(data, name) from None
    except MemoryError:
        raise ImageError("decompression_bomb", "out of memory reading the header", name) from None
    except Exception as exc:  # noqa: BLE001 - any plugin may fail on hostile headers; one photo must not end the job
        raise ImageError("not_an_image", f"unreadable header: {type(exc).__name__}: {exc}", name) from None
    _check_size(img, max_pixels, name)
    return img


def decode_rgb(source: bytes | str | os.PathLike | Image.Image, *, max_pixels: int = PILLOW_MAX_PIXELS,
               draft: tuple[int, int] | None = None, name: str | None = None) -> Image.Image:
    """The photo decoded in full as upright 8-bit RGB; raises ImageError for anything wrong with it.

    `draft` asks a JPEG decoder for at least that size (DCT scaling: several times faster on big
    photos); other formats ignore it. 16-bit and 32-bit samples are scaled by their bit depth,
    transparency is composited on white. Only ImageError comes out, whatever the bytes (a path that
    cannot be read raises OSError, see open_image).
    """
    if isinstance(source, Image.Image):
        img = source
        name = name or getattr(source, "filename", None) or "<image>"
        _check_size(img, max_pixels, name)
    else:
        img = open_image(source, max_pixels=max_pixels, name=name)
        name = name or ("<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        if draft is not None:
            img.draft("RGB", (max(1, int(draft[0])), max(1, int(draft[1]))))
        img.load()
    except MemoryError:
        raise ImageError("decompression_bomb", f"out of memory decoding {img.width}x{img.height}", name) from None
    except Exception as exc:  # noqa: BLE001 - truncated data surfaces as OSError, corrupt data as anything
        raise _decode_error(exc, name) from None
    orientation = _orientation(img)
    try:
        rgb = _to_rgb8(img)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
    except ImageError as exc:
        raise ImageError(exc.reason, exc.detail, name) from None
    except MemoryError:
        raise ImageError("decompression_bomb", f"out of memory converting {img.width}x{img.height}", name) from None
    except Exception as exc:  # noqa: BLE001 - an odd mode or corrupt palette is this photo's problem only
        raise ImageError("unsupported_format", f"cannot convert mode {img.mode} to RGB: "
                                               f"{type(exc).__name__}: {exc}", name) from None
    return rgb


def _bomb_detail(pillow_message: str, max_pixels: int) -> str:
    """Pillow's own refusal ("Image size (N pixels) exceeds limit of 178956970 ...") in geopin's words, with
    geopin's limit: one pixel limit in every message."""
    import re

    found = re.search(r"\((\d+) pixels\)", pillow_message)
    return f"{found.group(1)} pixels > {max_pixels}" if found else f"more pixels than {max_pixels}"


def _check_size(img: Image.Image, max_pixels: int, name: str) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("too_small", f"{width}x{height}: no pixels", name)
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} = {width * height} pixels > {max_pixels}", name)


def _unidentified(data: bytes, name: str) -> ImageError:
    """not_an_image, or unsupported_format when the bytes are a known photo format we cannot decode."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            problem = _heif_problem or "pillow-heif could not read it"
            return ImageError("unsupported_format", f"HEIC/HEIF photo, but {problem}", name)
        if brand in _AVIF_BRANDS:
            return ImageError("unsupported_format", "AVIF photo, but this Pillow has no AVIF decoder "
                                                    "(Pillow >= 11.2 built with libavif reads it)", name)
    return ImageError("not_an_image", "Pillow cannot identify an image format", name)


def _decode_error(exc: Exception, name: str) -> ImageError:
    msg = f"decoding failed: {type(exc).__name__}: {exc}"
    text = str(exc).lower()
    if "not available" in text or "unsupported" in text or "not supported" in text:
        return ImageError("unsupported_format", msg, name)
    return ImageError("truncated", msg, name)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (a broken EXIF block must not hide a good photo)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # noqa: BLE001 - any EXIF parser error means "no usable orientation"
        log.debug("unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb8(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_BIT_MODES:
        return Image.fromarray(_high_bit_to_8bit(img)).convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] == 255:
            return img.convert("RGB")  # opaque: exactly what a plain conversion gives
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _high_bit_to_8bit(img: Image.Image) -> np.ndarray:
    """uint8 samples of a 16/32-bit or float single-channel image, scaled by its bit depth, not clipped.

    16-bit modes use their depth (or a TIFF's BitsPerSample, e.g. 12). A 32-bit integer or float
    container does not say how many bits the data use, so the range decides: floats up to 1.0 are
    [0, 1]; then the smallest of 8 or 16 bits that holds the largest value; beyond that, the maximum.
    """
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        bits = _tiff_bits(img)
        top = (1 << bits) - 1 if bits and 8 < bits <= 16 else 65535
        lut = np.round(np.minimum(np.arange(65536), top) * (255.0 / top)).astype(np.uint8)
        return lut[arr.astype(np.uint16, copy=False)]
    values = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    vmax = float(values.max()) if values.size else 0.0
    if img.mode == "F" and vmax <= 1.0:
        top = 1.0
    elif vmax <= 255:
        top = 255.0
    elif vmax <= 65535:
        top = 65535.0
    else:
        top = vmax
    return np.round(np.clip(values, 0.0, top) * np.float32(255.0 / top)).astype(np.uint8)


def _tiff_bits(img: Image.Image) -> int | None:
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    try:
        bits = tags.get(_TIFF_BITS_PER_SAMPLE)
    except Exception:  # noqa: BLE001 - a malformed tag is the same as no tag
        return None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) else None


# ---------------------------------------------------------------------------------------------
# finding photos in a folder

#: Why a walked entry is not a photo to process (the ignored list's reasons).
IGNORE_NO_SUFFIX = "no image suffix"
IGNORE_HIDDEN = "hidden"
IGNORE_SKIPPED = "output folder"
IGNORE_LOOP = "symlink loop"
IGNORE_SEEN = "folder already visited"
IGNORE_NOT_FILE = "not a regular file"
IGNORE_UNLISTABLE = "cannot list folder"


@dataclass(frozen=True)
class WalkEntry:
    """One entry met by walk_folder.

    kind: "photo" (a readable file with an image suffix), "missing" (an image-suffixed name that
    cannot be read: dangling symlink, symlink loop; `detail` says which) or "ignored" (`reason` says why).
    """

    path: Path  # as reached from the root (symlinks not resolved)
    rel: str  # posix path relative to the root
    kind: str
    reason: str = ""
    detail: str = ""


def walk_folder(root: str | os.PathLike, *, skip: str | os.PathLike | None = None) -> Iterator[WalkEntry]:
    """Every entry under root, each once: photos, image-named files that cannot be read, and the ignored.

    Symlinked folders are followed; a folder is never visited twice (real folders are keyed by
    (st_dev, st_ino)), so a symlink loop ends the descent with an "ignored" entry that says so.
    Hidden entries (".name") and the `skip` folder (an output folder inside root) are not entered.
    Entries come in sorted order within each folder.
    """
    root = Path(root)
    skip_key = _dir_key(Path(skip)) if skip is not None else None
    root_key = _dir_key(root)
    visited = {root_key} if root_key else set()
    stack: list[tuple[Path, str, frozenset]] = [(root, "", frozenset(visited))]
    while stack:
        folder, prefix, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield WalkEntry(folder, prefix.rstrip("/") or ".", "ignored", IGNORE_UNLISTABLE,
                            exc.strerror or str(exc))
            continue
        subfolders = []
        for entry in entries:
            path, rel = Path(entry.path), prefix + entry.name
            if entry.name.startswith("."):
                yield WalkEntry(path, rel, "ignored", IGNORE_HIDDEN)
                continue
            found = _classify(entry, path, rel, skip_key, visited, ancestors)
            if isinstance(found, WalkEntry):
                yield found
            elif found is not None:
                visited.add(found)
                subfolders.append((path, rel + "/", ancestors | {found}))
        stack.extend(reversed(subfolders))


def _classify(entry: os.DirEntry, path: Path, rel: str, skip_key, visited: set, ancestors: frozenset
              ) -> WalkEntry | tuple[int, int] | None:
    """A WalkEntry for a leaf, or the (st_dev, st_ino) key of a folder to enter."""
    try:
        is_link = entry.is_symlink()
    except OSError:
        is_link = False
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        target = symlink_target(path) if is_link else ""
        if is_link and exc.errno == errno.ELOOP:  # ELOOP: a symlink chain that points back at itself
            detail = f"symlink loop -> {target}"
        elif is_link and isinstance(exc, FileNotFoundError):
            detail = f"dangling symlink -> {target}"
        else:
            detail = f"cannot stat: {exc.strerror or exc}"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return WalkEntry(path, rel, "missing", "file_missing", detail)
        return WalkEntry(path, rel, "ignored", IGNORE_NO_SUFFIX, detail)
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        where = f"-> {os.path.realpath(path)}" if is_link else ""
        if key == skip_key:
            return WalkEntry(path, rel, "ignored", IGNORE_SKIPPED, where)
        if key in ancestors:
            return WalkEntry(path, rel, "ignored", IGNORE_LOOP, where or "folder contains itself")
        if key in visited:
            return WalkEntry(path, rel, "ignored", IGNORE_SEEN, where)
        return key
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return WalkEntry(path, rel, "ignored", IGNORE_NO_SUFFIX)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device named .jpg: reading it could block forever
        return WalkEntry(path, rel, "ignored", IGNORE_NOT_FILE, _file_type(st.st_mode))
    return WalkEntry(path, rel, "photo")


def _dir_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def symlink_target(path: str | os.PathLike) -> str:
    """Where a symlink points, for messages (never raises)."""
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"? ({exc.strerror or exc})"


def _file_type(mode: int) -> str:
    for test, label in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                        (stat.S_ISBLK, "block device")):
        if test(mode):
            return label
    return "special file"


def find_photos(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, folders walked (walk_folder) for photos; a path that does not exist is kept to report it.

    Image-named entries that cannot be read (dangling symlinks) are kept too, so the caller reports them.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(e.path for e in walk_folder(p) if e.kind in ("photo", "missing"))
            if not found:
                log.warning("%s: no photos in this folder (looked for %s)", p, ", ".join(sorted(IMAGE_SUFFIXES)))
            out.extend(found)
        else:
            out.append(p)
    return out
