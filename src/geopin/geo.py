"""Great-circle geometry on a spherical Earth, vectorised with NumPy broadcasting.

Distances use forms that stay accurate from millimetres to antipodes: the haversine evaluated as
atan2(sqrt(hav), sqrt(1 - hav)) with both terms free of cancellation, and atan2(|a x b|, a . b)
between unit vectors.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius R1

ArrayLike = np.ndarray | float | list

# Pairwise distances are computed in row blocks so that a (n_a, n_b) job never needs more than a few
# temporary (block, n_b) arrays at once.
_PAIRWISE_BLOCK_ELEMENTS = 2_000_000


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; arguments broadcast."""
    phi1 = np.radians(np.asarray(lat1, dtype=np.float64))
    phi2 = np.radians(np.asarray(lat2, dtype=np.float64))
    half_dphi = (phi2 - phi1) / 2.0
    half_sphi = (phi2 + phi1) / 2.0
    half_dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64)) / 2.0
    # hav(d) and 1 - hav(d), each written as a sum of non-negative terms, so neither cancels: the
    # usual sqrt(1 - a) loses half the digits near antipodes.
    cos2_dl, sin2_dl = np.cos(half_dlmb) ** 2, np.sin(half_dlmb) ** 2
    a = np.sin(half_dphi) ** 2 * cos2_dl + np.cos(half_sphi) ** 2 * sin2_dl
    b = np.cos(half_dphi) ** 2 * cos2_dl + np.sin(half_sphi) ** 2 * sin2_dl
    return 2.0 * EARTH_RADIUS_KM * np.arctan2(np.sqrt(a), np.sqrt(b))


def to_xyz(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """Unit vectors (..., 3) for latitudes/longitudes in degrees (broadcast together)."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lmb = np.radians(np.asarray(lon, dtype=np.float64))
    phi, lmb = np.broadcast_arrays(phi, lmb)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lmb), cos_phi * np.sin(lmb), np.sin(phi)], axis=-1)


def from_xyz(xyz: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude in degrees of vectors (..., 3); the length need not be 1."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.shape[-1] != 3:
        raise ValueError(f"xyz: last axis must have length 3, got shape {xyz.shape}")
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


def pairwise_km(lat_a: ArrayLike, lon_a: ArrayLike, lat_b: ArrayLike, lon_b: ArrayLike) -> np.ndarray:
    """All distances (len_a, len_b) in km between two point sets, float64.

    Uses atan2(|a x b|, a . b) with the cross product formed explicitly, which is well conditioned for
    both tiny and near-antipodal separations (unlike arccos of the dot product).
    """
    a = to_xyz(np.atleast_1d(lat_a), np.atleast_1d(lon_a)).reshape(-1, 3)
    b = to_xyz(np.atleast_1d(lat_b), np.atleast_1d(lon_b)).reshape(-1, 3)
    return pairwise_km_xyz(a, b)


def pairwise_km_xyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pairwise_km between unit vectors (n_a, 3) and (n_b, 3): for callers that keep a point set's
    vectors, so that a fixed set (the model's places) is not converted again for every photo."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    if out.size == 0:
        return out
    block = max(1, _PAIRWISE_BLOCK_ELEMENTS // max(1, b.shape[0]))
    bx, by, bz = b[:, 0], b[:, 1], b[:, 2]
    for start in range(0, a.shape[0], block):
        ax = a[start : start + block, 0:1]
        ay = a[start : start + block, 1:2]
        az = a[start : start + block, 2:3]
        cx = ay * bz - az * by
        cy = az * bx - ax * bz
        cz = ax * by - ay * bx
        dot = ax * bx + ay * by + az * bz
        out[start : start + block] = np.arctan2(np.sqrt(cx * cx + cy * cy + cz * cz), dot)
    out *= EARTH_RADIUS_KM
    return out


def spherical_mean(
    lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None
) -> tuple[float, float]:
    """Centre of points on the sphere: the (weighted) mean unit vector, projected back to the surface.

    A naive lat/lon average puts the centre of photos either side of the antimeridian near longitude 0;
    the vector mean keeps it where the photos are. Returns (nan, nan) when the points cancel out
    (e.g. two antipodes), where no centre exists.
    """
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon must have the same length, got {lat.size} and {lon.size}")
    if lat.size == 0:
        raise ValueError("spherical_mean: no points given")
    xyz = to_xyz(lat, lon)
    if weights is None:
        total = xyz.sum(axis=0)
        scale = float(lat.size)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != lat.shape:
            raise ValueError(f"weights must have one value per point, got {w.size} for {lat.size} points")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and non-negative")
        total = (xyz * w[:, None]).sum(axis=0)
        scale = float(w.sum())
    norm = float(np.linalg.norm(total))
    if scale <= 0 or norm <= 1e-12 * scale:
        return float("nan"), float("nan")
    mlat, mlon = from_xyz(total / norm)
    return float(mlat), float(mlon)


def validate_lat_lon(lat: ArrayLike, lon: ArrayLike, name: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """Float64 1-D copies of lat/lon, or a ValueError naming the first offending value."""
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.shape != lon.shape:
        raise ValueError(f"{name}: lat and lon lengths differ ({lat.size} vs {lon.size})")
    bad = ~np.isfinite(lat) | ~np.isfinite(lon) | (np.abs(lat) > 90.0) | (np.abs(lon) > 180.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} point(s) have missing or out-of-range coordinates "
            f"(lat must be in [-90, 90], lon in [-180, 180]); first at index {i}: lat={lat[i]!r}, lon={lon[i]!r}"
        )
    return lat, lon
