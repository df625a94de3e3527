"""ingest on generated photo folders and tables with every kind of bad record, resume after SIGKILL, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import piexif
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagefiles import gps_exif_bytes, gps_ifd
from geopin.dataset.ingest import REJECT_REASONS, IngestConfig, IngestInputError, ingest
from geopin.dataset.manifest import MANIFEST_COLUMNS, read_manifest

CLI = [sys.executable, "-c", "from geopin.cli import main; main()"]


def make_photo(path: Path, size=(320, 240), lat=None, lon=None, *, seed=0, exif: bytes | None = None,
               artist: str | None = None, fmt="JPEG") -> Path:
    """A textured photo (distinct bytes per seed), optionally with GPS EXIF as a camera writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, size[1] // 8), max(1, size[0] // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    if exif is None and (lat is not None or artist is not None):
        exif = gps_exif_bytes(lat, lon, artist=artist)
    kwargs = {"exif": exif} if exif is not None else {}
    img.save(path, fmt, quality=90, **kwargs)
    return path


def rejects_by_id(out: Path) -> dict[str, str]:
    rej = pd.read_parquet(out / "rejects.parquet")
    return dict(zip(rej["id"], rej["reason"]))


def check_outputs_consistent(out: Path, summary) -> pd.DataFrame:
    """The invariants every run must keep: kept + rejected == input, both rejects files agree."""
    manifest = read_manifest(out / "manifest.parquet")
    rej = pd.read_parquet(out / "rejects.parquet")
    rej_csv = pd.read_csv(out / "rejects.csv", keep_default_na=False)
    assert len(manifest) == summary.n_kept and len(rej) == summary.n_rejected
    assert summary.n_kept + summary.n_rejected == summary.n_input
    assert list(rej_csv["reason"]) == list(rej["reason"]) and list(rej_csv["id"]) == list(rej["id"])
    assert set(rej["reason"]) <= set(REJECT_REASONS)
    assert rej["detail"].str.len().min() > 0 if len(rej) else True
    assert sum(summary.reasons.values()) == summary.n_rejected
    assert manifest["id"].is_unique and manifest["sha256"].is_unique
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest["lat"].dtype == np.float64 and manifest["lon"].dtype == np.float64
    for row in manifest.itertuples():
        assert Path(row.path).is_absolute()
        data = Path(row.path).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        with Image.open(row.path) as img:
            assert (row.width, row.height) == img.size
    assert not (out / ".ingest-work").exists()  # finished work is cleaned up
    assert json.loads((out / "ingest_summary.json").read_text())["n_input"] == summary.n_input
    return manifest


