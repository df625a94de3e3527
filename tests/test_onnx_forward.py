"""The forward pass on ONNX Runtime: same features as PyTorch, exported once and cached, PyTorch when it cannot."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from geopin.cli import app
from geopin.features.backbones import (
    Backbone,
    BackboneConfig,
    create_backbone,
    trunk_stages,
)
from geopin.features.backbones.efficientnet_lite import same_pad
from geopin.features.embed import (
    EmbedConfig,
    batch_forward,
    cache_key,
    embed_images,
    embed_manifest,
)
from geopin.features.onnx_forward import (
    TOLERANCE,
    BatchForward,
    ExportFailed,
    checked_session,
    export_path,
)

THREADS = 1  # a shared 2-core machine: one thread is as fast as two on these small batches


@pytest.fixture(scope="module")
def lite0(empty_geopin_cache) -> Backbone:
    return create_backbone("efficientnet_lite0")


def _photo(path: Path, seed: int, size: tuple[int, int]) -> Path:
    """A JPEG with smooth random colour structure, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 20, (h, w, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


# Landscape, portrait, panorama, square and an odd size: whole mode keeps each one's aspect ratio.
SIZES = [(640, 480), (480, 640), (800, 300), (500, 500), (333, 250)]


def _photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_photo(folder / f"p{i}.jpg", i, SIZES[i % len(SIZES)]) for i in range(n)]


def _tiny_backbone(name: str, model, dim: int) -> Backbone:
    config = BackboneConfig(name=name, family="test", version="1", mean=(127.0,) * 3, std=(128.0,) * 3,
                            native_size=32, long_side=64)
    return Backbone(config, dim, model.eval())


@given(size=st.integers(1, 4000), stride=st.integers(1, 4), kernel=st.integers(1, 7))
def test_same_pad_is_tf_same_padding(size, stride, kernel):
    assert same_pad(size, stride, kernel) == max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def test_config_rejects_an_unknown_runtime():
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        EmbedConfig(runtime="tensorrt")
    result = CliRunner().invoke(app, ["embed", "m.parquet", "--out", "o", "--runtime", "tensorrt"])
    assert result.exit_code == 2 and "unknown runtime 'tensorrt'" in result.stderr


@pytest.mark.parametrize("mode, tta", [("whole", ()), ("whole", ("flip", "crops")), ("center_crop", ())])
def test_onnx_features_agree_with_torch(tmp_path, lite0, mode, tta):
    photos = _photos(tmp_path, 5)
    cfg = {"backbone": lite0.name, "mode": mode, "tta": tta, "threads": THREADS, "batch_size": 4}
    assert batch_forward(lite0, EmbedConfig(**cfg, runtime="onnx")).resolve() == "onnx"
    onnx = embed_images(photos, lite0, EmbedConfig(**cfg, runtime="onnx"))
    torch = embed_images(photos, lite0, EmbedConfig(**cfg, runtime="torch"))
    assert onnx.shape == (5, 1280) and np.isfinite(onnx).all()
    assert np.abs(onnx - torch).max() <= TOLERANCE
    assert np.abs(torch).max() > 0.5  # real features, not a degenerate zero output


@pytest.mark.shared
def test_onnx_features_agree_with_torch_on_shared_photos(im2gps_dir, lite0):
    labels = pd.read_csv(im2gps_dir / "labels.csv").sample(16, random_state=0)
    photos = [im2gps_dir / p for p in labels["image"]]
    cfg = {"backbone": lite0.name, "threads": THREADS}
    onnx = embed_images(photos, lite0, EmbedConfig(**cfg, runtime="onnx"))
    torch = embed_images(photos, lite0, EmbedConfig(**cfg, runtime="torch"))
    assert np.abs(onnx - torch).max() <= TOLERANCE


