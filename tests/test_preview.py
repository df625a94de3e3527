"""POST /api/preview: a photo the browser cannot show (HEIC in Chromium) comes back as a small upright JPEG,
decoded as any upload is (pillow-heif, EXIF orientation, the one pixel limit). Against a REAL uvicorn server
on 127.0.0.1, over HTTP with httpx."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install 'geopin[serve]'")
httpx = pytest.importorskip("httpx")

from imagefiles import heic_bytes, png_header_only
from servers import RunningServer
from test_serve import TOKEN, assert_error

from geopin.dataset.images import PILLOW_MAX_PIXELS
from geopin.serve.app import PREVIEW_LONG_SIDE, ServeConfig, create_app


@pytest.fixture(scope="module")
def server(predictor):
    s = RunningServer(create_app(ServeConfig(token=TOKEN, max_upload_mb=2.0), predictor))
    yield s
    s.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def halves(size: tuple[int, int]) -> Image.Image:
    """Red on the left, blue on the right: which way up a preview came back is plain to see."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 30, 30)
    arr[:, w // 2 :] = (30, 30, 220)
    return Image.fromarray(arr)


def rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the stored picture lies on its side
    return exif.tobytes()


def jpeg_of(resp) -> Image.Image:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == "JPEG"
    return img.convert("RGB")


def test_a_heic_photo_comes_back_as_a_small_upright_jpeg(server):
    heic = heic_bytes(halves((1600, 1200)), exif=rotated_exif())
    img = jpeg_of(server.client.post("/api/preview", files={"photo": ("IMG_0001.HEIC", heic, "image/heic")}, headers=AUTH))
    # orientation 6 applied: 1600x1200 stored, 1200x1600 upright, scaled to the default long side
    assert img.size == (PREVIEW_LONG_SIDE * 3 // 4, PREVIEW_LONG_SIDE)
    arr = np.asarray(img).astype(int)
    top, bottom = arr[: img.height // 4].mean((0, 1)), arr[-img.height // 4 :].mean((0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0], (top, bottom)  # rotated clockwise: red on top


def test_long_side_is_bounded_and_small_photos_are_not_enlarged(server):
    heic = heic_bytes(halves((640, 480)))
    img = jpeg_of(server.client.post("/api/preview", files={"photo": ("p.heif", heic)}, data={"long_side": "200"}, headers=AUTH))
    assert img.size == (200, 150)
    small = jpeg_of(server.client.post("/api/preview", files={"photo": ("p.heic", heic)}, data={"long_side": "2048"}, headers=AUTH))
    assert small.size == (640, 480)
    assert_error(server.client.post("/api/preview", files={"photo": ("p.heic", heic)}, data={"long_side": "4096"}, headers=AUTH),
                 422, "invalid_request")


def test_bad_uploads_get_the_documented_errors(server):
    assert_error(server.client.post("/api/preview", files={"photo": ("notes.heic", b"not a photo at all")}, headers=AUTH),
                 415, "not_an_image")
    assert_error(server.client.post("/api/preview", files={"photo": ("empty.heic", b"")}, headers=AUTH), 422, "empty_file")
    body = assert_error(server.client.post("/api/preview", files={"photo": ("bomb.png", png_header_only(40_000, 40_000))},
                                           headers=AUTH), 413, "decompression_bomb")
    assert f"> {PILLOW_MAX_PIXELS}" in body["detail"], body  # the one pixel limit, as /api/predict says it
    assert_error(server.client.post("/api/preview", files={"photo": ("p.heic", heic_bytes(halves((64, 48))))}), 401,
                 "unauthorized")
    assert server.client.get("/api/health", headers=AUTH).status_code == 200  # the server goes on