# --------------------------------------------------------------------------------------------- folder


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> tuple[Path, dict[str, tuple[float, float] | str]]:
    """Good and broken photos; expected value: (lat, lon) for keepers, the reject reason otherwise."""
    root = tmp_path_factory.mktemp("folder") / "photos"
    expect: dict[str, tuple[float, float] | str] = {}

    def good(rel, lat, lon, **kw):
        make_photo(root / rel, lat=lat, lon=lon, **kw)
        expect[rel] = (lat, lon)

    good("alice/a.jpg", 48.8584, 2.2945, seed=1, size=(320, 240))
    good("alice/b.jpg", -33.8568, 151.2153, seed=2, size=(200, 300))
    good("bob/c.jpg", -22.9519, -43.2105, seed=3, size=(64, 64))
    good("bob/deep/d.JPG", 64.1466, -21.9426, seed=4, size=(500, 120))
    good("e.png", 35.6586, 139.7454, seed=5, size=(128, 96), fmt="PNG")
    good("f.jpg", 0.0, 10.5, seed=6, size=(100, 100))  # on the equator: lat 0 alone is fine

    # a truncated JPEG: a good one cut in half (the EXIF in its header survives)
    full = make_photo(root / "broken" / "truncated.jpg", size=(400, 300), lat=10.0, lon=20.0, seed=7)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    expect["broken/truncated.jpg"] = "truncated"
    (root / "broken" / "text.jpg").write_text("this is not a JPEG\n" * 20)
    expect["broken/text.jpg"] = "not_an_image"
    (root / "broken" / "empty.jpg").write_bytes(b"")
    expect["broken/empty.jpg"] = "empty_file"
    make_photo(root / "gps" / "lat95.jpg", lat=95.0, lon=10.0, seed=8)
    expect["gps/lat95.jpg"] = "coords_out_of_range"
    no_ref = gps_ifd(40.0, 10.0)
    del no_ref[piexif.GPSIFD.GPSLatitudeRef]
    make_photo(root / "gps" / "no_ref.jpg", exif=gps_exif_bytes(None, None, gps=no_ref), seed=9)
    expect["gps/no_ref.jpg"] = "coords_missing"
    zero_den = gps_ifd(40.0, 10.0)
    zero_den[piexif.GPSIFD.GPSLongitude] = ((10, 0), (0, 1), (0, 1))
    make_photo(root / "gps" / "zero_den.jpg", exif=gps_exif_bytes(None, None, gps=zero_den), seed=10)
    expect["gps/zero_den.jpg"] = "coords_not_numeric"
    make_photo(root / "gps" / "null_island.jpg", lat=0.0, lon=0.0, seed=11)
    expect["gps/null_island.jpg"] = "coords_null_island"
    make_photo(root / "gps" / "no_gps.jpg", seed=12)
    expect["gps/no_gps.jpg"] = "coords_missing"
    shutil.copyfile(root / "alice" / "a.jpg", root / "zz_copy_of_a.jpg")  # sorts after alice/a.jpg
    expect["zz_copy_of_a.jpg"] = "duplicate"
    make_photo(root / "tiny.jpg", size=(10, 10), lat=1.0, lon=1.0, seed=13)
    expect["tiny.jpg"] = "too_small"
    make_photo(root / "huge.jpg", size=(600, 500), lat=1.0, lon=1.0, seed=14)
    expect["huge.jpg"] = "decompression_bomb"  # with max_pixels=250_000 below
    (root / "notes.txt").write_text("not a photo suffix: ignored and counted\n")
    (root / ".hidden.jpg").write_bytes(b"")  # hidden files are not photos
    return root, expect


FOLDER_CFG = dict(group_from="subfolder", max_pixels=250_000, workers=2, chunk_size=4)


def test_folder_keeps_exactly_the_good_photos(photo_folder, tmp_path):
    root, expect = photo_folder
    summary = ingest(root, tmp_path / "out", IngestConfig(**FOLDER_CFG))
    manifest = check_outputs_consistent(tmp_path / "out", summary)

    kept = {rel: v for rel, v in expect.items() if isinstance(v, tuple)}
    assert sorted(manifest["id"]) == sorted(kept)
    for row in manifest.itertuples():
        assert (row.lat, row.lon) == pytest.approx(kept[row.id], abs=1e-6)
        assert row.path == str(root / row.id)
        assert row.source_row == -1
        if "/" in row.id:
            assert row.group == row.id.split("/")[0]
        else:
            assert pd.isna(row.group)  # null group: no subfolder
    assert rejects_by_id(tmp_path / "out") == {rel: v for rel, v in expect.items() if isinstance(v, str)}
    assert summary.n_input == len(expect) and summary.n_ignored_files == 1 and summary.n_resumed == 0
    rej = pd.read_parquet(tmp_path / "out" / "rejects.parquet").set_index("id")
    assert "alice/a.jpg" in rej.loc["zz_copy_of_a.jpg", "detail"]  # the duplicate names the photo it repeats
    assert "truncated" in rej.loc["broken/truncated.jpg", "detail"]


def test_folder_result_does_not_depend_on_workers_or_chunks(photo_folder, tmp_path):
    root, _ = photo_folder
    a = ingest(root, tmp_path / "a", IngestConfig(**FOLDER_CFG))
    b = ingest(root, tmp_path / "b", IngestConfig(**{**FOLDER_CFG, "workers": 1, "chunk_size": 100}))
    pd.testing.assert_frame_equal(read_manifest(a.manifest_path), read_manifest(b.manifest_path))
    pd.testing.assert_frame_equal(pd.read_parquet(a.rejects_path), pd.read_parquet(b.rejects_path))


