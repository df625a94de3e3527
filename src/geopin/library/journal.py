"""The journal of `geopin tag` writes, and undo: every file geopin changes can be put back bit for bit.

One append-only JSON-lines file, STATE/journal.jsonl, fsync'ed where it matters. A write run appends:

    {"op": "run", "run": RUN, "root": LIBRARY, "mode": "xmp", ...}
    {"op": "intent", "run": RUN, "seq": 1, "target": "a/IMG_1.JPG.xmp", "existed": false, "sha_before": null,
     "backup": null, "temp": "a/.IMG_1.JPG.xmp.geopin-RUN-1.tmp", ...}          <- written before any byte
    {"op": "ready", "run": RUN, "seq": 1, "sha_after": "..."}                   <- fsync, temp complete, before rename
    {"op": "done", "run": RUN, "seq": 1}                                        <- after the rename
    {"op": "end", "run": RUN, ...}

Files are changed only by renaming a complete temporary file (named in the intent) over the target, and an
existing target is first copied byte for byte to STATE/backups/RUN/<target> (copy2: mode and mtime too). So
whenever a process dies, each target is either as it was (sha_before, or absent) or as geopin meant it
(sha_after), and the journal says which hash is which: undo needs no "done" line to know what to restore.
A killed process loses nothing it wrote to the journal (the kernel holds it); the fsync of "ready" (and of
the temporary file) before each rename is for power cuts: the journal and the new bytes reach the disk
before the rename can, so a rename is never on disk without the hashes that explain it.
Targets are stored relative to the library root, backups relative to the state folder.

Undo appends {"op": "undo", "run": RUN, "complete": bool, ...}; a run counts as undone only after a complete
undo. An undo that is interrupted or refused for some files can be rerun: files already restored are seen
to be so by their hash.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geopin.io import sha256_file

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "journal.lock"
BACKUP_DIR = "backups"


class JournalBusy(RuntimeError):
    """Another `geopin tag` write or undo holds the state folder's lock."""


@dataclass(frozen=True)
class RunInfo:
    """One write run as the journal tells it."""

    run_id: str
    started: str  # ISO time (UTC)
    mode: str  # "xmp" or "exif"
    root: str  # the library root the targets are relative to
    files: int  # targets geopin meant to change
    written: int  # targets renamed into place ("done")
    finished: bool  # the run ended normally (not killed)
    undone: bool  # a complete undo was recorded


@dataclass
class UndoReport:
    """What undo did, file by file. `complete` is False while any file was refused: the run then stays the one
    a plain undo picks, so a rerun (after fixing the cause, or with force) finishes it."""

    run_id: str | None
    restored: list[str] = field(default_factory=list)  # targets put back (sidecars deleted or restored)
    already: list[str] = field(default_factory=list)  # targets already as before (never written, or restored)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (target, reason)
    complete: bool = False
    note: str = ""


def new_run_id(now: datetime | None = None) -> str:
    """A sortable run id from the UTC time, e.g. 20240501T120000.123456Z."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# ------------------------------------------------------------------------------------------------ writing

class Journal:
    """The journal of one write run: `with Journal(state_dir, root, mode="xmp") as journal: ...`.

    Opening it takes the state folder's lock (held until close, so two runs, or a run and an undo, never
    interleave; JournalBusy otherwise), picks a new run id and records the run with `params` (e.g. the config).
    `root` is the library the targets are relative to: by default params["root"], else the parent of a
    state folder named `.geopin`."""

    def __init__(self, state_dir: str | os.PathLike, root: str | os.PathLike | None = None, *, mode: str = "xmp",
                 params: dict | None = None) -> None:
        state_dir = Path(state_dir).absolute()
        params = dict(params or {})
        if root is None:
            root = params.get("root") or (state_dir.parent if state_dir.name == ".geopin" else None)
            if root is None:
                raise ValueError(f"journal in {state_dir}: which library? give root (or params['root'])")
        self.state_dir, self.root, self.mode = state_dir, Path(root).absolute(), mode
        self._seq = 0
        self._counts: dict[str, int] = {}
        self._lock_fd = _lock(state_dir)
        try:
            known = {r.run_id for r in runs(state_dir)}
            run_id = new_run_id()
            while run_id in known:  # a clock that went backwards
                run_id = new_run_id()
            self.run_id = run_id
            self._fd = _open_append(state_dir / JOURNAL_NAME)
        except BaseException:
            os.close(self._lock_fd)
            raise
        params.pop("root", None)
        self._append({"op": "run", "run": run_id, "root": str(self.root), "mode": mode,
                      "started": datetime.now(UTC).isoformat(timespec="seconds"), **params}, sync=True)
        log.info("journal %s: run %s (%s) on %s", state_dir / JOURNAL_NAME, run_id, mode, self.root)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(killed=exc[0] is not None)

    def close(self, *, killed: bool = False) -> None:
        if self._fd < 0:
            return
        if not killed:
            self._append({"op": "end", "run": self.run_id, **self._counts}, sync=True)
        os.close(self._fd)
        os.close(self._lock_fd)
        self._fd = self._lock_fd = -1

    # -- one file: intent, (backup), ready, done

    def intent(self, target: Path, *, kind: str, existed: bool, sha_before: str | None, photo: str,
               backup: bool) -> tuple[int, Path, Path | None]:
        """Record that `target` is about to change; return (seq, temp path to build the new file in, backup
        path to copy the old one to, or None). Nothing has been written yet when this returns."""
        self._seq += 1
        seq = self._seq
        rel = self.rel(target)
        temp = target.with_name(f".{target.name}.geopin-{self.run_id}-{seq}.tmp")
        backup_path = self.state_dir / BACKUP_DIR / self.run_id / rel if backup else None
        self._append({"op": "intent", "run": self.run_id, "seq": seq, "target": rel, "kind": kind,
                      "photo": photo, "existed": existed, "sha_before": sha_before,
                      "backup": backup_path.relative_to(self.state_dir).as_posix() if backup_path else None,
                      "temp": self.rel(temp)}, sync=False)  # synced with "ready", before any rename
        return seq, temp, backup_path

    def ready(self, seq: int, sha_after: str) -> None:
        """The new file is complete (and synced) in its temporary name: from here a target with this hash is
        geopin's write."""
        self._append({"op": "ready", "run": self.run_id, "seq": seq, "sha_after": sha_after}, sync=True)

    def done(self, seq: int, status: str, reason: str = "") -> None:
        """The outcome (written, or aborted with the reason). Not synced: undo judges by the hashes."""
        self._counts[status] = self._counts.get(status, 0) + 1
        entry: dict[str, Any] = {"op": "done", "run": self.run_id, "seq": seq, "status": status}
        if reason:
            entry["reason"] = reason
        self._append(entry, sync=False)

    def rel(self, path: Path) -> str:
        return Path(path).absolute().relative_to(self.root).as_posix()

    def _append(self, entry: dict, *, sync: bool) -> None:
        if self._fd < 0:
            raise ValueError(f"journal of run {self.run_id} is closed")
        os.write(self._fd, (json.dumps(entry, sort_keys=False) + "\n").encode())
        if sync:
            os.fsync(self._fd)


