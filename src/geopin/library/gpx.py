"""GPX tracks (read with gpxpy) and positions along them with exiftool -geotag semantics.

All fixes of all files are merged into one time-ordered list, as exiftool merges several -geotag files (a later
file's fix at the same second replaces the earlier one), and the first fix of each file is marked: between the end
of one file and the start of the next, exiftool allows GeoMaxExtSecs rather than GeoMaxIntSecs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import gpxpy
import gpxpy.gpx
import numpy as np

from geopin.geo import haversine_km
from geopin.library.combine import Candidate
from geopin.library.photos import LibraryPhoto
from geopin.library.timeline import (
    NEAREST,
    NONE,
    Fixes,
    TimeConfig,
    from_seconds,
    interpolate,
    interpolate_pair,
    placed_candidates,
    timed_targets,
    to_seconds,
)

logger = logging.getLogger(__name__)

CALIBRATION_LAGS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0)
CALIBRATION_SAMPLES = 400


@dataclass(frozen=True)
class Track:
    """The timed points of one GPX file (track, route and waypoints), in document order."""

    path: str
    t: np.ndarray  # UTC seconds since 1970
    lat: np.ndarray
    lon: np.ndarray
    n_untimed: int = 0

    def __len__(self) -> int:
        return len(self.t)


def read_gpx(path: str | Path) -> Track:
    """Read one GPX file; ValueError naming the file when it is not GPX or holds no timed point.

    Times are converted to UTC; a time without a zone is UTC, as the GPX schema says."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            gpx = gpxpy.parse(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such GPX file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a GPX file (not UTF-8 text: {exc.reason})") from None
    except gpxpy.gpx.GPXException as exc:
        raise ValueError(f"{path}: not a readable GPX file: {exc}") from None
    points = list(gpx.waypoints)
    points += [p for r in gpx.routes for p in r.points]
    points += [p for trk in gpx.tracks for seg in trk.segments for p in seg.points]
    rows, untimed = [], 0
    for p in points:
        if p.time is None:
            untimed += 1
            continue
        t = p.time if p.time.tzinfo is None else p.time.astimezone(UTC).replace(tzinfo=None)
        rows.append((to_seconds(t), float(p.latitude), float(p.longitude)))
    if not rows:
        raise ValueError(f"{path}: no timed points in this GPX file ({untimed} points without time)")
    arr = np.array(rows, dtype=np.float64)
    logger.info("%s: %d timed points%s", path, len(rows), f", {untimed} without time skipped" if untimed else "")
    return Track(str(path), arr[:, 0], arr[:, 1], arr[:, 2], untimed)


def merge_tracks(tracks: Sequence[Track]) -> Fixes:
    """One time-ordered fix list from several files, as exiftool builds it (see the module docstring)."""
    by_time: dict[float, list] = {}
    for tr in tracks:
        for k, (t, lat, lon) in enumerate(zip(tr.t, tr.lat, tr.lon)):
            by_time[float(t)] = [lat, lon, k == 0]
    times = sorted(by_time)
    vals = [by_time[t] for t in times]
    return Fixes(np.array(times, dtype=np.float64), np.array([v[0] for v in vals], dtype=np.float64),
                 np.array([v[1] for v in vals], dtype=np.float64), np.array([v[2] for v in vals], dtype=bool))


@dataclass(frozen=True)
class TrackCalibration:
    """Radius for a GPX answer, learnt from the track itself at lags `lags_s`: for an interpolation, the error of
    placing sampled fixes from the fixes at least `lag` away on both sides; for a nearest-fix answer, how far the
    track moves in `lag`. radius = max(floor, the target_coverage quantile), linear between lags; confidence = the
    target coverage shrunk towards one half by prior_strength when few samples back it."""

    lags_s: np.ndarray
    q_interp_km: np.ndarray
    q_near_km: np.ndarray
    n: np.ndarray
    floor_km: float
    coverage: float
    prior_strength: float

    def radius_km(self, dt_s, nearest):
        lags = np.concatenate([[0.0], self.lags_s])
        qi = np.interp(dt_s, lags, np.concatenate([[0.0], self.q_interp_km]))
        qn = np.interp(dt_s, lags, np.concatenate([[0.0], self.q_near_km]))
        return np.maximum(self.floor_km, np.where(nearest, qn, qi))

    def confidence_at(self, dt_s):
        n = np.interp(dt_s, self.lags_s, self.n)
        return (n * self.coverage + self.prior_strength * 0.5) / (n + self.prior_strength)


