"""A backbone's preprocessing as data (`BackboneConfig`, like timm's pretrained_cfg) and the one function
that turns a photo into an input tensor from it.

The config is written into every embeddings folder and model, so whoever reads them can check that the
photos they are about to embed are prepared exactly as the ones the vectors and heads came from.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MODES = ("whole", "center_crop")
#: Numeric precision of the forward pass. "int8" (ONNX Runtime static quantization, geopin.features.quantize)
#: gives other features than "f32" (cosine ~0.99), so it is part of the config: a head trained on one is not fed the other.
PRECISIONS = ("f32", "int8")
WHOLE_FITS = ("resize", "letterbox")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
#: Long side in pixels of whole-mode inputs unless a config says otherwise (Lite0's native 224 x ~1.7).
DEFAULT_LONG_SIDE = 384
# Sides of whole-mode inputs are rounded to this; the networks' total stride is 32, and rounding keeps the
# number of distinct input shapes (batch buckets) small.
SIDE_MULTIPLE = 32
# The TF EfficientNet evaluation crop keeps the central size/(size + CROP_PADDING) of the short side.
CROP_PADDING = 32


class BackboneMismatch(ValueError):
    """Stored vectors or heads were made with other preprocessing or weights than the backbone about to run."""


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that decides a backbone's input tensor, and which weights it runs.

    A backbone's registry entry returns it with the model; `mode` and `long_side` are then set by the
    embed config. Stored as `backbone_config` in embeddings.json and model.json.
    """

    name: str  # registry name ("efficientnet_lite0", "finetuned:DIR")
    family: str  # the code that builds the network ("efficientnet_lite", "clip")
    version: str  # identifies the weights and the inference graph
    mean: tuple[float, float, float]  # per channel, on the 0-255 pixel scale
    std: tuple[float, float, float]
    native_size: int  # training resolution: the side of center_crop and letterbox inputs
    interpolation: str = "bicubic"
    mode: str = "whole"  # "whole": the full photo; "center_crop": the central square at native_size
    long_side: int = DEFAULT_LONG_SIDE  # whole mode with whole_fit "resize": the input's long side
    side_multiple: int = SIDE_MULTIPLE  # whole mode with whole_fit "resize": each side rounded to this
    whole_fit: str = "resize"  # "resize": own aspect ratio at long_side; "letterbox": onto a mean-coloured native square
    crop_padding: int = CROP_PADDING  # center_crop keeps the central native/(native + crop_padding) of the short side
    precision: str = "f32"  # the forward pass's numbers (set by the embed config); configs stored before it read as f32

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be 3 numbers, got {value!r}") from None
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be 3 finite numbers, got {value!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.whole_fit not in WHOLE_FITS:
            raise ValueError(f"unknown whole_fit {self.whole_fit!r}; choose one of {', '.join(WHOLE_FITS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        for name, least in (("native_size", 1), ("long_side", 1), ("side_multiple", 1), ("crop_padding", 0)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("name", "family", "version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")

    def for_input(self, mode: str | None = None, long_side: int | None = None,
                  precision: str | None = None) -> "BackboneConfig":
        """The same backbone fed in another mode, at another long side or precision (what an embed config chooses)."""
        if ((mode is None or mode == self.mode) and (long_side is None or long_side == self.long_side)
                and (precision is None or precision == self.precision)):
            return self
        return dataclasses.replace(self, mode=mode or self.mode, long_side=self.long_side if long_side is None else long_side,
                                   precision=precision or self.precision)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; the precision only when not f32, so f32 models and embeddings read in geopin before it."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["precision"] == "f32":
            del d["precision"]
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "BackboneConfig":
        """Read a stored config; a ValueError names `source` (file and key) and the field that is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected an object, found {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)} (written by a newer geopin?)")
        missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None


#: Fields whose difference would change the vectors; `version` only warns (the same weights may come from
#: another build of their package).
_CHECKED = tuple(f.name for f in dataclasses.fields(BackboneConfig) if f.name != "version")


def check_backbone_config(stored: BackboneConfig, actual: BackboneConfig, source: str) -> None:
    """Raise BackboneMismatch naming `source` and the field where the backbone about to run (`actual`) would
    prepare photos otherwise than the stored config says; other weights versions are logged."""
    for name in _CHECKED:
        want, have = getattr(stored, name), getattr(actual, name)
        if want != have and name == "precision":
            raise BackboneMismatch(
                f"{source}: made from {want} features, but backbone {actual.name!r} would run at {have}: {want} and "
                f"{have} features differ; embed at precision {want} (--precision {want}), or embed again at {have} and retrain"
            )
        if want != have:
            raise BackboneMismatch(
                f"{source}: {name} is {_show(want)}, but backbone {actual.name!r} would run with {name} "
                f"{_show(have)}; embed the photos again (and retrain) with this geopin, or use the geopin that wrote it"
            )
    if stored.version != actual.version:
        logger.warning("%s: made with %s version %s; this machine has %s", source, stored.name, stored.version, actual.version)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


# ----------------------------------------------------------------------------------------------------------
# Sizes


def whole_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
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


def center_crop_box(width: int, height: int, size: int, crop_padding: int = CROP_PADDING) -> tuple[int, int, int, int]:
    """Central square the TF EfficientNet evaluation crops before resizing to `size` (fraction size/(size+32))."""
    side = min(width, height) * size / (size + crop_padding)
    left = (width - side) / 2
    top = (height - side) / 2
    return (round(left), round(top), round(left + side), round(top + side))


# ----------------------------------------------------------------------------------------------------------
# Pixels


def resize_for(img: Image.Image, cfg: BackboneConfig) -> Image.Image:
    """The RGB image resized (center_crop: cropped, letterbox: padded) to the network input size."""
    resample = INTERPOLATIONS[cfg.interpolation]
    size = cfg.native_size
    if cfg.mode == "center_crop":
        return img.resize((size, size), resample, box=center_crop_box(img.width, img.height, size, cfg.crop_padding))
    if cfg.whole_fit == "letterbox":
        scale = size / max(img.size)
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
        canvas = Image.new("RGB", (size, size), tuple(int(round(m)) for m in cfg.mean))
        canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
        return canvas
    target = whole_size(img.width, img.height, cfg.long_side, cfg.side_multiple)
    return img if img.size == target else img.resize(target, resample)


def preprocess_image(img: Image.Image, cfg: BackboneConfig):
    """(3, H, W) float32 tensor of a photo as `cfg` prepares it: resized, then (pixel - mean) / std."""
    return _normalised_tensor(resize_for(_rgb(img), cfg), cfg.mean, cfg.std)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() copies even when nothing changes


def _normalised_tensor(img: Image.Image, mean, std):
    """(3, H, W) float32 of (pixel - mean) / std; transposed while still uint8, one float pass (runs per photo)."""
    import torch

    chw = np.asarray(img).transpose(2, 0, 1)
    out = np.empty(chw.shape, dtype=np.float32)
    np.subtract(chw, np.asarray(mean, dtype=np.float32).reshape(3, 1, 1), out=out)
    out *= (1.0 / np.asarray(std, dtype=np.float32)).reshape(3, 1, 1)
    return torch.from_numpy(out)
