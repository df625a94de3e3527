"""Adaptive S2 geocells: the classes a geolocation model chooses between.

Following PlaNet (Weyand et al., 2016) and DeepLocation, the Earth is cut into S2 cells that adapt to
where photos are: start from coarse cells, split any cell holding more than `max_photos` photos into
its four children, and drop cells left with fewer than `min_photos` (too few to learn). Dense places
thus get small cells and empty oceans none. Several granularities come from one run; since a cell is
split exactly when its count exceeds the threshold, the partition with the smaller `max_photos` always
refines the one with the larger.

S2 leaf ids are computed here with NumPy (same arithmetic as s2sphere's CellId.from_lat_lng, which is
pure Python and far too slow for a million photos); ancestors are then bit operations on uint64.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from geopin.countries import DEFAULT_MAX_KM, country_of
from geopin.dataset.manifest import FOR_POINTS, read_manifest
from geopin.geo import to_xyz, validate_lat_lon
from geopin.io import sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)

S2_MAX_LEVEL = 30
DEFAULT_START_LEVEL = 1
DEFAULT_MAX_LEVEL = 20

CELLS_FILE = "cells.parquet"
ASSIGNMENTS_FILE = "assignments.parquet"
SUMMARY_FILE = "cells.json"

CELL_COLUMNS = ["granularity", "class_id", "cell_id", "token", "s2_level", "count", "lat", "lon", "country"]

_U64 = np.uint64


# --------------------------------------------------------------------------------------------------
# Vectorised S2 cell ids
# --------------------------------------------------------------------------------------------------


def _lookup_pos() -> np.ndarray:
    from s2sphere.sphere import LOOKUP_POS

    return np.asarray(LOOKUP_POS, dtype=np.int64)


def _face_uv(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    # Same tie-breaking as S2's largest_abs_component.
    face = np.where(ax > ay, np.where(ax > az, 0, 2), np.where(ay > az, 1, 2))
    comp = np.choose(face, [x, y, z])
    face = np.where(comp < 0, face + 3, face)
    u = np.empty_like(x)
    v = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        for f, (un, ud, vn, vd) in enumerate(
            [(y, x, z, x), (-x, y, z, y), (-x, z, -y, z), (z, x, y, x), (z, y, -x, y), (-y, z, -x, z)]
        ):
            m = face == f
            if m.any():
                u[m] = un[m] / ud[m]
                v[m] = vn[m] / vd[m]
    return face, u, v


def _uv_to_ij(u: np.ndarray) -> np.ndarray:
    # Quadratic projection, as in S2 and s2sphere.
    s = np.where(u >= 0, 0.5 * np.sqrt(1 + 3 * np.maximum(u, 0)), 1 - 0.5 * np.sqrt(1 - 3 * np.minimum(u, 0)))
    size = 1 << S2_MAX_LEVEL
    return np.clip(np.floor(size * s), 0, size - 1).astype(np.int64)


def leaf_cell_ids(lat, lon) -> np.ndarray:
    """Level-30 S2 cell id (uint64) of each point, identical to s2sphere's CellId.from_lat_lng."""
    lat, lon = validate_lat_lon(lat, lon)
    face, u, v = _face_uv(to_xyz(lat, lon))
    i = _uv_to_ij(u)
    j = _uv_to_ij(v)
    lookup = _lookup_pos()
    n = face.astype(np.uint64) << _U64(60)
    bits = face.astype(np.int64) & 1
    for k in range(7, -1, -1):
        bits = bits + (((i >> (4 * k)) & 15) << 6) + (((j >> (4 * k)) & 15) << 2)
        bits = lookup[bits]
        n |= (bits >> 2).astype(np.uint64) << _U64(8 * k)
        bits &= 3
    return n * _U64(2) + _U64(1)


def _lsb_for_level(level: int) -> np.uint64:
    return _U64(1) << _U64(2 * (S2_MAX_LEVEL - level))


