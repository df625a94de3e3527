"""Time sources of `geopin tag`: UTC per photo, camera clocks, interpolation between references, GPX tracks.

The libraries are generated (tests/libgen.py) with their truth; exiftool is the reference for GPX geotagging."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

import libgen

from geopin.geo import haversine_km
from geopin.library.clock import (
    ASSUMED,
    GIVEN,
    OFFSET_TAGS,
    PAIRS,
    estimate_shifts,
    parse_clock_offset,
)
from geopin.library.gpx import gpx_candidates, read_gpx
from geopin.library.photos import LibraryPhoto, scan_library
from geopin.library.timeline import (
    EXACT,
    INTERPOLATED,
    NEAREST,
    NONE,
    Fixes,
    TimeConfig,
    interpolate,
    photo_utc,
    time_candidates,
)

EXIFTOOL = shutil.which("exiftool") or "/usr/bin/exiftool"


@pytest.fixture(scope="module")
def trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("trip") / "library"
    truth = libgen.make_trip_library(root, seed=0)
    photos = scan_library(root, progress=False)
    return truth, photos


def camera_of(photos: list[LibraryPhoto], truth, model: str) -> str:
    """The library's name for a generated camera (however the reader joins make and model)."""
    names = {p.camera for p in photos
             if p.rel in truth.photos and truth.photos[p.rel].model == model and truth.photos[p.rel].role in ("phone", "camera")}
    assert len(names) == 1, names
    return names.pop()


def given_offsets(photos, truth) -> dict[str, float]:
    """--clock-offset as the photographer states it: each camera's clock minus home time (the zone at its earliest
    photos, where the trip starts)."""
    return {camera_of(photos, truth, m): v for m, v in truth.vs_home_s.items()}


# ------------------------------------------------------------------------------------------------- clock offsets

def test_parse_clock_offset():
    assert parse_clock_offset("Canon EOS 80D=+01:07:00") == ("Canon EOS 80D", 4020.0)
    assert parse_clock_offset("FUJIFILM X-T30=-00:00:30") == ("FUJIFILM X-T30", -30.0)
    assert parse_clock_offset("cam=a=b=01:00") == ("cam=a=b", 3600.0)
    for bad in ("Canon EOS 80D", "=+01:00:00", "Canon=+1h", "Canon=+01:75:00", "Canon="):
        with pytest.raises(ValueError, match="--clock-offset") as err:
            parse_clock_offset(bad)
        assert repr(bad) in str(err.value)


def test_given_offsets_and_zone_change(trip):
    truth, photos = trip
    shifts = estimate_shifts(photos, None, given_offsets(photos, truth))
    for model, true_shift in truth.shifts.items():
        s = shifts[camera_of(photos, truth, model)]
        assert s.method == GIVEN and s.shift_s == true_shift and s.local_offset_s == libgen.HOME_ZONE_S
    phone = shifts[camera_of(photos, truth, libgen.PHONE[1])]
    assert phone.method == OFFSET_TAGS
    # the phone's zone changes mid-trip; every phone photo still gets its true UTC from its own offset tag
    zones = Counter(truth.photos[p.rel].zone_s for p in photos if truth.photos.get(p.rel) and truth.photos[p.rel].role == "phone")
    assert set(zones) == {3600, 7200}
    for p in photos:
        t = truth.photos.get(p.rel)
        if t is not None and t.role in ("phone", "camera", "duplicate"):
            assert photo_utc(p, shifts) == t.utc, p.rel
    # the camera named by a part of its name; a name matching no camera is an error naming it
    assert estimate_shifts(photos, None, {"X-T30": 60.0})[camera_of(photos, truth, "X-T30")].vs_local_s == 60.0
    with pytest.raises(ValueError, match="'Nikon D750'.*no such camera"):
        estimate_shifts(photos, None, {"Nikon D750": 60.0})


