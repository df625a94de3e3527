"""Adaptive S2 geocells, checked against s2sphere and against their defining constraints."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import s2sphere
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from geopin.cli import app
from geopin.dataset.cells import (
    CellsConfig,
    Granularity,
    build_cells,
    cell_levels,
    cell_ranges,
    cell_tokens,
    default_granularities,
    leaf_cell_ids,
    load_cells,
    locate,
    parent_ids,
    run_cells,
    token_to_cell_id,
)
from geopin.geo import haversine_km

lats = st.floats(-90, 90, allow_nan=False)
lons = st.floats(-180, 180, allow_nan=False)


def s2_leaf(lat: float, lon: float) -> s2sphere.CellId:
    return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(float(lat), float(lon)))


def clustered_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photos bunched in a few cities of very different sizes, plus a sprinkle over the globe."""
    rng = np.random.default_rng(seed)
    centres = np.array([[48.86, 2.35], [40.71, -74.0], [35.68, 139.65], [-33.87, 151.21], [64.1, -21.9],
                        [-16.8, -179.9], [0.0, 0.0], [89.5, 10.0]])
    weights = np.array([0.35, 0.25, 0.15, 0.08, 0.05, 0.04, 0.03, 0.02])
    which = rng.choice(len(centres), size=n, p=weights / weights.sum())
    spread = rng.choice([0.001, 0.05, 1.0], size=n, p=[0.2, 0.4, 0.4])
    lat = np.clip(centres[which, 0] + rng.normal(size=n) * spread, -90, 90)
    lon = (centres[which, 1] + rng.normal(size=n) * spread + 180) % 360 - 180
    sprinkle = rng.random(n) < 0.1
    lat[sprinkle] = np.degrees(np.arcsin(rng.uniform(-1, 1, sprinkle.sum())))
    lon[sprinkle] = rng.uniform(-180, 180, sprinkle.sum())
    return lat, lon


GRANS = [Granularity("coarse", 400, 5), Granularity("middle", 100, 3), Granularity("fine", 25, 2)]


@pytest.fixture(scope="module")
def points():
    return clustered_points(3000)


@pytest.fixture(scope="module")
def partition(points):
    return build_cells(*points, GRANS, start_level=1, max_level=16)


# ---------------------------------------------------------------- S2 ids against s2sphere


SPECIAL = [(0, 0), (90, 0), (-90, 0), (0, 180), (0, -180), (45, 45), (-45, -135), (35.26438968275466, 45),
           (89.9999999, 123), (0, 90), (0, -90), (0, 45), (45, 0), (-0.0, -0.0), (1e-300, 1e-300)]


@pytest.mark.parametrize("lat, lon", SPECIAL)
def test_leaf_ids_match_s2sphere_at_face_edges_and_poles(lat, lon):
    assert int(leaf_cell_ids([lat], [lon])[0]) == s2_leaf(lat, lon).id()


@given(st.lists(st.tuples(lats, lons), min_size=1, max_size=20))
@settings(deadline=None, max_examples=60)
def test_leaf_and_parent_ids_match_s2sphere(pts):
    lat, lon = np.array(pts).T
    leaves = leaf_cell_ids(lat, lon)
    assert leaves.dtype == np.uint64
    for i, (a, b) in enumerate(pts):
        ref = s2_leaf(a, b)
        assert int(leaves[i]) == ref.id()
        for level in (0, 1, 7, 16, 29, 30):
            assert int(parent_ids(leaves[i : i + 1], level)[0]) == ref.parent(level).id()


@given(lats, lons, st.integers(0, 30))
@settings(deadline=None)
def test_levels_ranges_tokens_match_s2sphere(lat, lon, level):
    cell = s2_leaf(lat, lon).parent(level)
    ids = np.array([cell.id()], dtype=np.uint64)
    assert cell_levels(ids)[0] == level == cell.level()
    lo, hi = cell_ranges(ids)
    assert (int(lo[0]), int(hi[0])) == (cell.range_min().id(), cell.range_max().id())
    token = cell_tokens(ids)[0]
    assert token == cell.to_token()
    assert token_to_cell_id(token) == cell.id()


def test_parent_ids_rejects_bad_level():
    with pytest.raises(ValueError, match="level"):
        parent_ids(np.array([1], dtype=np.uint64), 31)