def parent_ids(cell_ids, level: int) -> np.ndarray:
    """Ancestor at `level` of each cell id (ids must be at `level` or finer): (id & -lsb) | lsb."""
    if not 0 <= level <= S2_MAX_LEVEL:
        raise ValueError(f"S2 level must be in 0..{S2_MAX_LEVEL}, got {level}")
    ids = np.asarray(cell_ids, dtype=np.uint64)
    lsb = _lsb_for_level(level)
    return (ids & ~(lsb - _U64(1))) | lsb


def cell_levels(cell_ids) -> np.ndarray:
    """S2 level of each cell id (from the position of its lowest set bit)."""
    ids = np.asarray(cell_ids, dtype=np.uint64)
    lsb = ids & (~ids + _U64(1))
    return (S2_MAX_LEVEL - np.log2(lsb.astype(np.float64)).astype(np.int64) // 2).astype(np.int64)


def cell_ranges(cell_ids) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest leaf id inside each cell; a leaf is in the cell iff it lies in between."""
    ids = np.asarray(cell_ids, dtype=np.uint64)
    lsb_minus_1 = (ids & (~ids + _U64(1))) - _U64(1)
    return ids - lsb_minus_1, ids + lsb_minus_1


def cell_tokens(cell_ids) -> np.ndarray:
    """S2 tokens (hex id without trailing zeros) of cell ids, as an object array of str."""
    ids = np.asarray(cell_ids, dtype=np.uint64).ravel()
    uniq, inverse = np.unique(ids, return_inverse=True)
    tokens = np.array([format(int(c), "016x").rstrip("0") or "X" for c in uniq], dtype=object)
    return tokens[inverse.ravel()]


def token_to_cell_id(token: str) -> int:
    return int(token.ljust(16, "0"), 16)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Granularity:
    """One set of classes: cells split above `max_photos`, dropped below `min_photos`."""

    name: str
    max_photos: int
    min_photos: int

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"granularity name {self.name!r}: use letters, digits and '_' (it names a column)")
        if int(self.max_photos) < 1:
            raise ValueError(f"granularity {self.name!r}: max_photos must be >= 1, got {self.max_photos}")
        if int(self.min_photos) < 1:
            raise ValueError(f"granularity {self.name!r}: min_photos must be >= 1, got {self.min_photos}")
        if self.min_photos > self.max_photos:
            raise ValueError(
                f"granularity {self.name!r}: min_photos ({self.min_photos}) exceeds max_photos ({self.max_photos})"
            )

    @classmethod
    def parse(cls, text: str) -> "Granularity":
        """From "NAME:MAX:MIN", the CLI form."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"granularity {text!r}: expected NAME:MAX:MIN, e.g. coarse:500:5")
        name, max_s, min_s = parts
        try:
            return cls(name.strip(), int(max_s), int(min_s))
        except ValueError as exc:
            raise ValueError(f"granularity {text!r}: {exc}") from exc


# Rule for default_granularities: max_i = max(round(n * fraction_i), floor_i) and
# min = max(round(n / 80_000), 5), lowered to n // 200 (at least 1) for collections under 1,000 photos
# so that a small collection still has classes. The fractions reproduce DeepLocation (500/200/100, min 5 at 400k
# photos, which gave it 1024/2428/4103 classes). Below ~200k photos the floors take over, since a
# fraction of n would leave cells of a handful of photos; they were tuned on Im2GPS3k (2,652 photos,
# start level 1) to give about 30/60/140 classes there.
_DEFAULT_RULE = (("coarse", 1 / 800, 300), ("middle", 1 / 2000, 100), ("fine", 1 / 4000, 40))
_MIN_PER_PHOTO = 1 / 80_000
_MIN_FLOOR = 5


def default_granularities(n_photos: int) -> list[Granularity]:
    """Coarse/middle/fine thresholds scaled to the dataset size (see _DEFAULT_RULE for the rule)."""
    if n_photos < 1:
        raise ValueError(f"default_granularities: need at least one photo, got {n_photos}")
    min_photos = max(round(n_photos * _MIN_PER_PHOTO), min(_MIN_FLOOR, max(1, n_photos // 200)))
    return [
        Granularity(name, max(round(n_photos * fraction), floor), min_photos)
        for name, fraction, floor in _DEFAULT_RULE
    ]


@dataclass(frozen=True)
class CellsConfig:
    """How to build the cells; granularities=None means default_granularities(number of photos)."""

    granularities: tuple[Granularity, ...] | None = None
    start_level: int = DEFAULT_START_LEVEL
    max_level: int = DEFAULT_MAX_LEVEL
    country_max_km: float = DEFAULT_MAX_KM


def _check_levels(start_level: int, max_level: int) -> None:
    if not 0 <= start_level <= max_level <= S2_MAX_LEVEL:
        raise ValueError(
            f"S2 levels: need 0 <= start_level <= max_level <= {S2_MAX_LEVEL}, "
            f"got start_level={start_level}, max_level={max_level}"
        )


def _check_granularities(granularities: Sequence[Granularity]) -> tuple[Granularity, ...]:
    grans = tuple(granularities)
    if not grans:
        raise ValueError("at least one granularity is needed")
    names = [g.name for g in grans]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"granularity names must be unique, repeated: {dupes}")
    return grans


# --------------------------------------------------------------------------------------------------
# The partition
# --------------------------------------------------------------------------------------------------


@dataclass
class CellPartition:
    """Cells of every granularity (stacked table) and each photo's class at each granularity.

    `assignments` is in the photos' input order with columns class_<name> (-1 where the photo's cell
    was dropped) and fine_token, the token of the photo's cell in the finest partition before dropping.
    """

    granularities: tuple[Granularity, ...]
    start_level: int
    max_level: int
    cells: pd.DataFrame
    assignments: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step, for benchmarks

    def granularity(self, name: str) -> Granularity:
        for g in self.granularities:
            if g.name == name:
                return g
        raise KeyError(f"no granularity {name!r}; have {[g.name for g in self.granularities]}")

    def table(self, name: str) -> pd.DataFrame:
        self.granularity(name)
        return self.cells[self.cells["granularity"] == name].reset_index(drop=True)

    def num_classes(self, name: str) -> int:
        return len(self.table(name))

    @property
    def finest(self) -> Granularity:
        """The granularity with the smallest max_photos (last one on ties)."""
        return min(reversed(self.granularities), key=lambda g: g.max_photos)


def _adaptive_cells(sorted_leaf: np.ndarray, max_photos: int, start_level: int, max_level: int) -> np.ndarray:
    """Final (undropped) cell id of each photo, for leaves sorted ascending.

    Leaves in one cell are contiguous in sorted order (S2 ids nest), so counting photos per cell is a
    run-length count, no sort or hashing per level.
    """
    n = sorted_leaf.size
    final = np.empty(n, dtype=np.uint64)
    active = np.arange(n)
    level = start_level
    while active.size:
        parents = parent_ids(sorted_leaf[active], level)
        starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
        counts = np.diff(np.r_[starts, parents.size])
        if level < max_level:
            split = counts > max_photos
        else:
            split = np.zeros(counts.size, dtype=bool)
            over = counts > max_photos
            if over.any():  # e.g. many photos sharing one position: an expected outcome, not an error
                log.info(
                    "%d cell(s) at max S2 level %d still hold more than %d photos (largest: %d); kept unsplit",
                    int(over.sum()), max_level, max_photos, int(counts.max()),
                )
        split_photo = np.repeat(split, counts)
        done = active[~split_photo]
        final[done] = parents[~split_photo]
        active = active[split_photo]
        level += 1
    return final


def build_cells(
    lat,
    lon,
    granularities: Sequence[Granularity] | None = None,
    start_level: int = DEFAULT_START_LEVEL,
    max_level: int = DEFAULT_MAX_LEVEL,
    country_max_km: float = DEFAULT_MAX_KM,
) -> CellPartition:
    """Adaptive S2 cells of several granularities for photos at (lat, lon) in degrees.

    Each kept cell gets a dense class id (ordered by cell id), its photo count, a representative point
    (the medoid of its photos: a place where photos were taken, never the sea between two coasts nor
    the cell's geometric centre) and the country of that point.

    The granularities nest by construction: a cell with fewer than `min_photos` photos is still kept
    when it holds a kept cell of a finer granularity (smaller `max_photos`), so every fine class has an
    ancestor at every coarser level and hierarchical inference never reads a missing class.
    """
    lat, lon = validate_lat_lon(lat, lon, name="photos")
    if lat.size == 0:
        raise ValueError("build_cells: no photos given (need at least one photo with lat/lon)")
    _check_levels(start_level, max_level)
    grans = _check_granularities(granularities if granularities is not None else default_granularities(lat.size))

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    leaf = leaf_cell_ids(lat, lon)
    # lat/lon break ties between photos in one leaf, so the result does not depend on the input order
    order = np.lexsort((lon, lat, leaf))
    sorted_leaf = leaf[order]
    sorted_xyz = to_xyz(lat[order], lon[order])
    seconds["leaf_ids"] = time.perf_counter() - t0
    finest = min(reversed(grans), key=lambda g: g.max_photos)

    tables: dict[int, pd.DataFrame] = {}
    assignments: dict[str, np.ndarray] = {}
    fine_token = None
    kept_finer = np.zeros(lat.size, dtype=bool)  # per sorted photo: its cell is kept at a finer level
    for gi in reversed(coarse_to_fine(grans)):
        g = grans[gi]
        t0 = time.perf_counter()
        final = _adaptive_cells(sorted_leaf, g.max_photos, start_level, max_level)
        starts = np.flatnonzero(np.r_[True, final[1:] != final[:-1]])
        counts = np.diff(np.r_[starts, final.size])
        cell_ids = final[starts]
        holds_finer = np.logical_or.reduceat(kept_finer, starts)
        keep = (counts >= g.min_photos) | holds_finer
        cell_index = np.repeat(np.arange(cell_ids.size), counts)
        kept_finer |= keep[cell_index]
        class_of_cell = np.full(cell_ids.size, -1, dtype=np.int64)
        class_of_cell[keep] = np.arange(int(keep.sum()))
        photo_class = np.empty(lat.size, dtype=np.int64)
        photo_class[order] = class_of_cell[cell_index]
        assignments[f"class_{g.name}"] = photo_class
        if g is finest:
            tokens = cell_tokens(cell_ids)
            fine_token = np.empty(lat.size, dtype=object)
            fine_token[order] = tokens[cell_index]

        rep = _medoids(starts[keep], counts[keep], sorted_xyz)
        rep_lat, rep_lon = lat[order[rep]], lon[order[rep]]
        kept_ids = cell_ids[keep]
        tables[gi] = pd.DataFrame(
            {
                "granularity": g.name,
                "class_id": np.arange(kept_ids.size, dtype=np.int64),
                "cell_id": kept_ids.astype(np.uint64),
                "token": cell_tokens(kept_ids),
                "s2_level": cell_levels(kept_ids),
                "count": counts[keep].astype(np.int64),
                "lat": rep_lat,
                "lon": rep_lon,
                "country": country_of(rep_lat, rep_lon, max_km=country_max_km),
            }
        )
        dropped = int(counts[~keep].sum())
        seconds[g.name] = time.perf_counter() - t0
        n_rescued = int((holds_finer & (counts < g.min_photos)).sum())
        log.info(
            "granularity %s (max %d, min %d): %d classes (%d kept under min as parents of finer classes), "
            "%d photos in %d dropped cells, %.2f s",
            g.name, g.max_photos, g.min_photos, kept_ids.size, n_rescued, dropped, int((~keep).sum()),
            seconds[g.name],
        )

    cells = pd.concat([tables[i] for i in range(len(grans))], ignore_index=True)[CELL_COLUMNS]
    cells["token"] = cells["token"].astype(str)
    cells["country"] = cells["country"].astype(str)
    assign = pd.DataFrame({f"class_{g.name}": assignments[f"class_{g.name}"] for g in grans})
    assign["fine_token"] = pd.Series(fine_token, dtype=object).astype(str)
    return CellPartition(grans, start_level, max_level, cells, assign, seconds)


def coarse_to_fine(granularities: Sequence[Granularity]) -> list[int]:
    """Indices of the granularities from coarsest to finest: larger max_photos first, later ones finer on ties.

    A smaller split threshold refines a larger one, so this is also the nesting order of the cells.
    """
    return sorted(range(len(granularities)), key=lambda i: (-granularities[i].max_photos, i))


def _medoids(
    starts: np.ndarray, counts: np.ndarray, sorted_xyz: np.ndarray, max_ref: int = 256, max_cand: int = 64
) -> np.ndarray:
    """Index (into the sorted photos) of each cell's medoid: the photo nearest, along the sphere, to the rest.

    A large cell is judged on evenly spaced photos (up to `max_cand` candidates against `max_ref`
    others); photos are in S2 (Hilbert curve) order, so such a sample is spread over the cell. Chord
    length stands in for arc length (same order, 6x cheaper). The medoid is always one of the cell's
    photos, so it lies inside the cell and where people take photos, unlike the mean of two coasts.
    """
    out = np.empty(starts.size, dtype=np.int64)
    for c, (s, n) in enumerate(zip(starts.tolist(), counts.tolist())):
        if n <= 2:
            out[c] = s
            continue
        ref = s + (_spaced(n, max_ref) if n > max_ref else np.arange(n))
        cand = ref[_spaced(len(ref), max_cand)] if len(ref) > max_cand else ref
        dot = sorted_xyz[cand] @ sorted_xyz[ref].T
        out[c] = cand[int(np.argmin(np.sqrt(np.maximum(2.0 - 2.0 * dot, 0.0)).sum(axis=1)))]
    return out


def _spaced(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def locate(lat, lon, partition: CellPartition, granularity: str) -> np.ndarray:
    """Class id at `granularity` of the kept cell containing each point; -1 where no kept cell does."""
    table = partition.table(granularity)
    lat, lon = validate_lat_lon(lat, lon, name="locate points")
    out = np.full(lat.size, -1, dtype=np.int64)
    if lat.size == 0 or table.empty:
        return out
    ids = table["cell_id"].to_numpy(dtype=np.uint64)
    order = np.argsort(ids)
    lo, hi = cell_ranges(ids[order])
    leaf = leaf_cell_ids(lat, lon)
    pos = np.searchsorted(lo, leaf, side="right") - 1
    valid = pos >= 0
    hit = np.zeros(lat.size, dtype=bool)
    hit[valid] = leaf[valid] <= hi[pos[valid]]
    out[hit] = table["class_id"].to_numpy(dtype=np.int64)[order[pos[hit]]]
    return out


# --------------------------------------------------------------------------------------------------
# The stage: manifest in, cells.parquet + assignments.parquet + cells.json out
# --------------------------------------------------------------------------------------------------


@dataclass
class CellsSummary:
    out_dir: str
    n_photos: int
    n_located: int
    start_level: int
    max_level: int
    granularities: list[dict] = field(default_factory=list)
    reused: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _granularity_stats(partition: CellPartition, n_located: int) -> list[dict]:
    stats = []
    for g in partition.granularities:
        table = partition.table(g.name)
        counts = table["count"].to_numpy()
        stats.append(
            {
                "name": g.name,
                "max_photos": g.max_photos,
                "min_photos": g.min_photos,
                "classes": int(len(table)),
                "photos_kept": int(counts.sum()),
                "photos_dropped": int(n_located - counts.sum()),
                "count_min": int(counts.min()) if counts.size else 0,
                "count_median": float(np.median(counts)) if counts.size else 0.0,
                "count_max": int(counts.max()) if counts.size else 0,
                "level_min": int(table["s2_level"].min()) if counts.size else 0,
                "level_max": int(table["s2_level"].max()) if counts.size else 0,
                "countries": int(table.loc[table["country"] != "", "country"].nunique()),
            }
        )
    return stats


def run_cells(
    manifest_path: str | Path, out_dir: str | Path, cfg: CellsConfig | None = None, force: bool = False
) -> CellsSummary:
    """Build the cells for a manifest and write them; reuse the outputs if inputs and config are unchanged.

    Photos with missing or impossible coordinates are skipped with a warning (class -1, empty token)
    rather than failing the run.
    """
    t0 = time.perf_counter()
    cfg = cfg or CellsConfig()
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    points = read_manifest(manifest_path, FOR_POINTS)[list(FOR_POINTS)].astype({"lat": np.float64, "lon": np.float64})
    lat, lon = points["lat"].to_numpy(), points["lon"].to_numpy()
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    if not ok.all():
        bad_ids = points.loc[~ok, "id"].head(5).tolist()
        log.warning("%s: %d photo(s) without valid lat/lon skipped, e.g. %s", manifest_path, int((~ok).sum()), bad_ids)
    if not ok.any():
        raise ValueError(f"{manifest_path}: no photo has valid lat/lon ({len(points)} rows)")
    _check_levels(cfg.start_level, cfg.max_level)
    grans = _check_granularities(cfg.granularities or default_granularities(int(ok.sum())))

    fingerprint = {
        "manifest_sha256": sha256_file(manifest_path),
        "granularities": [asdict(g) for g in grans],
        "start_level": cfg.start_level,
        "max_level": cfg.max_level,
        "country_max_km": cfg.country_max_km,
    }
    summary_path = out_dir / SUMMARY_FILE
    if not force and _outputs_current(out_dir, fingerprint):
        previous = json.loads(summary_path.read_text())
        log.info("%s: cells are up to date for this manifest and config; reusing them", out_dir)
        summary = CellsSummary(**previous["summary"])
        summary.reused = True
        summary.seconds = time.perf_counter() - t0
        return summary

    # Remove the completion marker first, so an interrupted rewrite is never mistaken for a finished one.
    summary_path.unlink(missing_ok=True)
    partition = build_cells(
        lat[ok], lon[ok], grans, start_level=cfg.start_level, max_level=cfg.max_level, country_max_km=cfg.country_max_km
    )
    assignments = pd.DataFrame({"id": points["id"], "country": ""})
    assignments.loc[ok, "country"] = country_of(lat[ok], lon[ok], max_km=cfg.country_max_km)
    for g in grans:
        col = np.full(len(points), -1, dtype=np.int64)
        col[ok] = partition.assignments[f"class_{g.name}"].to_numpy()
        assignments[f"class_{g.name}"] = col
    fine = np.full(len(points), "", dtype=object)
    fine[ok] = partition.assignments["fine_token"].to_numpy()
    assignments["fine_token"] = fine.astype(str)

    write_parquet(partition.cells, out_dir / CELLS_FILE)
    write_parquet(assignments, out_dir / ASSIGNMENTS_FILE)
    summary = CellsSummary(
        out_dir=str(out_dir),
        n_photos=len(points),
        n_located=int(ok.sum()),
        start_level=cfg.start_level,
        max_level=cfg.max_level,
        granularities=_granularity_stats(partition, int(ok.sum())),
        seconds=time.perf_counter() - t0,
    )
    write_json({"fingerprint": fingerprint, "summary": summary.to_dict()}, summary_path)
    return summary


def _outputs_current(out_dir: Path, fingerprint: dict) -> bool:
    summary_path = out_dir / SUMMARY_FILE
    if not all((out_dir / f).exists() for f in (SUMMARY_FILE, CELLS_FILE, ASSIGNMENTS_FILE)):
        return False
    try:
        previous = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return False
    return previous.get("fingerprint") == json.loads(json.dumps(fingerprint))


def load_cells(out_dir: str | Path) -> CellPartition:
    """The partition written by run_cells (assignments then also carry id and country columns)."""
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise FileNotFoundError(f"{out_dir}: no {SUMMARY_FILE}; run `geopin cells` first (or it was interrupted)")
    meta = json.loads(summary_path.read_text())
    fp = meta["fingerprint"]
    grans = tuple(Granularity(**g) for g in fp["granularities"])
    cells = pd.read_parquet(out_dir / CELLS_FILE)
    cells["cell_id"] = cells["cell_id"].astype(np.uint64)
    assignments = pd.read_parquet(out_dir / ASSIGNMENTS_FILE)
    return CellPartition(grans, int(fp["start_level"]), int(fp["max_level"]), cells, assignments)
