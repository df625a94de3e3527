"""Time: each photo's UTC, and a position from the library's own geotagged photos taken before and after it.

The references (photos with GPS that geopin did not place) form a track, as a GPX file would, and a photo is
placed on it with exiftool's -geotag rules (`interpolate`): between the two fixes around its time when they are at
most GeoMaxIntSecs apart, else at the nearest fix when within GeoMaxExtSecs, else nowhere. The radius grows with
the time to the nearest fix at a speed learnt from the library itself, and the confidence is the share of
references covered when each is left out and placed from the others (see `calibrate`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np

from geopin.geo import haversine_km
from geopin.library.combine import Candidate
from geopin.library.photos import LibraryPhoto

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)


class CameraShift(Protocol):
    """What time needs of geopin.library.clock.CameraShift (that module builds on this one, not the reverse)."""

    shift_s: float  # camera clock − UTC, seconds

    def describe(self) -> str: ...

# kinds of `interpolate` answers
NONE, EXACT, INTERPOLATED, NEAREST = 0, 1, 2, 3
KIND_NAMES = {EXACT: "at a fix", INTERPOLATED: "interpolated", NEAREST: "nearest fix"}


@dataclass(frozen=True)
class TimeConfig:
    """The defaults of every time source (references, clocks, GPX); the CLI reads them from here."""

    max_int_s: float = 1800.0  # exiftool GeoMaxIntSecs: interpolate only between fixes at most this far apart
    max_ext_s: float = 1800.0  # exiftool GeoMaxExtSecs: else the nearest fix, if at most this far in time
    # radius = max(floor, speed x time to the nearest fix); the speed is learnt from the references when there are
    # at least `min_calibration` leave-one-out answers, else `speed_kmh`
    radius_floor_km: float = 0.1  # a phone's GPS error plus a few steps
    speed_kmh: float = 30.0
    min_speed_kmh: float = 4.0  # walking: never assume slower
    max_speed_kmh: float = 130.0  # motorway: never assume faster
    target_coverage: float = 0.9  # the speed is chosen so that this share of left-out references is covered
    min_calibration: int = 20
    gap_bins_s: tuple[float, ...] = (60.0, 300.0, 900.0)  # confidence is calibrated per bin of time to the fix
    prior_strength: float = 5.0  # pseudo-observations at the target coverage when a bin has few references
    gpx_radius_floor_km: float = 0.02  # a logger's GPS error
    # camera clocks (geopin.library.clock)
    min_similarity: float = 0.8  # cosine of L2-normalised embeddings for a look-alike pair
    clock_search_s: float = 13 * 3600.0  # look for pairs within this of the "clock shows local time" shift
    pair_agree_s: float = 30.0  # pairs whose implied shifts lie within this agree (shots taken this close)
    min_pairs: int = 2  # fewer agreeing pairs: fall back to the local-time assumption
    local_utc_offset_s: int | None = None  # zone assumed when no photo states one; None: this computer's

    def __post_init__(self) -> None:
        for name in ("max_int_s", "max_ext_s", "radius_floor_km", "speed_kmh", "min_speed_kmh", "max_speed_kmh",
                     "pair_agree_s", "clock_search_s", "gpx_radius_floor_km"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 < self.target_coverage < 1.0:
            raise ValueError(f"target_coverage must lie in (0, 1), got {self.target_coverage}")
        if self.min_speed_kmh > self.max_speed_kmh:
            raise ValueError(f"min_speed_kmh {self.min_speed_kmh} exceeds max_speed_kmh {self.max_speed_kmh}")
        if list(self.gap_bins_s) != sorted(self.gap_bins_s):
            raise ValueError(f"gap_bins_s must be increasing, got {self.gap_bins_s}")


# ---------------------------------------------------------------------------------------------------------- times

def to_seconds(dt: datetime) -> float:
    """Seconds since 1970 of a naive UTC datetime (floats keep sub-seconds; no local zone is ever involved)."""
    return (dt - EPOCH).total_seconds()


def from_seconds(s: float) -> datetime:
    return EPOCH + timedelta(seconds=float(s))


def direct_utc(photo: LibraryPhoto) -> tuple[datetime | None, str]:
    """The UTC a photo states by itself: its offset tag (clock − offset), else its GPS time stamp; with the how."""
    if photo.taken is not None and photo.utc_offset_s is not None:
        return photo.taken - timedelta(seconds=photo.utc_offset_s), "offset tag"
    if photo.gps_utc is not None:
        return photo.gps_utc, "GPS time stamp"
    return None, ""


def photo_utc(photo: LibraryPhoto, shifts: Mapping[str, CameraShift]) -> datetime | None:
    """Naive UTC of a photo: its offset tag, else its GPS time stamp, else clock − its camera's shift; None without."""
    return photo_utc_how(photo, shifts)[0]


