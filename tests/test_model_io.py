"""A model folder never breaks: checksummed files, clear errors, an atomic swap that survives kills.

Models are trained on generated embeddings (see test_train.synthetic); the kill tests run real
`geopin.locate.train.train` and `GeoModel.save` in subprocesses and SIGKILL them at seeded random moments.
The read-only and full-disk tests mount small tmpfs folders and skip where mounting is not allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train import FAST, synthetic

from geopin.io import write_json, write_parquet
from geopin.locate.heads import ClassifierConfig, Gallery
from geopin.locate.model import GeoModel
from geopin.locate.train import TrainConfig, train, train_model

MODEL_FILES = ["cells.parquet", "classifier.pt", "gallery.npz", "model.json", "places.npz"]


@pytest.fixture(scope="module")
def data():
    df, emb = synthetic(n_per_site=30)
    return df, emb


@pytest.fixture(scope="module")
def model(data):
    df, emb = data
    return train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST)


@pytest.fixture()
def saved(model, tmp_path) -> Path:
    return model.save(tmp_path / "model")


def geopin_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("geopin")
    cmd = [exe] if exe else [sys.executable, "-c", "from geopin.cli import main; main()"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def doc_of(path: Path) -> dict:
    return json.loads((path / "model.json").read_text())


# ------------------------------------------------------------------ what a saved folder holds


def test_model_json_holds_checksums_and_classifier_config(saved):
    import hashlib

    doc = doc_of(saved)
    assert doc["format_version"] == 4  # 4: the backbone config (None here: trained on bare embeddings)
    assert doc["backbone_config"] is None
    files = doc["files"]
    assert sorted(files) == sorted(n for n in MODEL_FILES if n != "model.json")
    for name, info in files.items():
        blob = (saved / name).read_bytes()
        assert info == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert doc["classifier"] == {"dim": 48, "n_classes": doc["classifier"]["n_classes"], "hidden": 512, "dropout": 0.2}
    assert len(doc["classifier"]["n_classes"]) == 2


def test_classifier_is_rebuilt_from_its_stored_config(data, tmp_path):
    df, emb = data
    cfg = replace(FAST, classifier=ClassifierConfig(epochs=3, hidden=0, dropout=0.05))
    m = train_model(emb, df.lat, df.lon, df.group.to_numpy(), cfg)
    again = GeoModel.load(m.save(tmp_path / "linear"))
    assert doc_of(tmp_path / "linear")["classifier"]["hidden"] == 0
    assert again.heads.classifier.dropout == pytest.approx(0.05)
    assert [o["lat"] for o in again.predict_embeddings(emb[:5])] == pytest.approx(
        [o["lat"] for o in m.predict_embeddings(emb[:5])], abs=1e-4
    )


# ------------------------------------------------------------------ broken folders: one clear error


@pytest.mark.parametrize(
    "name, damage, reason",
    [
        ("classifier.pt", "truncate", r"classifier\.pt: size \d+ bytes, expected \d+ \(truncated\?\)"),
        ("gallery.npz", "empty", r"gallery\.npz: size 0 bytes, expected \d+ \(truncated\?\)"),
        ("cells.parquet", "truncate", r"cells\.parquet: size \d+ bytes, expected \d+ \(truncated\?\)"),
        ("places.npz", "flip", r"places\.npz: sha256 .* does not match model\.json"),
        ("classifier.pt", "missing", r"classifier\.pt: missing"),
    ],
)
def test_damaged_file_is_named_with_the_reason(saved, name, damage, reason):
    from geopin.locate.model import ModelError

    path = saved / name
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        path.write_bytes(blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:])
    else:
        path.unlink()
    with pytest.raises(ModelError, match=reason) as err:
        GeoModel.load(saved)
    assert str(saved) in str(err.value)
    assert isinstance(err.value, ValueError)  # so every command's input_errors turns it into one line


def test_bad_model_json_names_the_file_and_the_line(saved):
    text = (saved / "model.json").read_text().splitlines()
    text[2] = "  oops"
    (saved / "model.json").write_text("\n".join(text))
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON at line 3"):
        GeoModel.load(saved)


def test_model_json_without_a_needed_key_is_named(saved):
    doc = doc_of(saved)
    del doc["classifier"]
    (saved / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"model\.json: .*'classifier'"):
        GeoModel.load(saved)


def test_format_2_folder_says_how_to_get_a_new_one(saved):
    doc = doc_of(saved)
    doc["format_version"] = 2
    (saved / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"model\.json: model format 2.*retrain.*scripts/build_default_model\.py"):
        GeoModel.load(saved)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=r"nothere: .*no model\.json"):
        GeoModel.load(tmp_path / "nothere")


@pytest.mark.parametrize("damage", ["truncate-gallery", "empty-gallery", "bad-json"])
def test_cli_predict_on_a_broken_model_prints_one_line_and_exits_2(saved, tmp_path, damage):
    from PIL import Image

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(photo)
    if damage == "truncate-gallery":
        blob = (saved / "gallery.npz").read_bytes()
        (saved / "gallery.npz").write_bytes(blob[:1000])
    elif damage == "empty-gallery":
        (saved / "gallery.npz").write_bytes(b"")
    else:
        (saved / "model.json").write_text("{\n  \"format_version\": 3,\n  oops\n}")
    r = geopin_cli("predict", "--model", str(saved), str(photo), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geopin predict: "), r.stderr
    assert "Traceback" not in r.stderr and "Aborted" not in r.stderr
    assert ("gallery.npz" if "gallery" in damage else "model.json") in lines[0]


# ------------------------------------------------------------------ the FAISS index is saved, not rebuilt


def test_ivf_index_is_saved_and_read_back_not_rebuilt(model, data, tmp_path):
    import faiss

    df, emb = data
    h = model.heads
    ivf = Gallery(emb, exact_max=100)  # 360 photos: an IVF index with 4*sqrt(360)=75 lists
    assert not ivf.exact
    m = GeoModel(replace(h, gallery=ivf), model.params, model.calibration, model.meta)
    path = m.save(tmp_path / "ivf")
    assert doc_of(path)["gallery"]["index"] == "ivf"
    again = GeoModel.load(path)
    assert not again.heads.gallery.exact
    # the very same index (same trained centroids and lists), not one trained again at load
    assert np.array_equal(faiss.serialize_index(again.heads.gallery.index), faiss.serialize_index(ivf.index))
    q = emb[:20]
    assert np.array_equal(again.heads.gallery.search(q, 8)[1], ivf.search(q, 8)[1])


# ------------------------------------------------------------------ the swap: old or new, never a mix


def test_saving_over_a_folder_that_is_not_a_model_is_refused(model, tmp_path):
    from geopin.locate.model import ModelError

    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ModelError, match=r"photos: .*not a geopin model folder"):
        model.save(out)
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_stale_temp_folders_of_killed_runs_are_removed_on_the_next_save(model, saved):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = saved.parent / f".{saved.name}.tmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "classifier.pt").write_bytes(b"half")
    old = saved.parent / f".{saved.name}.old"
    old.mkdir()
    live = saved.parent / f".{saved.name}.tmp-{os.getppid()}-live42"  # a run still going: left alone
    live.mkdir()
    model.save(saved)
    assert not stale.exists() and not old.exists()
    assert live.exists()
    GeoModel.load(saved)


def test_without_renameat2_a_kill_between_the_two_renames_is_recovered(model, saved, monkeypatch):
    import geopin.locate.model as gm

    # where the exchange is unavailable save falls back to two renames; kill lands between them:
    monkeypatch.setattr(gm, "_exchange", lambda a, b: False)
    before = doc_of(saved)
    old = saved.parent / f".{saved.name}.old"
    os.rename(saved, old)
    assert not saved.exists()
    again = GeoModel.load(saved)  # the old model is put back
    assert doc_of(saved) == before and not old.exists()
    assert again.params == model.params
    # and a full save in fallback mode leaves the new model and nothing else
    model.save(saved)
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]
    GeoModel.load(saved)


def write_dataset(df: pd.DataFrame, emb: np.ndarray, root: Path) -> tuple[Path, Path]:
    """A manifest and an embeddings folder as `geopin ingest` and `geopin embed` would write them."""
    from geopin.features.embed import ids_digest

    ids = [f"photo{i:05d}" for i in range(len(df))]
    man = pd.DataFrame(
        {
            "id": ids,
            "path": [f"/nowhere/{i}.jpg" for i in ids],
            "lat": df.lat.to_numpy(),
            "lon": df.lon.to_numpy(),
            "group": df.group.to_numpy(),
            "width": 640,
            "height": 480,
            "sha256": ids,
            "source_row": np.arange(len(df)),
        }
    )
    write_parquet(man, root / "manifest.parquet")
    (root / "emb").mkdir(parents=True, exist_ok=True)
    np.save(root / "emb" / "embeddings.npy", emb.astype(np.float32))
    write_json(
        {"backbone": "synthetic", "version": "synthetic-1", "dim": emb.shape[1], "n": len(df), "ids_sha256": ids_digest(ids)},
        root / "emb" / "embeddings.json",
    )
    return root / "manifest.parquet", root / "emb"


TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from geopin.dataset.cells import Granularity
    from geopin.locate.heads import ClassifierConfig
    from geopin.locate.train import TrainConfig, train
    cfg = TrainConfig(granularities=[Granularity("coarse", 120, 3), Granularity("fine", 30, 3)],
                      classifier=ClassifierConfig(epochs=15, seed=int(sys.argv[4])), k=8, inner_folds=3,
                      seed=int(sys.argv[4]))
    train(sys.argv[1], sys.argv[2], sys.argv[3], cfg)
    """
)


