"""synthetic: the photos decode, their positions are valid, and the loopback server fails as documented."""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import numpy as np
from PIL import Image
from synthetic import PhotoServer, SyntheticConfig, synthetic_photos

from geopin.dataset.exif import coord_problem


def test_photos_decode_and_positions_are_valid():
    table, photos = synthetic_photos(SyntheticConfig(n=200, n_authors=7, seed=3))
    assert len(table) == len(photos) == 200 and table["name"].is_unique
    assert all(coord_problem(a, b) is None for a, b in zip(table["lat"], table["lon"]))
    assert table["author"].nunique() <= 7
    img = Image.open(io.BytesIO(photos[table["name"][0]]))
    img.load()
    assert img.size == (160, 120) and img.format == "JPEG"
    again, _ = synthetic_photos(SyntheticConfig(n=200, n_authors=7, seed=3))
    assert again.equals(table)  # seeded: benchmarks are repeatable


def test_photos_carry_geography():
    """The ground is bluer-white far from the equator: the signal a model should find."""
    table, photos = synthetic_photos(SyntheticConfig(n=400, seed=1))
    blue = np.array([np.asarray(Image.open(io.BytesIO(photos[n])))[-20:, :, 2].mean() for n in table["name"]])
    north = np.abs(table["lat"].to_numpy()) > 50
    assert north.sum() > 20 and blue[north].mean() > blue[~north].mean() + 30


def test_server_routes_and_hit_counts():
    _, photos = synthetic_photos(SyntheticConfig(n=3))
    name = next(iter(photos))

    def get(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    with PhotoServer(photos, flaky_failures=1) as server:
        assert get(f"{server.url}/p/{name}") == (200, photos[name])
        assert get(f"{server.url}/missing/{name}")[0] == 404
        assert get(f"{server.url}/p/nope.jpg")[0] == 404
        status, body = get(f"{server.url}/broken/{name}")
        assert status == 200 and body == photos[name][: len(photos[name]) // 2]
        assert get(f"{server.url}/html/x")[1].startswith(b"<html>")
        assert [get(f"{server.url}/flaky/{name}")[0] for _ in range(2)] == [503, 200]
        assert server.hits[f"/p/{name}"] == 1 and server.hits[f"/flaky/{name}"] == 2
