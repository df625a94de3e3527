"""The int8 forward pass: close to f32 on real photos, built from the shipped ranges once and cached, kept apart
from f32 vectors (cache key, stored config), and a clear error or one warning where it cannot run."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import torch
from typer.testing import CliRunner

from geopin.cli import app
from geopin.features.backbones import Backbone, BackboneConfig, BackboneMismatch, check_backbone_config, create_backbone
from geopin.features.embed import (
    EmbedConfig,
    cache_key,
    cache_spec,
    embed_images,
    embed_manifest,
    embeddings_backbone_config,
    embedded_config,
    load_embeddings,
)
from geopin.features.onnx_forward import (
    COSINE_FLOOR,
    BatchForward,
    ExportFailed,
    checked_session,
    export_path,
    int8_path,
    int8_session,
    least_cosine,
    session,
)
from geopin.features.quantize import TableProblem, check_names, pre_process, quantize, read_table

THREADS = 1
# Real photos shipped by installed packages: a portrait, a landscape with buildings, a flower close-up.
PHOTOS = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
          Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
          Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg"]


@pytest.fixture(scope="module")
def lite0(empty_geopin_cache) -> Backbone:
    return create_backbone("efficientnet_lite0")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _manifest(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"id": [p.stem for p in paths], "path": [str(p) for p in paths],
                         "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]})


def _tiny(name: str) -> Backbone:
    """A small real network with no int8 table shipped for it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    config = BackboneConfig(name=name, family="test", version="1", mean=(127.0,) * 3, std=(128.0,) * 3,
                            native_size=32, long_side=64)
    return Backbone(config, 16, model.eval())


def test_int8_features_are_close_to_f32_on_real_photos(lite0):
    cfg = {"backbone": lite0.name, "threads": THREADS}
    forward = BatchForward(lite0, "onnx", THREADS, precision="int8")
    assert forward.resolve() == "onnx" and forward.precision_used == "int8"
    int8 = embed_images(PHOTOS, lite0, EmbedConfig(**cfg, runtime="onnx", precision="int8"))
    f32 = embed_images(PHOTOS, lite0, EmbedConfig(**cfg, runtime="onnx"))
    cos = _cosines(int8, f32)
    assert cos.min() >= 0.95 and cos.mean() >= 0.97, cos
    assert np.abs(int8 - f32).max() > 1e-3  # really another forward pass, not the f32 one


def test_int8_file_is_built_once_cached_and_a_torn_one_rebuilt(lite0, empty_geopin_cache, caplog):
    int8_session(lite0, THREADS)
    f32 = export_path(lite0)
    path = int8_path(f32, read_table(lite0.name, lite0.version))
    assert path.exists() and path.parent == empty_geopin_cache / "onnx" and path.stat().st_size < f32.stat().st_size / 2
    assert not list(path.parent.glob(".*.tmp"))
    made = path.stat().st_mtime_ns
    int8_session(lite0, THREADS)  # what another process does: the file is read and checked, not built again
    assert path.stat().st_mtime_ns == made
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="geopin.features.onnx_forward"):
        sess = int8_session(lite0, THREADS)
    assert any("rebuilding" in r.message for r in caplog.records)
    assert least_cosine(lite0, sess) >= COSINE_FLOOR


def test_a_broken_quantization_is_caught(lite0, tmp_path):
    """Ranges a quarter of the calibrated ones clip the activations: the check against PyTorch sees it."""
    checked_session(lite0, THREADS)
    pre = pre_process(export_path(lite0), tmp_path / "pre.onnx")
    table = read_table(lite0.name, lite0.version)
    check_names(table, pre, lite0.name)  # the shipped table fits this export
    bad = quantize(pre, tmp_path / "bad.onnx", {k: (lo / 4, hi / 4) for k, (lo, hi) in table["ranges"].items()})
    assert least_cosine(lite0, session(bad, THREADS)) < COSINE_FLOOR


def test_precision_keys_the_cache_and_the_stored_config(lite0, tmp_path):
    f32_cfg = EmbedConfig(cache_dir=tmp_path / "cache", threads=THREADS, runtime="onnx")
    int8_cfg = EmbedConfig(cache_dir=tmp_path / "cache", threads=THREADS, runtime="onnx", precision="int8")
    assert cache_key(lite0, f32_cfg) != cache_key(lite0, int8_cfg)
    df = _manifest(PHOTOS)
    first = embed_manifest(df, tmp_path / "int8", int8_cfg, backbone=lite0)
    second = embed_manifest(df, tmp_path / "f32", f32_cfg, backbone=lite0)
    assert first.n_embedded == 3 and second.n_cached == 0 and second.n_embedded == 3  # not each other's vectors
    again = embed_manifest(df, tmp_path / "int8-again", int8_cfg, backbone=lite0)
    assert again.n_cached == 3
    _, meta = load_embeddings(tmp_path / "int8", df)
    stored = embeddings_backbone_config(meta)
    assert stored.precision == "int8" and meta["config"]["precision"] == "int8"
    # a head trained on these int8 features, about to be fed f32 ones (and the other way round), is stopped
    with pytest.raises(BackboneMismatch, match="made from int8 features.*would run at f32.*--precision int8"):
        check_backbone_config(stored, embedded_config(lite0, EmbedConfig()), "model.json: backbone_config")
    f32_stored = embeddings_backbone_config(load_embeddings(tmp_path / "f32", df)[1])
    with pytest.raises(BackboneMismatch, match="made from f32 features.*would run at int8"):
        check_backbone_config(f32_stored, embedded_config(lite0, EmbedConfig(precision="int8")), "model.json")
    check_backbone_config(f32_stored, embedded_config(lite0, EmbedConfig()), "model.json")


