"""The embed stage: outputs, content-hash cache, resume after a kill, bad photos, TTA, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from geopin.cli import app
from geopin.features.backbones import Backbone, create_backbone
from geopin.features.embed import (
    EmbedConfig,
    EmbeddingCache,
    cache_key,
    embed_images,
    embed_manifest,
    ids_digest,
    load_embeddings,
)

# One torch thread: tiny images gain nothing from two, and a busy machine makes OpenMP barriers costly.
SMALL = dict(long_side=128, batch_size=8, threads=1)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0")


def _photo(path: Path, seed: int, size: tuple[int, int]) -> Path:
    """A small JPEG with smooth random structure (blobs of colour), different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 20, (h, w, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


SIZES = [(128, 96), (96, 128), (128, 72), (120, 120), (128, 85)]


def _manifest(folder: Path, n: int, start: int = 0) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        path = _photo(folder / f"p{i:04d}.jpg", i, SIZES[i % len(SIZES)])
        rows.append({
            "id": f"p{i:04d}", "path": str(path), "lat": 10.0 + i, "lon": 20.0 - i, "group": f"g{i % 3}",
            "width": SIZES[i % len(SIZES)][0], "height": SIZES[i % len(SIZES)][1],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "source_row": i,
        })
    return pd.DataFrame(rows)


def _cfg(tmp_path: Path, **kw) -> EmbedConfig:
    return EmbedConfig(cache_dir=tmp_path / "cache", **{**SMALL, **kw})


def test_embed_manifest_writes_rows_in_manifest_order(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 12)
    manifest = tmp_path / "manifest.parquet"
    df.to_parquet(manifest)
    summary = embed_manifest(manifest, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    meta = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    assert emb.dtype == np.float32 and emb.shape == (12, 1280)
    assert np.isfinite(emb).all()
    assert summary.n_embedded == 12 and summary.n_failed == 0 and summary.photos_per_s > 0
    assert meta["backbone"] == "efficientnet_lite0" and meta["version"] == lite0.version and meta["dim"] == 1280
    assert meta["ids_sha256"] == ids_digest(df["id"]) and meta["n"] == 12
    assert meta["config"]["mode"] == "whole" and meta["normalised"] is False
    # Not normalised: raw pooled ReLU6 features.
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # Row i is photo i: the same vectors come from embedding the photos one by one.
    single = embed_images([Path(p) for p in df["path"]], lite0, EmbedConfig(long_side=128, batch_size=1, threads=1))
    np.testing.assert_allclose(emb, single, atol=1e-5, rtol=1e-5)
    loaded, _ = load_embeddings(tmp_path / "out", manifest)
    np.testing.assert_array_equal(loaded, emb)
    with pytest.raises(ValueError, match="different manifest"):
        load_embeddings(tmp_path / "out", df.iloc[::-1])


def test_embed_images_accepts_pil_images_and_paths(tmp_path, lite0):
    path = _photo(tmp_path / "a.jpg", 7, (128, 96))
    cfg = EmbedConfig(long_side=128, threads=1)
    from_path = embed_images([path], lite0, cfg)
    from_pil = embed_images([Image.open(path)], lite0, cfg)
    assert from_path.shape == (1, 1280)
    np.testing.assert_allclose(from_path, from_pil, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        embed_images([tmp_path / "missing.jpg"], lite0, cfg)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg: cannot decode"):
        embed_images([tmp_path / "bad.jpg"], lite0, cfg)


def test_rerun_is_served_from_the_cache(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 10)
    cfg = _cfg(tmp_path, shard_size=4)
    first = embed_manifest(df, tmp_path / "out1", cfg, backbone=lite0)
    shards = sorted((tmp_path / "cache" / first.cache_key).glob("part-*.npz"))
    assert len(shards) == 3  # 4 + 4 + 2: several photos per file, not one file per photo
    second = embed_manifest(df, tmp_path / "out2", cfg, backbone=lite0)
    assert second.n_embedded == 0 and second.n_cached == 10
    np.testing.assert_array_equal(np.load(tmp_path / "out1" / "embeddings.npy"), np.load(tmp_path / "out2" / "embeddings.npy"))
    # A second manifest sharing photos embeds only its new ones; duplicate photos are embedded once.
    more = pd.concat([df.iloc[:5], _manifest(tmp_path / "img", 3, start=100), df.iloc[:1]], ignore_index=True)
    third = embed_manifest(more, tmp_path / "out3", cfg, backbone=lite0)
    assert (third.n, third.n_unique, third.n_cached, third.n_embedded) == (9, 8, 5, 3)
    emb3 = np.load(tmp_path / "out3" / "embeddings.npy")
    np.testing.assert_array_equal(emb3[0], emb3[8])


def test_cache_key_depends_on_preprocessing_not_on_batching(tmp_path, lite0):
    base = cache_key(lite0, EmbedConfig(long_side=128))
    assert base == cache_key(lite0, EmbedConfig(long_side=128, batch_size=3, threads=1, cache_dir=tmp_path))
    assert base != cache_key(lite0, EmbedConfig(long_side=160))
    assert base != cache_key(lite0, EmbedConfig(long_side=128, tta=("flip",)))
    assert base != cache_key(lite0, EmbedConfig(mode="center_crop"))
    assert cache_key(lite0, EmbedConfig(tta=("crops", "flip"))) == cache_key(lite0, EmbedConfig(tta=("flip", "crops")))


def test_corrupt_photos_give_nan_rows_with_reasons(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 6)
    truncated = tmp_path / "img" / "truncated.jpg"
    truncated.write_bytes(Path(df.at[0, "path"]).read_bytes()[:300])
    text = tmp_path / "img" / "text.jpg"
    text.write_text("this is not a photo")
    changed = tmp_path / "img" / "changed.jpg"
    _photo(changed, 99, (64, 64))
    bad = pd.DataFrame([
        {"id": "truncated", "path": str(truncated), "sha256": hashlib.sha256(truncated.read_bytes()).hexdigest()},
        {"id": "text", "path": str(text), "sha256": hashlib.sha256(text.read_bytes()).hexdigest()},
        {"id": "missing", "path": str(tmp_path / "img" / "gone.jpg"), "sha256": "0" * 64},
        {"id": "changed", "path": str(changed), "sha256": "f" * 64},
    ])
    mixed = pd.concat([df.iloc[:3], bad, df.iloc[3:]], ignore_index=True)
    summary = embed_manifest(mixed, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    assert emb.shape == (10, 1280)
    bad_rows = [3, 4, 5, 6]
    assert np.isnan(emb[bad_rows]).all()
    assert np.isfinite(np.delete(emb, bad_rows, axis=0)).all()
    reasons = {f["id"]: f["reason"] for f in summary.failures}
    assert set(reasons) == {"truncated", "text", "missing", "changed"}
    assert "cannot decode" in reasons["truncated"] and "cannot decode" in reasons["text"]
    assert "not found" in reasons["missing"] and "sha256 mismatch" in reasons["changed"]
    meta = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    assert {f["row"] for f in meta["failures"]} == set(bad_rows) and meta["n_failed"] == 4
    # Failures are not cached: they are retried (and fail again) on the next run.
    again = embed_manifest(mixed, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    assert again.n_cached == 6 and again.n_failed == 4


def test_manifest_without_sha256_is_hashed(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 3).drop(columns=["sha256"])
    first = embed_manifest(df, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    second = embed_manifest(_manifest(tmp_path / "img", 3), tmp_path / "out2", _cfg(tmp_path), backbone=lite0)
    assert first.n_embedded == 3 and second.n_cached == 3


def test_bad_manifest_is_named_in_the_error(tmp_path, lite0):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image": ["x.jpg"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) id, path"):
        embed_manifest(bad, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        embed_manifest(tmp_path / "nope.parquet", tmp_path / "out", _cfg(tmp_path), backbone=lite0)


def test_empty_manifest_gives_an_empty_array(tmp_path, lite0):
    empty = _manifest(tmp_path / "img", 1).iloc[:0]
    summary = embed_manifest(empty, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    assert np.load(summary.embeddings_path).shape == (0, 1280) and summary.n == 0


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown mode"):
        EmbedConfig(mode="stretch")
    with pytest.raises(ValueError, match="unknown TTA option"):
        EmbedConfig(tta=("rotate",))
    with pytest.raises(ValueError, match="batch_size"):
        EmbedConfig(batch_size=0)


def test_tta_keeps_the_shape_and_averages_views(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 5)
    plain = embed_manifest(df, tmp_path / "plain", _cfg(tmp_path), backbone=lite0)
    tta = embed_manifest(df, tmp_path / "tta", _cfg(tmp_path, tta=("flip", "crops")), backbone=lite0)
    a, b = np.load(plain.embeddings_path), np.load(tta.embeddings_path)
    assert a.shape == b.shape == (5, 1280) and np.isfinite(b).all()
    assert plain.cache_key != tta.cache_key and tta.n_embedded == 5
    assert not np.allclose(a, b)
    # A left-right symmetric photo: its mirror is itself, so flip-TTA changes (almost) nothing.
    half = np.asarray(Image.open(df.at[0, "path"]))[:, :64]
    sym = Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1))
    one = embed_images([sym], lite0, EmbedConfig(long_side=128, threads=1))
    flipped = embed_images([sym], lite0, EmbedConfig(long_side=128, threads=1, tta=("flip",)))
    np.testing.assert_allclose(one, flipped, atol=1e-4)


def test_center_crop_mode(tmp_path, lite0):
    df = _manifest(tmp_path / "img", 3)
    summary = embed_manifest(df, tmp_path / "out", _cfg(tmp_path, mode="center_crop"), backbone=lite0)
    assert np.isfinite(np.load(summary.embeddings_path)).all()


def _run_cli(args: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from geopin.cli import main; main()", *args]
    with open(log, "wb") as err:
        return subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=err)


@pytest.mark.slow
def test_resume_after_sigkill_embeds_only_the_rest(tmp_path, lite0):
    n = 96
    df = _manifest(tmp_path / "img", n)
    manifest = tmp_path / "manifest.parquet"
    df.to_parquet(manifest)
    cache = tmp_path / "cache"
    key = cache_key(lite0, EmbedConfig(long_side=128))
    args = ["embed", str(manifest), "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--long-side", "128",
            "--batch-size", "4", "--shard-size", "8", "--threads", "1", "--workers", "1"]
    log = tmp_path / "killed_run.log"
    proc = _run_cli(args, log)
    deadline = time.monotonic() + 120
    try:
        while not list((cache / key).glob("part-*.npz")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no cache shard written within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "embeddings.npy").exists()  # never half-written
    cached = EmbeddingCache(cache / key, 1280).lookup(set(df["sha256"]))
    assert 0 < len(cached) < n

    resumed = embed_manifest(manifest, tmp_path / "out", EmbedConfig(cache_dir=cache, **SMALL), backbone=lite0)
    assert resumed.n_cached == len(cached) and resumed.n_embedded == n - len(cached)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # the killed run's temporary output is gone
    fresh = embed_manifest(manifest, tmp_path / "fresh", EmbedConfig(cache_dir=tmp_path / "cache2", **SMALL), backbone=lite0)
    assert fresh.n_embedded == n
    np.testing.assert_allclose(np.load(resumed.embeddings_path), np.load(fresh.embeddings_path), atol=1e-5, rtol=0)


def test_cli_embed_json_and_help(tmp_path):
    df = _manifest(tmp_path / "img", 4)
    manifest = tmp_path / "manifest.parquet"
    df.to_parquet(manifest)
    runner = CliRunner()
    help_result = runner.invoke(app, ["embed", "--help"])
    assert help_result.exit_code == 0 and "--long-side" in help_result.stdout and "--tta" in help_result.stdout
    args = ["embed", str(manifest), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--long-side", "128", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n"] == 4 and summary["n_embedded"] == 4 and summary["dim"] == 1280
    assert Path(summary["embeddings_path"]).exists()
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["n_cached"] == 4 and again["n_embedded"] == 0
    bad = runner.invoke(app, ["embed", str(manifest), "--out", str(tmp_path / "o"), "--backbone", "nope"])
    assert bad.exit_code == 2 and "unknown backbone 'nope'" in bad.stderr


@pytest.mark.shared
def test_embeds_shared_photos(tmp_path, im2gps_dir, lite0):
    labels = pd.read_csv(im2gps_dir / "labels.csv").head(8)
    paths = [im2gps_dir / p for p in labels["image"]]
    df = pd.DataFrame({
        "id": labels["image"], "path": [str(p) for p in paths], "lat": labels["lat"], "lon": labels["lon"],
        "group": labels["author"], "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
    })
    summary = embed_manifest(df, tmp_path / "out", EmbedConfig(cache_dir=tmp_path / "cache", long_side=224), backbone=lite0)
    emb = np.load(summary.embeddings_path)
    assert emb.shape == (8, 1280) and np.isfinite(emb).all() and summary.n_failed == 0
    norms = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = norms @ norms.T
    assert (sim[~np.eye(8, dtype=bool)] < 0.999).all()  # distinct photos, distinct features


# ---------------------------------------------------------------------------------------------------------- issue 13


def test_load_image_is_a_plain_pillow_decode_for_8bit_photos(tmp_path):
    """The bundled model's embeddings depend on these pixels: they must not move by a single level."""
    from PIL import ImageOps

    from geopin.features.embed import _draft_request, load_image

    big = _photo(tmp_path / "big.jpg", 1, (1600, 1200))
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(big).save(rotated, quality=90, exif=exif.tobytes())
    grey = tmp_path / "grey.jpg"
    Image.open(big).convert("L").save(grey, quality=90)
    png = tmp_path / "opaque.png"
    Image.open(big).convert("RGBA").resize((300, 200)).save(png)
    for path in (big, rotated, grey, png):
        for mode, long_side in (("whole", 384), ("center_crop", 384)):
            ours = load_image(path, mode, long_side, 224)
            plain = Image.open(path)
            plain.draft("RGB", _draft_request(plain.width, plain.height, mode, long_side, 224))
            plain = ImageOps.exif_transpose(plain).convert("RGB")
            assert ours.mode == "RGB" and ours.size == plain.size, (path.name, mode)
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(plain), err_msg=f"{path.name} {mode}")
    assert load_image(big, "whole", 384, 224).size == (400, 300)  # the JPEG was decoded at 1/4 scale


def test_high_bit_depth_photos_embed_like_their_8bit_twins(tmp_path, lite0):
    from imagefiles import TRUE_MEAN, twin_of, write_high_bit_files

    from geopin.features.embed import load_image

    files = write_high_bit_files(tmp_path / "img", size=(128, 96))
    for name, path in files.items():
        arr = np.asarray(load_image(path, "whole", 128, 224))
        assert arr.dtype == np.uint8 and arr.shape == (96, 128, 3), name
        assert abs(arr.mean() - TRUE_MEAN) < 1.0, (name, arr.mean())
    df = pd.DataFrame({"id": list(files), "path": [str(p) for p in files.values()]})
    summary = embed_manifest(df, tmp_path / "out", _cfg(tmp_path), backbone=lite0)
    assert summary.n_failed == 0, summary.failures
    emb = dict(zip(files, np.load(summary.embeddings_path)))
    for name in files:
        np.testing.assert_allclose(emb[name], emb[twin_of(name)], atol=1e-4, err_msg=name)


def _fifo_manifest(tmp_path: Path, n: int) -> tuple[pd.DataFrame, Path, bytes]:
    """n photos and, last, a FIFO standing for one more: a run that reaches it waits until the test writes it."""
    df = _manifest(tmp_path / "img", n)
    held = tmp_path / "img" / "held.jpg"
    _photo(held, 999, (128, 96))
    data = held.read_bytes()
    held.unlink()
    os.mkfifo(held)
    row = {"id": "held", "path": str(held), "sha256": hashlib.sha256(data).hexdigest()}
    return pd.concat([df, pd.DataFrame([row])], ignore_index=True), held, data


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, f"run ended before {what}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.01)


@pytest.mark.slow
def test_second_run_into_the_same_folder_fails_fast_and_names_the_first(tmp_path):
    full, fifo, data = _fifo_manifest(tmp_path, 6)
    first_manifest, second_manifest = tmp_path / "first.parquet", tmp_path / "second.parquet"
    full.to_parquet(first_manifest)
    full.iloc[:-1].to_parquet(second_manifest)
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-cache", "--long-side", "128", "--threads", "1", "--workers", "1"]
    temp_files = lambda: list(out.glob(".embeddings.npy.*.tmp"))  # noqa: E731

    first = _run_cli(["embed", str(first_manifest), *common], tmp_path / "first.log")
    try:
        _wait_for(temp_files, first, tmp_path / "first.log", "temporary output")  # it now waits on the FIFO
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-c", "from geopin.cli import main; main()", "embed",
                                 str(second_manifest), *common], capture_output=True, text=True, timeout=300)
        assert second.returncode != 0, second.stderr
        assert f"{out} is being written by pid {first.pid} since " in second.stderr, second.stderr
        assert "wait or choose another --out" in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - started < 60  # fails at once, not after embedding
        with open(fifo, "wb") as fh:  # let the first run go on
            fh.write(data)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    emb, _ = load_embeddings(out, full)
    assert np.isfinite(emb).all() and not temp_files()


@pytest.mark.slow
def test_lock_of_a_killed_run_does_not_block_the_next(tmp_path):
    full, _, _ = _fifo_manifest(tmp_path, 3)
    manifest = tmp_path / "m.parquet"
    full.to_parquet(manifest)
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-cache", "--long-side", "128", "--threads", "1", "--workers", "1"]
    killed = _run_cli(["embed", str(manifest), *common], tmp_path / "killed.log")
    try:
        _wait_for(lambda: list(out.glob(".embeddings.npy.*.tmp")), killed, tmp_path / "killed.log", "temporary output")
        assert str(killed.pid) in (out / ".lock").read_text()
    finally:
        killed.send_signal(signal.SIGKILL)  # it waits on the FIFO: only the kill ends it
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    good = tmp_path / "good.parquet"
    full.iloc[:-1].to_parquet(good)
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(good), *common, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 3
    assert not list(out.glob(".*.tmp"))  # the killed run's temporary output is gone


# ------------------------------------------------------------------------- the backbone config in embeddings.json


def test_embeddings_json_records_the_backbone_config_and_the_reader_checks_it(tmp_path, lite0):
    from geopin.features.embed import embeddings_backbone_config

    df = _manifest(tmp_path / "img", 3)
    embed_manifest(df, tmp_path / "out", _cfg(tmp_path, mode="center_crop"), backbone=lite0)
    path = tmp_path / "out" / "embeddings.json"
    meta = json.loads(path.read_text())
    expected = lite0.config.for_input("center_crop", 128)
    assert meta["backbone_config"] == expected.to_dict()
    assert meta["backbone_config"]["mean"] == [127.0, 127.0, 127.0] and meta["backbone_config"]["native_size"] == 224
    _, loaded = load_embeddings(tmp_path / "out", df)
    assert embeddings_backbone_config(loaded) == expected
    meta["backbone_config"]["std"] = [0.0, 128.0, 128.0]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"embeddings\.json: backbone_config: std must be positive"):
        load_embeddings(tmp_path / "out")


def test_the_writer_leaves_nothing_when_the_run_fails(tmp_path, lite0):
    from geopin.features.embed import write_embeddings

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="disk on fire"):
        with write_embeddings(out, ["a", "b"], lite0.config, 4, EmbedConfig()) as o:
            o.vectors[0] = 1.0
            raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError, match="finish"):
        with write_embeddings(out, ["a", "b"], lite0.config, 4, EmbedConfig()):
            pass
    assert list(out.iterdir()) == []


def test_embedding_with_another_backbone_than_the_config_names_is_refused(lite0):
    with pytest.raises(ValueError, match="backbone 'efficientnet_lite0' given, but the config names 'efficientnet_lite1'"):
        embed_images([Image.new("RGB", (64, 48))], lite0, EmbedConfig(backbone="efficientnet_lite1"))
