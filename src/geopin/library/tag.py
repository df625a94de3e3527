"""`geopin tag`: plan a position for every photo of a library that has none, then write it, journalled.

Plan: scan the metadata, embed the photos once (cached by content), estimate each camera's clock, and ask
each source (time between the library's own geotagged photos, GPX tracks, the visual model) for a
candidate; `combine` merges them into one proposal per photo. Apply: write the proposals that are sure
enough (confidence and radius) through the journal, so that `undo` restores every file bit for bit.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geopin.io import write_json, write_text
from geopin.library.combine import Candidate, Proposal, combine
from geopin.library.photos import LibraryPhoto, scan_library

log = logging.getLogger(__name__)

STATE_DIR_NAME = ".geopin"  # inside the library: hidden, so scans skip it
PLAN_FILE = "plan.json"
CSV_FILE = "tag.csv"
GEOJSON_FILE = "tag.geojson"
PLAN_FORMAT = 1
WRITE_MODES = ("xmp", "exif")


@dataclass
class TagConfig:
    """Every default of `geopin tag` (the CLI reads them from here)."""

    gpx: tuple[Path, ...] = ()  # GPX tracks
    clock_offsets: tuple[str, ...] = ()  # "CAMERA=±HH:MM:SS": the camera clock minus local time
    # written only when the truth is at least this likely within radius_km of the answer ...
    min_confidence: float = 0.5
    # ... and that radius is at most this: a pin with a country-wide doubt misleads every map that shows it
    max_radius_km: float = 25.0
    write: str = "xmp"  # "xmp": sidecar NAME.EXT.xmp (darktable, digiKam); "exif": into the photo, after a backup
    state_dir: Path | None = None  # journal, backups, plan and reports; None: LIBRARY/.geopin
    visual: bool = True  # ask the visual model (embeds every photo: the slow part)
    model_dir: Path | None = None  # None: the bundled model
    max_int_s: float = 1800.0  # as exiftool's GeoMaxIntSecs: interpolate between fixes at most this far apart
    max_ext_s: float = 1800.0  # as exiftool's GeoMaxExtSecs: else the nearest fix, if at most this far in time

    def __post_init__(self) -> None:
        if self.write not in WRITE_MODES:
            raise ValueError(f"--write must be one of {', '.join(WRITE_MODES)}, not {self.write!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence must be within [0, 1], not {self.min_confidence}")
        if self.max_radius_km <= 0:
            raise ValueError(f"--max-radius-km must be positive, not {self.max_radius_km}")
        for name in ("max_int_s", "max_ext_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        self.gpx = tuple(Path(p) for p in self.gpx)
        self.clock_offsets = tuple(self.clock_offsets)

    def state_for(self, root: Path) -> Path:
        return Path(self.state_dir) if self.state_dir is not None else Path(root) / STATE_DIR_NAME


@dataclass
class Plan:
    """What `geopin tag` proposes for a library: one proposal per photo without GPS."""

    root: Path
    proposals: list[Proposal]
    photos: dict[str, LibraryPhoto]
    cameras: list[dict] = field(default_factory=list)  # each camera's clock: shift and how it was found
    summary: dict = field(default_factory=dict)

    def entry(self, prop: Proposal, cfg: TagConfig) -> dict[str, Any]:
        """The photo's line of the dry run: {path, lat, lon, radius_km, confidence, source} or {path, reason}."""
        photo = self.photos[prop.rel]
        out: dict[str, Any] = {"path": str(self.root / prop.rel), "rel": prop.rel}
        if prop.placed:
            ok, why = writable(prop, cfg)
            out.update(lat=round(prop.lat, 7), lon=round(prop.lon, 7), radius_km=round(prop.radius_km, 3),
                       confidence=round(prop.confidence, 3), source=prop.source, write=ok)
            if why:
                out["why_not"] = why
        else:
            out["reason"] = prop.reason
        out["camera"] = photo.camera
        out["taken"] = photo.taken.isoformat() if photo.taken else None
        if photo.note:
            out["note"] = photo.note
        out["detail"] = prop.detail
        return out