def calibrate_track(fixes: Fixes, cfg: TimeConfig, seed: int = 0) -> TrackCalibration:
    rng = np.random.default_rng(seed)
    n = len(fixes)
    idx = np.sort(rng.choice(n, size=min(n, CALIBRATION_SAMPLES), replace=False))
    t, lat, lon = fixes.t, fixes.lat, fixes.lon
    lags = np.asarray(CALIBRATION_LAGS_S)
    qi, qn, cnt = [], [], []
    for lag in lags:
        ti = t[idx]
        a = np.searchsorted(t, ti - lag, side="right") - 1  # last fix at least `lag` before
        b = np.searchsorted(t, ti + lag, side="left")  # first fix at least `lag` after
        ok = (a >= 0) & (b < n)
        a, b, i = a[ok], b[ok], idx[ok]
        plat, plon, kind, _ = interpolate_pair(t[i], t[a], lat[a], lon[a], t[b], lat[b], lon[b], cfg.max_int_s, cfg.max_ext_s)
        good = kind != NONE
        err_i = haversine_km(plat[good], plon[good], lat[i][good], lon[i][good])
        # nearest fix `lag` away: the displacement over that lag (either side)
        j = np.searchsorted(t, t[idx] + lag, side="left")
        okj = j < n
        disp = haversine_km(lat[j[okj]], lon[j[okj]], lat[idx[okj]], lon[idx[okj]])
        disp = disp[(t[j[okj]] - t[idx[okj]]) <= lag * 1.5 + 10]  # only where the track has a fix near that lag
        qi.append(float(np.quantile(err_i, cfg.target_coverage)) if err_i.size else np.nan)
        qn.append(float(np.quantile(disp, cfg.target_coverage)) if disp.size else np.nan)
        cnt.append(min(err_i.size, disp.size))
    qi_a, qn_a = np.array(qi), np.array(qn)
    # where a lag has no sample (a short track), carry the largest speed seen
    speed = np.nanmax(np.concatenate([qn_a / lags, [cfg.speed_kmh / 3600.0]]))
    qn_a = np.where(np.isnan(qn_a), speed * lags, qn_a)
    qi_a = np.where(np.isnan(qi_a), qn_a, qi_a)
    qn_a, qi_a = np.maximum.accumulate(qn_a), np.maximum.accumulate(qi_a)
    return TrackCalibration(lags, qi_a, qn_a, np.array(cnt, dtype=np.float64), cfg.gpx_radius_floor_km,
                            cfg.target_coverage, cfg.prior_strength)


def gpx_candidates(photos: Sequence[LibraryPhoto], tracks: Sequence[Track], shifts: Mapping,
                   cfg: TimeConfig | None = None) -> dict[str, Candidate]:
    """A "gpx" Candidate per photo that needs a position and has a UTC within reach of the tracks, placed as
    `exiftool -geotag` would (timeline.interpolate on the merged fixes). detail: the track files, the fix times
    used (UTC ISO) and the seconds to them, the kind, the photo's UTC and how it was obtained."""
    cfg = cfg or TimeConfig()
    if not tracks:
        return {}
    fixes = merge_tracks(tracks)
    todo = timed_targets(photos, shifts)
    if not todo:
        return {}
    cal = calibrate_track(fixes, cfg)
    t = np.array([to_seconds(u) for _, u, _ in todo])
    pl = interpolate(fixes, t, cfg.max_int_s, cfg.max_ext_s)
    radius = cal.radius_km(pl.dt_s, pl.kind == NEAREST)
    conf = cal.confidence_at(pl.dt_s)
    files = [tr.path for tr in tracks]
    return placed_candidates("gpx", todo, t, fixes, pl, radius, conf, lambda used: {
        "tracks": files,
        "fixes_utc": [from_seconds(fixes.t[i]).isoformat() for i in used],
    })