def test_assumed_local_time_without_lookalikes(trip):
    """Without embeddings (no look-alike pairs) each camera's clock is taken to show the zone at its first photos."""
    truth, photos = trip
    shifts = estimate_shifts(photos, None, {})
    a = shifts[camera_of(photos, truth, libgen.CAMERA_A[1])]
    b = shifts[camera_of(photos, truth, libgen.CAMERA_B[1])]
    assert a.method == b.method == ASSUMED
    assert a.shift_s == b.shift_s == libgen.HOME_ZONE_S  # right for A; B's 1 h 07 min is not visible without pairs
    assert "vs local time (UTC+01:00), from assumed local time" in a.describe()


def test_camera_offset_found_from_lookalike_pairs(tmp_path, predictor):
    """Camera B's clock (1 h 07 min fast) and camera A's are found within 10 s from the same scenes shot by the
    phone a few seconds apart, with the bundled backbone's embeddings."""
    from geopin.features.embed import embed_images

    truth = libgen.make_trip_library(tmp_path / "lib", seed=1, n_stops=6, gpx_stops=None)
    photos = scan_library(tmp_path / "lib", progress=False)
    rows = [i for i, p in enumerate(photos) if p.taken is not None and not p.problem]
    emb = np.full((len(photos), predictor.backbone.dim), np.nan, dtype=np.float32)
    emb[rows] = embed_images([photos[i].path for i in rows], predictor.backbone, predictor.embed_cfg)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    shifts = estimate_shifts(photos, emb, {})
    for model, true_shift in truth.shifts.items():
        s = shifts[camera_of(photos, truth, model)]
        assert s.method == PAIRS, s.describe()
        assert abs(s.shift_s - true_shift) <= 10.0, s.describe()
        assert s.n_pairs >= 3
        # the pairs used are the generated look-alike pairs
        true_pairs = {(r, t.pair_of) for r, t in truth.photos.items() if t.pair_of}
        assert sum((c, o) in true_pairs for c, o, _ in s.pairs) >= s.n_pairs - 1
    b = shifts[camera_of(photos, truth, libgen.CAMERA_B[1])]
    assert b.describe().split(": ", 1)[1].startswith(("+01:06:5", "+01:07:0")), b.describe()


# ------------------------------------------------------------------------------------------- time interpolation

def test_time_interpolation_matches_truth(trip):
    truth, photos = trip
    cfg = TimeConfig()
    shifts = estimate_shifts(photos, None, given_offsets(photos, truth))
    cands = time_candidates(photos, shifts, cfg)
    kinds = Counter()
    for p in photos:
        t = truth.photos[p.rel]
        if p.has_gps:
            assert p.rel not in cands
            continue
        if t.utc is None or p.taken is None:  # no time (or unreadable time): no candidate
            assert p.rel not in cands
            continue
        c = cands.get(p.rel)
        # the phone photos around it in time decide, with exiftool's limits
        ts = [pt[0] for pt in truth.phone_path]
        u = (t.utc - datetime(1970, 1, 1)).total_seconds()
        j = int(np.searchsorted(ts, u))
        gap = ts[j] - ts[j - 1] if 0 < j < len(ts) else np.inf
        to_near = min(abs(u - ts[max(j - 1, 0)]), abs(ts[min(j, len(ts) - 1)] - u))
        if gap <= cfg.max_int_s:
            assert c is not None and c.detail["kind"] == "interpolated"
            err_m = 1000 * haversine_km(c.lat, c.lon, t.lat, t.lon)
            assert err_m <= 1.0, (p.rel, err_m)
            assert len(c.detail["references"]) == 2 and c.detail["seconds"][0] < 0 < c.detail["seconds"][1]
        elif to_near <= cfg.max_ext_s:
            assert c is not None and c.detail["kind"] == "nearest fix"
        else:
            assert c is None
        if c is not None:
            kinds[c.detail["kind"]] += 1
            assert c.source == "time" and 0 < c.confidence < 1 and c.radius_km >= cfg.radius_floor_km
            assert c.detail["utc"] == t.utc.isoformat() and "given" in c.detail["utc_from"]
    assert kinds["interpolated"] >= 50 and kinds["nearest fix"] >= 1
    assert "odd/IMG_NOTIME.JPG" not in cands
    # the radius grows with the time to the nearest reference
    by_dt = sorted((min(abs(s) for s in c.detail["seconds"]), c.radius_km) for c in cands.values())
    assert by_dt[0][1] <= by_dt[-1][1] and by_dt[-1][1] > cfg.radius_floor_km


