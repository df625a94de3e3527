"""geopin.dataset.images: the one decoding path (high bit depth, HEIC, alpha, orientation, bad bytes) and the folder walk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from imagefiles import (
    TRUE_MEAN,
    heic_bytes,
    picture8,
    png_header_only,
    twin_of,
    write_high_bit_files,
)
from PIL import Image

from geopin.dataset.images import (
    IMAGE_ERROR_REASONS,
    IMAGE_SUFFIXES,
    PILLOW_MAX_PIXELS,
    ImageError,
    decode_rgb,
    open_image,
    walk_folder,
)


@pytest.fixture(scope="module")
def high_bit(tmp_path_factory) -> dict[str, Path]:
    return write_high_bit_files(tmp_path_factory.mktemp("hb"), size=(160, 120))


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_suffixes_and_limit():
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".heic", ".heif", ".webp"} <= IMAGE_SUFFIXES
    assert PILLOW_MAX_PIXELS == 89_478_485


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif", "gray16b.tif", "int32.tif", "float.tif",
                                  "float01.tif", "rgb48.png", "rgb48.tif"])
def test_high_bit_depth_is_scaled_not_clipped(high_bit, name):
    path = high_bit[name]
    with open_image(path) as img:
        assert img.size == (160, 120)
    rgb = np.asarray(decode_rgb(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (120, 160, 3)
    assert abs(rgb.mean() - TRUE_MEAN) < 1.0, rgb.mean()  # Pillow's convert("RGB") gave 255
    # exactly the pixels of the same picture saved at 8 bits
    np.testing.assert_array_equal(rgb, np.asarray(decode_rgb(high_bit[twin_of(name)])))


def test_bad_bytes_get_their_reason_and_the_message_names_the_source(tmp_path):
    good = jpeg_bytes(Image.fromarray(picture8((200, 150), 1, channels=3)))
    cases = {
        "empty_file": b"",
        "not_an_image": b"this is not a photo\n" * 10,
        "truncated": good[: len(good) // 2],
    }
    for reason, data in cases.items():
        path = tmp_path / f"{reason}.jpg"
        path.write_bytes(data)
        with pytest.raises(ImageError) as info:
            decode_rgb(path)
        assert info.value.reason == reason and str(path) in str(info.value) and info.value.detail
        with pytest.raises(ImageError, match="upload.jpg"):
            decode_rgb(data, name="upload.jpg")
    with pytest.raises(FileNotFoundError):
        decode_rgb(tmp_path / "nowhere.jpg")
    with pytest.raises(FileNotFoundError, match="NUL"):  # not the bare ValueError the OS gives
        decode_rgb(str(tmp_path / "a\x00.jpg"))
    with pytest.raises(ImageError) as info:
        decode_rgb(Image.new("RGB", (0, 0)))
    assert info.value.reason == "too_small"
    with pytest.raises(ValueError, match="unknown ImageError reason"):
        ImageError("bad_reason", "x")


def test_pixel_limit_is_checked_on_the_header_before_any_decoding():
    claim = png_header_only(20_000, 20_000)  # 400 MP claimed, 100 bytes of data
    started = time.perf_counter()
    for fn in (open_image, decode_rgb):
        with pytest.raises(ImageError) as info:
            fn(claim)
        assert info.value.reason == "decompression_bomb" and "400000000" in info.value.detail
    assert time.perf_counter() - started < 1.0
    small = jpeg_bytes(Image.new("RGB", (300, 200)))
    with pytest.raises(ImageError, match="decompression_bomb"):
        decode_rgb(small, max_pixels=50_000)
    assert decode_rgb(small, max_pixels=60_000).size == (300, 200)


def test_heic_written_by_pillow_heif_decodes_upright():
    picture = Image.fromarray(picture8((240, 160), 2, channels=3))
    data = heic_bytes(picture)
    rgb = decode_rgb(data)
    assert rgb.mode == "RGB" and rgb.size == (240, 160)
    assert np.abs(np.asarray(rgb, float) - np.asarray(picture, float)).mean() < 4  # lossy, but the same picture
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the photo must come out upright exactly once
    assert decode_rgb(heic_bytes(picture, exif=exif.tobytes())).size == (160, 240)


def test_heic_without_a_decoder_is_unsupported_format_naming_it(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic_bytes(Image.new("RGB", (64, 48), (10, 120, 200))))
    code = (  # a process in which pillow-heif cannot be imported, as on a machine without it
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from geopin.dataset.images import ImageError, decode_rgb\n"
        f"try:\n    decode_rgb({str(path)!r})\n"
        "except ImageError as exc:\n    print(exc.reason); print(exc)\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    reason, message = ran.stdout.splitlines()
    assert reason == "unsupported_format"
    assert "HEIC" in message and "pip install pillow-heif" in message and str(path) in message


def test_transparency_is_composited_on_white():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = (200, 30, 30)
    rgba[:, 30:, 3] = 255  # right half opaque red, left half fully transparent (black-ish underneath)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    out = np.asarray(decode_rgb(buf.getvalue()))
    assert (out[:, :30] == 255).all() and (out[:, 30:] == (200, 30, 30)).all()
    gif = io.BytesIO()
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.paste(0, (0, 0, 10, 20))
    pal.save(gif, "GIF", transparency=0)
    out = np.asarray(decode_rgb(gif.getvalue()))
    assert (out[:, :10] == 255).all() and (out[:, 10:] == (10, 200, 10)).all()


def test_exif_orientation_and_draft():
    big = Image.fromarray(picture8((1600, 1200), 3, channels=3))
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated = decode_rgb(jpeg_bytes(big, exif=exif.tobytes()))
    assert rotated.size == (1200, 1600)
    plain = jpeg_bytes(big)
    drafted = decode_rgb(plain, draft=(400, 300))
    reference = Image.open(io.BytesIO(plain))
    reference.draft("RGB", (400, 300))
    assert drafted.size == (400, 300)
    np.testing.assert_array_equal(np.asarray(drafted), np.asarray(reference.convert("RGB")))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF parser warns about the damage it skips
def test_damaged_files_raise_image_error_and_nothing_else(high_bit):
    """A bounded smoke test: every kind of file, cut and bit-flipped; only ImageError may come out."""
    picture = Image.fromarray(picture8((96, 64), 5, channels=3))
    seeds = [jpeg_bytes(picture), high_bit["gray16.png"].read_bytes(), high_bit["rgb48.tif"].read_bytes(),
             heic_bytes(picture)]
    for fmt in ("PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        picture.save(buf, fmt)
        seeds.append(buf.getvalue())
    rng = np.random.default_rng(13)
    outcomes = {"ok": 0, **{r: 0 for r in IMAGE_ERROR_REASONS}}
    for k in range(240):
        data = bytearray(seeds[k % len(seeds)])
        if k % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for i in rng.integers(0, len(data), int(rng.integers(1, 12))):
                data[i] = int(rng.integers(0, 256))
        try:
            img = decode_rgb(bytes(data), max_pixels=2_000_000)
        except ImageError as exc:
            outcomes[exc.reason] += 1
            continue
        assert img.mode == "RGB" and img.width * img.height <= 2_000_000
        outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["truncated"] + outcomes["not_an_image"] > 0, outcomes


def test_walk_follows_linked_folders_once_and_names_every_other_entry(tmp_path):
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "a").mkdir(parents=True)
    other.mkdir()
    (root / "a" / "x.jpg").write_bytes(b"x")
    (other / "y.PNG").write_bytes(b"y")
    (root / "b").symlink_to(other, target_is_directory=True)
    (root / "c").symlink_to(other, target_is_directory=True)
    (root / "a" / "back").symlink_to(root, target_is_directory=True)
    (root / "d.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "e.jpg").symlink_to(root / "f.jpg")
    (root / "f.jpg").symlink_to(root / "e.jpg")  # a two-link loop
    (root / ".git").mkdir()
    (root / ".git" / "z.jpg").write_bytes(b"z")
    os.mkfifo(root / "p.jpg")
    (root / "out").mkdir()
    (root / "out" / "m.jpg").write_bytes(b"m")
    entries = {e.rel: e for e in walk_folder(root, skip=root / "out")}
    got = {rel: (e.kind, e.reason) for rel, e in entries.items()}
    assert got == {
        ".git": ("ignored", "hidden"),
        "a/x.jpg": ("photo", ""),
        "a/back": ("ignored", "symlink loop"),
        "b/y.PNG": ("photo", ""),
        "c": ("ignored", "folder already visited"),
        "d.jpg": ("missing", "file_missing"),
        "e.jpg": ("missing", "file_missing"),
        "f.jpg": ("missing", "file_missing"),
        "out": ("ignored", "output folder"),
        "p.jpg": ("ignored", "not a regular file"),
    }
    assert entries["d.jpg"].detail == f"dangling symlink -> {tmp_path / 'missing.jpg'}"
    assert entries["e.jpg"].detail.startswith("symlink loop")
    assert entries["b/y.PNG"].path == root / "b" / "y.PNG"
