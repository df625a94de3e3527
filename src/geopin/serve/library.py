"""`geopin serve --library DIR`: the review page of `geopin tag` and its API (/library, /api/library/...).

Why it is built this way:
- the plan is made once, at start (or read back from LIBRARY/.geopin/plan.json, fast), so the page
  never waits for the photos to be embedded; the server's own model is reused for it;
- the reviewer's decisions are saved with `write_decisions` (atomically) after every change, so a
  closed tab or a stopped server loses nothing, and `geopin tag` and the page share one decisions file;
- writing and undoing go through `apply_plan` and `undo_last`: the same journal as the command line,
  so `geopin tag LIBRARY --undo` undoes a write made on the page and the other way round;
- a thumbnail is served only for a photo the library scan found (by its rel), never for a path made
  up by the client: `..`, absolute paths and links out of the library are refused;
- errors are the server's `{"error", "detail"}` (HTTPException subclasses with a reason code: the
  app's handlers format them; importing the app here would make an import cycle).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from geopin.dataset.images import ImageError, decode_rgb
from geopin.library.journal import JournalBusy
from geopin.library.tag import (
    PLAN_FILE,
    Decision,
    Plan,
    TagConfig,
    apply_plan,
    decision_from_dict,
    groups,
    load_plan,
    plan_entries,
    plan_library,
    read_decisions,
    undo_last,
    write_decisions,
    write_reports,
)
from geopin.serve.schemas import ErrorBody

log = logging.getLogger(__name__)

#: The page (beside the predict page's files).
PAGE_FILE = "library.html"
#: Thumbnails: the list's and the popup's size by default; the largest a client may ask for.
THUMB_PX = 240
MAX_THUMB_PX = 1024
#: Thumbnails kept in memory (a few kB each): scrolling back up the list costs no decoding.
THUMB_CACHE = 512
#: "clear": forget the decision (back to undecided); the other actions are geopin.library.tag's.
CLEAR = "clear"


@dataclass
class LibraryOptions:
    """How `geopin serve --library` plans and writes: geopin tag's settings, and whether to plan anew."""

    tag: TagConfig = field(default_factory=TagConfig)
    replan: bool = False  # plan again even when the state folder holds a plan.json
    thumb_px: int = THUMB_PX