def test_confidence_is_calibrated_on_the_library(trip):
    """Leave-one-reference-out: the stated confidence of answers with a fix within a bin is near the share of
    left-out references that the radius covers — checked here against the photos' truth."""
    truth, photos = trip
    shifts = estimate_shifts(photos, None, given_offsets(photos, truth))
    cands = time_candidates(photos, shifts)
    hits = [haversine_km(c.lat, c.lon, truth.photos[r].lat, truth.photos[r].lon) <= c.radius_km for r, c in cands.items()]
    stated = np.mean([c.confidence for c in cands.values()])
    assert 0.5 < stated < 0.99
    assert np.mean(hits) >= stated - 0.15


# ---------------------------------------------------------------------------------------------------------- GPX

def exiftool_geotag(files: list[Path], gpx: Path, geosync: str | None) -> dict[str, tuple[float, float]]:
    cmd = [EXIFTOOL, "-q", "-q", "-overwrite_original", "-geotag", str(gpx), "-geotime<${DateTimeOriginal}+01:00"]
    if geosync:
        cmd.append(f"-geosync={geosync}")
    subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True, check=False)
    out = subprocess.run([EXIFTOOL, "-n", "-j", "-GPSLatitude", "-GPSLongitude"] + [str(f) for f in files],
                         capture_output=True, text=True, check=True).stdout
    return {Path(r["SourceFile"]).name: (r["GPSLatitude"], r["GPSLongitude"]) for r in json.loads(out) if "GPSLatitude" in r}


def test_gpx_agrees_with_exiftool(trip, tmp_path):
    if not Path(EXIFTOOL).exists():
        pytest.skip("exiftool not installed (Debian: apt-get install libimage-exiftool-perl)")
    truth, photos = trip
    shifts = estimate_shifts(photos, None, given_offsets(photos, truth))
    track = read_gpx(truth.gpx_path)
    assert len(track) > 100
    ours = gpx_candidates(photos, [track], shifts, TimeConfig())
    theirs: dict[str, tuple[float, float]] = {}
    for model, folder, geosync in ((libgen.CAMERA_A[1], "canon", None), (libgen.CAMERA_B[1], "fuji", "-1:07:00")):
        copies = tmp_path / folder
        shutil.copytree(truth.root / folder, copies)
        tagged = exiftool_geotag(sorted(copies.glob("*.JPG")), truth.gpx_path, geosync)
        theirs.update({f"{folder}/{name}": pos for name, pos in tagged.items()})
    ours_cam = {r: c for r, c in ours.items() if r.split("/")[0] in ("canon", "fuji")}
    assert len(theirs) >= 10 and set(ours_cam) == set(theirs)
    diffs = [1000 * haversine_km(c.lat, c.lon, *theirs[r]) for r, c in ours_cam.items()]
    assert max(diffs) <= 1.0, max(diffs)
    kinds = Counter(c.detail["kind"] for c in ours_cam.values())
    assert kinds["interpolated"] >= 5 and kinds["nearest fix"] >= 1  # the hole and the ends of the log
    # and both are near the truth: the log is sampled every 10 s from the true route
    for r, c in ours_cam.items():
        t = truth.photos[r]
        if c.detail["kind"] == "interpolated":
            assert 1000 * haversine_km(c.lat, c.lon, t.lat, t.lon) <= 200.0
            assert c.radius_km >= 0.02 and 0 < c.confidence < 1