def photo_utc_how(photo: LibraryPhoto, shifts: Mapping[str, CameraShift]) -> tuple[datetime | None, str]:
    """`photo_utc` and the words for how it was obtained (for Candidate.detail)."""
    if photo.problem:
        return None, ""
    utc, how = direct_utc(photo)
    if utc is not None:
        return utc, how
    shift = shifts.get(photo.camera)
    if photo.taken is None or shift is None:
        return None, ""
    return photo.taken - timedelta(seconds=shift.shift_s), f"camera clock − {shift.describe()}"


def needs_position(photo: LibraryPhoto) -> bool:
    """A photo geopin may place: no GPS of its own (or only what an earlier run wrote), and readable."""
    return (not photo.has_gps or photo.placed_by_geopin) and not photo.problem


# --------------------------------------------------------------------------------------------------- interpolation

@dataclass(frozen=True)
class Fixes:
    """Positions at known UTC seconds, sorted by time: the references, or GPX track points.

    `first` marks the first fix of each GPX file: exiftool allows GeoMaxExtSecs (not GeoMaxIntSecs) before it."""

    t: np.ndarray  # float64 seconds since 1970, UTC, increasing (non-decreasing for references)
    lat: np.ndarray
    lon: np.ndarray
    first: np.ndarray | None = None  # bool per fix, or None

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True)
class Placement:
    """Where `interpolate` put each query time. kind: NONE, EXACT, INTERPOLATED or NEAREST; i0/i1: the fixes used
    (i1 == i0 for a single fix, -1 for none); dt_s: seconds to the nearest fix used (np.inf for none)."""

    lat: np.ndarray
    lon: np.ndarray
    kind: np.ndarray
    i0: np.ndarray
    i1: np.ndarray
    dt_s: np.ndarray


