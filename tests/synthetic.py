"""Synthetic geotagged photos and a loopback photo server: for tests, benchmarks and trying a build.

Real photos are research-only and cannot ship, yet URL ingest, `geopin build` and the scale benchmarks
need thousands of photos behind a real HTTP server. The photos drawn here carry a little geography
(the ground's colour follows latitude, its texture longitude), so a model trained on them should beat
the prior, which makes a broken pipeline visible.
"""

from __future__ import annotations

import http.server
import io
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger(__name__)

# (lat, lon) of the places photos are drawn around: spread over every continent
CITIES = (
    (40.71, -74.01), (34.05, -118.24), (19.43, -99.13), (-23.55, -46.63), (-34.60, -58.38), (4.71, -74.07),
    (51.51, -0.13), (48.86, 2.35), (41.90, 12.50), (52.52, 13.40), (55.76, 37.62), (59.33, 18.07),
    (30.04, 31.24), (6.52, 3.38), (-1.29, 36.82), (-33.92, 18.42), (28.61, 77.21), (13.76, 100.50),
    (35.68, 139.69), (39.90, 116.40), (1.35, 103.82), (-33.87, 151.21), (-36.85, 174.76), (64.15, -21.94),
)


@dataclass(frozen=True)
class SyntheticConfig:
    n: int = 1000
    size: tuple[int, int] = (160, 120)  # width, height
    n_authors: int = 50
    spread_km: float = 30.0  # how far photos stray from their city
    quality: int = 85
    seed: int = 0


def synthetic_positions(cfg: SyntheticConfig) -> pd.DataFrame:
    """name, lat, lon, author for cfg.n photos; each author shoots around one or two cities."""
    rng = np.random.default_rng(cfg.seed)
    author = rng.integers(0, cfg.n_authors, cfg.n)
    home = rng.integers(0, len(CITIES), cfg.n_authors)
    away = rng.integers(0, len(CITIES), cfg.n_authors)
    city = np.where(rng.random(cfg.n) < 0.8, home[author], away[author])
    centre = np.array(CITIES)[city]
    deg = cfg.spread_km / 111.0
    lat = np.clip(centre[:, 0] + rng.normal(0, deg, cfg.n), -89.0, 89.0)
    lon = (centre[:, 1] + rng.normal(0, deg, cfg.n) / np.cos(np.radians(lat)) + 180.0) % 360.0 - 180.0
    return pd.DataFrame({"name": [f"photo{i:07d}.jpg" for i in range(cfg.n)], "lat": lat, "lon": lon,
                         "author": [f"author{a:04d}" for a in author]})


def synthetic_photo(lat: float, lon: float, size: tuple[int, int] = (160, 120), seed: int = 0,
                    quality: int = 85) -> bytes:
    """A JPEG of sky over ground whose colours follow the position (plus noise): bytes, not a file."""
    rng = np.random.default_rng(seed)
    w, h = size
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    x = np.linspace(0.0, 1.0, w)[None, :, None]
    horizon = 0.35 + 0.3 * rng.random()
    t = abs(lat) / 90.0
    ground = np.array([90 + 140 * t, 140 - 40 * t, 60 + 170 * t])  # green near the equator, white near the poles
    if -35 < lat < 35 and abs(lon) < 60:
        ground = np.array([200.0, 170.0, 110.0])  # desert tones over Africa and Arabia
    sky = np.array([110.0, 160.0, 230.0]) * (0.8 + 0.2 * rng.random())
    stripes = 25.0 * np.sin(2 * np.pi * x * (2 + (lon + 180.0) / 40.0))
    img = np.where(y < horizon, sky * (1.0 - 0.3 * y), ground + stripes)
    img = img + rng.normal(0.0, 12.0, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def synthetic_photos(cfg: SyntheticConfig) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """The positions table and the JPEG bytes of every photo, by name."""
    table = synthetic_positions(cfg)
    photos = {name: synthetic_photo(lat, lon, cfg.size, cfg.seed * 1_000_003 + i, cfg.quality)
              for i, (name, lat, lon) in enumerate(zip(table["name"], table["lat"], table["lon"]))}
    return table, photos


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client killed mid-request (the resume tests do that) is expected: log it, no traceback on stderr."""
        log.debug("photo server: request from %s ended early", client_address, exc_info=True)


@dataclass
class _Routes:
    photos: dict[str, bytes]
    slow_s: float = 5.0
    flaky_failures: int = 2
    hits: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PhotoServer:
    """A threaded HTTP server on 127.0.0.1 serving photos from memory, with the failures real hosts show.

    /p/NAME       the photo (404 when unknown)
    /missing/X    404
    /slow/NAME    the photo after `slow_s` seconds (for timeouts)
    /broken/NAME  the photo cut in half (a truncated JPEG)
    /html/X       an HTML page served as image/jpeg (not an image)
    /flaky/NAME   503 the first `flaky_failures` times, then the photo (for retries)
    Every request is counted in `hits` by path, so tests can prove nothing was fetched twice.
    """

    def __init__(self, photos: dict[str, bytes], *, slow_s: float = 5.0, flaky_failures: int = 2) -> None:
        self.routes = _Routes(photos=photos, slow_s=slow_s, flaky_failures=flaky_failures)
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = unquote(urlsplit(self.path).path)
                with routes.lock:
                    routes.hits[path] += 1
                    n_hits = routes.hits[path]
                kind, _, name = path.lstrip("/").partition("/")
                body = routes.photos.get(name)
                if kind == "slow" and body is not None:
                    time.sleep(routes.slow_s)
                elif kind == "broken" and body is not None:
                    body = body[: len(body) // 2]
                elif kind == "html":
                    body = b"<html><body>Not Found, but served as 200</body></html>"
                elif kind == "flaky":
                    if n_hits <= routes.flaky_failures:
                        return self._send(503, b"try again later", "text/plain")
                elif kind != "p":
                    body = None
                if body is None:
                    return self._send(404, b"not found", "text/plain")
                self._send(200, body, "image/jpeg")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): fine
                    pass

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's signature)
                log.debug("photo server: " + format, *args)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="photo-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def hits(self) -> Counter:
        with self.routes.lock:
            return Counter(self.routes.hits)

    def __enter__(self) -> "PhotoServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
