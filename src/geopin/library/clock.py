"""Camera clocks: how far each camera's clock is from UTC, so that its photos can be placed in time.

A camera without offset tags records only its clock reading. Its shift (clock − UTC, seconds) is taken, in order,
from the user (`--clock-offset CAMERA=±HH:MM:SS`, relative to local time), from look-alike pairs (the same scene
shot by this camera and by a camera that states its UTC, within seconds of each other: the difference of the two
readings is the shift), else from the assumption that the clock shows local time. Shifts are constant per camera:
people rarely reset a camera's clock on a trip.

"Local time" for a camera is the zone of the references nearest in time to its earliest photos: where its clock was
last set or compared, before the trip crossed a zone (people set the clock at home and leave it). The CameraShift
says which zone it used, so a wrong guess shows and `--clock-offset` fixes it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from geopin.library.photos import LibraryPhoto
from geopin.library.timeline import TimeConfig, direct_utc, to_seconds, utc_now_offset_s

logger = logging.getLogger(__name__)

EARLY_MIN, EARLY_SHARE = 5, 0.1  # "local time" is the zone at a camera's earliest photos (this many / this share)
OFFSET_TAGS, GIVEN, PAIRS, ASSUMED = "offset tags", "given", "look-alike pairs", "assumed local time"

_OFFSET_RE = re.compile(r"^\s*([+-])?\s*(\d{1,3}):(\d{1,2})(?::(\d{1,2}(?:\.\d+)?))?\s*$")


def format_offset(seconds: float) -> str:
    """±HH:MM:SS (sub-seconds kept when present)."""
    sign = "-" if seconds < 0 else "+"
    s = abs(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    sec_text = f"{int(sec):02d}" if float(sec).is_integer() else f"{sec:06.3f}"
    return f"{sign}{int(h):02d}:{int(m):02d}:{sec_text}"


def parse_offset(text: str) -> float:
    """Seconds of "±HH:MM[:SS[.s]]"; ValueError naming the text otherwise."""
    m = _OFFSET_RE.match(text)
    if not m or int(m.group(3)) >= 60 or (m.group(4) and float(m.group(4)) >= 60):
        raise ValueError(f"{text!r}: not a clock offset; write ±HH:MM:SS, e.g. +01:07:00")
    sign = -1.0 if m.group(1) == "-" else 1.0
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4) or 0))


def parse_clock_offset(text: str) -> tuple[str, float]:
    """'Canon EOS 80D=+01:07:00' → ('Canon EOS 80D', 4020.0): the camera's clock minus local time.

    The camera name is everything before the last '=' (names may hold spaces); ValueError naming the input."""
    camera, sep, offset = text.rpartition("=")
    if not sep or not camera.strip():
        raise ValueError(f"--clock-offset {text!r}: expected CAMERA=±HH:MM:SS, e.g. 'Canon EOS 80D=+01:07:00'")
    try:
        return camera.strip(), parse_offset(offset)
    except ValueError as exc:
        raise ValueError(f"--clock-offset {text!r}: {exc}") from None


def match_camera(name: str, cameras: Sequence[str]) -> str:
    """The library camera a user's name means: exact, else case-insensitive, else the one camera whose name
    contains it (case-insensitive; 'EOS 80D' finds 'Canon Canon EOS 80D'). ValueError naming both otherwise."""
    if name in cameras:
        return name
    low = name.lower()
    for pick in ([c for c in cameras if c.lower() == low], [c for c in cameras if low in c.lower()]):
        if len(pick) == 1:
            return pick[0]
        if len(pick) > 1:
            raise ValueError(f"--clock-offset camera {name!r} is ambiguous: it matches {', '.join(sorted(pick))}")
    known = ", ".join(repr(c) for c in sorted(cameras)) or "none"
    raise ValueError(f"--clock-offset camera {name!r}: no such camera in the library (cameras: {known})")


@dataclass(frozen=True)
class CameraShift:
    """How a camera's clock reads against UTC: utc = taken − shift_s. `local_offset_s` is the zone its clock was
    compared with (so vs_local_s = shift_s − local_offset_s is what a person would set: "+01:07:00 vs local")."""

    camera: str
    shift_s: float
    method: str  # OFFSET_TAGS, GIVEN, PAIRS or ASSUMED
    local_offset_s: int = 0
    n_pairs: int = 0
    spread_s: float = 0.0  # range of the agreeing pairs' shifts
    pairs: tuple[tuple[str, str, float], ...] = ()  # (this camera's rel, the other's rel, implied shift s)
    note: str = ""

    @property
    def vs_local_s(self) -> float:
        return self.shift_s - self.local_offset_s

    def to_dict(self) -> dict:
        return {"camera": self.camera, "shift_s": self.shift_s, "method": self.method, "how": self.how,
                "vs_local": format_offset(round(self.vs_local_s, 3)),
                "local_zone": "UTC" + format_offset(self.local_offset_s)[:-3],
                "n_pairs": self.n_pairs, "spread_s": self.spread_s, "describe": self.describe(), "note": self.note,
                "pairs": [list(p) for p in self.pairs]}

    @property
    def how(self) -> str:
        if self.method == PAIRS:
            return f"{PAIRS} (n={self.n_pairs}, spread {self.spread_s:.0f}s)"
        return self.method

    def describe(self) -> str:
        """e.g. 'FUJIFILM X-T30: +01:07:00 vs local time (UTC+01:00), from look-alike pairs (n=8, spread 4s)'."""
        zone = format_offset(self.local_offset_s)[:-3]
        name = self.camera or "(unnamed camera)"
        if self.method == OFFSET_TAGS:
            return f"{name}: offset tags"
        return f"{name}: {format_offset(round(self.vs_local_s, 3))} vs local time (UTC{zone}), from {self.how}"


def _anchors(photos: Sequence[LibraryPhoto]) -> list[tuple[int, float, int]]:
    """(index, UTC seconds, zone seconds) of the photos that state their UTC and whose zone is known or derivable."""
    out = []
    for i, p in enumerate(photos):
        if p.problem or p.taken is None:
            continue
        utc, _ = direct_utc(p)
        if utc is None:
            continue
        zone = p.utc_offset_s if p.utc_offset_s is not None else int(round((p.taken - utc).total_seconds() / 900.0) * 900)
        out.append((i, to_seconds(utc), zone))
    return out


def _local_zone(taken_s: np.ndarray, anchor_local_s: np.ndarray, anchor_zone: np.ndarray,
                cfg: TimeConfig, first_taken: datetime) -> tuple[int, str]:
    """The zone of the anchors nearest in time to most of a camera's photos (both times in one frame: local
    readings against the anchors' local times, or UTC against UTC); this computer's zone without anchors."""
    if anchor_local_s.size == 0:
        if cfg.local_utc_offset_s is not None:
            return int(cfg.local_utc_offset_s), "configured zone (no photo states one)"
        return utc_now_offset_s(first_taken), "this computer's zone (no photo states one)"
    order = np.argsort(anchor_local_s)
    al, az = anchor_local_s[order], anchor_zone[order]
    j = np.clip(np.searchsorted(al, taken_s), 1, len(al) - 1) if len(al) > 1 else np.zeros(len(taken_s), dtype=int)
    if len(al) > 1:
        left_closer = np.abs(taken_s - al[j - 1]) <= np.abs(al[j] - taken_s)
        j = np.where(left_closer, j - 1, j)
    # the earliest photos: where the clock was last set (or compared), before any zone change on the trip
    early = np.argsort(taken_s, kind="stable")[:max(EARLY_MIN, int(np.ceil(EARLY_SHARE * len(taken_s))))]
    counts = Counter(int(z) for z in az[j[early]])
    zone, n = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
    return zone, f"zone of the references nearest in time to {n} of its earliest {len(early)} photos"


def _mutual_pairs(cam_t: np.ndarray, cam_e: np.ndarray, anc_t: np.ndarray, anc_e: np.ndarray, centre: float,
                  cfg: TimeConfig) -> list[tuple[int, int, float, float]]:
    """(camera row, anchor row, implied shift, similarity) of mutual best matches among the pairs whose implied
    shift (clock reading − anchor UTC) lies within clock_search_s of `centre` and whose cosine ≥ min_similarity."""
    if cam_t.size == 0 or anc_t.size == 0:
        return []
    best_c = np.full(len(cam_t), -1)
    best_c_sim = np.full(len(cam_t), -np.inf)
    best_a = np.full(len(anc_t), -1)
    best_a_sim = np.full(len(anc_t), -np.inf)
    block = max(1, 2_000_000 // max(1, len(anc_t)))
    for s in range(0, len(cam_t), block):
        sim = cam_e[s:s + block] @ anc_e.T
        implied = cam_t[s:s + block, None] - anc_t[None, :]
        sim = np.where(np.abs(implied - centre) <= cfg.clock_search_s, sim, -np.inf)
        arg = sim.argmax(axis=1)
        best_c[s:s + block] = arg
        best_c_sim[s:s + block] = sim[np.arange(len(arg)), arg]
        col = sim.argmax(axis=0)
        col_sim = sim[col, np.arange(sim.shape[1])]
        better = col_sim > best_a_sim
        best_a[better] = col[better] + s
        best_a_sim[better] = col_sim[better]
    out = []
    for c, a in enumerate(best_c):
        if a >= 0 and best_c_sim[c] >= cfg.min_similarity and best_a[a] == c:
            out.append((c, int(a), float(cam_t[c] - anc_t[a]), float(best_c_sim[c])))
    return out


def robust_shift(implied: np.ndarray, agree_s: float) -> tuple[float, np.ndarray] | None:
    """The mode of the implied shifts (the value with most others within agree_s), then the median of those that
    agree with it. None when another, disjoint group is as large (no clear answer)."""
    if implied.size == 0:
        return None
    d = np.asarray(implied, dtype=np.float64)
    near = np.abs(d[:, None] - d[None, :]) <= agree_s
    counts = near.sum(axis=1)
    best = int(np.argmax(counts))
    members = near[best]
    centre = float(np.median(d[members]))
    members = np.abs(d - centre) <= agree_s
    rest = d[np.abs(d - centre) > 2 * agree_s]
    if rest.size:
        rest_near = np.abs(rest[:, None] - rest[None, :]) <= agree_s
        if rest_near.sum(axis=1).max() >= members.sum():
            return None
    return float(np.median(d[members])), members


def estimate_shifts(photos: Sequence[LibraryPhoto], embeddings: np.ndarray | None, given: Mapping[str, float] | None = None,
                    cfg: TimeConfig | None = None) -> dict[str, CameraShift]:
    """A CameraShift per camera of the library (see the module docstring for the order of sources).

    embeddings: L2-normalised rows aligned with `photos` (NaN rows, or None for all, are never paired).
    given: camera name (as `match_camera` resolves it) → clock − local time, seconds (`parse_clock_offset`).
    A camera whose every timed photo states its UTC gets method "offset tags"; photo_utc uses those tags."""
    cfg = cfg or TimeConfig()
    cameras = sorted({p.camera for p in photos if not p.problem and p.taken is not None})
    given_by_camera = {match_camera(name, cameras): float(v) for name, v in (given or {}).items()}
    anchors = _anchors(photos)
    anc_idx = np.array([a[0] for a in anchors], dtype=np.int64)
    anc_utc = np.array([a[1] for a in anchors], dtype=np.float64)
    anc_zone = np.array([a[2] for a in anchors], dtype=np.int64)
    anc_cam = np.array([photos[i].camera for i in anc_idx], dtype=object)
    emb = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
    if emb is not None and len(emb) != len(photos):
        raise ValueError(f"embeddings have {len(emb)} rows for {len(photos)} photos")

    shifts: dict[str, CameraShift] = {}
    for cam in cameras:
        rows = [i for i, p in enumerate(photos) if p.camera == cam and not p.problem and p.taken is not None]
        untagged = [i for i in rows if direct_utc(photos[i])[0] is None]
        if not untagged:
            offs = [(photos[i].taken - direct_utc(photos[i])[0]).total_seconds() for i in rows]
            shifts[cam] = CameraShift(cam, float(np.median(offs)), OFFSET_TAGS, round(float(np.median(offs))))
            continue
        taken_s = np.array([to_seconds(photos[i].taken) for i in untagged])
        other = anc_cam != cam
        local_s = taken_s - given_by_camera.get(cam, 0.0)  # the local time the clock readings stand for
        zone, zone_note = _local_zone(local_s, anc_utc[other] + anc_zone[other], anc_zone[other], cfg,
                                      min(photos[i].taken for i in untagged))
        if cam in given_by_camera:
            shifts[cam] = CameraShift(cam, given_by_camera[cam] + zone, GIVEN, zone, note=zone_note)
            continue
        found = None
        if emb is not None and other.any():
            ok_c = np.array([np.isfinite(emb[i]).all() for i in untagged])
            a_rows = anc_idx[other]
            ok_a = np.isfinite(emb[a_rows]).all(axis=1)
            c_rows = np.array(untagged)[ok_c]
            pairs = _mutual_pairs(taken_s[ok_c], emb[c_rows], anc_utc[other][ok_a], emb[a_rows[ok_a]], float(zone), cfg)
            if len(pairs) >= cfg.min_pairs:
                implied = np.array([p[2] for p in pairs])
                res = robust_shift(implied, cfg.pair_agree_s)
                if res is not None and res[1].sum() >= cfg.min_pairs:
                    shift, members = res
                    used = [pairs[k] for k in np.flatnonzero(members)]
                    spread = float(implied[members].max() - implied[members].min())
                    # the zone its photos were in, now that their UTC is known (for the words vs local time)
                    zone, zone_note = _local_zone(taken_s - shift, anc_utc[other], anc_zone[other], cfg,
                                                  min(photos[i].taken for i in untagged))
                    found = CameraShift(
                        cam, shift, PAIRS, zone, n_pairs=len(used), spread_s=spread,
                        pairs=tuple((photos[c_rows[c]].rel, photos[a_rows[ok_a][a]].rel, d) for c, a, d, _ in used),
                        note=f"{len(pairs)} mutual look-alike matches, {len(used)} agree; local zone: {zone_note}")
            logger.info("%s: %d look-alike pairs%s", cam or "(unnamed camera)", len(pairs),
                        "" if found else " (no agreeing set: assuming local time)")
        shifts[cam] = found or CameraShift(cam, float(zone), ASSUMED, zone, note=zone_note)
    for s in shifts.values():
        logger.info("clock %s", s.describe())
    return shifts


def shift_table(shifts: Mapping[str, CameraShift]) -> list[dict]:
    """Rows for reports: camera, shift vs UTC and vs local time, and how it was found."""
    return [{"camera": s.camera, "shift_vs_utc": format_offset(s.shift_s), "vs_local": format_offset(s.vs_local_s),
             "local_zone": format_offset(s.local_offset_s)[:-3], "how": s.how, "note": s.note}
            for s in shifts.values()]

