"""`geopin serve --library DIR`: the review page of `geopin tag` and its API, on a real server on loopback with the
bundled model, over a generated trip library (tests/libgen.py), written with the real writer and read back with
ExifTool; the page in Debian's headless Chromium driven by Selenium (skipped with the reason when absent).

The screenshot goes to $GEOPIN_ARTIFACTS (or the test's tmp folder); it shows generated pictures only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from browser import chromium, wait_for
from libgen import make_trip_library
from PIL import Image

httpx = pytest.importorskip("httpx")

TOKEN = "review-test-token"


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file of the library (the state folder aside): what undo must give back, bit for bit."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".geopin" not in p.relative_to(root).parts}


def _sidecars(root: Path) -> set[str]:
    """The photos (rel) that have a sidecar NAME.EXT.xmp."""
    return {p.relative_to(root).as_posix()[:-4] for p in root.rglob("*.xmp") if ".geopin" not in p.parts}


def _exiftool_gps(paths: list[Path]) -> dict[str, tuple[float, float]]:
    """GPS of each file as ExifTool reads it (-n: signed decimal degrees), by file path."""
    if not paths:
        return {}
    out = subprocess.run(["exiftool", "-n", "-j", "-GPSLatitude", "-GPSLongitude", *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout
    return {d["SourceFile"]: (d["GPSLatitude"], d["GPSLongitude"]) for d in json.loads(out)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A two-day trip: a phone with GPS, two cameras without (one 1 h 07 min fast), a photo with no time, one
    with broken EXIF and a duplicate; no GPX (the review is about the page, not the sources)."""
    root = tmp_path_factory.mktemp("trip")
    truth = make_trip_library(root, seed=0, n_stops=4, gpx_stops=None)
    return root, truth, _files(root)


@pytest.fixture(scope="module")
def server(library, predictor):
    """`create_app` with --library and a token, served on loopback: (base URL, client sending the token)."""
    pytest.importorskip("uvicorn")
    from servers import RunningServer

    from geopin.library.tag import TagConfig
    from geopin.serve.app import ServeConfig, create_app
    from geopin.serve.library import LibraryOptions

    cfg = ServeConfig(host="127.0.0.1", token=TOKEN, library=library[0],
                      library_options=LibraryOptions(tag=TagConfig()))
    app = create_app(cfg, predictor)  # plans the library now: the photos are embedded once
    s = RunningServer(app, headers={"Authorization": f"Bearer {TOKEN}"}, start_timeout_s=60)
    yield s.url, s.client
    s.close()


def _plan(client) -> dict:
    r = client.get("/api/library/plan")
    assert r.status_code == 200, r.text
    return r.json()


def _clear_all(client, plan: dict) -> None:
    r = client.post("/api/library/decisions", json={"decisions": {e["rel"]: {"action": "clear"} for e in plan["entries"]}})
    assert r.status_code == 200 and r.json()["decisions"] == {}, r.text


# ------------------------------------------------------------------ the API


def test_the_plan_lists_every_photo_without_gps_by_trip_and_day(server, library):
    base, client = server
    root, truth, _ = library
    plan = _plan(client)
    assert (root / ".geopin" / "plan.json").is_file()  # planned at start and kept for the next start
    without_gps = {rel for rel, p in truth.photos.items() if not p.has_gps}
    assert {e["rel"] for e in plan["entries"]} == without_gps
    grouped = [rel for g in plan["groups"] for rel in g["rels"]]
    assert sorted(grouped) == sorted(without_gps)  # each photo in exactly one group
    assert {g["day"] for g in plan["groups"]} >= {"2023-02-06", "2023-02-07"}  # two days of the trip
    by_rel = {e["rel"]: e for e in plan["entries"]}
    timed = [e for e in plan["entries"] if e["taken"]]
    assert all(e["group"].endswith(e["taken"][:10]) for e in timed)  # a photo's group is its day
    for e in plan["entries"]:
        assert ("lat" in e and e["source"]) or e["reason"], e
    # a camera photo minutes from the phone's: the time source places it within walking distance of the truth
    from geopin.geo import haversine_km

    cam = [rel for rel, p in truth.photos.items() if p.role == "camera" and "time" in by_rel[rel].get("source", "")]
    assert len(cam) > 20
    err = [float(haversine_km(by_rel[r]["lat"], by_rel[r]["lon"], truth.photos[r].lat, truth.photos[r].lon)) for r in cam]
    assert max(err) < 1.0, max(err)
    assert plan["decisions"] == {} and plan["write_mode"] == "xmp"
    assert {c["camera"] for c in plan["cameras"]} >= {"Canon EOS 80D", "FUJIFILM X-T30"}
    # behind the server's token, like the rest of /api
    assert httpx.get(f"{base}/api/library/plan").status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/library/plan", "/api/library/photo", "/api/library/decisions", "/api/library/write",
            "/api/library/undo"} <= set(paths)