def interpolate_pair(t, t0, lat0, lon0, t1, lat1, lon1, max_int_s: float, max_ext_s: float,
                     first1=False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """exiftool's rule for times between two fixes t0 ≤ t ≤ t1 (arrays broadcast): linear in degrees when
    t1 − t0 ≤ max_int_s (max_ext_s when the later fix starts a new track file), else the nearest fix (the later
    one on a tie) when within max_ext_s, else nothing. Returns lat, lon, kind and which end (0/1, or 2 for both)."""
    t, t0, t1 = (np.asarray(a, dtype=np.float64) for a in (t, t0, t1))
    lat0, lon0, lat1, lon1 = (np.asarray(a, dtype=np.float64) for a in (lat0, lon0, lat1, lon1))
    first1 = np.asarray(first1, dtype=bool)
    gap = t1 - t0
    limit = np.where(first1 & (max_int_s > 0), max_ext_s, max_int_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(gap == 0, 0.0, (t - t0) / np.where(gap == 0, 1.0, gap))
    # exactly exiftool's expression, so that both give the same float
    lat = lat1 * f + lat0 * (1 - f)
    lon = lon1 * f + lon0 * (1 - f)
    interp = gap <= limit
    take0 = (t - t0) < (t1 - t)
    dt_near = np.where(take0, t - t0, t1 - t)
    near_ok = ~interp & (dt_near <= max_ext_s)
    lat = np.where(interp, lat, np.where(take0, lat0, lat1))
    lon = np.where(interp, lon, np.where(take0, lon0, lon1))
    kind = np.where(interp, INTERPOLATED, np.where(near_ok, NEAREST, NONE))
    end = np.where(interp, 2, np.where(take0, 0, 1))
    return lat, lon, kind, end


def interpolate(fixes: Fixes, t, max_int_s: float, max_ext_s: float) -> Placement:
    """Positions at UTC seconds `t` from the fixes, with exiftool -geotag semantics (Image::ExifTool::Geotag):
    before the first / after the last fix: that fix if within max_ext_s; a time equal to a fix: that fix;
    between two fixes: `interpolate_pair`. Vectorised over t."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    n = len(fixes)
    out_lat = np.full(t.shape, np.nan)
    out_lon = np.full(t.shape, np.nan)
    kind = np.full(t.shape, NONE, dtype=np.int8)
    i0 = np.full(t.shape, -1, dtype=np.int64)
    i1 = np.full(t.shape, -1, dtype=np.int64)
    dt = np.full(t.shape, np.inf)
    if n == 0 or t.size == 0:
        return Placement(out_lat, out_lon, kind, i0, i1, dt)
    ft, flat, flon = fixes.t, fixes.lat, fixes.lon
    first = fixes.first if fixes.first is not None else np.zeros(n, dtype=bool)
    right = np.searchsorted(ft, t, side="right")  # ft[right-1] <= t < ft[right]
    exact = (right > 0) & (ft[np.maximum(right - 1, 0)] == t)
    before = (right == 0)
    after = (right == n) & ~exact
    middle = ~(exact | before | after)

    j = right[exact] - 1
    out_lat[exact], out_lon[exact], kind[exact], i0[exact], i1[exact], dt[exact] = flat[j], flon[j], EXACT, j, j, 0.0
    for mask, j in ((before, 0), (after, n - 1)):
        d = np.abs(t[mask] - ft[j])
        ok = d <= max_ext_s
        sel = np.flatnonzero(mask)[ok]
        out_lat[sel], out_lon[sel], kind[sel], i0[sel], i1[sel], dt[sel] = flat[j], flon[j], NEAREST, j, j, d[ok]
    sel = np.flatnonzero(middle)
    if sel.size:
        a, b = right[sel] - 1, right[sel]
        lat, lon, k, end = interpolate_pair(t[sel], ft[a], flat[a], flon[a], ft[b], flat[b], flon[b],
                                            max_int_s, max_ext_s, first[b])
        ok = k != NONE
        s = sel[ok]
        out_lat[s], out_lon[s], kind[s] = lat[ok], lon[ok], k[ok]
        e, a, b, ts = end[ok], a[ok], b[ok], t[s]
        i0[s] = np.where(e == 1, b, a)
        i1[s] = np.where(e == 0, a, b)
        dt[s] = np.minimum(np.abs(ts - ft[i0[s]]), np.abs(ft[i1[s]] - ts))
    return Placement(out_lat, out_lon, kind, i0, i1, dt)


# ------------------------------------------------------------------------------------------------- the references

@dataclass(frozen=True)
class References:
    """The references that have a UTC, sorted by it, as fixes; rels and how each UTC was obtained."""

    fixes: Fixes
    rels: list[str]
    how: list[str]
    sha256: list[str]


def references(photos: Sequence[LibraryPhoto], shifts: Mapping[str, CameraShift]) -> References:
    rows = []
    for p in photos:
        if not p.is_reference:
            continue
        utc, how = photo_utc_how(p, shifts)
        if utc is not None:
            rows.append((to_seconds(utc), p.rel, float(p.lat), float(p.lon), how, p.sha256))
    rows.sort()
    t = np.array([r[0] for r in rows], dtype=np.float64)
    fixes = Fixes(t, np.array([r[2] for r in rows], dtype=np.float64), np.array([r[3] for r in rows], dtype=np.float64))
    return References(fixes, [r[1] for r in rows], [r[4] for r in rows], [r[5] for r in rows])


@dataclass(frozen=True)
class Calibration:
    """Radius and confidence for a time answer, learnt by leaving each reference out and placing it from the
    others under the same rules: speed = the slowest speed that covers `target_coverage` of them (clamped to
    [min_speed_kmh, max_speed_kmh]); confidence per bin of time-to-fix = covered share, shrunk towards the
    overall share (which is itself shrunk towards the target) by `prior_strength` pseudo-observations."""

    speed_kmh: float
    floor_km: float
    bins_s: tuple[float, ...]
    confidence: tuple[float, ...]  # one per bin (len(bins_s) + 1)
    n: int  # left-out references that could be placed
    covered: int
    calibrated: bool  # False: too few references; the prior speed and the shrunk confidence are used

    def radius_km(self, dt_s):
        return np.maximum(self.floor_km, self.speed_kmh * np.asarray(dt_s, dtype=np.float64) / 3600.0)

    def confidence_at(self, dt_s):
        return np.asarray(self.confidence)[np.searchsorted(np.asarray(self.bins_s), np.asarray(dt_s), side="right")]

    def describe(self) -> str:
        how = f"leave-one-reference-out on {self.n} references, {self.covered} covered" if self.calibrated else \
            f"prior speed: only {self.n} references could be left out and placed"
        return f"{self.speed_kmh:.1f} km/h ({how})"


def leave_one_out(fixes: Fixes, max_int_s: float, max_ext_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(error km, seconds to the nearest fix used) of each fix placed from its neighbours, for those that can be.

    Fixes at the same time and place (duplicate files, bursts) are merged first so no fix is placed from its twin."""
    keys = np.round(np.column_stack([fixes.t, fixes.lat * 1e6, fixes.lon * 1e6]))
    _, keep = np.unique(keys, axis=0, return_index=True)
    keep = np.sort(keep)
    t, lat, lon = fixes.t[keep], fixes.lat[keep], fixes.lon[keep]
    n = len(t)
    if n < 3:
        return np.zeros(0), np.zeros(0)
    # the inner fixes, each between its neighbours; the two ends as extrapolations from their single neighbour
    r = np.arange(1, n - 1)
    plat, plon, kind, end = interpolate_pair(t[r], t[r - 1], lat[r - 1], lon[r - 1], t[r + 1], lat[r + 1], lon[r + 1],
                                             max_int_s, max_ext_s)
    dt = np.where(end == 0, t[r] - t[r - 1], np.where(end == 1, t[r + 1] - t[r],
                                                       np.minimum(t[r] - t[r - 1], t[r + 1] - t[r])))
    ok = kind != NONE
    err = haversine_km(plat[ok], plon[ok], lat[r][ok], lon[r][ok])
    dts = [dt[ok]]
    errs = [err]
    for i, j in ((0, 1), (n - 1, n - 2)):
        d = abs(t[j] - t[i])
        if d <= max_ext_s:
            errs.append(haversine_km(lat[j], lon[j], lat[i], lon[i]).reshape(1))
            dts.append(np.array([d]))
    return np.concatenate(errs), np.concatenate(dts)


def calibrate(fixes: Fixes, cfg: TimeConfig) -> Calibration:
    """The speed and per-bin confidence of time answers on this library (see `Calibration`)."""
    err, dt = leave_one_out(fixes, cfg.max_int_s, cfg.max_ext_s)
    n = len(err)
    calibrated = n >= cfg.min_calibration
    if calibrated:
        need = np.where(err <= cfg.radius_floor_km, 0.0, err / np.maximum(dt, 1.0) * 3600.0)
        speed = float(np.clip(np.quantile(need, cfg.target_coverage), cfg.min_speed_kmh, cfg.max_speed_kmh))
    else:
        speed = cfg.speed_kmh
    covered = err <= np.maximum(cfg.radius_floor_km, speed * dt / 3600.0)
    k = cfg.prior_strength
    overall = (covered.sum() + k * cfg.target_coverage) / (n + k)
    bins = np.searchsorted(np.asarray(cfg.gap_bins_s), dt, side="right")
    conf = []
    for b in range(len(cfg.gap_bins_s) + 1):
        in_bin = bins == b
        conf.append(float(np.clip((covered[in_bin].sum() + k * overall) / (in_bin.sum() + k), 0.01, 0.99)))
    cal = Calibration(speed, cfg.radius_floor_km, tuple(cfg.gap_bins_s), tuple(conf), n, int(covered.sum()), calibrated)
    logger.info("time calibration: %s; confidence by time to fix %s", cal.describe(), cal.confidence)
    return cal


# ---------------------------------------------------------------------------------------------------- candidates

def timed_targets(photos: Sequence[LibraryPhoto], shifts: Mapping) -> list[tuple[str, datetime, str]]:
    """(rel, UTC, how the UTC was found) of each photo that needs a position and has a time: what the time and
    the GPX sources place."""
    todo = []
    for p in photos:
        if needs_position(p):
            utc, how = photo_utc_how(p, shifts)
            if utc is not None:
                todo.append((p.rel, utc, how))
    return todo


def time_candidates(photos: Sequence[LibraryPhoto], shifts: Mapping[str, CameraShift],
                    cfg: TimeConfig | None = None) -> dict[str, Candidate]:
    """A "time" Candidate per photo that needs a position and has a UTC, placed on the references by
    `interpolate` (exiftool rules). radius and confidence: `calibrate`. detail: the references used (rel), the
    seconds from the photo to each (negative: the reference is earlier), the kind, the photo's UTC and how it was
    obtained, the gap between the references, and the calibration. Photos without a time get nothing."""
    cfg = cfg or TimeConfig()
    refs = references(photos, shifts)
    todo = timed_targets(photos, shifts)
    if not todo or len(refs.fixes) == 0:
        return {}
    cal = calibrate(refs.fixes, cfg)
    t = np.array([to_seconds(u) for _, u, _ in todo])
    pl = interpolate(refs.fixes, t, cfg.max_int_s, cfg.max_ext_s)
    radius = cal.radius_km(pl.dt_s)
    conf = cal.confidence_at(pl.dt_s)
    ft = refs.fixes.t
    return placed_candidates("time", todo, t, refs.fixes, pl, radius, conf, lambda used: {
        "references": [refs.rels[i] for i in used],
        "reference_utc_from": [refs.how[i] for i in used],
        "gap_s": round(float(ft[used[-1]] - ft[used[0]]), 3),
        "speed_kmh": round(cal.speed_kmh, 2),
        "calibration": cal.describe(),
    })


def placed_candidates(source: str, todo: Sequence[tuple[str, datetime, str]], t: np.ndarray, fixes: Fixes,
                      pl, radius: np.ndarray, conf: np.ndarray, detail_of) -> dict[str, Candidate]:
    """One Candidate per photo of `todo` that `interpolate` placed (`pl`), shared by the time and the GPX sources.
    detail: the kind, the seconds from the photo to each fix used, the photo's UTC and how it was found, and
    what `detail_of(indexes of the fixes used)` adds for the source."""
    out: dict[str, Candidate] = {}
    for k, (rel, utc, how) in enumerate(todo):
        if pl.kind[k] == NONE:
            continue
        used = sorted({int(pl.i0[k]), int(pl.i1[k])})
        detail = {"kind": KIND_NAMES[int(pl.kind[k])], **detail_of(used),
                  "seconds": [round(float(fixes.t[i] - t[k]), 3) for i in used],
                  "utc": utc.isoformat(), "utc_from": how}
        out[rel] = Candidate(source, float(pl.lat[k]), float(pl.lon[k]), float(radius[k]), float(conf[k]), detail)
    return out


def utc_now_offset_s(at: datetime) -> int:
    """This computer's UTC offset (seconds east) at naive UTC `at`: exiftool's assumption for a time without zone."""
    local = at.replace(tzinfo=UTC).astimezone()
    off = local.utcoffset()
    return int(off.total_seconds()) if off is not None else 0