class LibraryError(HTTPException):
    """An error answer of the review API: the app's handler sends it as {"error": reason, "detail": message}."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(status, detail)
        self.error = error


# ------------------------------------------------------------------------------------------------------------
# What the API answers (the OpenAPI document is built from these; extra fields are allowed)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LibraryEntry(_Open):
    """One photo without GPS: a proposal (lat, lon, ...) or the reason it has none (reason)."""

    rel: str = Field(description="The photo's path inside the library, with '/': its id everywhere.")
    path: str
    lat: float | None = Field(None, description="Proposed position (absent when unplaced).")
    lon: float | None = None
    radius_km: float | None = None
    confidence: float | None = Field(None, description="Calibrated probability that the truth is within radius_km.")
    source: str | None = Field(None, description="time, gpx, visual or a combination such as time+visual.")
    write: bool | None = Field(None, description="Sure enough for `geopin tag` to write it unreviewed.")
    why_not: str | None = Field(None, description="Why `geopin tag` would not write it unreviewed.")
    reason: str | None = Field(None, description="Why the photo is left unplaced.")
    camera: str | None = None
    taken: str | None = Field(None, description="The camera clock's reading (no zone).")
    group: str | None = Field(None, description="The id of its trip/day group.")
    decision: dict[str, Any] | None = Field(None, description="The reviewer's decision: {action, lat, lon}.")
    written: dict[str, Any] | None = Field(None, description="The position geopin wrote for it, as on disk now.")


class LibraryGroup(_Open):
    id: str
    label: str
    trip: int | None
    day: str | None
    rels: list[str]


class LibraryPlan(_Open):
    root: str
    state_dir: str
    write_mode: str = Field(description="xmp (sidecars NAME.EXT.xmp) or exif (into the photos, after a backup).")
    min_confidence: float
    max_radius_km: float
    summary: dict[str, Any]
    cameras: list[dict[str, Any]]
    groups: list[LibraryGroup]
    entries: list[LibraryEntry]
    decisions: dict[str, dict[str, Any]]
    references: list[dict[str, Any]] = Field(description="The library's own geotagged photos {rel, lat, lon, taken}.")
    last_run: dict[str, Any] | None = Field(None, description="The report of the last write or undo from this page.")


class DecisionsRequest(BaseModel):
    """One action for some photos (rels and/or a group), and/or one decision per photo (decisions)."""

    model_config = ConfigDict(extra="forbid")

    rels: list[str] = Field(default_factory=list, description="Photos (rel) the action applies to.")
    group: str | None = Field(None, description="A group id from GET /api/library/plan: the action applies to "
                                                "all its photos (accept skips the unplaced ones).")
    action: str | None = Field(None, description="accept, reject, move (with lat, lon) or clear (undecided).")
    lat: float | None = None
    lon: float | None = None
    decisions: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Per photo: {"REL": {"action": "move", "lat": .., "lon": ..}, ...}.')


class DecisionsAnswer(_Open):
    changed: list[str] = Field(description="The photos whose decision was set or cleared.")
    skipped: list[dict[str, str]] = Field(description="Photos of the group left alone, with the reason.")
    decisions: dict[str, dict[str, Any]] = Field(description="Every decision now (as saved).")


class WriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_undecided: bool = Field(
        False, description="Also write the undecided proposals that are sure enough (what `geopin tag` writes "
                           "unreviewed); by default only what was accepted or moved is written.")


class RunReport(_Open):
    """apply_plan's or undo_last's report (geopin.library.tag)."""


# ------------------------------------------------------------------------------------------------------------
# The review state: the plan, the decisions, the last report; one lock for every change


class LibraryReview:
    """The plan of one library and the reviewer's decisions, shared by the routes."""

    def __init__(self, root: Path, options: LibraryOptions, plan: Plan) -> None:
        self.root = root
        self.options = options
        self.cfg = options.tag
        self.state = self.cfg.state_for(root)
        self.plan = plan
        self.lock = threading.RLock()  # handlers run in the threadpool: one change at a time
        self.decisions: dict[str, Decision] = read_decisions(self.state)
        self.last_run: dict | None = None
        self._thumbs: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._index()

    @classmethod
    def start(cls, root: str | Path, options: LibraryOptions | None = None, predictor=None) -> LibraryReview:
        """Read the library's plan back (fast), or make it now (slow: the photos are embedded) and keep it."""
        options = options or LibraryOptions()
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--library {root}: no such folder (give the photo library's folder)")
        root = root.resolve()
        plan_file = options.tag.state_for(root) / PLAN_FILE
        if plan_file.exists() and not options.replan:
            log.info("%s: reviewing the plan in %s (plan anew with --replan)", root, plan_file)
            plan = load_plan(root, options.tag)
        else:
            log.info("%s: planning the library (embeds the photos once; later starts read %s)", root, plan_file)
            plan = plan_library(root, options.tag, progress=True, predictor=predictor)
            write_reports(plan, options.tag)
        return cls(root, options, plan)

    def _index(self) -> None:
        self.props = {p.rel: p for p in self.plan.proposals}
        self.groups = groups(self.plan)
        self.group_of = {rel: g["id"] for g in self.groups for rel in g["rels"]}
        self.groups_by_id = {g["id"]: g for g in self.groups}

    def reload(self) -> None:
        """The plan read back with the photos' metadata as on disk now (after a write or an undo)."""
        self.plan = load_plan(self.root, self.cfg)
        self._index()

    # -------------------------------------------------------------------------------------------------- plan

    def answer(self) -> dict:
        entries = []
        for e in plan_entries(self.plan, self.cfg):
            rel = e["rel"]
            photo = self.plan.photos[rel]
            e["group"] = self.group_of.get(rel)
            d = self.decisions.get(rel)
            e["decision"] = _decision_dict(d) if d is not None else None
            # what geopin wrote for it, read back from the photo (or its sidecar) by the rescan
            e["written"] = ({"lat": photo.lat, "lon": photo.lon, "from": photo.gps_from}
                            if photo.placed_by_geopin and photo.has_gps else None)
            if photo.problem:
                e["problem_detail"] = photo.detail
            entries.append(e)
        # the library's own geotagged photos: the map shows the route the time source follows
        refs = [{"rel": p.rel, "lat": p.lat, "lon": p.lon, "taken": p.taken.isoformat() if p.taken else None}
                for p in self.plan.photos.values() if p.is_reference]
        return {
            "root": str(self.root), "state_dir": str(self.state), "write_mode": self.cfg.write,
            "references": sorted(refs, key=lambda r: (r["taken"] or "", r["rel"])),
            "min_confidence": self.cfg.min_confidence, "max_radius_km": self.cfg.max_radius_km,
            "summary": self.plan.summary, "cameras": self.plan.cameras, "groups": self.groups,
            "entries": entries, "decisions": self._decisions_dict(), "last_run": self.last_run,
        }

    def _decisions_dict(self) -> dict[str, dict]:
        return {rel: _decision_dict(d) for rel, d in sorted(self.decisions.items())}

    # --------------------------------------------------------------------------------------------- decisions

    def decide(self, req: DecisionsRequest) -> dict:
        """Validate every decision of the request first, then save them all at once (or none)."""
        if not (req.rels or req.group or req.decisions):
            raise LibraryError(422, "invalid_request", "name the photos: rels, group, or decisions")
        if (req.rels or req.group) and req.action is None:
            raise LibraryError(422, "invalid_request", "rels and group need an action "
                                                       "(accept, reject, move with lat and lon, or clear)")
        todo: dict[str, Decision | None] = {}  # None: clear
        skipped: list[dict[str, str]] = []
        with self.lock:
            targets: list[tuple[str, bool]] = [(rel, False) for rel in req.rels]  # (rel, from a group)
            if req.group is not None:
                g = self.groups_by_id.get(req.group)
                if g is None:
                    raise LibraryError(404, "not_found", f"group {req.group!r}: no such group in this plan "
                                                         f"(the groups are listed by GET /api/library/plan)")
                targets += [(rel, True) for rel in g["rels"]]
            for rel, grouped in targets:
                self._known(rel)
                if req.action == CLEAR:
                    todo[rel] = None
                    continue
                d = self._decision({"action": req.action, "lat": req.lat, "lon": req.lon}, rel)
                if d.action == "accept" and not self.props[rel].placed:
                    why = f"unplaced ({self.props[rel].reason}): nothing to accept; place it on the map instead"
                    if not grouped:
                        raise LibraryError(422, "invalid_decision", f"{rel}: {why}")
                    skipped.append({"rel": rel, "reason": why})
                    continue
                todo[rel] = d
            for rel, raw in req.decisions.items():
                self._known(rel)
                if raw.get("action") == CLEAR:
                    todo[rel] = None
                    continue
                d = self._decision(raw, rel)
                if d.action == "accept" and not self.props[rel].placed:
                    raise LibraryError(422, "invalid_decision", f"{rel}: unplaced ({self.props[rel].reason}): "
                                                                f"nothing to accept; move it to a position instead")
                todo[rel] = d
            new = dict(self.decisions)
            for rel, d in todo.items():
                if d is None:
                    new.pop(rel, None)
                else:
                    new[rel] = d
            write_decisions(self.state, new)
            self.decisions = new
            log.info("review of %s: %d decisions set or cleared (%d in all)", self.root, len(todo), len(new))
            return {"changed": sorted(todo), "skipped": skipped, "decisions": self._decisions_dict()}

    def _known(self, rel: str) -> None:
        if rel not in self.props:
            raise LibraryError(422, "invalid_decision", f"{rel!r}: not a photo of this plan (only photos without GPS "
                                                        f"listed by GET /api/library/plan can be decided)")

    @staticmethod
    def _decision(raw: dict, rel: str) -> Decision:
        try:
            return decision_from_dict(raw, rel)
        except ValueError as exc:
            raise LibraryError(422, "invalid_decision", str(exc)) from None

    # ------------------------------------------------------------------------------------------ write, undo

    def write(self, include_undecided: bool) -> dict:
        """apply_plan with the decisions; without include_undecided, undecided photos are left as they are."""
        with self.lock:
            decisions = {rel: d for rel, d in self.decisions.items() if rel in self.props}
            unreviewed = set()
            if not include_undecided:
                unreviewed = {rel for rel in self.props if rel not in decisions}
                decisions.update({rel: Decision("reject") for rel in unreviewed})
            try:
                report = apply_plan(self.plan, self.cfg, decisions, progress=False)
            except JournalBusy as exc:
                raise LibraryError(409, "busy", str(exc)) from None
            for item in report.get("not_written", []):
                if item.get("rel") in unreviewed:
                    item["reason"] = "not reviewed (neither accepted nor moved)"
            report["action"] = "write"
            self.last_run = report
            self.reload()
            log.info("review of %s: run %s wrote %s", self.root, report.get("run"), report.get("written", 0))
            return report

    def undo(self) -> dict:
        with self.lock:
            try:
                report = undo_last(self.root, self.cfg)
            except JournalBusy as exc:
                raise LibraryError(409, "busy", str(exc)) from None
            except (ValueError, FileNotFoundError) as exc:
                raise LibraryError(409, "nothing_to_undo", str(exc)) from None
            report["action"] = "undo"
            self.last_run = report
            self.reload()
            return report

    # ------------------------------------------------------------------------------------------- thumbnails

    def photo_path(self, rel: str) -> Path:
        """The file of a photo the scan found, by its rel; anything else is refused (4xx)."""
        parts = rel.split("/")
        if (not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or ":" in parts[0]
                or any(p in ("", ".", "..") for p in parts)):
            raise LibraryError(400, "invalid_path", f"{rel!r}: not a photo path inside the library (relative, "
                                                    f"'/' between folders, no '..')")
        photo = self.plan.photos.get(rel)
        if photo is None:
            raise LibraryError(404, "not_found", f"{rel}: no such photo in {self.root}")
        path = Path(photo.path).resolve()
        if not path.is_relative_to(self.root):
            raise LibraryError(403, "forbidden", f"{rel}: leads out of the library (a link to {path})")
        return path

    def thumbnail(self, rel: str, px: int) -> bytes:
        path = self.photo_path(rel)
        key = (rel, self.plan.photos[rel].sha256, px)
        with self.lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        try:
            img = decode_rgb(path, draft=(px, px), name=rel)
        except ImageError as exc:
            raise LibraryError(422, exc.reason, f"{rel}: no preview ({exc.reason}: {exc.detail})") from None
        except OSError as exc:
            raise LibraryError(404, "not_found", f"{rel}: cannot be read ({exc.strerror or exc})") from None
        img.thumbnail((px, px))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        data = buf.getvalue()
        with self.lock:
            self._thumbs[key] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data


def _decision_dict(d: Decision) -> dict:
    out: dict[str, Any] = {"action": d.action}
    if d.action == "move":
        out.update(lat=d.lat, lon=d.lon)
    return out


# ------------------------------------------------------------------------------------------------------------
# The routes


def _errors(*statuses: int) -> dict[int | str, dict]:
    meanings = {
        400: "The photo path is not a path inside the library.",
        403: "The photo's file lies outside the library.",
        404: "No such photo or group in this library's plan.",
        409: "Nothing to undo, or another write or undo of this library is running.",
        422: "A decision is malformed (the detail names the photo), or the photo has no preview.",
    }
    return {s: {"model": ErrorBody, "description": meanings[s]} for s in statuses}


def add_library_routes(app: FastAPI, cfg, predictor=None) -> LibraryReview:
    """GET /library (the page) and /api/library/{plan, photo, decisions, write, undo}, for `cfg.library`.

    `cfg` is the server's ServeConfig: `library` (the folder) and `library_options` (LibraryOptions or None).
    The plan is read or made now, before the server accepts anyone.
    """
    web_dir = Path(cfg.web_dir) if getattr(cfg, "web_dir", None) else Path(__file__).resolve().parents[1] / "web"
    review = LibraryReview.start(cfg.library, getattr(cfg, "library_options", None), predictor=predictor)
    app.state.library = review
    page = web_dir / PAGE_FILE

    @app.get("/library", include_in_schema=False)
    async def library_page() -> Response:
        if not page.is_file():
            raise LibraryError(404, "not_found", f"the review page is not installed ({page} missing); "
                                                 f"the API is at /api/library/plan")
        return FileResponse(page, media_type="text/html")

    @app.get("/api/library/plan", response_model=LibraryPlan, tags=["library"])
    async def library_plan() -> JSONResponse:
        """The proposals for every photo without GPS, grouped by trip and day, with the decisions so far and
        what geopin has written (read back from the photos)."""
        return JSONResponse(await run_in_threadpool(_locked, review, review.answer))

    @app.get("/api/library/photo", tags=["library"], responses={
        200: {"content": {"image/jpeg": {}}, "description": "A JPEG preview of the photo."},
        **_errors(400, 403, 404, 422)})
    async def library_photo(
        rel: str = Query(..., description="The photo's rel, as listed in the plan."),
        px: int = Query(review.options.thumb_px, ge=32, le=MAX_THUMB_PX, description="Longest side of the preview."),
    ) -> Response:
        """A small JPEG preview of a library photo (only photos the scan found; no path leaves the library)."""
        data = await run_in_threadpool(review.thumbnail, rel, px)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    @app.post("/api/library/decisions", response_model=DecisionsAnswer, tags=["library"],
              responses=_errors(404, 422))
    async def library_decisions(req: DecisionsRequest) -> JSONResponse:
        """Accept, reject, move (lat, lon) or clear the decision of photos, one by one or a whole group; saved at once."""
        return JSONResponse(_jsonable(await run_in_threadpool(review.decide, req)))

    @app.post("/api/library/write", response_model=RunReport, tags=["library"], responses=_errors(409))
    async def library_write(req: WriteRequest | None = None) -> JSONResponse:
        """Write the accepted and moved positions (XMP sidecars, or into the photos with --write exif), journalled:
        POST /api/library/undo or `geopin tag LIBRARY --undo` restores every file."""
        req = req or WriteRequest()
        return JSONResponse(_jsonable(await run_in_threadpool(review.write, req.include_undecided)))

    @app.post("/api/library/undo", response_model=RunReport, tags=["library"], responses=_errors(409))
    async def library_undo() -> JSONResponse:
        """Undo the latest write of this library (from this page or `geopin tag`): every file back to its bytes."""
        return JSONResponse(_jsonable(await run_in_threadpool(review.undo)))

    log.info("review page of %s at /library (%d photos without GPS, %d groups)", review.root,
             len(review.plan.proposals), len(review.groups))
    return review


def _locked(review: LibraryReview, fn):
    with review.lock:
        return _jsonable(fn())


def _jsonable(doc: Any) -> Any:
    """Plan details may hold numpy numbers or datetimes: JSON as geopin writes it everywhere."""
    import json

    from geopin.io import json_default

    return json.loads(json.dumps(doc, default=json_default))


__all__ = ["LibraryError", "LibraryOptions", "LibraryReview", "add_library_routes"]