def test_folder_group_from_artist_and_orientation(tmp_path):
    root = tmp_path / "photos"
    make_photo(root / "x.jpg", size=(300, 200), lat=51.5, lon=-0.12, artist="Ann Lee", seed=1)
    make_photo(root / "y.jpg", size=(300, 200), lat=51.5, lon=-0.13, seed=2)
    rotated = piexif.dump({"0th": {piexif.ImageIFD.Orientation: 6}, "GPS": gps_ifd(51.5, -0.14)})
    make_photo(root / "z.jpg", size=(300, 200), exif=rotated, seed=3)
    summary = ingest(root, tmp_path / "out", IngestConfig(group_from="artist", workers=1))
    manifest = read_manifest(summary.manifest_path).set_index("id")
    assert manifest.loc["x.jpg", "group"] == "Ann Lee"
    assert pd.isna(manifest.loc["y.jpg", "group"])
    # EXIF orientation 6 (rotate 90): width and height as the photo is shown
    assert tuple(manifest.loc["z.jpg", ["width", "height"]]) == (200, 300)
    assert tuple(manifest.loc["x.jpg", ["width", "height"]]) == (300, 200)


def test_folder_without_photos_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(IngestInputError, match="no photos"):
        ingest(tmp_path / "empty", tmp_path / "out", IngestConfig(workers=1))
    with pytest.raises(IngestInputError, match="no such file or folder"):
        ingest(tmp_path / "nowhere", tmp_path / "out", IngestConfig(workers=1))


# --------------------------------------------------------------------------------------------- table


@pytest.fixture(scope="module")
def photo_table(tmp_path_factory):
    """A labels table with every kind of bad row; expected reason per row (None = kept)."""
    base = tmp_path_factory.mktemp("table")
    imgs = base / "images"
    for i in range(4):
        make_photo(imgs / f"g{i}.jpg", size=(160 + 10 * i, 120), seed=100 + i)  # no EXIF needed for tables
    make_photo(imgs / "small.jpg", size=(40, 200), seed=200)
    rows = [  # image, lat, lon, author, expected reason
        ("images/g0.jpg", "48.85", "2.29", "ann", None),
        (str(imgs / "g1.jpg"), "-33.5", "151.0", "bob", None),  # absolute path inside the table folder
        ("./images/g2.jpg", "-90", "-180", "ann", None),  # the range ends are valid
        ("images/g3.jpg", "abc", "2.0", "cy", "coords_not_numeric"),
        ("images/g3.jpg", "", "2.0", "cy", "coords_missing"),
        ("images/g3.jpg", "12.0", "", "cy", "coords_missing"),
        ("images/g3.jpg", "91", "2.0", "cy", "coords_out_of_range"),
        ("images/g3.jpg", "10", "181", "cy", "coords_out_of_range"),
        ("images/g3.jpg", "0", "0", "cy", "coords_null_island"),
        ("images/missing.jpg", "10", "10", "cy", "file_missing"),
        ("", "10", "10", "cy", "file_missing"),
        ("images/small.jpg", "10", "10", "", "too_small"),
        ("images/g0.jpg", "10", "10", "dan", "duplicate"),  # same file again, other coords
        ("images/g3.jpg", "1e1", " 20.5 ", "", None),
    ]
    csv = base / "labels.csv"
    pd.DataFrame([r[:4] for r in rows], columns=["image", "lat", "lon", "author"]).to_csv(csv, index=False)
    return csv, [r[4] for r in rows]


def test_table_keeps_good_rows_and_names_each_problem(photo_table, tmp_path):
    csv, expected = photo_table
    summary = ingest(csv, tmp_path / "out", IngestConfig(group_col="author", workers=2, chunk_size=3))
    manifest = check_outputs_consistent(tmp_path / "out", summary)
    rej = pd.read_parquet(tmp_path / "out" / "rejects.parquet")

    assert summary.n_input == len(expected)
    got = {int(r): reason for r, reason in zip(rej["source_row"], rej["reason"])}
    assert got == {i: r for i, r in enumerate(expected) if r is not None}
    assert list(manifest["source_row"]) == [i for i, r in enumerate(expected) if r is None]
    assert list(manifest["id"]) == ["images/g0.jpg", "images/g1.jpg", "images/g2.jpg", "images/g3.jpg"]
    assert list(manifest["lat"]) == [48.85, -33.5, -90.0, 10.0]
    assert list(manifest["lon"]) == [2.29, 151.0, -180.0, 20.5]
    assert list(manifest["group"].iloc[:3]) == ["ann", "bob", "ann"] and pd.isna(manifest["group"].iloc[3])
    assert list(manifest["width"]) == [160, 170, 180, 190]
    dup = rej[rej["reason"] == "duplicate"].iloc[0]
    assert "images/g0.jpg" in dup["detail"]


