"""Great-circle geometry: properties over random points and known distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.geo import (
    EARTH_RADIUS_KM,
    from_xyz,
    haversine_km,
    pairwise_km,
    spherical_mean,
    to_xyz,
    validate_lat_lon,
)

HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM

lats = st.floats(-90, 90, allow_nan=False, allow_infinity=False)
lons = st.floats(-180, 180, allow_nan=False, allow_infinity=False)
points = st.tuples(lats, lons)


@given(points, points)
@settings(deadline=None)
def test_haversine_symmetric_and_bounded(a, b):
    d_ab = haversine_km(a[0], a[1], b[0], b[1])
    d_ba = haversine_km(b[0], b[1], a[0], a[1])
    assert d_ab == pytest.approx(d_ba, rel=1e-12, abs=1e-9)
    assert 0.0 <= d_ab <= HALF_CIRCUMFERENCE_KM * (1 + 1e-12)


@given(points)
@settings(deadline=None)
def test_zero_distance_to_itself(a):
    assert haversine_km(a[0], a[1], a[0], a[1]) == 0.0
    assert pairwise_km([a[0]], [a[1]], [a[0]], [a[1]])[0, 0] == pytest.approx(0.0, abs=1e-9)


@given(points, points, points)
@settings(deadline=None)
def test_triangle_inequality(a, b, c):
    d_ac = haversine_km(a[0], a[1], c[0], c[1])
    d_ab = haversine_km(a[0], a[1], b[0], b[1])
    d_bc = haversine_km(b[0], b[1], c[0], c[1])
    assert d_ac <= d_ab + d_bc + 1e-6


@given(st.lists(points, min_size=1, max_size=8), st.lists(points, min_size=1, max_size=8))
@settings(deadline=None)
def test_haversine_agrees_with_pairwise(a, b):
    lat_a, lon_a = np.array(a).T
    lat_b, lon_b = np.array(b).T
    pair = pairwise_km(lat_a, lon_a, lat_b, lon_b)
    assert pair.shape == (len(a), len(b))
    assert pair.dtype == np.float64
    hav = haversine_km(lat_a[:, None], lon_a[:, None], lat_b[None, :], lon_b[None, :])
    np.testing.assert_allclose(pair, hav, rtol=1e-9, atol=1e-6)


@given(points)
@settings(deadline=None)
def test_antipodes_are_half_a_circumference_apart(a):
    lat, lon = a
    anti_lon = lon - 180.0 if lon > 0 else lon + 180.0
    assert haversine_km(lat, lon, -lat, anti_lon) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-12)
    assert pairwise_km(lat, lon, -lat, anti_lon)[0, 0] == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-12)


def test_known_distances():
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    assert haversine_km(*paris, *london) == pytest.approx(343.5, abs=1.0)
    assert pairwise_km(*paris, *london)[0, 0] == pytest.approx(343.5, abs=1.0)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-15)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-15)
    # One degree of the equator, and a millimetre-scale step that arccos-based formulas round to 0.
    assert haversine_km(0, 0, 0, 1) == pytest.approx(HALF_CIRCUMFERENCE_KM / 180, rel=1e-12)
    tiny = math.radians(1e-8) * EARTH_RADIUS_KM
    assert haversine_km(0, 0, 0, 1e-8) == pytest.approx(tiny, rel=1e-6)
    assert pairwise_km(0, 0, 0, 1e-8)[0, 0] == pytest.approx(tiny, rel=1e-6)


def test_broadcasting_and_empty():
    d = haversine_km(np.zeros((3, 1)), 0.0, 0.0, np.array([0.0, 1.0, 2.0]))
    assert d.shape == (3, 3)
    assert pairwise_km([], [], [1.0], [2.0]).shape == (0, 1)


@given(points)
@settings(deadline=None)
def test_xyz_round_trip(a):
    xyz = to_xyz(*a)
    assert np.linalg.norm(xyz) == pytest.approx(1.0, abs=1e-12)
    lat, lon = from_xyz(xyz)
    assert float(lat) == pytest.approx(a[0], abs=1e-9)
    if abs(a[0]) < 89.9999:  # longitude is meaningless at the poles
        assert haversine_km(a[0], a[1], lat, lon) < 1e-6


def test_from_xyz_ignores_length():
    assert from_xyz([0.0, 0.0, 5.0])[0] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="length 3"):
        from_xyz([1.0, 2.0])


@given(st.lists(st.tuples(st.floats(-60, 60), st.floats(170, 190)), min_size=1, max_size=30))
@settings(deadline=None)
def test_spherical_mean_across_antimeridian(pts):
    lat = np.array([p[0] for p in pts])
    lon = np.array([p[1] for p in pts])
    lon = np.where(lon > 180, lon - 360, lon)  # wrap into [-180, 180]
    mlat, mlon = spherical_mean(lat, lon)
    # The points lie in the lune 170..190 E, which is convex: so does their centre.
    assert abs(mlon) >= 170 - 1e-9
    assert -60 - 1e-9 <= mlat <= 60 + 1e-9


def test_spherical_mean_known_cases():
    mlat, mlon = spherical_mean([10, -10], [179, -179])
    assert mlat == pytest.approx(0.0, abs=1e-9) and abs(mlon) == pytest.approx(180.0, abs=1e-9)
    assert spherical_mean([48.8566], [2.3522]) == pytest.approx((48.8566, 2.3522), abs=1e-9)
    # Weights pull towards the heavier point; a zero weight removes a point.
    assert spherical_mean([0, 0], [0, 90], weights=[1, 0]) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert spherical_mean([0, 0], [0, 90], weights=[1, 1]) == pytest.approx((0.0, 45.0), abs=1e-9)
    # Antipodes have no centre.
    assert all(math.isnan(v) for v in spherical_mean([0, 0], [0, 180]))
    with pytest.raises(ValueError, match="no points"):
        spherical_mean([], [])
    with pytest.raises(ValueError, match="weights"):
        spherical_mean([0, 1], [0, 1], weights=[1, -1])


@given(st.lists(points, min_size=1, max_size=20))
@settings(deadline=None, max_examples=50)
def test_spherical_mean_is_rotation_consistent(pts):
    """Shifting every longitude shifts the centre's longitude by the same amount."""
    lat = np.array([p[0] for p in pts])
    lon = np.array([p[1] for p in pts])
    mlat, mlon = spherical_mean(lat, lon)
    if math.isnan(mlat) or abs(mlat) > 89.999:
        return
    shifted = (lon + 40.0 + 180.0) % 360.0 - 180.0
    slat, slon = spherical_mean(lat, shifted)
    xyz = to_xyz(lat, lon).sum(axis=0)
    if np.linalg.norm(xyz) < 1e-6 * len(pts):  # nearly cancelling points: the centre is ill-conditioned
        return
    assert slat == pytest.approx(mlat, abs=1e-6)
    assert haversine_km(slat, slon, mlat, (mlon + 40.0 + 180.0) % 360.0 - 180.0) < 1e-3


def test_validate_lat_lon_names_the_problem():
    with pytest.raises(ValueError, match=r"photos: 1 point\(s\).*index 1"):
        validate_lat_lon([0, 91], [0, 0], name="photos")
    with pytest.raises(ValueError, match="out-of-range"):
        validate_lat_lon([0], [float("nan")])
    with pytest.raises(ValueError, match="lengths differ"):
        validate_lat_lon([0, 1], [0])