def test_export_is_cached_and_a_corrupt_file_is_rebuilt(lite0, empty_geopin_cache, tmp_path, caplog):
    folder = tmp_path / "onnx"
    checked_session(lite0, THREADS, folder)
    path = export_path(lite0, folder)
    assert path.exists() and path.parent == folder and not list(folder.glob(".*.tmp"))
    made = path.stat().st_mtime_ns
    checked_session(lite0, THREADS, folder)  # a second process's load: the file is read, not exported again
    assert path.stat().st_mtime_ns == made
    assert export_path(lite0) == empty_geopin_cache / "onnx" / path.name  # the default folder: geopin's cache root

    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn copy
    with caplog.at_level(logging.WARNING, logger="geopin.features.onnx_forward"):
        sess = checked_session(lite0, THREADS, folder)
    assert any("rebuilding" in r.message and "cannot be loaded" in r.message for r in caplog.records)
    x = np.zeros((1, 3, 64, 96), np.float32)
    assert sess.run(None, {"pixels": x})[0].shape == (1, 1280)


def test_embed_records_the_runtime_and_shares_the_cache_with_torch(tmp_path, lite0):
    photos = _photos(tmp_path / "img", 4)
    df = pd.DataFrame({"id": [p.stem for p in photos], "path": [str(p) for p in photos],
                       "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]})
    torch_cfg = EmbedConfig(cache_dir=tmp_path / "cache", threads=THREADS, runtime="torch")
    onnx_cfg = EmbedConfig(cache_dir=tmp_path / "cache", threads=THREADS, runtime="onnx")
    assert cache_key(lite0, torch_cfg) == cache_key(lite0, onnx_cfg)  # interchangeable within 1e-4
    first = embed_manifest(df.head(2), tmp_path / "a", onnx_cfg, backbone=lite0)
    second = embed_manifest(df, tmp_path / "b", torch_cfg, backbone=lite0)
    assert first.n_embedded == 2 and second.n_cached == 2 and second.n_embedded == 2
    import json

    assert json.loads(first.meta_path.read_text())["runtime"] == "onnx"
    assert json.loads(second.meta_path.read_text())["runtime"] == "torch"


def test_pytorch_model_is_untouched_for_gradcam_and_finetuning(lite0):
    """Grad-CAM and fine-tuning use backbone.model: after an export it is the same eval-mode fused network."""
    import torch

    BatchForward(lite0, "onnx", THREADS).resolve()
    stages = trunk_stages(lite0.model)
    assert not lite0.model.training and all(p.requires_grad for p in lite0.model.parameters())
    x = torch.zeros((1, 3, 64, 64), requires_grad=True)
    stages.head(stages.blocks(stages.stem(x))).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


class _RunningMax:
    """Channels' running maximum: aten::cummax has no ONNX export."""

    @staticmethod
    def make():
        import torch

        class RunningMax(torch.nn.Module):
            def forward(self, x):
                return torch.cummax(x.mean((2, 3)), dim=1).values

        return RunningMax()


def test_backbone_that_cannot_be_exported_falls_back_to_torch(tmp_path, caplog):
    backbone = _tiny_backbone("running_max", _RunningMax.make(), 3)
    photos = _photos(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="geopin.features.onnx_forward"):
        auto = embed_images(photos, backbone, EmbedConfig(backbone="running_max", threads=THREADS))
        again = embed_images(photos, backbone, EmbedConfig(backbone="running_max", threads=THREADS))
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # said once, not per call
    assert "running_max runs on PyTorch" in warnings[0] and "cummax" in warnings[0]
    torch_only = embed_images(photos, backbone, EmbedConfig(backbone="running_max", threads=THREADS, runtime="torch"))
    np.testing.assert_array_equal(auto, torch_only)
    np.testing.assert_array_equal(again, torch_only)
    with pytest.raises(ExportFailed, match="cannot run on ONNX Runtime.*cummax"):
        embed_images(photos, backbone, EmbedConfig(backbone="running_max", runtime="onnx"))


def test_export_that_disagrees_with_torch_is_not_used(tmp_path, caplog):
    """A number read off the photo in Python is frozen by tracing: the check against PyTorch catches it."""
    import torch

    class Brightness(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) / (1.0 + x.abs().max().item())  # .item(): a constant in the traced graph

    backbone = _tiny_backbone("brightness", Brightness(), 3)
    forward = BatchForward(backbone, "auto", THREADS, folder=tmp_path / "onnx")
    with caplog.at_level(logging.WARNING, logger="geopin.features.onnx_forward"):
        assert forward.resolve() == "torch"
    assert any("differs from PyTorch" in r.message for r in caplog.records)