def copy_exact(source: Path, dest: Path) -> str:
    """Copy `source` to `dest` byte for byte (with its mode and mtime), synced, through a temporary name;
    return the sha256 of the copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.copy.tmp")
    shutil.copy2(source, tmp)
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return sha256_file(dest)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ reading

def read_journal(state_dir: str | os.PathLike) -> list[dict]:
    """The journal's entries in order. A line cut short by a killed process is left out with a warning: it
    never completed, so nothing it announced happened (an intent is written before its file is touched, a
    "ready" before the rename). A complete line that is no journal entry is an error naming the line."""
    path = Path(state_dir) / JOURNAL_NAME
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if line.lstrip().startswith("{") and not line.rstrip().endswith("}"):
                log.warning("%s: line %d was cut short (a killed run): ignored", path, number)
                continue
            raise ValueError(f"{path}: line {number} is not a JSON object: {line[:80]!r}") from None
        if not isinstance(entry, dict) or "op" not in entry or "run" not in entry:
            raise ValueError(f"{path}: line {number} is not a journal entry: {line[:80]!r}")
        entries.append(entry)
    return entries


def runs(state_dir: str | os.PathLike) -> list[RunInfo]:
    """Every write run in the journal, oldest first."""
    entries = read_journal(state_dir)
    order: list[str] = []
    info: dict[str, dict] = {}
    for e in entries:
        run = e["run"]
        if e["op"] == "run":
            order.append(run)
            info[run] = {"run_id": run, "started": e.get("started", ""), "mode": e.get("mode", ""),
                         "root": e.get("root", ""), "files": 0, "written": 0, "finished": False, "undone": False}
        elif run not in info:
            continue
        elif e["op"] == "intent":
            info[run]["files"] += 1
        elif e["op"] == "done" and e.get("status") == "written":
            info[run]["written"] += 1
        elif e["op"] == "end":
            info[run]["finished"] = True
        elif e["op"] == "undo" and e.get("complete"):
            info[run]["undone"] = True
    return [RunInfo(**info[r]) for r in order]


# ------------------------------------------------------------------------------------------------ undo

def undo(state_dir: str | os.PathLike, run_id: str | None = None, *, force: bool = False) -> UndoReport:
    """Put back every file of one run (the latest not yet undone, or `run_id`), newest write first.

    A target whose bytes are neither the before nor the after hash was changed by someone else since geopin
    wrote it: it is refused (with the reason), unless force=True. Raises ValueError for an unknown run_id and
    JournalBusy while a run holds the lock; never raises for one file."""
    state_dir = Path(state_dir).absolute()
    lock_fd = _lock(state_dir)
    try:
        return _undo_locked(state_dir, run_id, force)
    finally:
        os.close(lock_fd)


def _undo_locked(state_dir: Path, run_id: str | None, force: bool) -> UndoReport:
    known = runs(state_dir)
    if run_id is None:
        pending = [r for r in known if not r.undone and r.files]  # a run that wrote nothing has nothing to undo
        if not pending:
            return UndoReport(None, complete=True, note=f"nothing to undo: no run in {state_dir / JOURNAL_NAME} "
                                                        f"that is not undone already")
        run = pending[-1]
    else:
        run = next((r for r in known if r.run_id == run_id), None)
        if run is None:
            raise ValueError(f"{state_dir / JOURNAL_NAME}: no run {run_id!r} "
                             f"(runs: {', '.join(r.run_id for r in known) or 'none'})")
        if run.undone:
            return UndoReport(run.run_id, complete=True, note=f"run {run.run_id} was undone already")
    root = _run_root(state_dir, run)
    files = _files_of(read_journal(state_dir), run.run_id)
    report = UndoReport(run.run_id)
    fd = _open_append(state_dir / JOURNAL_NAME)
    try:
        for entry in sorted(files.values(), key=lambda e: e["seq"], reverse=True):
            _undo_one(entry, root, state_dir, force, report)
        report.complete = not report.refused
        line = {"op": "undo", "run": run.run_id, "complete": report.complete, "force": force,
                "at": datetime.now(UTC).isoformat(timespec="seconds"), "restored": len(report.restored),
                "already": len(report.already), "refused": len(report.refused)}
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if report.refused:
        report.note = (f"{len(report.refused)} file(s) refused: run {run.run_id} is not marked undone; "
                       f"fix the cause and undo again, or undo with force")
    log.info("undo %s: %d restored, %d already as before, %d refused", run.run_id, len(report.restored),
             len(report.already), len(report.refused))
    return report


def _run_root(state_dir: Path, run: RunInfo) -> Path:
    """The library root of a run; the state folder's parent when the library was moved with its `.geopin`."""
    root = Path(run.root)
    if not root.is_dir() and state_dir.name == ".geopin":
        return state_dir.parent
    return root