# ---------------------------------------------------------------- partition constraints


def check_partition(part, lat, lon, grans):
    """Every stated property of a partition, with vectorised S2 arithmetic."""
    leaves = leaf_cell_ids(lat, lon)
    by_max = sorted(grans, key=lambda g: -g.max_photos)
    for g in grans:
        table = part.table(g.name)
        k = len(table)
        assert table["class_id"].tolist() == list(range(k))
        ids = table["cell_id"].to_numpy(dtype=np.uint64)
        assert np.all(np.diff(ids.astype(np.float64)) >= 0) and len(set(ids.tolist())) == k
        # Under min_photos only as the parent of a kept finer cell (nesting by construction).
        finer = by_max[by_max.index(g) + 1 :]
        cls_here = part.assignments[f"class_{g.name}"].to_numpy()
        for c in np.flatnonzero(table["count"].to_numpy() < g.min_photos):
            members = cls_here == c
            assert any((part.assignments[f"class_{f.name}"].to_numpy()[members] >= 0).any() for f in finer)
        over = table["count"] > g.max_photos
        assert np.all(table.loc[over, "s2_level"] == part.max_level)
        assert np.all((table["s2_level"] >= part.start_level) & (table["s2_level"] <= part.max_level))
        assert np.array_equal(cell_levels(ids), table["s2_level"].to_numpy())
        # Each photo lies in its class's cell, and class sizes are the photo counts.
        cls = part.assignments[f"class_{g.name}"].to_numpy()
        assert cls.min() >= -1 and cls.max() < k
        kept = cls >= 0
        lo, hi = cell_ranges(ids[cls[kept]])
        assert np.all((leaves[kept] >= lo) & (leaves[kept] <= hi))
        assert np.array_equal(np.bincount(cls[kept], minlength=k), table["count"].to_numpy())
        # Cells are disjoint, so no dropped photo can lie in a kept cell.
        assert np.all(locate(lat[~kept], lon[~kept], part, g.name) == -1)
        # The representative point is one of the cell's photos (a medoid), so it lies in its cell.
        for c in range(k):
            m = cls == c
            assert np.any((lat[m] == table["lat"].iloc[c]) & (lon[m] == table["lon"].iloc[c]))
        if k:
            rep = leaf_cell_ids(table["lat"], table["lon"])
            lo, hi = cell_ranges(ids)
            assert np.all((rep >= lo) & (rep <= hi))
    # Refinement: a finer partition's cell sits inside the coarser partition's cell of the same photo.
    for coarse, fine in zip(by_max, by_max[1:]):
        c = part.assignments[f"class_{coarse.name}"].to_numpy()
        f = part.assignments[f"class_{fine.name}"].to_numpy()
        both = (c >= 0) & (f >= 0)
        c_ids = part.table(coarse.name)["cell_id"].to_numpy(dtype=np.uint64)[c[both]]
        f_ids = part.table(fine.name)["cell_id"].to_numpy(dtype=np.uint64)[f[both]]
        lo, hi = cell_ranges(c_ids)
        assert np.all((f_ids >= lo) & (f_ids <= hi))
        # Every kept finer cell has a kept coarser ancestor: hierarchical inference never reads class -1.
        assert np.all(c[f >= 0] >= 0)
        f_table = part.table(fine.name)
        assert np.all(locate(f_table["lat"], f_table["lon"], part, coarse.name) >= 0)
        assert np.all(cell_levels(f_ids) >= cell_levels(c_ids))
    # fine_token: the finest partition's cell before dropping holds the photo.
    tok_ids = np.array([token_to_cell_id(t) for t in part.assignments["fine_token"]], dtype=np.uint64)
    lo, hi = cell_ranges(tok_ids)
    assert np.all((leaves >= lo) & (leaves <= hi))


def test_partition_constraints(partition, points):
    check_partition(partition, *points, GRANS)
    counts = [partition.num_classes(g.name) for g in GRANS]
    assert counts == sorted(counts) and counts[0] >= 3
    assert list(partition.cells.columns) == [
        "granularity", "class_id", "cell_id", "token", "s2_level", "count", "lat", "lon", "country"
    ]
    assert partition.cells["cell_id"].dtype == np.uint64


