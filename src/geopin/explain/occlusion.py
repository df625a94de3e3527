"""Occlusion evidence: hide a patch of the photo (blurred, or the ImageNet-mean colour) and measure how
much the whole posterior's mass on the target drops. Model-agnostic, but one forward pass per patch,
so the patches are batched and their number is bounded (`OcclusionConfig.max_passes`).

A drop is evidence only above the noise of the measurement. The network's answer jitters under
changes that carry no content: shifted by 1-2 pixels, the same photo moves the target's mass by an
RMS of 0.4 to 4.4 probability points (median 1.6; 40 shared Im2GPS3k photos, 24 shifts each). So
each map also measures the photo against itself shifted (`NULL_SHIFTS`, one batch) and a patch counts
only when its drop exceeds `noise_k` times that RMS, and never below `min_drop` (`noise_threshold`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from geopin.explain.target import Target, posterior, target_mass

log = logging.getLogger(__name__)

#: The neutral patch: ImageNet's mean colour, what "nothing in particular" looks like to these networks.
IMAGENET_MEAN_RGB = (124, 116, 104)


@dataclass(frozen=True)
class OcclusionConfig:
    """Patch sizes are fractions of the network input's long side; overlap 0.5 = stride of half a patch."""

    scales: tuple[float, ...] = (0.25, 0.125)
    overlap: float = 0.5
    max_passes: int = 100  # forward passes allowed; finer scales lose their overlap first to stay within it
    fill: str = "blur"  # "blur": the region blurred (sigma = patch/4); "mean": the ImageNet mean colour
    batch_size: int = 8
    top_crops: int = 3
    max_overlap: float = 0.5  # crops overlapping a better one by more than this share of the smaller are dropped
    # the noise of a drop: the photo against itself shifted by 1-2 px (null_passes extra forward passes)
    null_passes: int = 8  # 0: no per-photo estimate, min_drop alone
    noise_k: float = 2.5  # a drop counts above noise_k x the RMS of the null drops (8 shifts underestimate 24 by ~0.9x)
    min_drop: float = 0.005  # and never below half a probability point (the smallest 2x RMS measured was 0.87 points)

    def __post_init__(self) -> None:
        if not 0 <= self.null_passes <= len(NULL_SHIFTS):
            raise ValueError(f"occlusion null_passes {self.null_passes!r}: must be in [0, {len(NULL_SHIFTS)}]")
        if self.noise_k < 0 or self.min_drop < 0:
            raise ValueError(f"occlusion noise_k {self.noise_k!r} and min_drop {self.min_drop!r}: must not be negative")


#: The null "occlusions": the whole input shifted by (dy, dx) px, edges replicated. They hide nothing,
#: so the target mass they move is noise (the network's sensitivity to where its stride grid falls).
NULL_SHIFTS = ((0, 1), (1, 0), (0, -1), (-1, 0), (0, 2), (2, 0), (2, 2), (-2, -2))


def _positions(length: int, patch: int, stride: int) -> list[int]:
    if patch >= length:
        return [0]
    n = math.ceil((length - patch) / stride) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - patch, n)})


def _patch_grid(h: int, w: int, cfg: OcclusionConfig) -> list[tuple[int, int, int, int, int]]:
    """Patches (scale index, y0, x0, y1, x1) on the input tensor, within the pass budget."""
    for s in cfg.scales:
        if not 0 < s <= 1:
            raise ValueError(f"occlusion scale {s!r}: must be in (0, 1]")
    if not 0 <= cfg.overlap < 1:
        raise ValueError(f"occlusion overlap {cfg.overlap!r}: must be in [0, 1)")
    overlaps = [cfg.overlap] * len(cfg.scales)
    order = sorted(range(len(cfg.scales)), key=lambda i: cfg.scales[i])  # finest first

    def build():
        boxes = []
        for si, s in enumerate(cfg.scales):
            p = max(8, int(round(s * max(h, w))))
            stride = max(1, int(round(p * (1 - overlaps[si]))))
            for y in _positions(h, min(p, h), stride):
                for x in _positions(w, min(p, w), stride):
                    boxes.append((si, y, x, min(h, y + p), min(w, x + p)))
        return boxes

    boxes = build()
    for i in order:
        if len(boxes) <= cfg.max_passes:
            break
        overlaps[i] = 0.0
        boxes = build()
    if len(boxes) > cfg.max_passes:
        log.info("occlusion: %d patches exceed the budget of %d passes even without overlap", len(boxes), cfg.max_passes)
    return boxes


def _neutral_fill(backbone):
    """The neutral colour in the backbone's normalised input space, (3, 1, 1)."""
    pixel = Image.new("RGB", (32, 32), IMAGENET_MEAN_RGB)
    return backbone.preprocess(pixel, "whole", 32)[:, :1, :1].clone()