def _files_of(entries: list[dict], run_id: str) -> dict[int, dict]:
    files: dict[int, dict] = {}
    for e in entries:
        if e["run"] != run_id:
            continue
        if e["op"] == "intent":
            files[e["seq"]] = dict(e, sha_after=None)
        elif e["op"] == "ready" and e["seq"] in files:
            files[e["seq"]]["sha_after"] = e["sha_after"]
    return files


def _undo_one(entry: dict, root: Path, state_dir: Path, force: bool, report: UndoReport) -> None:
    rel = entry["target"]
    target = root / rel
    try:
        for temp in (root / entry["temp"], undo_temp(entry, target)):
            if temp.exists():  # a run or an undo died before its rename: the temporary file is geopin's own
                temp.unlink()
        now = sha256_file(target) if target.exists() else None
        before = entry["sha_before"] if entry["existed"] else None
        if now == before:
            report.already.append(rel)
            return
        if entry["sha_after"] is None:
            report.refused.append((rel, ("changed by something else: geopin never replaced it (the run stopped "
                                         "before) but its bytes differ from before the run")))
            return
        if now != entry["sha_after"] and not force:
            what = "deleted" if now is None else f"now sha256 {now[:12]}…"
            report.refused.append((rel, (f"changed since geopin wrote it ({what}, geopin wrote "
                                         f"{entry['sha_after'][:12]}…); undo with force to restore anyway")))
            return
        if not entry["existed"]:
            if target.exists():
                target.unlink()
                fsync_dir(target.parent)
        else:
            problem = _restore(entry, target, state_dir)
            if problem:
                report.refused.append((rel, problem))
                return
        report.restored.append(rel)
    except OSError as exc:
        report.refused.append((rel, f"cannot restore: {exc.strerror or exc} ({exc.filename or target})"))


def undo_temp(entry: dict, target: Path) -> Path:
    """The temporary name undo restores a target through (fixed, so a rerun finds what a killed undo left)."""
    return target.with_name(f".{target.name}.geopin-undo-{entry['run']}-{entry['seq']}.tmp")


def _restore(entry: dict, target: Path, state_dir: Path) -> str:
    """Put the backup back over `target` (through a temporary name); the reason when it cannot be, else ""."""
    backup = state_dir / (entry["backup"] or "")
    if not entry["backup"] or not backup.is_file():
        return f"backup missing: {backup}"
    if sha256_file(backup) != entry["sha_before"]:
        return f"backup damaged: {backup} no longer has the original's sha256"
    temp = undo_temp(entry, target)
    shutil.copy2(backup, temp)  # bytes, mode and mtime of the original
    fsync_file(temp)
    if sha256_file(temp) != entry["sha_before"]:
        temp.unlink()
        return f"the copy of the backup {backup} did not read back identical"
    os.replace(temp, target)
    fsync_dir(target.parent)
    return ""


# ------------------------------------------------------------------------------------------------ files

def _open_append(path: Path) -> int:
    """An O_APPEND descriptor on the journal; a last line cut short by a killed run is closed with a newline
    first, so the next entry starts on its own line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    size = os.fstat(fd).st_size
    if size:
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                os.write(fd, b"\n")
    return fd


def _lock(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalBusy(f"{state_dir}: another `geopin tag` write or undo is running (it holds "
                          f"{state_dir / LOCK_NAME})") from None
    return fd
