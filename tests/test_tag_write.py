"""Writing positions for `geopin tag`: sidecars and EXIF that ExifTool reads back, the journal, undo, and runs
killed mid-write. Real files, real exiv2, real ExifTool, real SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from geopin.io import sha256_file
from geopin.library.journal import JOURNAL_NAME, Journal, JournalBusy, read_journal, runs, undo, undo_temp
from geopin.library.photos import parse_xmp_coord, read_photo, scan_library
from geopin.library.write import Placement, WriteOutcome, exif_coord, write_placement, xmp_coord
from tests.test_tag_photos import photo

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed (Debian libimage-exiftool-perl; "
                                                          ".ci/run installs it): the tests read back with it")

PLACES = [(48.85841234, 2.29451234), (-33.85681111, 151.21539999), (40.68920001, -74.04450007),
          (-0.00000012, -179.99999991), (89.99999995, 0.00000003), (35.65860000, 139.74540000)]


def exiftool_json(*args: str | bytes) -> list[dict]:
    out = subprocess.run([EXIFTOOL, "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under root but the state folder (hidden temporaries included): sha256, mode, mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".geopin/"):
            st_ = path.stat()
            out[rel] = (sha256_file(path), stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
    return out


def write_all(root: Path, mode: str = "xmp", place=None, replace_geopin: bool = False) -> dict[str, WriteOutcome]:
    """One write run over the whole library, as tag.py drives it."""
    place = place or (lambda i: PLACES[i % len(PLACES)])
    with Journal(root / ".geopin", root, mode=mode) as journal:
        out = {}
        for i, p in enumerate(scan_library(root, progress=False)):
            lat, lon = place(i)
            placement = Placement(lat, lon, 0.25 + i, 0.9, "time", journal.run_id)
            out[p.rel] = write_placement(p, placement, mode=mode, journal=journal, replace_geopin=replace_geopin)
    return out


@pytest.fixture
def library(tmp_path):
    """Three photos without GPS (one with a sidecar ExifTool wrote: keywords, rating, title), a PNG, and a
    phone photo with GPS."""
    root = tmp_path / "lib"
    photo(root / "trip" / "a.jpg", make="Canon", model="Canon EOS 80D", original="2023:05:01 12:00:00")
    photo(root / "trip" / "b.jpg", make="Canon", model="Canon EOS 80D", original="2023:05:01 12:05:00",
          colour=(10, 200, 30))
    kept = photo(root / "trip" / "c.jpg", original="2023:05:01 12:10:00", colour=(200, 10, 30))
    subprocess.run([EXIFTOOL, "-q", "-o", f"{kept}.xmp", "-XMP-dc:Subject=holiday", "-XMP-dc:Subject=beach",
                    "-XMP-xmp:Rating=4", "-XMP-dc:Title=Sea front", str(kept)], check=True)
    Image.new("RGB", (40, 30), (5, 6, 7)).save(root / "d.png")
    photo(root / "phone.jpg", make="Apple", model="iPhone 12", original="2023:05:01 12:01:00", gps=(48.1, 2.2))
    return root


def test_sidecar_reads_back_exactly_in_exiftool(library):
    before = snapshot(library)
    out = write_all(library)
    written = sorted(rel for rel, o in out.items() if o.status == "written")
    assert written == ["d.png", "trip/a.jpg", "trip/b.jpg", "trip/c.jpg"]
    assert out["phone.jpg"].status == "skipped" and out["phone.jpg"].reason.startswith("has_gps")
    order = [p.rel for p in scan_library(library, progress=False)]
    for rel in written:
        lat, lon = PLACES[order.index(rel) % len(PLACES)]
        got = exiftool_json("-n", "-GPSLatitude", "-GPSLongitude", str(library / f"{rel}.xmp"))[0]
        assert abs(got["GPSLatitude"] - lat) < 1e-9 and abs(got["GPSLongitude"] - lon) < 1e-9, (rel, got)
    # every original untouched, byte for byte (and the phone photo got no sidecar)
    after = snapshot(library)
    assert {rel: after[rel] for rel in before if not rel.endswith(".xmp")} == \
           {rel: v for rel, v in before.items() if not rel.endswith(".xmp")}
    assert not (library / "phone.jpg.xmp").exists()
    # ExifTool sees the tags photo tools read and geopin's own namespace
    tags = exiftool_json("-G1", "-a", str(library / "trip" / "a.jpg.xmp"))[0]
    assert tags["XMP-exif:GPSMapDatum"] == "WGS-84" and tags["XMP-exif:GPSVersionID"] == "2.3.0.0"
    i = order.index("trip/a.jpg")
    assert tags["XMP-exif:GPSHPositioningError"] == f"{(0.25 + i) * 1000:g} m"
    assert tags["XMP-geopin:Source"] == "time" and float(tags["XMP-geopin:Confidence"]) == 0.9
    assert float(tags["XMP-geopin:RadiusKm"]) == 0.25 + i
    assert tags["XMP-geopin:Run"] == runs(library / ".geopin")[-1].run_id
    # and geopin reads its own position back as geopin's, never as a reference
    again = read_photo(library / "trip" / "a.jpg", library)
    assert again.gps_from == "sidecar" and again.placed_by_geopin and again.geopin_run == tags["XMP-geopin:Run"]


def test_merge_keeps_the_tags_of_a_sidecar_exiftool_wrote(library):
    sidecar = library / "trip" / "c.jpg.xmp"
    before = exiftool_json("-G1", "-a", str(sidecar))[0]
    original_bytes = sidecar.read_bytes()
    write_all(library)
    after = exiftool_json("-G1", "-a", str(sidecar))[0]
    kept = {k: v for k, v in before.items() if not k.startswith(("System:", "ExifTool:", "XMP-x:"))}
    assert kept and {k: after.get(k) for k in kept} == kept
    assert after["XMP-dc:Subject"] == ["holiday", "beach"] and after["XMP-xmp:Rating"] == 4
    assert after["XMP-dc:Title"] == "Sea front" and after["XMP-geopin:Source"] == "time"
    backup = next((library / ".geopin" / "backups").rglob("c.jpg.xmp"))
    assert backup.read_bytes() == original_bytes != sidecar.read_bytes()


def test_exif_mode_backs_up_and_exiftool_reads_the_file(library):
    target = library / "trip" / "a.jpg"
    os.chmod(target, 0o640)
    sha, pixels = sha256_file(target), np.asarray(Image.open(target))
    out = write_all(library, mode="exif")
    assert out["trip/a.jpg"].status == "written" and out["d.png"].status == "written"
    assert out["trip/c.jpg"].status == "written"  # its sidecar holds no position
    run = runs(library / ".geopin")[-1]
    backup = library / ".geopin" / "backups" / run.run_id / "trip" / "a.jpg"
    assert sha256_file(backup) == sha != sha256_file(target)
    order = [p.rel for p in scan_library(library, progress=False)]
    lat, lon = PLACES[order.index("trip/a.jpg") % len(PLACES)]
    pos = exiftool_json("-n", "-GPSLatitude", "-GPSLongitude", str(target))[0]
    assert abs(pos["GPSLatitude"] - lat) < 1e-9 and abs(pos["GPSLongitude"] - lon) < 1e-9
    got = exiftool_json("-G1", "-GPS:all", "-XMP-geopin:all", "-ExifIFD:DateTimeOriginal", str(target))[0]
    assert got["GPS:GPSMapDatum"] == "WGS-84" and got["XMP-geopin:Run"] == run.run_id
    assert got["ExifIFD:DateTimeOriginal"] == "2023:05:01 12:00:00"
    assert np.array_equal(np.asarray(Image.open(target)), pixels)  # only metadata changed
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not (library / "trip" / "a.jpg.xmp").exists()
    png = exiftool_json("-n", "-GPSLatitude", "-GPSLongitude", str(library / "d.png"))[0]
    lat, lon = PLACES[order.index("d.png") % len(PLACES)]
    assert abs(png["GPSLatitude"] - lat) < 1e-9 and abs(png["GPSLongitude"] - lon) < 1e-9
    placed = read_photo(target, library)
    assert placed.gps_from == "exif" and placed.placed_by_geopin


def test_undo_restores_every_file_bit_for_bit(library):
    before = snapshot(library)
    write_all(library, mode="xmp")
    write_all(library, mode="exif", place=lambda i: (10.0 + i, 20.0 + i))  # only the files the sidecar run left
    write_all(library, mode="xmp", place=lambda i: (-10.0 - i, 30.0), replace_geopin=True)
    first, second, third = runs(library / ".geopin")
    assert (first.written, second.written, third.written) == (4, 0, 4)
    assert snapshot(library) != before
    r3 = undo(library / ".geopin")
    assert r3.run_id == third.run_id and r3.complete and len(r3.restored) == 4 and not r3.refused
    r1 = undo(library / ".geopin")  # the exif run wrote nothing: there is nothing to undo in it
    assert r1.run_id == first.run_id and r1.complete and len(r1.restored) == 4
    assert snapshot(library) == before
    assert [r.undone for r in runs(library / ".geopin")] == [True, False, True]
    nothing = undo(library / ".geopin")
    assert nothing.run_id is None and "nothing to undo" in nothing.note
    assert "undone already" in undo(library / ".geopin", first.run_id).note
    with pytest.raises(ValueError, match="no run 'nope'"):
        undo(library / ".geopin", "nope")


def test_exif_undo_restores_originals(library):
    before = snapshot(library)
    write_all(library, mode="exif")
    assert snapshot(library) != before
    report = undo(library / ".geopin")
    assert report.complete and sorted(report.restored) == ["d.png", "trip/a.jpg", "trip/b.jpg", "trip/c.jpg"]
    assert snapshot(library) == before  # bytes, mode and mtime


def test_undo_refuses_files_changed_since_then_force(library):
    before = snapshot(library)
    write_all(library)
    state = library / ".geopin"
    edited = library / "trip" / "b.jpg.xmp"
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-xmp:Rating=5", str(edited)], check=True)
    report = undo(state)
    assert not report.complete and [rel for rel, _ in report.refused] == ["trip/b.jpg.xmp"]
    assert "changed since geopin wrote it" in report.refused[0][1]
    assert edited.exists() and not runs(state)[-1].undone  # a plain undo still picks this run
    assert sorted(report.already + report.restored) == ["d.png.xmp", "trip/a.jpg.xmp", "trip/c.jpg.xmp"]
    again = undo(state)
    assert not again.complete and sorted(again.already) == ["d.png.xmp", "trip/a.jpg.xmp", "trip/c.jpg.xmp"]
    forced = undo(state, force=True)
    assert forced.complete and forced.restored == ["trip/b.jpg.xmp"]
    assert snapshot(library) == before and runs(state)[-1].undone


def test_photos_with_gps_are_never_touched(library):
    lightroom = photo(library / "lr.jpg", original="2023:05:01 12:00:00")
    subprocess.run([EXIFTOOL, "-q", "-o", str(library / "lr.xmp"), "-XMP:GPSLatitude=1.5", "-XMP:GPSLongitude=2.5",
                    str(lightroom)], check=True)
    embedded = photo(library / "em.jpg")
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP:GPSLatitude=10.5", "-XMP:GPSLongitude=-20.25",
                    str(embedded)], check=True)
    null = photo(library / "null.jpg", gps=(0.0, 0.0))
    before = snapshot(library)
    for mode in ("exif", "xmp"):
        out = write_all(library, mode=mode, replace_geopin=True)
        for rel in ("phone.jpg", "lr.jpg", "em.jpg"):
            assert out[rel].status == "skipped" and out[rel].reason.startswith("has_gps"), out[rel]
        if mode == "exif":
            assert out["null.jpg"].reason.startswith("gps_tags")  # a 0/0 fix is not overwritten inside the file
    after = snapshot(library)
    for rel in ("phone.jpg", "lr.jpg", "lr.xmp", "em.jpg", "null.jpg"):
        assert after[rel] == before[rel]
    assert not any((library / f"{rel}.xmp").exists() for rel in ("phone.jpg", "lr.jpg", "em.jpg"))
    assert (library / "null.jpg.xmp").exists()  # its sidecar carries the position; the file is untouched
    assert sha256_file(null) == before["null.jpg"][0]


def test_read_only_files_sidecars_and_folders_are_skipped(library):
    locked = library / "locked"
    photo(locked / "x.jpg", original="2023:05:01 12:00:00")
    os.chmod(library / "trip" / "a.jpg", 0o444)
    os.chmod(library / "trip" / "c.jpg.xmp", 0o444)
    os.chmod(locked, 0o555)
    try:
        before = snapshot(library)
        xmp = write_all(library, mode="xmp")
        assert xmp["trip/c.jpg"].status == "skipped" and xmp["trip/c.jpg"].reason.startswith("read_only")
        assert str(library / "trip" / "c.jpg.xmp") in xmp["trip/c.jpg"].reason
        assert xmp["locked/x.jpg"].status == "skipped" and xmp["locked/x.jpg"].reason.startswith("read_only: folder")
        assert xmp["trip/a.jpg"].status == "written"  # a read-only photo still gets its sidecar
        undo(library / ".geopin")
        exif = write_all(library, mode="exif")
        assert exif["trip/a.jpg"].status == "skipped" and exif["trip/a.jpg"].reason.startswith("read_only")
        assert exif["locked/x.jpg"].reason.startswith("read_only: folder")
        assert exif["trip/b.jpg"].status == "written"
        undo(library / ".geopin")
        assert snapshot(library) == before
        assert not list(locked.glob(".*"))  # not even a temporary file in the read-only folder
    finally:
        os.chmod(locked, 0o755)


def test_writing_twice_is_unchanged_and_replace_is_opt_in(library):
    first = write_all(library)
    bytes_after_first = snapshot(library)
    second = write_all(library)
    assert {rel: o.status for rel, o in second.items() if first[rel].status == "written"} == \
           {rel: "unchanged" for rel, o in first.items() if o.status == "written"}
    assert snapshot(library) == bytes_after_first
    moved = write_all(library, place=lambda i: (1.0 + i, 2.0))
    assert all(o.reason.startswith("placed_by_geopin") for rel, o in moved.items() if first[rel].status == "written")
    replaced = write_all(library, place=lambda i: (1.0 + i, 2.0), replace_geopin=True)
    assert sum(o.status == "written" for o in replaced.values()) == 4
    undo(library / ".geopin")
    assert snapshot(library) == bytes_after_first  # undo of the replacement gives back the first answers
    undo(library / ".geopin")
    in_file = write_all(library, mode="exif")
    inside = snapshot(library)
    again = write_all(library, mode="exif")
    assert {rel: o.status for rel, o in again.items() if in_file[rel].status == "written"} == \
           {rel: "unchanged" for rel, o in in_file.items() if o.status == "written"}
    assert snapshot(library) == inside


def test_a_pin_moved_by_hand_becomes_a_reference(library):
    write_all(library)
    sidecar = library / "trip" / "a.jpg.xmp"
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP:GPSLatitude=45.1", "-XMP:GPSLongitude=7.2",
                    str(sidecar)], check=True)
    moved = read_photo(library / "trip" / "a.jpg", library)
    assert moved.has_gps and not moved.placed_by_geopin and (moved.lat, moved.lon) == (45.1, 7.2)
    out = write_all(library, replace_geopin=True)
    assert out["trip/a.jpg"].reason.startswith("has_gps")


def test_unwritable_formats_and_broken_sidecars_are_skipped(library):
    from tests.imagefiles import heic_bytes

    (library / "h.heic").write_bytes(heic_bytes(Image.new("RGB", (64, 48), (9, 99, 199))))
    (library / "trip" / "b.jpg.xmp").write_text("<<< not xml")
    before = snapshot(library)
    exif = write_all(library, mode="exif")
    assert exif["h.heic"].status == "skipped" and exif["h.heic"].reason.startswith("format_not_writable")
    assert undo(library / ".geopin").complete
    xmp = write_all(library, mode="xmp")
    assert xmp["h.heic"].status == "written"  # sidecars work for every format
    assert xmp["trip/b.jpg"].status == "skipped" and xmp["trip/b.jpg"].reason.startswith("broken_sidecar")
    got = exiftool_json("-n", "-GPSLatitude", str(library / "h.heic.xmp"))[0]
    assert isinstance(got["GPSLatitude"], float)
    for rel in ("h.heic", "trip/b.jpg.xmp"):
        assert snapshot(library)[rel] == before[rel]


def test_file_names_that_are_not_utf8(library):
    """A name from an old Latin-1 file system (bytes that are no UTF-8) is read, written and undone like any."""
    before = snapshot(library)
    odd = library / os.fsdecode(b"caf\xe9 \xff.jpg")
    photo(odd, original="2023:05:01 12:00:00")
    assert read_photo(odd, library).taken is not None
    out = write_all(library)
    assert out[odd.name].status == "written"
    got = exiftool_json("-n", "-GPSLatitude", os.fsencode(f"{odd}.xmp"))  # the bytes of the name
    assert isinstance(got[0]["GPSLatitude"], float)
    assert undo(library / ".geopin").complete
    odd.unlink()
    assert snapshot(library) == before


def test_one_run_at_a_time(library):
    with Journal(library / ".geopin", library) as journal:
        with pytest.raises(JournalBusy, match="another `geopin tag`"):
            Journal(library / ".geopin", library)
        with pytest.raises(JournalBusy):
            undo(library / ".geopin")
        photo_ = scan_library(library, progress=False)[0]
        with pytest.raises(ValueError, match="given to the journal of run"):
            write_placement(photo_, Placement(1, 2, 1, 0.5, "time", "other"), journal=journal)
        with pytest.raises(ValueError, match="write mode 'iptc'"):
            write_placement(photo_, Placement(1, 2, 1, 0.5, "time", journal.run_id), journal=journal, mode="iptc")
        bad = write_placement(photo_, Placement(0, 0, 1, 0.5, "visual", journal.run_id), journal=journal)
        assert bad.status == "skipped" and bad.reason.startswith("invalid_position")
    assert runs(library / ".geopin")[-1].finished
    with Journal(library / "state", params={"root": str(library), "config": {"write": "xmp"}}) as journal:
        assert journal.root == library
    assert runs(library / "state")[-1].root == str(library)
    assert json.loads((library / "state" / JOURNAL_NAME).read_text().splitlines()[0])["config"] == {"write": "xmp"}
    with pytest.raises(ValueError, match="which library"):
        Journal(library / "state")


# ------------------------------------------------------------------------------------------------ killed runs

CHILD = textwrap.dedent(r"""
    import os, signal, sys
    from pathlib import Path
    from geopin.library.journal import Journal, undo
    from geopin.library.photos import scan_library
    from geopin.library.write import Placement, write_placement

    root, action, mode, kill_at, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    real_replace, renames = os.replace, [0]

    def dying_replace(src, dst):
        # the process dies just before or just after its kill_at-th rename of a geopin file over a target
        ours = ".geopin-" in Path(src).name
        renames[0] += ours
        if ours and renames[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if ours and renames[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = dying_replace
    if action == "write":
        with Journal(root / ".geopin", root, mode=mode) as journal:
            for i, p in enumerate(scan_library(root, progress=False)):
                placement = Placement(10 + i / 7, 20 - i / 9, 1.0, 0.8, "time", journal.run_id)
                print(write_placement(p, placement, mode=mode, journal=journal).status, flush=True)
    else:
        undo(root / ".geopin")
""")


def run_child(root: Path, action: str, mode: str = "xmp", kill_at: int = 0, when: str = "before",
              kill_after_lines: int = 0) -> int:
    """The child's return code: -9 when it was killed (by itself, or by us after `kill_after_lines` lines)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), action, mode, str(kill_at), when],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root.parent)
    if kill_after_lines:
        for _ in range(kill_after_lines):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    return proc.returncode


@pytest.fixture
def big_library(tmp_path):
    """40 photos without GPS (every fourth with a sidecar another tool wrote), 4 with GPS."""
    root = tmp_path / "big"
    plain = []
    for i in range(44):
        p = photo(root / f"day{i % 3}" / f"p{i:02d}.jpg", original=f"2023:05:01 12:{i:02d}:00",
                  gps=(45.0, 7.0) if i % 11 == 0 else None, colour=(i * 5, 100, 200 - i * 4))
        if i % 4 == 1:
            plain.append(str(p))
    subprocess.run([EXIFTOOL, "-q", "-o", "%d%f.%e.xmp", "-XMP-xmp:Rating=3", "-XMP-dc:Subject=kept", *plain],
                   check=True)
    return root


def assert_each_file_before_or_after(root: Path, before: dict) -> None:
    """Every target of the journal is byte for byte as before or as geopin meant it; nothing else changed;
    a leftover temporary file is only ever one the journal names (so undo can remove it)."""
    entries = read_journal(root / ".geopin")
    meant = {}
    temps = set()
    for e in entries:
        if e["op"] == "intent":
            meant[e["target"]] = {e["sha_before"]}
            temps.add(e["temp"])
            temps.add(undo_temp(e, Path(e["target"])).as_posix())
        elif e["op"] == "ready":
            target = next(x["target"] for x in entries if x["op"] == "intent" and x["run"] == e["run"]
                          and x["seq"] == e["seq"])
            meant[target].add(e["sha_after"])
    now = snapshot(root)
    for rel, (sha, _, _) in now.items():
        if rel in meant:
            assert sha in meant[rel], f"{rel} is neither as before nor as geopin wrote it"
        elif rel in before:
            assert now[rel] == before[rel], f"{rel} changed but is in no intent"
        else:
            assert rel in temps, f"{rel} appeared and the journal does not name it"
    for rel in set(before) - set(now):
        assert rel in meant, f"{rel} vanished"


@pytest.mark.parametrize("mode, kill_at, when", [("xmp", 7, "before"), ("exif", 5, "after")])
def test_a_killed_run_leaves_files_whole_and_undo_restores_them(big_library, mode, kill_at, when):
    root = big_library
    before = snapshot(root)
    assert run_child(root, "write", mode, kill_at, when) == -signal.SIGKILL
    killed = runs(root / ".geopin")[-1]
    assert not killed.finished and killed.files == kill_at
    assert_each_file_before_or_after(root, before)
    leftovers = [rel for rel in snapshot(root) if rel not in before and ".geopin-" in rel]
    assert len(leftovers) == (1 if when == "before" else 0)
    # the lock died with the process: a new run finishes the library, and undo takes both runs back
    assert run_child(root, "write", mode) == 0
    assert runs(root / ".geopin")[-1].finished
    assert undo(root / ".geopin").complete
    report = undo(root / ".geopin")
    assert report.run_id == killed.run_id and report.complete and not report.refused
    assert snapshot(root) == before


def test_killed_at_a_random_moment_and_an_interrupted_undo(big_library):
    root = big_library
    before = snapshot(root)
    assert run_child(root, "write", "exif", kill_after_lines=12) == -signal.SIGKILL
    assert_each_file_before_or_after(root, before)
    assert run_child(root, "undo", kill_at=4) == -signal.SIGKILL  # the undo dies before its 4th restore
    assert_each_file_before_or_after(root, before)
    assert not runs(root / ".geopin")[-1].undone
    report = undo(root / ".geopin")  # rerun: the 3 restored files are seen as already restored
    assert report.complete and len(report.already) >= 3
    assert snapshot(root) == before


def test_a_cut_journal_line_is_survived(library):
    write_all(library)
    journal = library / ".geopin" / JOURNAL_NAME
    with open(journal, "a") as fh:
        fh.write('{"op": "intent", "run": "x", "se')  # a process killed inside a write()
    assert len(runs(library / ".geopin")) == 1
    write_all(library, place=lambda i: (5.0, 6.0), replace_geopin=True)
    assert len(runs(library / ".geopin")) == 2 and undo(library / ".geopin").complete


# ------------------------------------------------------------------------------------------------ tag values

@given(st.floats(-90, 90), st.floats(-180, 180))
def test_coordinate_strings_round_trip(lat, lon):
    assert abs(parse_xmp_coord(xmp_coord(lat, "lat"), "lat") - lat) < 1e-9
    assert abs(parse_xmp_coord(xmp_coord(lon, "lon"), "lon") - lon) < 1e-9
    d, m, s = (int(part.split("/")[0]) / int(part.split("/")[1]) for part in exif_coord(lon).split())
    assert m < 60 and s < 60 and abs(d + m / 60 + s / 3600 - abs(lon)) < 1e-9
