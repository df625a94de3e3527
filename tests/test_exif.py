"""GPS in EXIF: written as cameras write it (DMS rationals + refs), read back, malformed cases rejected."""

from __future__ import annotations

import io

import piexif
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from imagefiles import dms_rationals, gps_exif_bytes, gps_ifd

from geopin.dataset.exif import ExifGpsError, coord_problem, read_artist, read_exif_gps
from geopin.dataset.ingest import REJECT_REASONS

G = piexif.GPSIFD


def jpeg_with_exif(exif: bytes | None) -> Image.Image:
    """A tiny JPEG round-tripped through bytes, so Pillow parses the EXIF as from a real file."""
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.new("RGB", (16, 12), (90, 120, 30)).save(buf, "JPEG", **kwargs)
    buf.seek(0)
    return Image.open(buf)


def read_back(lat, lon, **kwargs):
    return read_exif_gps(jpeg_with_exif(gps_exif_bytes(lat, lon, **kwargs)))


def bad_gps(**overrides):
    """A valid GPS IFD (48.8584 N, 2.2945 E) with some tags replaced (value None = tag removed)."""
    gps = gps_ifd(48.8584, 2.2945)
    for tag, value in overrides.items():
        key = getattr(G, tag)
        if value is None:
            gps.pop(key)
        else:
            gps[key] = value
    return gps_exif_bytes(None, None, gps=gps)


lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
lons = st.floats(min_value=-180, max_value=180, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(lats, lons)
def test_dms_roundtrip_any_hemisphere(lat, lon):
    assume(abs(lat) > 1e-6 or abs(lon) > 1e-6)  # (0, 0) is rejected as null island, tested below
    got = read_back(lat, lon)
    assert got is not None
    assert abs(got[0] - lat) < 1e-6 and abs(got[1] - lon) < 1e-6
    # the hemisphere is carried by the ref letter, not lost to the unsigned rationals
    for written, read in zip((lat, lon), got):
        if abs(written) > 1e-6:
            assert (read < 0) == (written < 0)


@given(st.floats(min_value=-180, max_value=180, allow_nan=False), st.sampled_from([1, 100, 10_000]))
def test_dms_rationals_are_canonical(value, den):
    (d, d1), (m, m1), (s, sden) = dms_rationals(value, den)
    assert d1 == m1 == 1 and sden == den
    assert 0 <= m < 60 and 0 <= s < 60 * den
    assert abs(d + m / 60 + s / den / 3600 - abs(value)) <= 0.5 / den / 3600 + 1e-12


@pytest.mark.parametrize(
    "lat, lon, refs",
    [(40.446111, -79.982222, "NW"), (-33.856784, 151.215297, "SE"), (-22.951916, -43.210487, "SW"),
     (64.1466, 21.9426, "NE"), (90.0, 180.0, "NE"), (-90.0, -180.0, "SW")],
)
def test_four_hemispheres_known_points(lat, lon, refs):
    exif = jpeg_with_exif(gps_exif_bytes(lat, lon)).getexif().get_ifd(0x8825)
    assert exif[G.GPSLatitudeRef] + exif[G.GPSLongitudeRef] == refs
    got = read_back(lat, lon)
    assert got == pytest.approx((lat, lon), abs=1e-6)


def test_known_dms_value():
    # 40° 26' 46.302" N, 79° 58' 55.903" W (Pittsburgh), as a camera writes it
    gps = {G.GPSLatitudeRef: "N", G.GPSLatitude: ((40, 1), (26, 1), (46302, 1000)),
           G.GPSLongitudeRef: "W", G.GPSLongitude: ((79, 1), (58, 1), (55903, 1000))}
    lat, lon = read_exif_gps(jpeg_with_exif(gps_exif_bytes(None, None, gps=gps)))
    assert lat == pytest.approx(40 + 26 / 60 + 46.302 / 3600, abs=1e-12)
    assert lon == pytest.approx(-(79 + 58 / 60 + 55.903 / 3600), abs=1e-12)


def test_reads_from_a_path(tmp_path):
    path = tmp_path / "p.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=gps_exif_bytes(-12.5, 130.25))
    assert read_exif_gps(path) == pytest.approx((-12.5, 130.25), abs=1e-9)
    assert read_exif_gps(str(path)) == pytest.approx((-12.5, 130.25), abs=1e-9)


def test_no_gps_is_none():
    assert read_exif_gps(jpeg_with_exif(None)) is None
    assert read_exif_gps(jpeg_with_exif(gps_exif_bytes(None, None, artist="Ann"))) is None
    version_only = gps_exif_bytes(None, None, gps={G.GPSVersionID: (2, 3, 0, 0), G.GPSAltitude: (100, 1)})
    assert read_exif_gps(jpeg_with_exif(version_only)) is None


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"GPSLatitudeRef": None}, "coords_missing"),
        ({"GPSLongitudeRef": None}, "coords_missing"),
        ({"GPSLongitude": None, "GPSLongitudeRef": None}, "coords_missing"),
        ({"GPSLatitude": ((48, 0), (51, 1), (0, 1))}, "coords_not_numeric"),
        ({"GPSLongitude": ((2, 1), (17, 1), (40, 0))}, "coords_not_numeric"),
        ({"GPSLatitudeRef": "X"}, "coords_not_numeric"),
        ({"GPSLatitude": ((95, 1), (0, 1), (0, 1))}, "coords_out_of_range"),
        ({"GPSLatitude": ((90, 1), (30, 1), (0, 1))}, "coords_out_of_range"),
        ({"GPSLongitude": ((181, 1), (0, 1), (0, 1))}, "coords_out_of_range"),
        ({"GPSLatitude": ((48, 1), (75, 1), (0, 1))}, "coords_out_of_range"),
        ({"GPSLatitude": ((0, 1), (0, 1), (0, 1)), "GPSLongitude": ((0, 1), (0, 1), (0, 1))},
         "coords_null_island"),
    ],
)
def test_malformed_gps_raises_with_reason(overrides, reason):
    img = jpeg_with_exif(bad_gps(**overrides))
    with pytest.raises(ExifGpsError) as info:
        read_exif_gps(img)
    assert info.value.reason == reason
    assert info.value.reason in REJECT_REASONS
    assert info.value.detail  # says what was wrong


def test_gps_exif_bytes_writes_out_of_range_on_purpose():
    with pytest.raises(ExifGpsError, match="coords_out_of_range"):
        read_back(95.0, 10.0)


@given(lats, lons)
def test_coord_problem_accepts_valid_points_but_null_island(lat, lon):
    problem = coord_problem(lat, lon)
    if lat == 0 and lon == 0:
        assert problem[0] == "coords_null_island"
    else:
        assert problem is None


@given(st.one_of(st.floats(min_value=90, exclude_min=True), st.floats(max_value=-90, exclude_max=True)), lons)
def test_coord_problem_rejects_out_of_range_lat(lat, lon):
    assert coord_problem(lat, lon)[0] == "coords_out_of_range"


@pytest.mark.parametrize("lat, lon", [(0.0, 180.5), (0.0, -1e9), (float("nan"), 0.0), (10.0, float("inf"))])
def test_coord_problem_rejects_bad_lon_and_non_finite(lat, lon):
    assert coord_problem(lat, lon)[0] == "coords_out_of_range"


def test_read_artist():
    assert read_artist(jpeg_with_exif(gps_exif_bytes(1.0, 2.0, artist="  Ann Lee ")).getexif()) == "Ann Lee"
    assert read_artist(jpeg_with_exif(None).getexif()) is None