def test_containment_checked_with_s2sphere(partition, points):
    lat, lon = points
    for g in GRANS:
        table = partition.table(g.name)
        cls = partition.assignments[f"class_{g.name}"].to_numpy()
        for i in np.flatnonzero(cls >= 0)[::7]:
            cell = s2sphere.CellId(int(table["cell_id"].iloc[cls[i]]))
            assert cell.contains(s2_leaf(lat[i], lon[i]))
            assert cell.to_token() == table["token"].iloc[cls[i]]
        for _, row in table.iterrows():
            assert s2sphere.CellId(int(row["cell_id"])).contains(s2_leaf(row["lat"], row["lon"]))


def test_representative_point_is_the_photos_centre():
    """Where the photos are, not the cell's geometric centre; and no lat/lon averaging at 180 deg."""
    rng = np.random.default_rng(3)
    lat = 64.1 + rng.normal(size=30) * 0.01
    lon = -21.9 + rng.normal(size=30) * 0.01
    part = build_cells(lat, lon, [Granularity("g", 100, 1)], start_level=1)
    row = part.table("g").iloc[0]
    assert row["s2_level"] == 1
    assert haversine_km(row["lat"], row["lon"], 64.1, -21.9) < 2
    centre = s2sphere.CellId(int(row["cell_id"])).to_lat_lng()
    assert haversine_km(centre.lat().degrees, centre.lng().degrees, 64.1, -21.9) > 1000

    # Fiji photos either side of the antimeridian share the face-3 cell at level 0.
    lat = np.array([-16.8, -16.7, -16.9, -16.8])
    lon = np.array([179.9, 179.95, -179.9, -179.95])
    part = build_cells(lat, lon, [Granularity("g", 100, 1)], start_level=0)
    row = part.table("g").iloc[0]
    assert row["s2_level"] == 0 and row["count"] == 4
    assert abs(row["lon"]) > 179.9 and row["lat"] == pytest.approx(-16.8, abs=0.01)
    assert row["country"] == "FJ"


def test_countries_of_cells(partition):
    fine = partition.table("fine")
    paris = fine.iloc[locate([48.86], [2.35], partition, "fine")[0]]
    assert paris["country"] == "FR"
    assert set(fine["country"]) >= {"FR", "US", "JP", "AU", "IS"}


def test_locate(partition, points):
    lat, lon = points
    for g in GRANS:
        np.testing.assert_array_equal(locate(lat, lon, partition, g.name), partition.assignments[f"class_{g.name}"])
    # Arbitrary points: the class whose cell contains the point, by brute force over all cells.
    rng = np.random.default_rng(5)
    q_lat, q_lon = np.degrees(np.arcsin(rng.uniform(-1, 1, 300))), rng.uniform(-180, 180, 300)
    q_leaf = leaf_cell_ids(q_lat, q_lon)
    for g in GRANS:
        lo, hi = cell_ranges(partition.table(g.name)["cell_id"].to_numpy(dtype=np.uint64))
        inside = (q_leaf[:, None] >= lo[None, :]) & (q_leaf[:, None] <= hi[None, :])
        assert inside.sum(axis=1).max() <= 1  # cells are disjoint
        expected = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
        np.testing.assert_array_equal(locate(q_lat, q_lon, partition, g.name), expected)
    # Far from every photo: no class.
    paris_only = build_cells(np.full(20, 48.86), np.full(20, 2.35), [Granularity("g", 5, 2)])
    assert locate([-33.87, 48.86], [151.21, 2.35], paris_only, "g").tolist() == [-1, 0]
    assert locate([], [], partition, "fine").shape == (0,)
    with pytest.raises(KeyError, match="no granularity"):
        locate([0], [0], partition, "nope")
    with pytest.raises(ValueError, match="out-of-range"):
        locate([100], [0], partition, "fine")