def test_configs_stored_before_precision_read_as_f32(lite0):
    old = {k: v for k, v in lite0.config.to_dict().items() if k != "precision"}
    assert BackboneConfig.from_dict(old, "old model.json").precision == "f32"
    assert "precision" not in cache_spec(lite0, EmbedConfig())  # f32 cache keys are those from before int8
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        BackboneConfig.from_dict({**old, "precision": "int4"}, "model.json")


def test_int8_on_torch_is_an_error_naming_both():
    with pytest.raises(ValueError, match="precision 'int8'.*runtime 'torch'"):
        EmbedConfig(runtime="torch", precision="int8")
    result = CliRunner().invoke(app, ["embed", "m.parquet", "--out", "o", "--runtime", "torch", "--precision", "int8"])
    assert result.exit_code == 2 and "runtime 'torch'" in result.stderr
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        EmbedConfig(precision="fp16")


def test_a_backbone_without_a_table_fails_clearly_or_runs_at_f32_with_one_warning(tmp_path, caplog):
    tiny = _tiny("no_table_cnn")
    with pytest.raises(ExportFailed, match="cannot run at int8.*no int8 calibration table.*calibrate_int8.py"):
        BatchForward(tiny, "onnx", THREADS, folder=tmp_path / "onnx", precision="int8").resolve()
    other = _tiny("no_table_cnn")  # another model object: "auto" decides (and warns) afresh
    cfg = EmbedConfig(backbone="no_table_cnn", long_side=64, threads=THREADS, precision="int8",
                      cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="geopin.features.onnx_forward"):
        summary = embed_manifest(_manifest(PHOTOS), tmp_path / "out", cfg, backbone=other)
        forward = BatchForward(other, "auto", THREADS, precision="int8")
        assert forward.resolve() == "onnx" and forward.precision_used == "f32"
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runs at f32, not int8" in warnings[0] and "no int8 calibration table" in warnings[0]
    # what ran is what is recorded: f32 vectors under the f32 key, never under an int8 one
    meta = json.loads(summary.meta_path.read_text())
    assert meta["config"]["precision"] == "f32"
    assert BackboneConfig.from_dict(meta["backbone_config"], "embeddings.json").precision == "f32"
    assert summary.cache_key == cache_key(other, EmbedConfig(backbone="no_table_cnn", long_side=64))


def test_a_table_for_another_graph_is_refused_with_the_fix(lite0, tmp_path):
    tiny = _tiny("tiny_graph")
    checked_session(tiny, THREADS, tmp_path)
    pre = pre_process(export_path(tiny, tmp_path), tmp_path / "pre.onnx")
    with pytest.raises(TableProblem, match="does not fit this export.*calibrate_int8.py --backbone tiny_graph"):
        check_names(read_table(lite0.name, lite0.version), pre, "tiny_graph")
    with pytest.raises(TableProblem, match="calibrated for efficientnet_lite0 version"):
        read_table(lite0.name, "other-weights")


def test_predict_and_explain_run_the_bundled_f32_model_at_int8_when_asked(tmp_path):
    """PredictConfig.precision: the bundled model (trained on f32 features) predicts at int8 when asked, with features
    close to f32 ones; the explanation's answer is predict's answer; a bad precision is named."""
    from PIL import Image

    from geopin.explain.maps import explain_with_maps
    from geopin.locate.predict import EXAMPLE_PHOTO, PredictConfig, Predictor

    f32 = Predictor(PredictConfig(text="never"))
    int8 = Predictor(PredictConfig(text="never", precision="int8"))
    assert f32.embed_cfg.precision == "f32" and int8.embed_cfg.precision == "int8"
    with Image.open(EXAMPLE_PHOTO) as im:
        img = im.convert("RGB")
    a, b = f32.embed([img])[0], int8.embed([img])[0]
    assert not np.array_equal(a, b) and a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.95
    answer = next(int8.predict_paths([EXAMPLE_PHOTO]))
    assert "error" not in answer and answer["summary"]
    explained, _ = explain_with_maps(int8, img, occlusion=False, name=EXAMPLE_PHOTO.name)
    direct = int8.predict_images([img], [EXAMPLE_PHOTO.name])[0]
    assert (explained["prediction"]["lat"], explained["prediction"]["lon"]) == (direct["lat"], direct["lon"])
    with pytest.raises(ValueError, match="precision must be one of f32, int8, not 'int4'"):
        PredictConfig(precision="int4")


def test_serve_refuses_a_bad_precision_before_loading():
    result = CliRunner().invoke(app, ["serve", "--precision", "int4", "--port", "0"])
    assert result.exit_code == 2 and "--precision 'int4': choose f32 or int8" in result.output