def test_a_restart_reads_the_plan_back_instead_of_planning_again(server, library):
    from geopin.serve.library import LibraryOptions, LibraryReview

    _, client = server
    root = library[0]
    plan_file = root / ".geopin" / "plan.json"
    before = plan_file.read_bytes(), plan_file.stat().st_mtime_ns
    t0 = time.monotonic()
    review = LibraryReview.start(root, LibraryOptions(), predictor=None)  # no model: planning would have to load one
    assert time.monotonic() - t0 < 10
    assert (plan_file.read_bytes(), plan_file.stat().st_mtime_ns) == before
    assert [e["rel"] for e in review.answer()["entries"]] == [e["rel"] for e in _plan(client)["entries"]]


def test_decisions_are_checked_and_a_bad_one_names_the_photo(server, library):
    _, client = server
    root = library[0]
    plan = _plan(client)
    placed = [e["rel"] for e in plan["entries"] if "lat" in e]
    a, b = placed[:2]
    saved = root / ".geopin" / "decisions.json"
    ok = client.post("/api/library/decisions", json={"rels": [a], "action": "accept"})
    assert ok.status_code == 200 and ok.json()["decisions"] == {a: {"action": "accept"}}
    state = saved.read_bytes()

    bad = [
        ({"decisions": {a: {"action": "reject"}, b: {"action": "delete"}}}, 422, b),  # one bad: none saved
        ({"rels": [b], "action": "approve"}, 422, b),
        ({"decisions": {b: {"action": "move", "lat": 95.0, "lon": 10.0}}}, 422, b),
        ({"decisions": {b: {"action": "move", "lat": "north"}}}, 422, b),
        ({"rels": ["phone/IMG_0001.JPG"], "action": "accept"}, 422, "phone/IMG_0001.JPG"),  # has GPS: not in the plan
        ({"rels": ["../../etc/passwd"], "action": "reject"}, 422, "../../etc/passwd"),
        ({"group": "trip9-1999-01-01", "action": "accept"}, 404, "trip9-1999-01-01"),
        ({"rels": [a]}, 422, "action"),
        ({"rels": [a], "action": "accept", "comment": "x"}, 422, "comment"),
    ]
    for body, status, named in bad:
        r = client.post("/api/library/decisions", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"] and named in r.json()["detail"], (body, r.json())
        assert saved.read_bytes() == state, f"{body} changed the saved decisions"
    assert _plan(client)["decisions"] == {a: {"action": "accept"}}
    _clear_all(client, plan)


def test_a_thumbnail_is_a_small_jpeg_of_a_library_photo_and_no_path_leaves_the_library(server, library):
    _, client = server
    root = library[0]
    (root.parent / "secret.jpg").write_bytes((root / "phone" / "IMG_0001.JPG").read_bytes())
    rel = "canon/IMG_0001.JPG"
    r = client.get("/api/library/photo", params={"rel": rel, "px": 48})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 48
    for bad in ("../secret.jpg", "canon/../../secret.jpg", str(root.parent / "secret.jpg"), "/etc/passwd",
                "canon/./IMG_0001.JPG", "canon\\..\\..\\secret.jpg", ".geopin/plan.json", "nothing.jpg"):
        r = client.get("/api/library/photo", params={"rel": bad})
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", (bad, r.status_code)
        assert r.json()["error"] in ("invalid_path", "not_found"), (bad, r.json())
    assert client.get("/api/library/photo", params={"rel": rel, "px": 5000}).status_code == 422


def test_accept_reject_move_then_write_then_undo_restores_every_file(server, library):
    _, client = server
    root, _, original = library
    plan = _plan(client)
    by_rel = {e["rel"]: e for e in plan["entries"]}
    placed = [e["rel"] for e in plan["entries"] if "lat" in e]
    group = next(g for g in plan["groups"] if sum("lat" in by_rel[r] for r in g["rels"]) >= 3)
    accepted = [r for r in group["rels"] if "lat" in by_rel[r]]
    rejected, moved, undecided = [r for r in placed if r not in accepted][:3]
    to = (46.0771234, 23.5801234)
    r = client.post("/api/library/decisions", json={"group": group["id"], "action": "accept"})
    assert r.status_code == 200 and sorted(r.json()["changed"]) == sorted(group["rels"])
    r = client.post("/api/library/decisions", json={"decisions": {rejected: {"action": "reject"},
                                                                   moved: {"action": "move", "lat": to[0], "lon": to[1]}}})
    assert r.status_code == 200, r.text
    decided = _plan(client)["decisions"]
    assert decided[rejected] == {"action": "reject"} and decided[moved] == {"action": "move", "lat": to[0], "lon": to[1]}
    assert by_rel[undecided]["write"] is True  # sure enough for `geopin tag`, but not reviewed: left alone

    r = client.post("/api/library/write", json={})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["written"] == len(accepted) + 1 and report["run"]
    assert _sidecars(root) == set(accepted) | {moved}
    assert {d["rel"]: d["reason"] for d in report["not_written"]}[undecided].startswith("not reviewed")
    gps = _exiftool_gps([root / f"{rel}.xmp" for rel in [*accepted, moved]])
    for rel in accepted:
        lat, lon = gps[str(root / f"{rel}.xmp")]
        assert (lat, lon) == pytest.approx((by_rel[rel]["lat"], by_rel[rel]["lon"]), abs=1e-6), rel
    assert gps[str(root / f"{moved}.xmp")] == pytest.approx(to, abs=1e-6)
    after = _files(root)
    assert all(after[rel] == original[rel] for rel in original), "an original photo changed"
    # the page's status: what is on disk now
    now = {e["rel"]: e for e in _plan(client)["entries"]}
    assert {rel for rel, e in now.items() if e["written"]} == set(accepted) | {moved}
    assert now[moved]["written"]["lat"] == pytest.approx(to[0], abs=1e-6)

    r = client.post("/api/library/undo", json={})
    assert r.status_code == 200, r.text
    assert len(r.json()["restored"]) == len(accepted) + 1
    assert _files(root) == original, "undo did not restore the library bit for bit"
    assert not any(e["written"] for e in _plan(client)["entries"])
    _clear_all(client, plan)


# ------------------------------------------------------------------ the page in a browser


@pytest.fixture
def browser():
    drv, profile = chromium(1400, 900)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(drv, what: str, cond, timeout: float = 60.0):
    return wait_for(drv, what, cond, timeout)


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("GEOPIN_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_page_shows_pins_and_groups_and_a_group_accepted_on_it_is_written(server, library, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    base, client = server
    root, _, original = library
    plan = _plan(client)
    drv = browser
    drv.get(f"{base}/library?token={TOKEN}")
    _wait(drv, "the plan on the page", lambda: drv.execute_script("return document.body.dataset.planLoaded === '1'"))
    placed = [e for e in plan["entries"] if "lat" in e]
    pins = drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-icon.lib-pin")
    assert len(pins) == len(placed)
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.lib-radius")) == len(placed)
    assert len(drv.find_elements(By.CSS_SELECTOR, "section.group")) == len(plan["groups"])
    assert len(drv.find_elements(By.CSS_SELECTOR, "li.item")) == len(plan["entries"])
    assert len(drv.find_elements(By.CSS_SELECTOR, "path.country:not(.country-copy)")) > 200  # the offline base map
    _wait(drv, "the thumbnails", lambda: drv.execute_script(
        "return Array.from(document.querySelectorAll('li.item img')).slice(0, 5).every(i => i.complete && i.naturalWidth > 0)"))
    assert "time" in drv.find_element(By.CSS_SELECTOR, ".legend").text
    assert drv.find_element(By.ID, "write").get_attribute("disabled")  # nothing accepted yet: nothing to write

    by_rel = {e["rel"]: e for e in plan["entries"]}
    group = next(g for g in plan["groups"] if sum("lat" in by_rel[r] for r in g["rels"]) >= 3)
    want = {r for r in group["rels"] if "lat" in by_rel[r]}
    sec = drv.find_element(By.CSS_SELECTOR, f'section.group[data-group="{group["id"]}"]')
    sec.find_element(By.CSS_SELECTOR, ".group-head button.accept").click()
    _wait(drv, "the group's decisions", lambda: drv.execute_script("return document.body.dataset.decided === '1'"))
    assert len(sec.find_elements(By.CSS_SELECTOR, "li.item.dec-accept")) == len(want)
    assert drv.find_element(By.ID, "write").text == f"Write {len(want)} positions"
    shot = _artifacts(tmp_path) / "review_page_accepted.png"
    drv.save_screenshot(str(shot))
    drv.find_element(By.ID, "write").click()
    _wait(drv, "the write", lambda: drv.execute_script("return !!document.body.dataset.lastRun"))
    _wait(drv, "the page reloaded after the write",
          lambda: drv.execute_script("return document.body.dataset.planLoaded === '2'"))
    assert _sidecars(root) == want
    status = drv.find_element(By.ID, "status").text
    assert f"{len(want)} written" in status, status
    assert len(drv.find_elements(By.CSS_SELECTOR, ".leaflet-marker-icon.lib-pin.is-written")) == len(want)
    assert drv.find_element(By.ID, "write").get_attribute("disabled")  # what was accepted is on disk: nothing left
    shot = _artifacts(tmp_path) / "review_page_written.png"
    drv.save_screenshot(str(shot))
    print(f"screenshots: {shot.parent}")
    assert shot.stat().st_size > 20_000

    drv.find_element(By.ID, "undo").click()
    _wait(drv, "the undo", lambda: drv.execute_script("return !!document.body.dataset.lastUndo"))
    assert "Undid run" in drv.find_element(By.ID, "status").text
    assert _files(root) == original
    _clear_all(client, plan)

    # dragging a pin is a move, saved at once; the pin turns to "moved by you"
    drv.get(f"{base}/library?token={TOKEN}")
    _wait(drv, "the plan on the page", lambda: drv.execute_script("return document.body.dataset.planLoaded === '1'"))
    rel = next(iter(want))
    # on top of every other pin and the group handle, so the drag below grabs this pin and no neighbour
    drv.execute_script("var m = window.geopinLibrary.layers[arguments[0]].marker; m.setZIndexOffset(100000); "
                       "window.geopinMap.setView(m.getLatLng(), 16, {animate: false});", rel)
    pin = drv.execute_script("return window.geopinLibrary.layers[arguments[0]].marker.getElement();", rel)
    ActionChains(drv, duration=50).click_and_hold(pin).move_by_offset(20, 10).move_by_offset(20, 10).release().perform()
    _wait(drv, "the move", lambda: drv.execute_script("return document.body.dataset.decided === '1'"))
    decisions = _plan(client)["decisions"]
    assert rel in decisions, f"the drag of {rel} decided {decisions}"
    d = decisions[rel]
    assert d["action"] == "move" and (d["lat"], d["lon"]) != (by_rel[rel]["lat"], by_rel[rel]["lon"])
    assert d["lat"] < by_rel[rel]["lat"] and d["lon"] > by_rel[rel]["lon"]  # dragged down and to the right
    cls = drv.execute_script("return window.geopinLibrary.layers[arguments[0]].marker.getElement().className;", rel)
    assert "src-manual" in cls and "dec-move" in cls
    _clear_all(client, plan)


def test_the_page_fits_a_phone(server, tmp_path):
    """On a 390 px wide screen: the tools, then the map, then the list; nothing sticks out sideways."""
    from selenium.webdriver.common.by import By

    base, _ = server
    drv, profile = chromium(390, 844)
    try:
        drv.get(f"{base}/library?token={TOKEN}")
        _wait(drv, "the plan on the page", lambda: drv.execute_script("return document.body.dataset.planLoaded === '1'"))
        assert drv.execute_script("return window.innerWidth") == 390
        assert drv.execute_script("return document.documentElement.scrollWidth") <= 390
        map_box = drv.find_element(By.ID, "map").rect
        first_group = drv.find_element(By.CSS_SELECTOR, "section.group").rect
        assert map_box["width"] >= 360 and map_box["height"] >= 300
        assert drv.find_element(By.ID, "write").rect["y"] < map_box["y"] < first_group["y"]
        item = drv.find_element(By.CSS_SELECTOR, "li.item").rect
        assert item["x"] >= 0 and item["x"] + item["width"] <= 390
        drv.save_screenshot(str(_artifacts(tmp_path) / "review_page_phone.png"))
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_serve_with_a_missing_library_exits_2_naming_it_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from geopin.cli import app

    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["serve", "--library", str(tmp_path / "nowhere"), "--port", "0"])
    assert r.exit_code == 2 and "nowhere" in r.output and "no such folder" in r.output, r.output
    assert time.monotonic() - t0 < 10
