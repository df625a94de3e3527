"""The offline map page in a real browser: Debian's headless Chromium, driven by Selenium, against a
real `geopin serve` app on loopback with the bundled model. Also the cell-polygon endpoint it uses.

Skipped with the reason when chromium / chromedriver / selenium are absent (`.ci/run` installs them).
The screenshot goes to $GEOPIN_ARTIFACTS (or the test's tmp folder); it shows a generated photo only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, wait_for
from imagefiles import gps_exif_bytes
from PIL import Image, ImageDraw

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


@pytest.fixture(scope="module")
def server():
    """`geopin.serve.app.create_app` with a token, served on loopback: base URL."""
    pytest.importorskip("uvicorn")
    serve = pytest.importorskip("geopin.serve.app")
    from servers import RunningServer

    s = RunningServer(serve.create_app(serve.ServeConfig(host="127.0.0.1", token=TOKEN)), start_timeout_s=60)
    yield s.url
    s.close()


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


@pytest.fixture(scope="module")
def browser():
    drv, profile = chromium()
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
    return wait_for(drv, what, cond, timeout)


def _countries_cutting_bands(drv) -> list:
    """Country rings with an edge longer than half the world (off the poles) or lying off the world:
    what a ring drawn across the antimeridian looks like (a band cut across the map)."""
    return drv.execute_script("""
        var bad = [];
        function rings(ll) { return ll.length && ll[0].lat !== undefined ? [ll] : [].concat.apply([], ll.map(rings)); }
        window.geopinMap.eachLayer(function (l) {
          if (!l.feature || !l.getLatLngs || !(l.options.className || '').match(/country/)) return;
          var offset = l.options.offset || 0;  // which copy of the world (-360, 0, +360)
          rings(l.getLatLngs()).forEach(function (r) {
            for (var i = 0; i < r.length; i++) {
              var a = r[i], b = r[(i + 1) % r.length];
              var polar = Math.abs(a.lat) > 89.9 && Math.abs(b.lat) > 89.9;
              if ((!polar && Math.abs(a.lng - b.lng) > 180) || Math.abs(a.lng - offset) > 200) {
                bad.push([l.feature.properties.name, a.lng, a.lat, b.lng, b.lat]); return;
              }
            }
          });
        });
        return bad;""")


def _legend(drv) -> str:
    return drv.execute_script("var l = document.querySelector('.legend'); return l ? l.textContent : '';")


def _main_answer_is_the_most_probable_place(drv, res: dict) -> None:
    """The big pin and the "Most likely" line are `most_likely`; the best guess is a second, labelled
    marker only when it lies more than 1 km away."""
    from selenium.webdriver.common.by import By

    most = res["most_likely"]
    pins = drv.execute_script("""
        var out = {likely: [], guess: []};
        window.geopinMap.eachLayer(function (l) {
          var c = l.options && l.options.icon && l.options.icon.options.className;
          if (c === 'likely-marker' || c === 'guess-marker') out[c.split('-')[0]].push([l.getLatLng().lat, l.getLatLng().lng]);
        });
        return out;""")
    assert len(pins["likely"]) == 1 and pins["likely"][0][0] == pytest.approx(most["lat"], abs=1e-6)
    assert (pins["likely"][0][1] - most["lon"]) % 360 == pytest.approx(0, abs=1e-6)
    assert drv.find_element(By.ID, "likely-line").text.startswith("Most likely:")
    assert f"{most['lat']:.2f}, {most['lon']:.2f}" in drv.find_element(By.ID, "likely-line").text
    apart = float(haversine_km(most["lat"], most["lon"], res["lat"], res["lon"]))
    guess_line = drv.find_element(By.ID, "guess-line").text
    if apart > 1.0:
        assert len(pins["guess"]) == 1 and pins["guess"][0][0] == pytest.approx(res["lat"], abs=1e-6)
        assert "Best guess (least expected distance" in guess_line and "best guess" in _legend(drv)
    else:
        assert pins["guess"] == [] and "same place" in guess_line and "best guess" not in _legend(drv)
    assert "most likely place" in _legend(drv)


def _view_holds_the_regions(drv) -> None:
    """The view was fitted to the whole 90 % region (every cell drawn lies in it), not only to the top places."""
    outside = drv.execute_script("""
        var view = window.geopinMap.getBounds().pad(0.01), out = [];
        var clamp = function (lat) { return Math.max(-85, Math.min(85, lat)); };
        window.geopinMap.eachLayer(function (l) {
          var c = l.options && l.options.className;
          if (!(c === 'region-90' || c === 'region-50') || !l.getBounds) return;
          // the map is Mercator: what lies beyond 85 degrees of latitude cannot be in any view
          var b = l.getBounds();
          var inner = L.latLngBounds([clamp(b.getSouth()), b.getWest()], [clamp(b.getNorth()), b.getEast()]);
          if (!view.contains(inner))
            out.push([l.feature ? l.feature.properties.token : c, inner.toBBoxString(), view.toBBoxString()]);
        });
        return out;""")
    assert outside == [], f"region cells outside the view: {outside[:5]}"


def test_upload_a_photo_and_see_guess_regions_words_and_exif_on_the_map(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    n_countries = len(drv.find_elements(By.CSS_SELECTOR, "path.country:not(.country-copy)"))
    assert n_countries > 200, f"only {n_countries} country shapes drawn"
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.country-copy")) == 2 * n_countries  # world copies
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
    _main_answer_is_the_most_probable_place(drv, res)
    assert "EXIF GPS" in _legend(drv)
    # the top-k circles, the regions
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
    _view_holds_the_regions(drv)
    assert drv.find_elements(By.CSS_SELECTOR, ".leaflet-control-scale-line"), "no scale bar"
    assert drv.find_element(By.ID, "photo-name").text.endswith(f"({photo.stat().st_size / 1e3:.0f} kB)")

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
    _main_answer_is_the_most_probable_place(drv, res)
    assert "EXIF" not in _legend(drv) and "place read off the photo" in _legend(drv)
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


def test_a_heic_photo_is_shown_from_the_server_preview_and_its_regions_are_one_level_each(server, browser, tmp_path):
    """Chromium cannot decode HEIC: the page shows the server's JPEG of it (/api/preview), and the answer's
    regions are drawn with cells of one S2 level each."""
    import s2sphere
    from imagefiles import heic_bytes
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    jpeg = _photo_with_gps(tmp_path / "landscape.jpg")
    photo = tmp_path / "IMG_0042.HEIC"
    photo.write_bytes(heic_bytes(Image.open(jpeg)))
    drv.find_element(By.ID, "photo-input").send_keys(str(photo))
    _wait(drv, "the server's preview", lambda: drv.execute_script(
        "var p=document.getElementById('photo'); return p.dataset.preview==='server' && p.complete && p.naturalWidth > 0;"), 60)
    size = drv.execute_script("var p=document.getElementById('photo'); return [p.naturalWidth, p.naturalHeight];")
    assert size == [640, 427], size
    assert drv.find_element(By.ID, "photo").is_displayed()
    state = _wait(drv, "the answer", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
    assert state == "done", drv.find_element(By.ID, "status").text
    _wait(drv, "the regions", lambda: drv.execute_script("return !!document.body.dataset.regionsDrawn;"), 60)
    res = drv.execute_script("return window.geopinLast;")
    for label, tokens in res["regions"].items():
        levels = {s2sphere.CellId.from_token(t).level() for t in tokens}
        assert len(levels) == 1, (label, sorted(levels))
    n50 = len(drv.find_elements(By.CSS_SELECTOR, "path.region-50"))
    assert n50 == len(res["regions"]["50%"])
    shot = _artifacts(tmp_path) / "web_page_heic.png"
    drv.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_without_the_token_the_page_says_how_to_give_it(server, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/")
    text = _wait(drv, "the health line", lambda: drv.find_element(By.ID, "health").text, 30)
    assert "401" in text and "?token=" in text


# ------------------------------------------------------------------ the antimeridian, a phone, several photos


def _fiji_answer() -> dict:
    """An answer whose places and regions lie on both sides of the antimeridian (Fiji, Tonga, Samoa),
    its best guess across the line from its most probable place. Cells are real S2 cells."""
    import s2sphere

    def token(lat, lon, level):
        return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).parent(level).to_token()

    most = {"lat": -17.80, "lon": 178.40, "cell": token(-17.8, 178.4, 8), "country": "FJ",
            "country_name": "Fiji", "probability": 0.31, "name": "Nausori"}
    r50 = [token(-17.8, 178.4, 6), token(-16.6, -179.9, 6)]
    r90 = r50 + [token(-21.1, -175.2, 6), token(-13.8, -171.8, 6), token(-17.0, 179.99, 3)]
    return {
        "lat": -16.60, "lon": -179.90, "country": "FJ", "country_name": "Fiji", "continent": "Oceania",
        "cell": token(-16.6, -179.9, 8), "within_km": {"25": 0.1, "200": 0.4, "750": 0.8, "2500": 0.95},
        "summary": "Most probable place: near Nausori, Fiji (31%); a crafted answer across the antimeridian",
        "most_likely": most,
        "top_k": [{"lat": -16.6, "lon": -179.9, "cell": "", "country": "FJ", "probability": 0.2, "is_guess": True},
                  {**most, "is_guess": False},
                  {"lat": -21.1, "lon": -175.2, "cell": "", "country": "TO", "probability": 0.1, "is_guess": False},
                  {"lat": -13.8, "lon": -171.8, "cell": "", "country": "WS", "probability": 0.05, "is_guess": False}],
        "regions": {"50%": r50, "90%": r90},
        "evidence": [], "exif_gps": None,
    }


def _answer_longitudes(drv) -> list:
    """Every longitude drawn for the answer (markers, circles, region rings), with its layer's class."""
    return drv.execute_script("""
        var out = [];
        function flat(ll) { return ll.lat !== undefined ? [ll] : [].concat.apply([], ll.map(flat)); }
        window.geopinMap.eachLayer(function (l) {
          var c = (l.options && (l.options.className || (l.options.icon && l.options.icon.options.className))) || '';
          if (!/region|topk|likely|guess/.test(c)) return;
          var pts = l.getLatLngs ? flat(l.getLatLngs()) : [l.getLatLng()];
          pts.forEach(function (p) { out.push([c, p.lng]); });
        });
        return out;""")


