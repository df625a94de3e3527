"""S2 cells as GeoJSON, so the map page can draw a prediction's 50 % / 90 % confidence regions.

A prediction names its regions by S2 cell token (or "near:lat,lon" for a training photo's own spot);
the browser cannot turn a token into corners, so `GET /api/cells?tokens=a,b,c` does it here.
"""

from __future__ import annotations

import math
import re

import numpy as np

#: Cap per request: a 90 % region rarely holds more than a few hundred cells; the page asks in chunks.
MAX_TOKENS = 2000
#: Points per cell edge: S2 edges are great-circle arcs, and a coarse cell's straight lat/lon edge is visibly off.
EDGE_POINTS = 8

_TOKEN = re.compile(r"^[0-9a-f]{1,16}$")

#: Exactly the tokens cell_feature accepts, for the API's OpenAPI document and its own validation: an S2
#: token (face 0-5 in the first 3 bits; its lowest set bit at an even position, as S2's is_valid wants;
#: no trailing zeros, as S2 writes them) or near:lat,lon within range; comma-separated, no spaces.
_S2_TOKEN = r"(?:[13579b]|[0-9ab][0-9a-f]{0,14}[13579bdf4c])"
_LAT = r"-?(?:90(?:\.0+)?|[1-8]?[0-9](?:\.[0-9]+)?)"
_LON = r"-?(?:180(?:\.0+)?|(?:1[0-7][0-9]|[1-9]?[0-9])(?:\.[0-9]+)?)"
_ONE = rf"(?:{_S2_TOKEN}|near:{_LAT},{_LON})"
TOKENS_PATTERN = rf"^{_ONE}(?:,{_ONE})*$"
_SPLIT = re.compile(r"near:\s*-?[\d.]+\s*,\s*-?[\d.]+|[^,]+")
_NEAR = re.compile(r"^near:(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)$")


class CellTokenError(ValueError):
    """A token that names no S2 cell (the message names the token and the reason)."""


def cell_feature(token: str) -> dict:
    """One GeoJSON Feature: the cell's polygon (edges densified along the sphere), or a Point for "near:lat,lon"."""
    if not isinstance(token, str):
        raise CellTokenError(f"cell token {token!r}: not a string")
    m = _NEAR.match(token)
    if m:
        lat, lon = float(m.group(1)), float(m.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise CellTokenError(f"cell token {token!r}: latitude/longitude out of range")
        return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {"token": token, "kind": "near"}}
    import s2sphere

    if not _TOKEN.match(token):
        raise CellTokenError(f"cell token {token!r}: not an S2 token (1-16 lowercase hex digits) nor near:lat,lon")
    cid = s2sphere.CellId.from_token(token)
    if not cid.is_valid():
        raise CellTokenError(f"cell token {token!r}: names no valid S2 cell")
    cell = s2sphere.Cell(cid)
    corners = np.array([[cell.get_vertex(i)[j] for j in range(3)] for i in range(4)], dtype=np.float64)
    ring = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        for t in np.linspace(0.0, 1.0, EDGE_POINTS, endpoint=False):
            p = (1 - t) * a + t * b  # the chord, pushed back onto the sphere: the arc between the corners
            ring.append(p / np.linalg.norm(p))
    lonlat = _lonlat_ring([_lonlat(p) for p in ring])
    lonlat.append(lonlat[0])
    centre = s2sphere.LatLng.from_point(cell.get_center())
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [lonlat]},
        "properties": {"token": token, "kind": "cell", "level": int(cid.level()),
                       "centre": [round(centre.lng().degrees, 6), round(centre.lat().degrees, 6)]},
    }


def _lonlat(p: np.ndarray) -> list[float]:
    lat = math.degrees(math.atan2(p[2], math.hypot(p[0], p[1])))
    lon = math.degrees(math.atan2(p[1], p[0]))
    return [round(lon, 6), round(lat, 6)]


def _lonlat_ring(points: list[list[float]]) -> list[list[float]]:
    """The open ring of a cell in longitude/latitude, drawable on a flat map.

    A pole as a corner has no longitude of its own: it becomes two points on the pole line, at the
    longitudes of its neighbours. A ring that winds around a pole spans 360 degrees of longitude: it is
    put on [-180, 180] and closed over the pole, or it would cut a band across the map.
    """
    flat: list[list[float]] = []
    n = len(points)
    for i, (lon, lat) in enumerate(points):
        if abs(lat) > 90.0 - 1e-9:
            flat += [[points[i - 1][0], lat], [points[(i + 1) % n][0], lat]]
        else:
            flat.append([lon, lat])
    ring = _unwrap(flat)
    turn = _unwrap([ring[-1], ring[0]])[1][0] - ring[0][0]  # longitude gained once around: 0 or +-360
    if abs(turn) > 180.0:  # winds around a pole: the side of the pole is the sign of the latitudes
        pole = 90.0 if sum(lat for _, lat in ring) > 0 else -90.0
        shift = -180.0 - min(lon for lon, _ in ring) if turn > 0 else 180.0 - max(lon for lon, _ in ring)
        ring = [[round(lon + shift, 6), lat] for lon, lat in ring]
        end = round(ring[0][0] + turn, 6)
        ring += [[end, ring[0][1]], [end, pole], [ring[0][0], pole]]
    return ring


def _unwrap(ring: list[list[float]]) -> list[list[float]]:
    """Keep longitudes continuous so a cell across the antimeridian is one shape, not a band around the world."""
    out = [ring[0]]
    for lon, lat in ring[1:]:
        prev = out[-1][0]
        lon += 360.0 * round((prev - lon) / 360.0)
        out.append([round(lon, 6), lat])
    return out


def cell_polygons(tokens) -> dict:
    """GeoJSON FeatureCollection of the given tokens, in order, duplicates dropped; CellTokenError names a bad one."""
    tokens = list(dict.fromkeys(tokens))
    if len(tokens) > MAX_TOKENS:
        raise CellTokenError(f"{len(tokens)} cell tokens in one request; at most {MAX_TOKENS}")
    return {"type": "FeatureCollection", "features": [cell_feature(t) for t in tokens]}


def split_tokens(text: str) -> list[str]:
    """Comma-separated tokens; "near:lat,lon" holds a comma of its own and stays whole."""
    return [t.strip() for t in _SPLIT.findall(text) if t.strip()]


def _make_router():
    """The `/api/cells` endpoint, for `geopin.serve.app` to include; None when FastAPI is not installed."""
    try:
        from fastapi import APIRouter, Query
        from fastapi.responses import JSONResponse
    except ImportError:
        return None
    from geopin.serve.schemas import CellCollection, error_responses

    r = APIRouter()

    @r.get("/api/cells", summary="S2 cells (or near:lat,lon spots) as a GeoJSON FeatureCollection",
           response_model=CellCollection, responses=error_responses(422, 500))
    def cells(tokens: str = Query(..., pattern=TOKENS_PATTERN,
                                  description=f"Comma-separated S2 tokens or near:lat,lon spots, as in a prediction's "
                                              f"`regions` (no spaces; at most {MAX_TOKENS} different ones).",
                                  examples=["89c259c,0d3,near:58.2027,-6.3816"])):
        try:
            return JSONResponse(cell_polygons(split_tokens(tokens)))
        except CellTokenError as exc:
            return JSONResponse({"error": "bad_token", "detail": str(exc)}, 422)

    return r


router = _make_router()

__all__ = ["MAX_TOKENS", "TOKENS_PATTERN", "CellTokenError", "cell_feature", "cell_polygons", "router", "split_tokens"]