def _blurred(x, sigma: float):
    """x (3, h, w) under a separable Gaussian blur (edges replicated), in the normalised input space.

    Blur is the default occluder: a flat patch adds edges of its own, which these networks react to
    even on a flat background (measured: hiding blank sky then "explained" more than the textured
    object did); a blur takes away detail and leaves colour and layout.
    """
    import torch
    import torch.nn.functional as F

    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x.unsqueeze(0), (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y[0]


def _shifted(x, dy: int, dx: int):
    """x (3, h, w) moved by (dy, dx) pixels, the uncovered edge replicated."""
    import torch.nn.functional as F

    r = max(abs(dy), abs(dx))
    if r == 0:
        return x
    _, h, w = x.shape
    padded = F.pad(x.unsqueeze(0), (r, r, r, r), mode="replicate")[0]
    return padded[:, r - dy : r - dy + h, r - dx : r - dx + w]


def null_drops(predictor, x, target: Target, base: float, cfg: OcclusionConfig) -> np.ndarray:
    """The drops of the null occlusions (`NULL_SHIFTS[:cfg.null_passes]`): what hides nothing still moves."""
    import torch

    from geopin.runtime import torch_threads

    shifts = NULL_SHIFTS[: cfg.null_passes]
    if not shifts:
        return np.zeros(0)
    with torch_threads(predictor.embed_cfg.threads), torch.inference_mode():
        batch = torch.stack([_shifted(x, dy, dx) for dy, dx in shifts])
        emb = predictor.backbone.model(batch).float().numpy()
    ev, cell, nb = posterior(predictor.model, emb)
    return base - target_mass(predictor.model, target, ev, cell, nb)


def noise_threshold(null: np.ndarray, cfg: OcclusionConfig) -> float:
    """The smallest drop that counts as evidence: noise_k x the RMS of the null drops, at least min_drop."""
    rms = float(np.sqrt(np.mean(np.square(null)))) if len(null) else 0.0
    return max(cfg.min_drop, cfg.noise_k * rms)


def occlusion_drops(predictor, x, target: Target, base: float, cfg: OcclusionConfig):
    """Drop map (h, w) on the input tensor and the per-patch drops, from batched occluded forward passes."""
    import torch

    from geopin.runtime import torch_threads

    _, h, w = x.shape
    boxes = _patch_grid(h, w, cfg)
    if cfg.fill == "blur":
        fills = [_blurred(x, max(1.0, max(8, round(s * max(h, w))) / 4)) for s in cfg.scales]
    elif cfg.fill == "mean":
        fills = [_neutral_fill(predictor.backbone).to(x.dtype).expand_as(x)] * len(cfg.scales)
    else:
        raise ValueError(f"occlusion fill {cfg.fill!r}: choose 'blur' or 'mean'")
    drops = np.empty(len(boxes))
    with torch_threads(predictor.embed_cfg.threads), torch.inference_mode():
        for start in range(0, len(boxes), cfg.batch_size):
            chunk = boxes[start : start + cfg.batch_size]
            batch = x.unsqueeze(0).repeat(len(chunk), 1, 1, 1)
            for b, (si, y0, x0, y1, x1) in enumerate(chunk):
                batch[b, :, y0:y1, x0:x1] = fills[si][:, y0:y1, x0:x1]
            emb = predictor.backbone.model(batch).float().numpy()
            ev, cell, nb = posterior(predictor.model, emb)
            drops[start : start + len(chunk)] = base - target_mass(predictor.model, target, ev, cell, nb)
    maps = []
    for si in range(len(cfg.scales)):
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for (s, y0, x0, y1, x1), d in zip(boxes, drops):
            if s == si:
                total[y0:y1, x0:x1] += d
                count[y0:y1, x0:x1] += 1
        maps.append(np.where(count > 0, total / np.maximum(count, 1), 0.0))
    return np.mean(maps, axis=0), boxes, drops


def top_boxes(boxes, drops, k: int, max_overlap: float, threshold: float = 0.0) -> list[int]:
    """Indices of the k patches with the largest drop above `threshold` (the noise), none mostly inside a better one."""
    chosen: list[int] = []
    for i in np.argsort(-drops, kind="stable"):
        if drops[i] <= max(threshold, 0.0) or len(chosen) >= k:
            break
        if all(_overlap(boxes[i][1:], boxes[j][1:]) <= max_overlap for j in chosen):
            chosen.append(int(i))
    return chosen


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area (catches a small box inside a big one, which IoU misses)."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, y1 - y0) * max(0, x1 - x0)
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller if smaller > 0 else 0.0


__all__ = ["IMAGENET_MEAN_RGB", "NULL_SHIFTS", "OcclusionConfig", "noise_threshold", "null_drops", "occlusion_drops", "top_boxes"]