def fast_cfg(seed: int) -> TrainConfig:
    return replace(FAST, classifier=replace(FAST.classifier, seed=seed), seed=seed)


def assert_old_or_new(out: Path, old_doc: dict, new_ref: GeoModel) -> str:
    """The folder verifies (every file matches its model.json) and is the old model or the new one."""
    loaded = GeoModel.load(out)
    doc = doc_of(out)
    if doc == old_doc:
        return "old"
    assert doc["meta"]["train_config"]["seed"] == 1, "neither the old model nor the new one"
    assert loaded.params == new_ref.params
    return "new"


@pytest.mark.slow
def test_killing_train_at_random_moments_leaves_the_old_or_the_new_model(data, tmp_path):
    df, emb = data
    manifest, emb_dir = write_dataset(df, emb, tmp_path / "ds")
    out = tmp_path / "models" / "m"
    old_model = train(manifest, emb_dir, out, fast_cfg(0))
    old_doc = doc_of(out)
    cmd = [sys.executable, "-c", TRAIN_SCRIPT, str(manifest), str(emb_dir)]
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(tmp_path / "ref"), "1"], check=True, timeout=300)
    full_s = time.perf_counter() - t0
    new_ref = GeoModel.load(tmp_path / "ref")
    assert doc_of(tmp_path / "ref")["meta"]["train_config"]["seed"] == 1
    rng = np.random.default_rng(13)
    seen = []
    for delay in rng.uniform(0.3 * full_s, 1.1 * full_s, size=6):
        proc = subprocess.Popen(cmd + [str(out), "1"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(assert_old_or_new(out, old_doc, new_ref))
        if seen[-1] == "new":  # start the next round from the old model again
            old_model.save(out)
            old_doc = doc_of(out)
    # the next save clears whatever the killed runs left beside the folder
    old_model.save(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    assert "old" in seen


SAVE_LOOP = textwrap.dedent(
    """
    import sys
    import geopin.locate.model as gm
    from geopin.locate.model import GeoModel
    if sys.argv[4] == "fallback":
        gm._exchange = lambda a, b: False
    a, b = GeoModel.load(sys.argv[1]), GeoModel.load(sys.argv[2])
    print("ready", flush=True)
    i = 0
    while True:
        (a if i % 2 else b).save(sys.argv[3])
        i += 1
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["renameat2", "fallback"])
def test_killing_save_mid_swap_never_leaves_a_mix(model, data, tmp_path, mode):
    df, emb = data
    other = train_model(emb, df.lat, df.lon, df.group.to_numpy(), fast_cfg(1))
    model.meta["marker"], other.meta["marker"] = "A", "B"
    try:
        model.save(tmp_path / "A")
        other.save(tmp_path / "B")
    finally:
        model.meta.pop("marker")
    out = tmp_path / "models" / "m"
    model.save(out)
    rng = np.random.default_rng(7)
    leftovers = 0
    for delay in rng.uniform(0.0, 0.4, size=10):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(tmp_path / "A"), str(tmp_path / "B"), str(out), mode],
            stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        leftovers += len(list(out.parent.iterdir())) > 1
        assert GeoModel.load(out).meta["marker"] in ("A", "B")
    model.save(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    # most kills landed inside a save (a temp folder was left beside the model): the swap was exercised
    assert leftovers >= 3


# ------------------------------------------------------------------ read-only and full output folders


@pytest.fixture()
def tmpfs(tmp_path):
    """Mount small tmpfs folders (root only); skip with the reason where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root in a privileged container")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def remount_ro(point: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount {point} read-only: {r.stderr.strip()}")


def test_read_only_output_folder_is_a_clear_error_and_keeps_the_old_model(model, tmpfs):
    from geopin.locate.model import ModelError

    point = tmpfs("ro", "16m")
    out = model.save(point / "m")
    before = doc_of(out)
    remount_ro(point)
    with pytest.raises(ModelError, match=rf"{out}: cannot write the model: [Rr]ead-only file system; the model there before.*unchanged"):
        model.save(out)
    assert doc_of(out) == before
    GeoModel.load(out)


def test_train_cli_on_a_read_only_folder_fails_before_training(data, tmp_path, tmpfs):
    df, emb = data
    manifest, emb_dir = write_dataset(df, emb, tmp_path / "ds")
    point = tmpfs("ro", "1m")
    remount_ro(point)
    t0 = time.perf_counter()
    r = geopin_cli("train", str(manifest), "--embeddings", str(emb_dir), "--out", str(point / "m"), "--epochs", "200", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(point) in lines[0] and "ead-only" in lines[0], r.stderr
    assert time.perf_counter() - t0 < 30  # it did not train first


@pytest.mark.parametrize("room_kb", [0, 12, 100, 190])  # the disk fills up in a different file each time
def test_full_disk_is_a_clear_error_and_keeps_the_old_model(model, tmpfs, room_kb):
    from geopin.locate.model import ModelError

    point = tmpfs("full", "2m")
    out = model.save(point / "m")
    before = doc_of(out)
    used = sum(p.stat().st_size for p in out.iterdir())
    assert used > room_kb * 1024 + 4096  # too little room for a second copy
    free = shutil.disk_usage(point).free
    (point / "filler").write_bytes(b"\0" * (free - room_kb * 1024))
    with pytest.raises(ModelError, match=rf"{out}: cannot write the model: [Nn]o space left on device"):
        model.save(out)
    assert doc_of(out) == before
    GeoModel.load(out)
    assert sorted(p.name for p in point.iterdir()) == ["filler", "m"]  # no temp folder left behind


def test_full_disk_while_writing_the_faiss_index_is_the_same_clear_error(model, data, tmp_path, tmpfs):
    from geopin.locate.model import ModelError

    df, emb = data
    m = GeoModel(replace(model.heads, gallery=Gallery(emb, exact_max=100)), model.params, model.calibration, model.meta)
    sizes = {p.name: p.stat().st_size for p in m.save(tmp_path / "probe").iterdir()}
    pages = lambda n: -(-n // 4096) * 4096  # noqa: E731
    before_index = sum(pages(sizes[n]) for n in ("cells.parquet", "places.npz", "classifier.pt"))
    assert sizes["gallery.faiss"] > 3 * 4096
    point = tmpfs("full", "2m")
    (point / "filler").write_bytes(b"\0" * (shutil.disk_usage(point).free - before_index - 4096))
    with pytest.raises(ModelError, match=rf"{point / 'm'}: cannot write the model: [Nn]o space left on device") as err:
        m.save(point / "m")
    assert "gallery.faiss" in str(err.value.__cause__.filename)  # FAISS's own error, turned into the usual one
    assert sorted(p.name for p in point.iterdir()) == ["filler"]


# ------------------------------------------------------------------ the backbone config travels with the model


def test_train_keeps_the_backbone_config_of_its_embeddings(data, tmp_path):
    from geopin.features.backbones import BackboneConfig

    df, emb = data
    manifest, emb_dir = write_dataset(df, emb, tmp_path)
    config = BackboneConfig(name="efficientnet_lite0", family="efficientnet_lite", version="weights-v9", mean=(127, 127, 127),
                            std=(128, 128, 128), native_size=224, long_side=256)
    meta = json.loads((emb_dir / "embeddings.json").read_text())
    write_json({**meta, "backbone_config": config.to_dict()}, emb_dir / "embeddings.json")
    model = train(manifest, emb_dir, tmp_path / "model", fast_cfg(0))
    assert model.backbone_config == config
    doc = doc_of(tmp_path / "model")
    assert doc["format_version"] == 4 and doc["backbone_config"] == config.to_dict()
    assert "backbone_config" not in doc["meta"]["embedding"]  # one copy, the one predict reads
    again = GeoModel.load(tmp_path / "model")
    assert again.backbone_config == config and again.format_version == 4
    # embeddings from before the config was recorded: the model has none (predict then says what it assumes)
    write_json(meta, emb_dir / "embeddings.json")
    assert train(manifest, emb_dir, tmp_path / "old", fast_cfg(0)).backbone_config is None
    assert doc_of(tmp_path / "old")["backbone_config"] is None