def test_deterministic_and_order_independent(points):
    lat, lon = points
    a = build_cells(lat, lon, GRANS, start_level=1, max_level=16)
    b = build_cells(lat, lon, GRANS, start_level=1, max_level=16)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    pd.testing.assert_frame_equal(a.assignments, b.assignments)
    perm = np.random.default_rng(1).permutation(len(lat))
    c = build_cells(lat[perm], lon[perm], GRANS, start_level=1, max_level=16)
    pd.testing.assert_frame_equal(
        a.cells.drop(columns=["lat", "lon", "country"]), c.cells.drop(columns=["lat", "lon", "country"])
    )
    np.testing.assert_allclose(a.cells[["lat", "lon"]], c.cells[["lat", "lon"]], atol=1e-9)
    pd.testing.assert_frame_equal(a.assignments.iloc[perm].reset_index(drop=True), c.assignments)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(30, 400),
    st.lists(st.tuples(st.integers(1, 200), st.integers(1, 12)), min_size=1, max_size=4),
    st.integers(0, 3),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_partition_properties_hold_for_any_thresholds(seed, n, thresholds, start_level):
    lat, lon = clustered_points(n, seed)
    grans = [Granularity(f"g{i}", mx, min(mn, mx)) for i, (mx, mn) in enumerate(thresholds)]
    part = build_cells(lat, lon, grans, start_level=start_level, max_level=12)
    check_partition(part, lat, lon, grans)


# ---------------------------------------------------------------- degenerate input


def test_all_photos_at_one_point(caplog):
    lat, lon = np.full(300, 48.8566), np.full(300, 2.3522)
    with caplog.at_level(logging.INFO, logger="geopin.dataset.cells"):
        part = build_cells(lat, lon, [Granularity("only", 100, 5)], max_level=18)
    table = part.table("only")
    assert len(table) == 1
    assert table["count"].iloc[0] == 300 and table["s2_level"].iloc[0] == 18
    assert table["lat"].iloc[0] == pytest.approx(48.8566) and table["lon"].iloc[0] == pytest.approx(2.3522)
    assert "still hold more than 100" in caplog.text
    assert (part.assignments["class_only"] == 0).all()


def test_coarse_min_above_fine_min_still_nests():
    """coarse:200:10 over fine:50:2 left 21 of 37 fine places without a coarse ancestor (class -1)."""
    lat, lon = clustered_points(600, seed=11)
    grans = [Granularity("coarse", 200, 10), Granularity("fine", 50, 2)]
    part = build_cells(lat, lon, grans)
    check_partition(part, lat, lon, grans)
    fine = part.table("fine")
    assert np.all(locate(fine["lat"], fine["lon"], part, "coarse") >= 0)
    # the same granularities given fine first describe the same partition
    swapped = build_cells(lat, lon, grans[::-1])
    pd.testing.assert_frame_equal(
        swapped.cells.sort_values(["granularity", "class_id"]).reset_index(drop=True),
        part.cells.sort_values(["granularity", "class_id"]).reset_index(drop=True),
    )


def test_representative_point_is_a_photo_on_land_not_the_sea_between_coasts():
    """Photos on both shores of the Mediterranean: their mean lies in the sea, their medoid in a city."""
    rng = np.random.default_rng(5)
    barcelona = (41.39 + rng.normal(size=40) * 0.02, 2.17 + rng.normal(size=40) * 0.02)
    algiers = (36.75 + rng.normal(size=25) * 0.02, 3.06 + rng.normal(size=25) * 0.02)
    lat, lon = np.r_[barcelona[0], algiers[0]], np.r_[barcelona[1], algiers[1]]
    part = build_cells(lat, lon, [Granularity("g", 100, 1)], start_level=1)
    row = part.table("g").iloc[0]
    assert row["count"] == 65
    assert haversine_km(row["lat"], row["lon"], 41.39, 2.17) < 10  # the bigger cluster's city
    assert row["country"] == "ES"


def test_photos_on_a_cell_corner():
    """(0, 0) is a corner of cells at every level; the representative point must still be inside."""
    part = build_cells(np.zeros(10), np.zeros(10), [Granularity("g", 3, 1)], max_level=10)
    check_partition(part, np.zeros(10), np.zeros(10), [Granularity("g", 3, 1)])