def test_an_answer_across_the_antimeridian_is_drawn_the_short_way_and_can_be_panned_to(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    res = _fiji_answer()
    drv.execute_async_script("var done = arguments[1]; window.geopinShowAnswer(arguments[0]).then(function () { done(1); });", res)
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.region-50")) == 2
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.region-90")) == 3
    _main_answer_is_the_most_probable_place(drv, res)
    assert "EXIF" not in _legend(drv)

    lons = np.array([lon for _, lon in _answer_longitudes(drv)])
    pan = drv.execute_script("return window.geopinPanLon;")
    assert len(lons) > 40
    # one cluster around 180 (the long way round would span ~360 degrees), inside the pannable world
    assert lons.max() - lons.min() < 40, (lons.min(), lons.max())
    assert np.all(np.abs(lons - res["most_likely"]["lon"]) <= 180) and np.all(np.abs(lons) < pan)
    widths = drv.execute_script("""
        var w = document.getElementById('map').getBoundingClientRect().width;
        return [].map.call(document.querySelectorAll('path.region-50, path.region-90'),
                           function (p) { return p.getBoundingClientRect().width / w; });""")
    assert max(widths) < 0.8, f"a region is drawn as a band across the map: {widths}"
    _view_holds_the_regions(drv)
    centre = drv.execute_script("var c = window.geopinMap.getCenter(); return [c.lat, c.lng];")
    assert 170 < centre[1] < 190, centre
    # panning is not stopped at 165 E: east of 180 there is land to see, and the view goes there
    drv.execute_script("window.geopinMap.setView([-17, 200], 5, {animate: false});")
    assert drv.execute_script("return window.geopinMap.getCenter().lng;") == pytest.approx(200, abs=0.5)
    drv.execute_script("window.geopinMap.setView([-17, 180], 3, {animate: false});")
    shot = _artifacts(tmp_path) / "web_page_antimeridian.png"
    drv.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_at_phone_width_the_footer_stays_below_the_answer(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    try:
        drv.set_window_size(390, 844)
        drv.get(f"{server}/?token={TOKEN}")
        _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
        width = drv.execute_script("return window.innerWidth;")
        assert width <= 400, f"the window is {width} px wide, not a phone's 390"
        photo = _photo_with_gps(tmp_path / "phone.jpg")
        drv.find_element(By.ID, "photo-input").send_keys(str(photo))
        state = _wait(drv, "the answer", lambda: drv.execute_script(
            "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
        assert state == "done", drv.find_element(By.ID, "status").text
        rects = drv.execute_script("""
            function r(id) { var b = document.querySelector(id).getBoundingClientRect();
                             return {top: b.top + scrollY, bottom: b.bottom + scrollY, left: b.left, right: b.right}; }
            return {answer: r('#answer'), side: r('#side'), map: r('#map'), footer: r('footer'),
                    page: document.documentElement.scrollWidth};""")
        assert rects["footer"]["top"] >= rects["answer"]["bottom"] - 0.5, rects
        assert rects["footer"]["top"] >= rects["map"]["bottom"] - 0.5, rects
        assert rects["map"]["top"] >= rects["side"]["bottom"] - 0.5, rects  # stacked, not side by side
        assert rects["page"] <= width + 1, "the page scrolls sideways at phone width"
        # the element at the answer's words is the answer, not the footer drawn over it
        drv.execute_script("document.getElementById('likely-line').scrollIntoView();")
        on_top = drv.execute_script("""
            var b = document.getElementById('likely-line').getBoundingClientRect();
            var e = document.elementFromPoint(b.left + 5, b.top + b.height / 2); return e && e.id;""")
        assert on_top == "likely-line", on_top
        shot = _artifacts(tmp_path) / "web_page_390px.png"
        drv.save_screenshot(str(shot))
        full = int(drv.execute_script("return document.documentElement.scrollHeight;"))
        png = drv.execute_cdp_cmd("Page.captureScreenshot", {  # the whole page, to look at
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": full, "scale": 1}})["data"]
        shot_full = _artifacts(tmp_path) / "web_page_390px_full.png"
        shot_full.write_bytes(base64.b64decode(png))
        print(f"screenshots: {shot} {shot_full}")
    finally:
        drv.set_window_size(1400, 900)


def _small_png(path: Path, size: int) -> Path:
    """A real PNG of exactly `size` bytes (a text chunk pads it): for the file-size line."""
    from PIL import PngImagePlugin

    def png(pad: int) -> bytes:
        info = PngImagePlugin.PngInfo()
        info.add_text("pad", "x" * pad)
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 140, 200)).save(buf, "PNG", pnginfo=info)
        return buf.getvalue()

    data = png(0)
    data = png(size - len(data))
    assert len(data) == size
    path.write_bytes(data)
    return path


def test_a_batch_of_three_photos_gets_three_answers_history_export_and_truth(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    drv.execute_script("localStorage.clear();")
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    assert drv.find_element(By.ID, "photo-input").get_attribute("multiple") is not None
    drv.get_log("browser")  # what earlier tests left in the console
    tiny = _small_png(tmp_path / "tiny.png", 480)
    second = _photo_with_gps(tmp_path / "second.jpg")
    third = tmp_path / "third.jpg"
    Image.open(second).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(third, quality=85)
    photos = [tiny, second, third]
    drv.find_element(By.ID, "photo-input").send_keys("\n".join(str(p) for p in photos))
    state = _wait(drv, "three answers", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
    assert state == "done", drv.find_element(By.ID, "status").text
    rows = drv.find_elements(By.CSS_SELECTOR, "#answers li")
    assert [r.get_attribute("data-status") for r in rows] == ["done"] * 3
    assert [r.find_element(By.CSS_SELECTOR, ".item-name").text for r in rows] == [p.name for p in photos]
    # the first is shown; a 480-byte file reads 480 B
    assert "shown" in rows[0].get_attribute("class")
    assert drv.find_element(By.ID, "photo-name").text == "tiny.png (480 B)"
    history = drv.execute_script("return JSON.parse(localStorage.getItem('geopin.history.v1'));")
    assert [h["name"] for h in history] == [p.name for p in photos]

    rows[1].click()  # another answer on the map
    _wait(drv, "the second answer", lambda: drv.find_element(By.ID, "photo-name").text.startswith("second.jpg"), 10)
    shown = drv.execute_script("return window.geopinLast;")
    assert shown == history[1]["res"]
    assert "shown" in drv.find_elements(By.CSS_SELECTOR, "#answers li")[1].get_attribute("class")
    assert len(drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .likely-marker")) == 1
    _main_answer_is_the_most_probable_place(drv, shown)

    # the true location by a click on the map: distance and GeoScore to the shown answer
    map_el = drv.find_element(By.ID, "map")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).move_to_element_with_offset(map_el, -map_el.size["width"] // 2 + 40,
                                                  map_el.size["height"] // 2 - 60).click().perform()
    _wait(drv, "the true location", lambda: "GeoScore" in drv.find_element(By.ID, "truth-line").text, 10)
    truth = drv.execute_script("return JSON.parse(localStorage.getItem('geopin.history.v1'))[1].truth;")
    most = shown["most_likely"]
    d = float(haversine_km(truth["lat"], truth["lon"], most["lat"], most["lon"]))
    line = drv.find_element(By.ID, "truth-line").text
    assert f"{round(d):,} km off (GeoScore {round(5000 * np.exp(-d / 1492.7)):,})" in line, (line, d)
    assert "true location" in _legend(drv)
    assert len(drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-pane .truth-marker")) == 1

    # the exports, built in the page
    fetch = "var done = arguments[1]; fetch(document.getElementById(arguments[0]).href).then(function (r) { return r.text(); }).then(done);"
    csv_text = drv.execute_async_script(fetch, "export-csv")
    import csv

    table = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["file"] for r in table] == [p.name for p in photos]
    assert float(table[1]["km_most_likely"]) == pytest.approx(d, rel=1e-4)
    assert float(table[1]["geoscore_most_likely"]) == pytest.approx(5000 * np.exp(-d / 1492.7), rel=1e-4)
    assert table[0]["true_lat"] == "" and float(table[1]["true_lat"]) == pytest.approx(truth["lat"])
    geo = json.loads(drv.execute_async_script(fetch, "export-geojson"))
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 3
    for f, h in zip(geo["features"], history):
        assert f["geometry"]["coordinates"] == [h["res"]["most_likely"]["lon"], h["res"]["most_likely"]["lat"]]
    shot = _artifacts(tmp_path) / "web_page_batch.png"
    drv.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    # the history survives a reload: the answers (not the photos) come back, with the true location
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    rows = drv.find_elements(By.CSS_SELECTOR, "#answers li")
    assert len(rows) == 3
    rows[1].click()
    _wait(drv, "the answer from the history", lambda: "GeoScore" in drv.find_element(By.ID, "truth-line").text, 10)
    assert "from your history" in drv.find_element(By.ID, "photo-name").text
    drv.find_element(By.ID, "clear-history").click()
    assert drv.execute_script("return JSON.parse(localStorage.getItem('geopin.history.v1'));") == []
    severe = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_photos_dropped_on_the_page_each_get_an_answer(server, browser):
    """A drop of two photos (made in the page: a drag from the desktop cannot be scripted) gives two answers."""
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(f"{server}/?token={TOKEN}")
    drv.execute_script("localStorage.clear();")
    drv.get(f"{server}/?token={TOKEN}")
    _wait(drv, "the base map", lambda: drv.execute_script("return document.body.dataset.mapReady === '1'"), 60)
    drv.execute_async_script("""
        var done = arguments[0];
        function photo(colour, name) {
          var c = document.createElement('canvas'); c.width = 320; c.height = 240;
          var g = c.getContext('2d'); g.fillStyle = colour; g.fillRect(0, 0, 320, 240);
          g.fillStyle = '#3c7a3c'; g.fillRect(0, 160, 320, 80);
          return new Promise(function (ok) { c.toBlob(function (b) { ok(new File([b], name, {type: 'image/png'})); }, 'image/png'); });
        }
        Promise.all([photo('#8ab4e6', 'dropped_a.png'), photo('#e6c38a', 'dropped_b.png')]).then(function (files) {
          var dt = new DataTransfer();
          files.forEach(function (f) { dt.items.add(f); });
          document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
          done(1);
        });""")
    state = _wait(drv, "two answers", lambda: drv.execute_script(
        "var s=document.getElementById('status').dataset.state; return (s==='done'||s==='error') && s;"))
    assert state == "done", drv.find_element(By.ID, "status").text
    rows = drv.find_elements(By.CSS_SELECTOR, "#answers li")
    assert [r.find_element(By.CSS_SELECTOR, ".item-name").text for r in rows] == ["dropped_a.png", "dropped_b.png"]
    assert [r.get_attribute("data-status") for r in rows] == ["done", "done"]


def test_the_favicon_is_shipped_and_served(server):
    assert re.search(r'<link rel="icon"[^>]*href="favicon.svg"', (WEB_DIR / "index.html").read_text())
    with urllib.request.urlopen(f"{server}/favicon.svg", timeout=10) as r:
        assert r.status == 200 and "svg" in r.headers["content-type"]
        assert b"<svg" in r.read()


# ------------------------------------------------------------------ report.html: lines the short way, reachable


def test_report_lines_go_the_short_way_and_stay_within_the_pan_limit():
    from hypothesis import given
    from hypothesis import strategies as st

    from geopin.evaluation.report import short_way

    pan = float(re.search(r"var PAN_LON = (\d+)", (WEB_DIR / "basemap.js").read_text()).group(1))
    lon = st.floats(-180, 180, allow_nan=False)

    @given(lon, lon)
    def check(a, b):
        a2, b2 = short_way(np.array([a]), np.array([b]))
        assert abs(a2[0] - b2[0]) <= 180 + 1e-9  # the short way
        assert max(abs(a2[0]), abs(b2[0])) <= 270 + 1e-9 < pan  # reachable by panning
        assert (a2[0] - a) % 360 == pytest.approx(0, abs=1e-9) or (a2[0] - a) % 360 == pytest.approx(360)
        assert (b2[0] - b) % 360 == pytest.approx(0, abs=1e-9) or (b2[0] - b) % 360 == pytest.approx(360)

    check()
    a2, b2 = short_way(np.array([179.5, -170.0]), np.array([-179.5, 100.0]))
    assert a2.tolist() == [179.5, 190.0] and b2.tolist() == [180.5, 100.0]  # 170 W to 100 E: across 180