def test_read_gpx_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.gpx"
    bad.write_text("<gpx><trk><trkseg><trkpt lat='1' lon='2'>")
    with pytest.raises(ValueError, match="bad.gpx"):
        read_gpx(bad)
    untimed = tmp_path / "untimed.gpx"
    untimed.write_text('<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
                       '<trk><trkseg><trkpt lat="1" lon="2"></trkpt></trkseg></trk></gpx>')
    with pytest.raises(ValueError, match="untimed.gpx.*no timed points"):
        read_gpx(untimed)
    with pytest.raises(FileNotFoundError, match="missing.gpx"):
        read_gpx(tmp_path / "missing.gpx")


# ------------------------------------------------------------------------------------------ interpolation rules

times = st.lists(st.floats(0, 20_000, allow_nan=False), min_size=1, max_size=12, unique=True).map(sorted)
coords = st.tuples(st.floats(-80, 80), st.floats(-179, 179))


@st.composite
def fix_lists(draw):
    t = np.array(draw(times))
    pos = np.array(draw(st.lists(coords, min_size=len(t), max_size=len(t))))
    return Fixes(t, pos[:, 0], pos[:, 1])


limits = st.floats(0, 3000)


@given(fix_lists(), limits, limits)
def test_at_a_fix_gives_the_fix(fixes, max_int, max_ext):
    pl = interpolate(fixes, fixes.t, max_int, max_ext)
    assert (pl.kind == EXACT).all()
    assert np.array_equal(pl.lat, fixes.lat) and np.array_equal(pl.lon, fixes.lon) and (pl.dt_s == 0).all()


@given(fix_lists(), st.floats(-5000, 25_000), limits, limits)
def test_answer_lies_between_its_fixes_and_respects_the_limits(fixes, t, max_int, max_ext):
    assume(not np.isin(t, fixes.t))
    pl = interpolate(fixes, t, max_int, max_ext)
    kind, i0, i1 = int(pl.kind[0]), int(pl.i0[0]), int(pl.i1[0])
    ft = fixes.t
    before, after = ft[ft < t], ft[ft > t]
    if kind == NONE:
        # nothing only when no fix within max_ext and no pair close enough to interpolate
        assert all(abs(t - f) > max_ext for f in ft) or (before.size and after.size and after[0] - before[-1] > max_int)
        near = min(abs(t - before[-1]) if before.size else np.inf, abs(after[0] - t) if after.size else np.inf)
        assert near > max_ext
    elif kind == INTERPOLATED:
        assert ft[i0] < t < ft[i1] and i1 == i0 + 1 and ft[i1] - ft[i0] <= max_int
        lo, hi = sorted((fixes.lat[i0], fixes.lat[i1]))
        assert lo - 1e-9 <= pl.lat[0] <= hi + 1e-9
        lo, hi = sorted((fixes.lon[i0], fixes.lon[i1]))
        assert lo - 1e-9 <= pl.lon[0] <= hi + 1e-9
        assert pl.dt_s[0] == min(t - ft[i0], ft[i1] - t)
    else:
        assert kind == NEAREST and i0 == i1
        assert abs(t - ft[i0]) <= max_ext and pl.dt_s[0] == abs(t - ft[i0])
        assert (pl.lat[0], pl.lon[0]) == (fixes.lat[i0], fixes.lon[i0])
        # it is the nearest fix on its side of the photo, and interpolation was not allowed
        if before.size and after.size:
            assert after[0] - before[-1] > max_int
            assert ft[i0] in (before[-1], after[0]) and abs(t - ft[i0]) <= min(t - before[-1], after[0] - t)


@given(st.floats(0, 1), st.floats(1, 5000), coords, coords)
def test_interpolation_is_linear_in_time(f, gap, a, b):
    fixes = Fixes(np.array([0.0, gap]), np.array([a[0], b[0]]), np.array([a[1], b[1]]))
    pl = interpolate(fixes, f * gap, max_int_s=gap, max_ext_s=0)
    assert pl.kind[0] in (EXACT, INTERPOLATED)
    assert pl.lat[0] == pytest.approx(a[0] + f * (b[0] - a[0]), abs=1e-9)
    assert pl.lon[0] == pytest.approx(a[1] + f * (b[1] - a[1]), abs=1e-9)