def test_parquet_table_gives_the_same_manifest(photo_table, tmp_path):
    csv, _ = photo_table
    pq_path = csv.with_suffix(".parquet")
    pd.read_csv(csv, dtype=str, keep_default_na=False).to_parquet(pq_path)
    cfg = IngestConfig(group_col="author", workers=1)
    a = ingest(csv, tmp_path / "csv", cfg)
    b = ingest(pq_path, tmp_path / "pq", cfg)
    pd.testing.assert_frame_equal(read_manifest(a.manifest_path), read_manifest(b.manifest_path))
    assert a.reasons == b.reasons


def test_numeric_parquet_with_image_root_and_custom_columns(tmp_path):
    photos = tmp_path / "elsewhere"
    make_photo(photos / "sub" / "p.jpg", seed=1)
    make_photo(photos / "q.jpg", seed=2)
    table = pd.DataFrame({"file": ["sub/p.jpg", "q.jpg"], "latitude": [45.0, np.nan],
                          "longitude": [7.5, 8.0], "who": [12, 13]})
    (tmp_path / "tables").mkdir()
    table.to_parquet(tmp_path / "tables" / "t.parquet")
    cfg = IngestConfig(image_col="file", lat_col="latitude", lon_col="longitude", group_col="who",
                       image_root=photos, workers=1)
    summary = ingest(tmp_path / "tables" / "t.parquet", tmp_path / "out", cfg)
    manifest = read_manifest(summary.manifest_path)
    assert list(manifest["id"]) == ["sub/p.jpg"]
    assert manifest["path"][0] == str(photos / "sub" / "p.jpg")
    assert manifest["group"][0] == "12"
    assert rejects_by_id(tmp_path / "out") == {"q.jpg": "coords_missing"}