def writable(prop: Proposal, cfg: TagConfig) -> tuple[bool, str]:
    """Whether a proposal is sure enough to write, and if not, why."""
    if not prop.placed:
        return False, prop.reason
    if prop.confidence < cfg.min_confidence:
        return False, f"confidence {prop.confidence:.2f} below --min-confidence {cfg.min_confidence:g}"
    if prop.radius_km > cfg.max_radius_km:
        return False, f"radius {prop.radius_km:.0f} km above --max-radius-km {cfg.max_radius_km:g}"
    return True, ""


def references(photos: list[LibraryPhoto]) -> list[int]:
    """Indexes of the photos whose position is a measurement: GPS not written by geopin, readable file."""
    return [i for i, p in enumerate(photos) if p.is_reference]


def embed_library(photos: list[LibraryPhoto], predictor, progress: bool = True) -> np.ndarray:
    """L2-normalised features of the readable photos (NaN rows for the rest), cached by content so that
    a rerun, or a second library holding the same files, embeds nothing twice."""
    from geopin.features.embed import (
        EmbeddingCache,
        cache_key,
        cache_spec,
        embed_images,
    )
    from geopin.log import progress as bar

    backbone, ecfg = predictor.backbone, predictor.embed_cfg
    out = np.full((len(photos), backbone.dim), np.nan, dtype=np.float32)
    todo = [i for i, p in enumerate(photos) if not p.problem and p.sha256]
    cache = EmbeddingCache(ecfg.resolved_cache_dir() / cache_key(backbone, ecfg), backbone.dim,
                           spec=cache_spec(backbone, ecfg))
    found = cache.lookup({photos[i].sha256 for i in todo})
    missing = [i for i in todo if photos[i].sha256 not in found]
    for i in todo:
        if photos[i].sha256 in found:
            out[i] = found[photos[i].sha256]
    chunk = 64
    done: dict[str, np.ndarray] = {}
    with bar(total=len(missing), desc="embedding photos", unit="photo", disable=None if progress else True) as pbar:
        for start in range(0, len(missing), chunk):
            idx = [i for i in missing[start:start + chunk] if photos[i].sha256 not in done]
            try:
                vecs = list(embed_images([photos[i].path for i in idx], backbone, ecfg))
            except ValueError:  # one file reads as metadata but not as pixels: find it, keep the rest
                vecs = []
                for i in idx:
                    try:
                        vecs.append(embed_images([photos[i].path], backbone, ecfg)[0])
                    except ValueError as exc:
                        log.warning("%s", exc)
                        vecs.append(None)
            for i, vec in zip(idx, vecs):
                if vec is None or photos[i].sha256 in done:
                    continue
                done[photos[i].sha256] = vec
                cache.add(photos[i].sha256, vec)
            pbar.update(len(missing[start:start + chunk]))
    cache.flush()
    for i in missing:
        if photos[i].sha256 in done:
            out[i] = done[photos[i].sha256]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (out / norms).astype(np.float32)


