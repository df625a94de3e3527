"""The offline map page in a real browser: Debian's headless Chromium, driven by Selenium, against a
real `geopin serve` app on loopback with the bundled model. Also the cell-polygon endpoint it uses.

Skipped with the reason when chromium / chromedriver / selenium are absent (`.ci/run` installs them).
The screenshot goes to $GEOPIN_ARTIFACTS (or the test's tmp folder); it shows a generated photo only.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagefiles import gps_exif_bytes
from geopin.geo import haversine_km
from geopin.serve.geojson import (
    MAX_TOKENS,
    CellTokenError,
    cell_feature,
    cell_polygons,
    split_tokens,
)

WEB_DIR = Path(__file__).resolve().parents[1] / "src" / "geopin" / "web"
TOKEN = "web-test-token"
EXIF_AT = (-33.8568, 151.2153)  # Sydney Opera House: far from what a generated photo looks like


# ------------------------------------------------------------------ pure parts: no browser needed


def test_cell_polygon_corners_are_the_s2_cell_corners():
    import s2sphere

    f = cell_feature("89c259c")  # a level-11 cell in Manhattan
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    cell = s2sphere.Cell(s2sphere.CellId.from_token("89c259c"))
    for i in range(4):
        v = s2sphere.LatLng.from_point(cell.get_vertex(i))
        assert any(abs(lon - v.lng().degrees) < 1e-5 and abs(lat - v.lat().degrees) < 1e-5 for lon, lat in ring)
    assert f["properties"]["level"] == 11
    centre = f["properties"]["centre"]
    assert haversine_km(centre[1], centre[0], 40.74, -74.0) < 10


def test_a_cell_across_the_antimeridian_stays_one_shape():
    import s2sphere

    token = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(0.0, 179.9)).parent(4).to_token()
    ring = np.array(cell_feature(token)["geometry"]["coordinates"][0])
    assert np.abs(np.diff(ring[:, 0])).max() < 30, "an edge jumps across the map"


@pytest.mark.parametrize("level", [0, 1, 3])
@pytest.mark.parametrize("pole", [90.0, -90.0])
def test_a_cell_at_a_pole_is_closed_over_the_pole_not_drawn_as_a_band(pole, level):
    import s2sphere

    token = s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(pole * 0.999, 10.0)).parent(level).to_token()
    ring = np.array(cell_feature(token)["geometry"]["coordinates"][0])
    assert ring[:, 0].min() >= -180 and ring[:, 0].max() <= 180
    assert np.isclose(np.abs(ring[:, 1]).max(), 90.0), "the shape does not reach the pole"
    off_pole = np.abs(ring[:-1, 1]) < 89.999
    jumps = np.abs(np.diff(ring[:, 0]))[off_pole & (np.abs(ring[1:, 1]) < 89.999)]
    assert jumps.max() < 30, "an edge away from the pole jumps across the map"


def test_a_near_token_keeps_its_comma_when_tokens_are_split():
    assert split_tokens("89c259c,near:39.7624,-89.6061, 0d3,,near:-1.5,2") == [
        "89c259c", "near:39.7624,-89.6061", "0d3", "near:-1.5,2"]


def test_near_tokens_are_points_and_bad_tokens_are_named():
    fc = cell_polygons(["0d3", "near:39.7624,-89.6061", "0d3"])
    assert [f["geometry"]["type"] for f in fc["features"]] == ["Polygon", "Point"]  # duplicate dropped
    assert fc["features"][1]["geometry"]["coordinates"] == [-89.6061, 39.7624]
    for bad, why in [("zz", "not an S2 token"), ("0", "no valid S2 cell"), ("0d3x", "not an S2 token"),
                     ("near:95,0", "out of range"), ("89C259C", "not an S2 token")]:
        with pytest.raises(CellTokenError, match=re.escape(repr(bad)) + ".*" + why):
            cell_feature(bad)
    with pytest.raises(CellTokenError, match=f"at most {MAX_TOKENS}"):
        cell_polygons([f"near:0,{i / 1000}" for i in range(MAX_TOKENS + 1)])


def test_the_page_loads_nothing_from_the_internet():
    """Every src/href in the page and every url(...) / fetch in its own code is relative."""
    own = {p: p.read_text() for p in WEB_DIR.glob("*") if p.suffix in (".html", ".js", ".css")}
    assert {p.name for p in own} >= {"index.html", "app.js", "basemap.js", "style.css"}
    for path, text in own.items():
        for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text) + re.findall(r"""url\(([^)]+)\)""", text) \
                + re.findall(r"""fetch\(\s*["']([^"']+)""", text):
            assert not re.match(r"^\s*['\"]?(https?:)?//", ref), f"{path.name} loads {ref} from the internet"
    for name in ("leaflet/leaflet.js", "leaflet/leaflet.css", "topojson-client/topojson-client.min.js",
                 "world-atlas/countries-50m.json", "world-atlas/countries-110m.json"):
        assert (WEB_DIR / "vendor" / name).is_file(), f"vendor/{name} is not shipped"
    licences = (WEB_DIR / "LICENSES.md").read_text()
    for pkg in ("leaflet", "world-atlas", "topojson-client", "Natural Earth"):
        assert pkg in licences


# ------------------------------------------------------------------ a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`geopin.serve.app.create_app` with a token, served by uvicorn in a thread on loopback: base URL."""
    uvicorn = pytest.importorskip("uvicorn")
    serve = pytest.importorskip("geopin.serve.app")
    port = _free_port()
    app = serve.create_app(serve.ServeConfig(host="127.0.0.1", port=port, token=TOKEN))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the geopin server did not start within 60 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _get(url: str, token: str | None = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_cells_endpoint_answers_geojson_and_names_a_bad_token(server):
    status, body = _get(f"{server}/api/cells?tokens=89c259c,near:39.7624,-89.6061,0d3")
    assert status == 200
    assert body["type"] == "FeatureCollection"
    assert [f["properties"]["token"] for f in body["features"]] == ["89c259c", "near:39.7624,-89.6061", "0d3"]
    status, body = _get(f"{server}/api/cells?tokens=89c259c,zz")
    assert status == 422 and "'zz'" in body["detail"]
    status, body = _get(f"{server}/api/cells?tokens=")
    assert status == 422 and "at least one" in body["detail"]
    status, body = _get(f"{server}/api/cells?tokens=0d3", token=None)
    assert status == 401  # behind the same token check as the rest of /api


# ------------------------------------------------------------------ the browser


def _browser():
    """Headless Debian Chromium via chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"geopin-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,900", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failure messages
    return webdriver.Chrome(service=Service(driver), options=opts), profile


@pytest.fixture(scope="module")
def browser():
    drv, profile = _browser()
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("GEOPIN_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _photo_with_gps(path: Path) -> Path:
    """A generated landscape (sky, hills, a house) carrying EXIF GPS: no research photo involved."""
    img = Image.new("RGB", (640, 427), (120, 170, 225))
    d = ImageDraw.Draw(img)
    for y in range(0, 200, 4):  # a sky gradient
        d.rectangle([0, y, 640, y + 4], fill=(110 + y // 4, 160 + y // 6, 230))
    d.polygon([(0, 300), (160, 210), (330, 290), (480, 200), (640, 280), (640, 427), (0, 427)], fill=(70, 130, 60))
    d.rectangle([260, 280, 360, 360], fill=(200, 190, 170))
    d.polygon([(250, 280), (310, 240), (370, 280)], fill=(150, 50, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=gps_exif_bytes(*EXIF_AT))
    path.write_bytes(buf.getvalue())
    return path


def _wait(drv, what: str, cond, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.25)
    status = drv.execute_script("var s=document.getElementById('status'); return s && s.dataset.state + ': ' + s.textContent;")
    console = [e.get("message") for e in drv.get_log("browser")][-10:]
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; page status: {status}; console: {console}")


def _countries_cutting_bands(drv) -> list:
    """Country rings with an edge longer than half the world (off the poles) or lying off the world:
    what a ring drawn across the antimeridian looks like (a band cut across the map)."""
    return drv.execute_script("""
        var bad = [];
        function rings(ll) { return ll.length && ll[0].lat !== undefined ? [ll] : [].concat.apply([], ll.map(rings)); }
        window.geopinMap.eachLayer(function (l) {
          if (!l.feature || !l.getLatLngs || !(l.options.className || '').match(/country/)) return;
          rings(l.getLatLngs()).forEach(function (r) {
            for (var i = 0; i < r.length; i++) {
              var a = r[i], b = r[(i + 1) % r.length];
              var polar = Math.abs(a.lat) > 89.9 && Math.abs(b.lat) > 89.9;
              if ((!polar && Math.abs(a.lng - b.lng) > 180) || Math.abs(a.lng) > 200) {
                bad.push([l.feature.properties.name, a.lng, a.lat, b.lng, b.lat]); return;
              }
            }
          });
        });
        return bad;""")


def test_upload_a_photo_and_see_guess_regions_words_and_exif_on_the_map(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    n_countries = len(drv.find_elements(By.CSS_SELECTOR, "path.country"))
    assert n_countries > 200, f"only {n_countries} country shapes drawn"
    assert _countries_cutting_bands(drv) == []
    _wait(drv, "the health line", lambda: drv.find_element(By.ID, "health").text, 30)
    assert "model ready" in drv.find_element(By.ID, "health").text

    photo = _photo_with_gps(tmp_path / "generated_landscape.jpg")
    drv.find_element(By.ID, "photo-input").send_keys(str(photo))
    state = _wait(drv, "the answer", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
    assert state == "done", drv.find_element(By.ID, "status").text

    res = drv.execute_script("return window.geopinLast;")
    assert res and "summary" in res and res["exif_gps"] is not None
    # the words
    assert drv.find_element(By.ID, "summary").text == res["summary"]
    assert len(drv.find_elements(By.CSS_SELECTOR, "#within tbody tr")) == len(res["within_km"]) == 4
    # the guess marker, the top-k circles, the regions
    assert len(drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .guess-marker")) == 1
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.topk-circle")) == len(res["top_k"])
    n50 = len(drv.find_elements(By.CSS_SELECTOR, "path.region-50"))
    n90 = len(drv.find_elements(By.CSS_SELECTOR, "path.region-90"))
    want50 = len(res["regions"]["50%"])
    assert n50 == want50 and n90 == len(set(res["regions"]["90%"]) - set(res["regions"]["50%"])), (n50, n90)
    # the EXIF position as its own marker, with the distance to the guess in words
    assert len(drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .exif-marker")) == 1
    assert res["exif_gps"]["lat"] == pytest.approx(EXIF_AT[0], abs=1e-3)
    km = float(haversine_km(res["lat"], res["lon"], *EXIF_AT))
    shown = drv.find_element(By.ID, "exif-line").text
    assert f"{round(km):,} km from the guess" in shown, shown

    # nothing came from anywhere but the server
    origins = drv.execute_script(
        "return performance.getEntriesByType('resource').map(function(e){return new URL(e.name).origin;});")
    assert set(origins) <= {server}, set(origins)

    # the explanation toggle: shown with overlays when /api/explain works, hidden when it answers 501
    _, health = _get(f"{server}/api/health")
    if health.get("explain"):
        _wait(drv, "the explanation toggle", lambda: drv.find_element(By.ID, "explain-controls").is_displayed(), 180)
        drv.find_element(By.CSS_SELECTOR, 'input[name="view"][value="gradcam"]').click()
        assert drv.find_element(By.ID, "photo").get_attribute("src").startswith("data:image/png;base64,")
        drv.find_element(By.CSS_SELECTOR, 'input[name="view"][value="photo"]').click()
    else:
        time.sleep(1.0)
        assert not drv.find_element(By.ID, "explain-controls").is_displayed()

    shot = _artifacts(tmp_path) / "web_page.png"
    drv.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 20_000


def test_a_sign_is_read_and_shown_as_evidence_in_words_list_and_map(server, browser, tmp_path):
    """The text read off the photo reads the same in the JSON, the words, the evidence list and on the map."""
    from selenium.webdriver.common.by import By

    from signs import sign_photo

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    photo = tmp_path / "praiano_sign.jpg"
    sign_photo("PRAIANO", (1200, 800)).save(photo, quality=92)
    drv.find_element(By.ID, "photo-input").send_keys(str(photo))
    state = _wait(drv, "the answer", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
    assert state == "done", drv.find_element(By.ID, "status").text
    res = drv.execute_script("return window.geopinLast;")
    named = [e for e in res["evidence"] if e["source"] == "placename"]
    assert named and named[0]["weight"] > 0, res["evidence"]
    assert 'read "PRAIANO"' in drv.find_element(By.ID, "summary").text
    items = [li.text for li in drv.find_elements(By.CSS_SELECTOR, "#evidence-list li")]
    assert drv.find_element(By.ID, "evidence").is_displayed()
    assert len(items) == len(res["evidence"]) and any("PRAIANO" in t and "Praiano" in t for t in items), items
    assert drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .evidence-marker")
    assert "Praiano" in drv.find_element(By.ID, "topk").text
    shot = _artifacts(tmp_path) / "web_page_sign.png"
    drv.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_a_bad_upload_is_said_on_the_page_and_the_next_photo_works(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    drv.find_element(By.ID, "photo-input").send_keys(str(bad))
    state = _wait(drv, "the error", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"), 60)
    assert state == "error"
    assert re.search(r"HTTP 4\d\d", drv.find_element(By.ID, "status").text)
    assert not drv.find_elements(By.CSS_SELECTOR, ".guess-marker")


def test_without_the_token_the_page_says_how_to_give_it(server, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/")
    text = _wait(drv, "the health line", lambda: drv.find_element(By.ID, "health").text, 30)
    assert "401" in text and "?token=" in text