def test_single_photo():
    part = build_cells([35.0], [139.0], [Granularity("keep", 10, 1), Granularity("drop", 10, 2)])
    assert part.num_classes("keep") == 1 and part.table("keep")["s2_level"].iloc[0] == part.start_level
    assert part.num_classes("drop") == 0
    assert part.assignments["class_drop"].tolist() == [-1]
    assert part.assignments["fine_token"].iloc[0] != ""
    assert locate([35.0], [139.0], part, "drop").tolist() == [-1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no photos"):
        build_cells([], [], GRANS)
    with pytest.raises(ValueError, match=r"photos: 1 point\(s\)"):
        build_cells([10.0, 91.0], [0.0, 0.0], GRANS)
    with pytest.raises(ValueError, match="out-of-range"):
        build_cells([10.0], [200.0], GRANS)
    with pytest.raises(ValueError, match="out-of-range"):
        build_cells([np.nan], [0.0], GRANS)
    with pytest.raises(ValueError, match="start_level"):
        build_cells([0.0], [0.0], GRANS, start_level=5, max_level=4)
    with pytest.raises(ValueError, match="unique"):
        build_cells([0.0], [0.0], [Granularity("a", 5, 1), Granularity("a", 3, 1)])
    with pytest.raises(ValueError, match="exceeds max_photos"):
        Granularity("a", 5, 6)
    with pytest.raises(ValueError, match="NAME:MAX:MIN"):
        Granularity.parse("coarse:500")
    assert Granularity.parse("coarse:500:5") == Granularity("coarse", 500, 5)


# ---------------------------------------------------------------- default granularities


def test_default_granularities_scale_with_the_dataset():
    big = default_granularities(400_000)
    assert [(g.name, g.max_photos, g.min_photos) for g in big] == [
        ("coarse", 500, 5), ("middle", 200, 5), ("fine", 100, 5)
    ]
    small = default_granularities(2652)
    assert [g.name for g in small] == ["coarse", "middle", "fine"]
    assert small[0].max_photos > small[1].max_photos > small[2].max_photos >= small[2].min_photos
    for n in (1, 100, 10_000, 10**6):
        grans = default_granularities(n)
        assert grans[0].max_photos >= grans[1].max_photos >= grans[2].max_photos
    maxes = [default_granularities(n)[2].max_photos for n in (1000, 100_000, 400_000, 10**6)]
    assert maxes == sorted(maxes)
    with pytest.raises(ValueError):
        default_granularities(0)


# ---------------------------------------------------------------- the stage and its CLI


def write_manifest(path, lat, lon, extra_rows=()):
    df = pd.DataFrame({"id": [f"p{i}" for i in range(len(lat))], "lat": lat, "lon": lon, "group": "g"})
    if extra_rows:
        df = pd.concat([df, pd.DataFrame(list(extra_rows))], ignore_index=True)
    df.to_parquet(path, index=False)
    return path


def test_run_cells_writes_resumes_and_skips_bad_rows(tmp_path, points):
    lat, lon = points
    manifest = write_manifest(tmp_path / "manifest.parquet", lat, lon,
                              extra_rows=[{"id": "bad1", "lat": np.nan, "lon": 0.0},
                                          {"id": "bad2", "lat": 95.0, "lon": 0.0}])
    cfg = CellsConfig(granularities=tuple(GRANS), max_level=16)
    out = tmp_path / "cells"
    summary = run_cells(manifest, out, cfg)
    assert (summary.n_photos, summary.n_located, summary.reused) == (len(lat) + 2, len(lat), False)
    assert [g["name"] for g in summary.granularities] == ["coarse", "middle", "fine"]

    assign = pd.read_parquet(out / "assignments.parquet")
    assert list(assign.columns) == ["id", "country", "class_coarse", "class_middle", "class_fine", "fine_token"]
    bad = assign.set_index("id").loc[["bad1", "bad2"]]
    assert (bad[["class_coarse", "class_middle", "class_fine"]] == -1).all().all()
    assert (bad["fine_token"] == "").all() and (bad["country"] == "").all()
    assert assign.set_index("id").loc["p0", "fine_token"] != ""

    loaded = load_cells(out)
    direct = build_cells(lat, lon, GRANS, max_level=16)
    pd.testing.assert_frame_equal(loaded.cells.reset_index(drop=True), direct.cells, check_dtype=False)
    assert loaded.cells["cell_id"].dtype == np.uint64
    for g in GRANS:
        col = f"class_{g.name}"
        np.testing.assert_array_equal(assign[col].to_numpy()[: len(lat)], direct.assignments[col])
    meta = json.loads((out / "cells.json").read_text())
    assert meta["summary"]["granularities"][2]["classes"] == direct.num_classes("fine")

    # Same manifest and config: reused. Another config: rebuilt.
    mtime = (out / "cells.parquet").stat().st_mtime_ns
    assert run_cells(manifest, out, cfg).reused
    assert (out / "cells.parquet").stat().st_mtime_ns == mtime
    one = CellsConfig(granularities=(Granularity("one", 50, 2),), max_level=16)
    other = run_cells(manifest, out, one)
    assert not other.reused and load_cells(out).cells["granularity"].unique().tolist() == ["one"]
    assert run_cells(manifest, out, one).reused
    assert not run_cells(manifest, out, one, force=True).reused


def test_run_cells_input_errors(tmp_path):
    no_lat = tmp_path / "m.parquet"
    pd.DataFrame({"id": ["a"], "lon": [0.0]}).to_parquet(no_lat)
    with pytest.raises(ValueError, match=r"m\.parquet: missing column\(s\) lat\b"):
        run_cells(no_lat, tmp_path / "out")
    dup = tmp_path / "d.parquet"
    pd.DataFrame({"id": ["a", "a"], "lat": [0.0, 1.0], "lon": [0.0, 1.0]}).to_parquet(dup)
    with pytest.raises(ValueError, match="duplicate id"):
        run_cells(dup, tmp_path / "out")
    none_valid = tmp_path / "n.parquet"
    pd.DataFrame({"id": ["a"], "lat": [np.nan], "lon": [0.0]}).to_parquet(none_valid)
    with pytest.raises(ValueError, match="no photo has valid lat/lon"):
        run_cells(none_valid, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_cells(tmp_path / "missing.parquet", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="geopin cells"):
        load_cells(tmp_path / "nothing")


def test_cli_cells(tmp_path, points):
    manifest = write_manifest(tmp_path / "manifest.parquet", *points)
    runner = CliRunner()
    result = runner.invoke(app, ["cells", str(manifest), "--out", str(tmp_path / "c"), "-g", "big:300:5",
                                 "-g", "small:40:3", "--max-level", "14", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [g["name"] for g in summary["granularities"]] == ["big", "small"]
    assert summary["max_level"] == 14
    table = runner.invoke(app, ["cells", str(manifest), "--out", str(tmp_path / "c"), "-g", "big:300:5",
                                "-g", "small:40:3", "--max-level", "14"])
    assert table.exit_code == 0 and "small" in table.stdout and "reused" in table.stdout
    bad = runner.invoke(app, ["cells", str(manifest), "--out", str(tmp_path / "c"), "-g", "big:300"])
    assert bad.exit_code == 2 and "NAME:MAX:MIN" in bad.output


# ---------------------------------------------------------------- the research photos


@pytest.mark.shared
def test_default_cells_on_im2gps3k(im2gps_dir, tmp_path):
    labels = pd.read_csv(im2gps_dir / "labels.csv")
    lat, lon = labels["lat"].to_numpy(), labels["lon"].to_numpy()
    grans = default_granularities(len(labels))
    part = build_cells(lat, lon, grans)
    assert len(grans) >= 2
    check_partition(part, lat, lon, grans)
    counts = {g.name: part.num_classes(g.name) for g in grans}
    assert list(counts.values()) == sorted(counts.values()) and counts["coarse"] >= 10
    # Independent check of containment with s2sphere on every photo.
    for g in grans:
        table = part.table(g.name)
        cls = part.assignments[f"class_{g.name}"].to_numpy()
        cells = {c: s2sphere.CellId(int(i)) for c, i in zip(table["class_id"], table["cell_id"])}
        for i in np.flatnonzero(cls >= 0):
            assert cells[cls[i]].contains(s2_leaf(lat[i], lon[i]))
    # Through the stage, with the manifest built from the labels.
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"id": labels["image"], "lat": lat, "lon": lon, "group": labels["author"]}).to_parquet(manifest)
    summary = run_cells(manifest, tmp_path / "cells")
    assert {g["name"]: g["classes"] for g in summary.granularities} == counts