def plan_library(root: str | Path, cfg: TagConfig | None = None, progress: bool = True, predictor=None) -> Plan:
    """Propose a position for every photo of ROOT without GPS (nothing is written)."""
    from geopin.library.clock import estimate_shifts, parse_clock_offset
    from geopin.library.gpx import gpx_candidates, read_gpx
    from geopin.library.timeline import TimeConfig, time_candidates

    cfg = cfg or TagConfig()
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (geopin tag takes the library's folder)")
    tracks = [read_gpx(p) for p in cfg.gpx]  # a bad track is an input error: before the long part
    given = dict(parse_clock_offset(s) for s in cfg.clock_offsets)
    photos = scan_library(root, progress=progress)
    by_rel = {p.rel: p for p in photos}
    refs = references(photos)
    targets = [i for i, p in enumerate(photos) if not p.has_gps]
    log.info("%s: %d photos, %d with GPS (references), %d to place", root, len(photos), len(refs), len(targets))

    tcfg = TimeConfig(max_int_s=cfg.max_int_s, max_ext_s=cfg.max_ext_s)
    need_pixels = cfg.visual and targets
    embeddings = None
    predictor_used = None
    if need_pixels or any(p.camera for p in photos):
        if predictor is None:
            from geopin.locate.predict import PredictConfig, Predictor

            predictor = Predictor(PredictConfig(model_dir=cfg.model_dir, text="never"))
        predictor_used = predictor
        embeddings = embed_library(photos, predictor, progress=progress)
    shifts = estimate_shifts(photos, embeddings, given, tcfg)
    by_source: dict[str, dict[str, Candidate]] = {"time": time_candidates(photos, shifts, tcfg)}
    if tracks:
        by_source["gpx"] = gpx_candidates(photos, tracks, shifts, tcfg)
    visual_summary: dict = {}
    if need_pixels and embeddings is not None:
        from geopin.library.visual import VisualConfig, visual_candidates

        ok_targets = [i for i in targets if not photos[i].problem and np.isfinite(embeddings[i]).all()]
        by_source["visual"], visual_summary = visual_candidates(
            photos, embeddings, ok_targets, refs, VisualConfig(), model=predictor_used.model)

    dup_of = _duplicates(photos)
    proposals = []
    for i in targets:
        p = photos[i]
        cands = {s: c[p.rel] for s, c in by_source.items() if p.rel in c}
        prop = combine(p.rel, cands, reason_if_none=_unplaced_reason(p, cfg))
        if p.rel in dup_of:
            prop.detail["duplicate_of"] = dup_of[p.rel]
        proposals.append(prop)
    cameras = [s.to_dict() for s in shifts.values()]
    counts: dict[str, int] = defaultdict(int)
    for prop in proposals:
        counts[prop.source or f"unplaced:{prop.reason}"] += 1
    summary = {
        "photos": len(photos), "references": len(refs), "to_place": len(targets),
        "placed_by_geopin_before": sum(p.placed_by_geopin for p in photos),
        "unreadable": sum(bool(p.problem) for p in photos),
        "by_source": dict(sorted(counts.items())),
        "writable": sum(writable(prop, cfg)[0] for prop in proposals),
        "visual": visual_summary,
    }
    return Plan(root, proposals, by_rel, cameras, summary)


def _unplaced_reason(photo: LibraryPhoto, cfg: TagConfig) -> str:
    if photo.problem:
        return photo.problem
    if photo.taken is None and photo.broken_exif:
        return "broken_exif"
    if photo.taken is None and not cfg.visual:
        return "no_time"
    if not cfg.visual:
        return "no_fix_near_in_time"
    return "no_candidate"


def _duplicates(photos: list[LibraryPhoto]) -> dict[str, str]:
    """rel -> the first rel with the same bytes (duplicate files get the same answer; both are written)."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for p in photos:
        if not p.sha256:
            continue
        if p.sha256 in first:
            out[p.rel] = first[p.sha256]
        else:
            first[p.sha256] = p.rel
    return out


# ------------------------------------------------------------------------------------------------------------
# Reports: one writer and one reader of the plan file; CSV and GeoJSON for people and GIS


def plan_entries(plan: Plan, cfg: TagConfig) -> list[dict]:
    return [plan.entry(p, cfg) for p in plan.proposals]


def write_reports(plan: Plan, cfg: TagConfig, out_dir: Path | None = None) -> dict[str, Path]:
    """plan.json (the review page and `--apply` read it), tag.csv and tag.geojson, each written atomically."""
    out_dir = Path(out_dir) if out_dir is not None else cfg.state_for(plan.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = plan_entries(plan, cfg)
    doc = {"format": PLAN_FORMAT, "root": str(plan.root), "config": _cfg_dict(cfg), "summary": plan.summary,
           "cameras": plan.cameras, "entries": entries}
    paths = {"plan": write_json(doc, out_dir / PLAN_FILE)}
    buf = io.StringIO()
    cols = ["path", "lat", "lon", "radius_km", "confidence", "source", "write", "why_not", "reason", "camera", "taken",
            "note"]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow(e)
    paths["csv"] = write_text(buf.getvalue(), out_dir / CSV_FILE)
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [e["lon"], e["lat"]]},
                 "properties": {k: v for k, v in e.items() if k not in ("lat", "lon", "detail")}}
                for e in entries if "lat" in e]
    paths["geojson"] = write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1),
                                  out_dir / GEOJSON_FILE)
    return paths


def read_plan(path: str | Path) -> dict:
    """The plan file as written by write_reports; a clear error for anything else."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no plan here (run `geopin tag LIBRARY --dry-run` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a geopin plan: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT or not isinstance(doc.get("entries"), list):
        raise ValueError(f"{path}: not a geopin plan of format {PLAN_FORMAT}")
    return doc


def _cfg_dict(cfg: TagConfig) -> dict:
    d = asdict(cfg)
    d["gpx"] = [str(p) for p in cfg.gpx]
    d["clock_offsets"] = list(cfg.clock_offsets)
    for k in ("state_dir", "model_dir"):
        d[k] = str(d[k]) if d[k] is not None else None
    return d


# ------------------------------------------------------------------------------------------------------------
# Writing and undoing


@dataclass
class Decision:
    """What a reviewer said of one photo: accept the proposal, reject it, or move it to (lat, lon)."""

    action: str  # "accept" | "reject" | "move"
    lat: float | None = None
    lon: float | None = None


#: A hand-placed pin: the reviewer put it there; how far off a click on the map can be
MANUAL_RADIUS_KM = 0.1


def apply_plan(plan: Plan, cfg: TagConfig, decisions: dict[str, Decision] | None = None,
               progress: bool = True) -> dict:
    """Write the proposals that are sure enough (or that a reviewer accepted or moved), in one journalled run."""
    from geopin.library.journal import Journal
    from geopin.library.write import Placement, write_placement
    from geopin.log import progress as bar

    decisions = decisions or {}
    state = cfg.state_for(plan.root)
    todo: list[tuple[LibraryPhoto, Proposal]] = []
    skipped: list[dict] = []
    for prop in plan.proposals:
        d = decisions.get(prop.rel)
        if d is not None and d.action == "reject":
            skipped.append({"rel": prop.rel, "reason": "rejected in review"})
            continue
        if d is not None and d.action == "move":
            prop = Proposal(prop.rel, d.lat, d.lon, MANUAL_RADIUS_KM, 1.0, "manual", detail=prop.detail)
        elif d is None:
            ok, why = writable(prop, cfg)
            if not ok:
                skipped.append({"rel": prop.rel, "reason": why})
                continue
        elif not prop.placed:  # accepted, but there is nothing to accept
            skipped.append({"rel": prop.rel, "reason": prop.reason})
            continue
        todo.append((plan.photos[prop.rel], prop))
    outcomes = []
    if not todo:  # nothing to write: no run in the journal (an undo then undoes the last real one)
        return {"run": None, "state_dir": str(state), "mode": cfg.write, "not_written": skipped, "skipped": []}
    with Journal(state, plan.root, mode=cfg.write, params={"root": str(plan.root), "config": _cfg_dict(cfg)}) as journal:
        for photo, prop in bar(todo, desc="writing positions", unit="photo", disable=None if progress else True):
            placement = Placement(lat=prop.lat, lon=prop.lon, radius_km=prop.radius_km, confidence=prop.confidence,
                                  source=prop.source, run_id=journal.run_id)
            outcome = write_placement(photo, placement, mode=cfg.write, journal=journal,
                                      replace_geopin=prop.source == "manual")
            outcomes.append(outcome)
        run_id = journal.run_id
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        counts[o.status] += 1
    return {"run": run_id, "state_dir": str(state), "mode": cfg.write, **dict(counts),
            "not_written": skipped, "skipped": [{"rel": o.rel, "reason": o.reason} for o in outcomes
                                                if o.status == "skipped"]}


def undo_last(root: str | Path, cfg: TagConfig | None = None, run_id: str | None = None) -> dict:
    """Undo the latest run (or the named one): every file back to its bytes before it."""
    from geopin.library.journal import undo

    cfg = cfg or TagConfig()
    report = undo(cfg.state_for(Path(root)), run_id=run_id)
    return asdict(report)


# ------------------------------------------------------------------------------------------------------------
# Review: the plan read back, decisions kept beside it, photos grouped for the page

DECISIONS_FILE = "decisions.json"
DECISION_ACTIONS = ("accept", "reject", "move")
#: A trip ends where the library's photos pause for this long (a night, a flight home)
TRIP_GAP_S = 12 * 3600


def load_plan(root: str | Path, cfg: TagConfig | None = None) -> Plan:
    """The plan of the last dry run (plan.json in the state folder), with the photos' metadata read anew."""
    cfg = cfg or TagConfig()
    root = Path(root)
    doc = read_plan(cfg.state_for(root) / PLAN_FILE)
    photos = {p.rel: p for p in scan_library(root, progress=False)}
    proposals = []
    for e in doc["entries"]:
        rel = e.get("rel")
        if rel not in photos:  # moved or deleted since the dry run: nothing to write for it
            log.warning("%s: in the plan but no longer in %s", rel, root)
            continue
        if "lat" in e:
            proposals.append(Proposal(rel, float(e["lat"]), float(e["lon"]), float(e["radius_km"]),
                                      float(e["confidence"]), str(e["source"]), detail=e.get("detail") or {}))
        else:
            proposals.append(Proposal(rel, reason=str(e.get("reason", "")), detail=e.get("detail") or {}))
    return Plan(root, proposals, photos, doc.get("cameras") or [], doc.get("summary") or {})


def read_decisions(state_dir: str | Path) -> dict[str, Decision]:
    """The reviewer's decisions so far ({} when none)."""
    path = Path(state_dir) / DECISIONS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {rel: decision_from_dict(d, rel) for rel, d in raw["decisions"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a geopin decisions file: {exc}") from exc


def write_decisions(state_dir: str | Path, decisions: dict[str, Decision]) -> Path:
    return write_json({"decisions": {rel: asdict(d) for rel, d in sorted(decisions.items())}},
                      Path(state_dir) / DECISIONS_FILE)


def decision_from_dict(d: dict, rel: str = "") -> Decision:
    """A decision from JSON, checked: a clear error naming the photo for anything malformed."""
    action = d.get("action")
    if action not in DECISION_ACTIONS:
        raise ValueError(f"{rel}: action must be one of {', '.join(DECISION_ACTIONS)}, not {action!r}")
    if action != "move":
        return Decision(action)
    from geopin.dataset.exif import coord_problem

    try:
        lat, lon = float(d["lat"]), float(d["lon"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{rel}: a move needs numeric lat and lon") from None
    problem = coord_problem(lat, lon)
    if problem:
        raise ValueError(f"{rel}: {problem[1]}")
    return Decision(action, lat, lon)


def groups(plan: Plan) -> list[dict]:
    """Photos to review together: by trip (a pause of TRIP_GAP_S splits two) and, inside, by day of the
    camera clock. Photos without time form one group of their own."""
    timed = sorted((plan.photos[p.rel].taken, p.rel) for p in plan.proposals if plan.photos[p.rel].taken)
    untimed = [p.rel for p in plan.proposals if not plan.photos[p.rel].taken]
    out: list[dict] = []
    trip = 0
    prev = None
    for taken, rel in timed:
        if prev is None or (taken - prev).total_seconds() > TRIP_GAP_S:
            trip += 1
        prev = taken
        day = taken.date().isoformat()
        if not out or out[-1]["trip"] != trip or out[-1]["day"] != day:
            out.append({"id": f"trip{trip}-{day}", "trip": trip, "day": day, "label": f"trip {trip}, {day}",
                        "rels": []})
        out[-1]["rels"].append(rel)
    if untimed:
        out.append({"id": "no-time", "trip": None, "day": None, "label": "no time", "rels": untimed})
    return out