def test_missing_table_and_columns_are_clear_errors(photo_table, tmp_path):
    csv, _ = photo_table
    with pytest.raises(IngestInputError, match="no such file"):
        ingest(tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(IngestInputError) as info:
        ingest(csv, tmp_path / "out", IngestConfig(lat_col="latitude", group_col="photographer", workers=1))
    msg = str(info.value)
    assert str(csv) in msg and "'latitude'" in msg and "'photographer'" in msg
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_read_manifest_names_file_and_missing_column(tmp_path):
    bad = tmp_path / "m.parquet"
    pd.DataFrame({"id": ["a"], "lat": [1.0]}).to_parquet(bad)
    with pytest.raises(ValueError, match=r"m\.parquet.*'path'"):
        read_manifest(bad)
    with pytest.raises(FileNotFoundError, match="nothere.parquet"):
        read_manifest(tmp_path / "nothere.parquet")


# --------------------------------------------------------------------------------------------- faces


def grace_hopper() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.exists():
        pytest.skip(f"no face photo on this machine ({path} missing)")
    return path


def test_face_area_fraction_real_face_and_plain_colour():
    from geopin.dataset.faces import detect_faces, face_area_fraction

    with Image.open(grace_hopper()) as img:
        img.load()
        fraction = face_area_fraction(img)
        assert len(detect_faces(img)) == 1
    assert 0.035 < fraction < 0.5  # a portrait: one face, well above the 3.5 % default
    assert face_area_fraction(Image.new("RGB", (640, 480), (40, 130, 200))) == 0.0
    assert face_area_fraction(Image.new("L", (10, 10), 200)) == 0.0


def test_faces_filter_drops_the_portrait_only(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copyfile(grace_hopper(), photos / "portrait.jpg")
    for i, colour in enumerate([(40, 130, 200), (200, 180, 90)]):
        Image.new("RGB", (320, 240), colour).save(photos / f"plain{i}.jpg")
    table = pd.DataFrame({"image": ["p/portrait.jpg", "p/plain0.jpg", "p/plain1.jpg"],
                          "lat": [38.9, 10.0, 11.0], "lon": [-77.0, 10.0, 11.0]})
    table.to_csv(tmp_path / "t.csv", index=False)
    on = ingest(tmp_path / "t.csv", tmp_path / "on", IngestConfig(faces=True, workers=1))
    assert rejects_by_id(tmp_path / "on") == {"p/portrait.jpg": "faces"}
    assert on.n_kept == 2
    off = ingest(tmp_path / "t.csv", tmp_path / "off", IngestConfig(faces=False, workers=1))
    assert off.n_kept == 3
    high = ingest(tmp_path / "t.csv", tmp_path / "high", IngestConfig(faces=True, face_threshold=0.9, workers=1))
    assert high.n_kept == 3


# --------------------------------------------------------------------------------------------- resume


def _parts(out: Path) -> list[Path]:
    return sorted((out / ".ingest-work").glob("*/part-*.parquet"))


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_uninterrupted_run(tmp_path):
    root = tmp_path / "photos"
    for i in range(360):
        make_photo(root / f"d{i % 6}" / f"p{i:04d}.jpg", size=(384, 288), lat=10 + i * 0.01, lon=20 - i * 0.01,
                   seed=i)
    shutil.copyfile(root / "d0" / "p0000.jpg", root / "d5" / "p9999.jpg")  # a duplicate across chunks
    args = ["--workers", "2", "--chunk-size", "8", "--group-from", "subfolder"]

    reference = tmp_path / "ref"
    subprocess.run([*CLI, "ingest", str(root), "--out", str(reference), *args], check=True,
                   capture_output=True, timeout=300)

    out = tmp_path / "out"
    # an earlier, complete run with other settings: its manifest must survive the kill untouched
    earlier = subprocess.run([*CLI, "ingest", str(root), "--out", str(out), "--min-side", "300", "--workers", "1"],
                             capture_output=True, timeout=300)
    assert earlier.returncode == 1  # it kept nothing: a failed run, but its outputs are written
    previous = (out / "manifest.parquet").read_bytes()
    assert len(pq.read_table(out / "manifest.parquet")) == 0  # all too small for min side 300

    proc = subprocess.Popen([*CLI, "ingest", str(root), "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_parts(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "ingest finished before it could be killed: make the data set bigger"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "manifest.parquet").read_bytes() == previous
    done = _parts(out)
    assert done, "no finished part to resume from"
    n_done = sum(pq.read_metadata(p).num_rows for p in done)
    assert 0 < n_done < 361

    summary = ingest(root, out, IngestConfig(workers=2, chunk_size=8, group_from="subfolder"))
    assert summary.n_resumed == n_done
    assert summary.n_input == 361 and summary.reasons["duplicate"] == 1
    check_outputs_consistent(out, summary)
    pd.testing.assert_frame_equal(read_manifest(out / "manifest.parquet"),
                                  read_manifest(reference / "manifest.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "rejects.parquet"),
                                  pd.read_parquet(reference / "rejects.parquet"))


# --------------------------------------------------------------------------------------------- CLI


def test_cli_help_and_json(photo_table, tmp_path):
    helped = subprocess.run([*CLI, "ingest", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    for option in ("--out", "--lat-col", "--image-col", "--group-col", "--image-root", "--faces", "--json"):
        assert option in helped.stdout

    csv, expected = photo_table
    ran = subprocess.run([*CLI, "ingest", str(csv), "--out", str(tmp_path / "out"), "--group-col", "author",
                          "--workers", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["n_input"] == len(expected)
    assert summary["n_kept"] == expected.count(None)
    assert summary["reasons"]["coords_out_of_range"] == 2
    assert Path(summary["manifest_path"]).exists()

    plain = subprocess.run([*CLI, "ingest", str(csv), "--out", str(tmp_path / "out2"), "--workers", "1"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "kept" in plain.stdout and "coords_null_island" in plain.stdout


def test_cli_unusable_input_exits_non_zero_with_the_reason(photo_table, tmp_path):
    csv, _ = photo_table
    ran = subprocess.run([*CLI, "ingest", str(csv), "--out", str(tmp_path / "o"), "--lat-col", "breite"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2
    assert str(csv) in ran.stderr and "'breite'" in ran.stderr
    assert ran.stdout == ""


# --------------------------------------------------------------------------------------------- shared data


@pytest.mark.shared
def test_im2gps3k_labels_all_kept(im2gps_dir, tmp_path):
    labels = im2gps_dir / "labels.csv"
    summary = ingest(labels, tmp_path / "out", IngestConfig(group_col="author", chunk_size=128))
    manifest = read_manifest(summary.manifest_path)
    truth = pd.read_csv(labels)
    assert summary.n_input == len(truth) == 2652
    assert summary.n_kept == 2652 and summary.n_rejected == 0
    assert manifest["group"].nunique() == truth["author"].nunique() == 173
    assert manifest["id"].tolist() == truth["image"].tolist()
    np.testing.assert_array_equal(manifest["lat"].to_numpy(), truth["lat"].to_numpy())
    assert manifest["sha256"].is_unique


# --------------------------------------------------------------------------------------------- issue 13


def test_symlinks_dangling_loops_and_linked_folders_are_all_accounted_for(tmp_path):
    root, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    make_photo(root / "a.jpg", lat=48.85, lon=2.29, seed=1)
    make_photo(root / "sub" / "b.jpg", lat=40.0, lon=3.0, seed=2)
    make_photo(elsewhere / "c.jpg", lat=-33.9, lon=151.2, seed=3)
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # dangling
    (root / "loop.jpg").symlink_to(root / "loop.jpg")  # a link to itself
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # followed
    (root / "linked_again").symlink_to(elsewhere, target_is_directory=True)  # same folder: not twice
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / "a_link.jpg").symlink_to(root / "a.jpg")  # a link to a kept photo: its duplicate
    (root / "notes.txt").write_text("not a photo")
    (root / "old.txt").symlink_to(tmp_path / "nothing.txt")  # dangling, no image suffix
    (root / ".hidden.jpg").write_bytes(b"")
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    out = tmp_path / "out"

    summary = ingest(root, out, IngestConfig(workers=1))
    manifest = check_outputs_consistent(out, summary)
    assert sorted(manifest["id"]) == ["a.jpg", "linked/c.jpg", "sub/b.jpg"]
    rej = pd.read_parquet(out / "rejects.parquet").set_index("id")
    assert dict(rej["reason"]) == {"a_link.jpg": "duplicate", "gone.jpg": "file_missing",
                                   "loop.jpg": "file_missing"}
    assert rej.loc["gone.jpg", "detail"] == f"dangling symlink -> {tmp_path / 'nowhere.jpg'}"
    assert "symlink loop" in rej.loc["loop.jpg", "detail"]

    ignored = pd.read_csv(out / "ignored.csv", keep_default_na=False).set_index("path")
    assert dict(ignored["reason"]) == {
        ".hidden.jpg": "hidden", "linked_again": "folder already visited", "notes.txt": "no image suffix",
        "old.txt": "no image suffix", "pipe.jpg": "not a regular file", "sub/up": "symlink loop"}
    assert "dangling symlink" in ignored.loc["old.txt", "detail"]
    assert summary.n_ignored_files == 2  # files without an image suffix, as before
    assert summary.ignored_reasons == {"folder already visited": 1, "hidden": 1, "no image suffix": 2,
                                       "not a regular file": 1, "symlink loop": 1}
    assert summary.ignored_path == str(out / "ignored.csv")
    # the output folder inside the input folder is named in the ignored list, not walked
    ingest(root, root / "ds", IngestConfig(workers=1))
    again = ingest(root, root / "ds", IngestConfig(workers=1))  # now the folder exists when the walk meets it
    assert again.n_kept == 3
    assert "output folder" in set(pd.read_csv(root / "ds" / "ignored.csv")["reason"])


def test_high_bit_depth_photos_are_kept_with_their_size(tmp_path):
    from imagefiles import write_high_bit_files

    files = write_high_bit_files(tmp_path / "img", size=(160, 120))
    table = pd.DataFrame({"image": [f"img/{n}" for n in files], "lat": 45.0, "lon": 7.0})
    table.to_csv(tmp_path / "t.csv", index=False)
    summary = ingest(tmp_path / "t.csv", tmp_path / "out", IngestConfig(workers=1))
    manifest = read_manifest(summary.manifest_path)
    assert summary.n_rejected == 0, pd.read_parquet(summary.rejects_path).to_dict("records")
    assert len(manifest) == len(files)
    assert set(zip(manifest["width"], manifest["height"])) == {(160, 120)}


def test_heic_photo_is_kept_with_its_exif_gps(tmp_path):
    from imagefiles import heic_bytes, picture8

    root = tmp_path / "phone"
    root.mkdir()
    data = heic_bytes(Image.fromarray(picture8((200, 150), 4, channels=3)), exif=gps_exif_bytes(35.6586, 139.7454))
    (root / "IMG_0001.HEIC").write_bytes(data)
    make_photo(root / "b.jpg", lat=1.0, lon=2.0, seed=5)
    # a fresh process: this one registered pillow-heif to write the file
    ran = subprocess.run([*CLI, "ingest", str(root), "--out", str(tmp_path / "out"), "--workers", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert summary["n_rejected"] == 0, pd.read_parquet(summary["rejects_path"]).to_dict("records")
    manifest = read_manifest(summary["manifest_path"]).set_index("id")
    assert tuple(manifest.loc["IMG_0001.HEIC", ["width", "height"]]) == (200, 150)
    assert manifest.loc["IMG_0001.HEIC", "lat"] == pytest.approx(35.6586, abs=1e-4)


def test_suffixes_and_pixel_limit_are_the_ones_of_geopin_images(tmp_path):
    import geopin.dataset.ingest
    import geopin.locate.predict
    from geopin.dataset import images

    assert geopin.dataset.ingest.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES
    assert geopin.locate.predict.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES
    assert geopin.dataset.ingest.PILLOW_MAX_PIXELS == images.PILLOW_MAX_PIXELS
    assert "unsupported_format" in REJECT_REASONS
    assert set(images.IMAGE_ERROR_REASONS) <= set(REJECT_REASONS)


def test_cli_nothing_kept_exits_1_with_the_reasons(tmp_path):
    root = tmp_path / "photos"
    make_photo(root / "no_gps.jpg", seed=1)
    make_photo(root / "no_gps2.jpg", seed=2)
    (root / "text.jpg").write_text("not a photo")
    ran = subprocess.run([*CLI, "ingest", str(root), "--out", str(tmp_path / "out"), "--workers", "1"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, (ran.stdout, ran.stderr)
    assert "kept no photos" in ran.stderr
    assert "coords_missing 2" in ran.stderr and "not_an_image 1" in ran.stderr
    assert str(tmp_path / "out" / "rejects.csv") in ran.stderr
    assert len(pd.read_csv(tmp_path / "out" / "rejects.csv")) == 3  # written so the user can see why
    as_json = subprocess.run([*CLI, "ingest", str(root), "--out", str(tmp_path / "out2"), "--workers", "1",
                              "--json"], capture_output=True, text=True, timeout=120)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["n_kept"] == 0


def test_a_corrupt_exif_block_has_one_reason_in_ingest_and_in_the_exif_reader(tmp_path):
    """ingest's folder walk and read_exif_gps read EXIF through one reader, so they name it alike."""
    import io
    import struct
    import zlib

    from geopin.dataset.exif import ExifGpsError, read_exif_gps

    buf = io.BytesIO()
    Image.new("RGB", (200, 150), (90, 120, 60)).save(buf, "PNG")
    png = buf.getvalue()
    body = b"XX\x00*\x00\x00\x00\x08\x00\x00"  # an eXIf chunk without a TIFF header: Pillow's parser fails
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    (tmp_path / "photos").mkdir()
    bad = tmp_path / "photos" / "corrupt_exif.png"
    bad.write_bytes(png[:33] + chunk + png[33:])  # after the signature and IHDR
    with pytest.raises(ExifGpsError) as info:
        read_exif_gps(bad)
    assert info.value.reason == "coords_not_numeric"
    ingest(tmp_path / "photos", tmp_path / "out", IngestConfig(workers=1))
    assert rejects_by_id(tmp_path / "out") == {"corrupt_exif.png": "coords_not_numeric"}
