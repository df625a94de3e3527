"""What in the photo gave the place away: Grad-CAM, occlusion evidence and per-country characteristic crops.

Three views, each answering a different question:

* Grad-CAM asks the *classifier* which parts of the backbone's last convolutional feature map raise
  the log-probability of the target (the guess's place, a country, or one fine cell). It is one
  forward pass and a backward pass through the small classifier head.
* Occlusion asks the *whole posterior* (classifier, nearest training photos and prior mixed, as
  `geopin predict` answers): hide a patch of the photo behind a neutral (ImageNet-mean) colour and
  measure how much the posterior mass near the target drops. It is model-agnostic but costs one
  forward pass per patch, so the patches are batched and their number is bounded.
* `characterize` looks across a dataset: for each country, which crops of its photos the classifier
  finds most typical of it, clustered so a contact sheet shows distinct kinds of evidence.

Maps are returned at the decoded photo's own size (H, W); the PNGs are drawn with Pillow.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geopin.io import atomic_path, write_json, write_text
from geopin.locate.posterior import CONFIDENCE_KM, classifier_probs, mixture
from geopin.log import progress

log = logging.getLogger(__name__)

#: The radius whose posterior mass occlusion measures for point targets (the guess, a cell).
OCCLUSION_KM = 750.0
#: The neutral patch: ImageNet's mean colour, what "nothing in particular" looks like to these networks.
IMAGENET_MEAN_RGB = (124, 116, 104)
_TOKEN_RE = re.compile(r"^[0-9a-f]{1,16}$")


# ---------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """What an explanation is for; `mask` marks the model's fine places that belong to it."""

    kind: str  # "guess" | "country" | "cell"
    value: str  # the guess's cell token, the ISO2 code, or the cell token
    lat: float
    lon: float
    mask: np.ndarray = field(repr=False)  # (K,) bool over the model's fine places

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "lat": self.lat, "lon": self.lon, "n_places": int(self.mask.sum())}


def resolve_target(model, target: str, guess: tuple[float, float], cell_mass: np.ndarray | None = None) -> Target:
    """Turn "guess", an ISO2 country code or a fine cell token into the fine places it stands for.

    Anything else is a ValueError naming the target and what would have been accepted.
    """
    from geopin.geo import pairwise_km

    fine = model._fine
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target {target!r}: expected 'guess', a 2-letter country code (e.g. FR) or a fine cell token")
    text = target.strip()
    if text.lower() == "guess":
        d = pairwise_km(np.array([guess[0]]), np.array([guess[1]]), fine["lat"], fine["lon"])[0]
        j = int(np.argmin(d))
        mask = np.zeros(len(d), dtype=bool)
        mask[j] = True
        token = model.cell_token_of(guess[0], guess[1]) or str(fine["token"][j])
        return Target("guess", token, float(guess[0]), float(guess[1]), mask)
    if len(text) == 2 and text.isalpha():
        cc = text.upper()
        mask = fine["country"] == cc
        if not mask.any():
            known = sorted({c for c in fine["country"].tolist() if c})
            raise ValueError(
                f"target {target!r}: the model has no place in country {cc} "
                f"(it knows {len(known)} countries: {', '.join(known[:40])}{' ...' if len(known) > 40 else ''})"
            )
        idx = np.flatnonzero(mask)
        # where the country is represented: its most probable place for this photo, else its first
        j = int(idx[np.argmax(cell_mass[idx])]) if cell_mass is not None else int(idx[0])
        return Target("country", cc, float(fine["lat"][j]), float(fine["lon"][j]), mask)
    token = text.lower()
    if _TOKEN_RE.match(token):
        mask = fine["token"] == token
        if mask.any():
            j = int(np.flatnonzero(mask)[0])
            return Target("cell", token, float(fine["lat"][j]), float(fine["lon"][j]), mask)
        raise ValueError(
            f"target {target!r}: no fine cell of this model has that S2 token "
            f"({len(fine['token'])} fine cells, e.g. {', '.join(map(str, fine['token'][:3]))})"
        )
    raise ValueError(f"target {target!r}: not 'guess', a 2-letter country code (e.g. FR) or an S2 cell token (hex)")


# ---------------------------------------------------------------------------------------------- Grad-CAM


def _conv_trunk(backbone):
    """(stem, blocks, head) of a fused EfficientNet-Lite; the head's output is the last conv feature map."""
    model = backbone.model
    if not all(hasattr(model, part) for part in ("stem", "blocks", "head")):
        raise ValueError(
            f"Grad-CAM needs a convolutional backbone with a last conv block; {backbone.name!r} has none "
            f"(use an efficientnet_lite* model)"
        )
    return model.stem, model.blocks, model.head


def _input_tensor(predictor, img: Image.Image):
    """The exact tensor `geopin predict` feeds the backbone (base view) and the photo box it covers."""
    from geopin.features.backbones import center_crop_box

    cfg, bb = predictor.embed_cfg, predictor.backbone
    x = bb.preprocess(img, cfg.mode, cfg.long_side)
    if cfg.mode == "center_crop":
        box = center_crop_box(img.width, img.height, bb.native_size)
    else:
        box = (0, 0, img.width, img.height)
    return x, box


def _feature_map(predictor, x):
    """Last conv feature map (B, C, h, w) of input batch x, without autograd (the trunk is not differentiated)."""
    import torch

    stem, blocks, head = _conv_trunk(predictor.backbone)
    with torch.no_grad():
        x = x.contiguous(memory_format=torch.channels_last)
        return head(blocks(stem(x))).float()


def _log_prob_of(model, pooled, mask: np.ndarray):
    """log of the hierarchical classifier probability summed over the masked fine places, differentiable.

    Reproduces `classifier_logits` (l2-normalised pooled embedding into CellClassifier) and
    `classifier_probs` (sum over levels of log_softmax(logit / t_clf) at each place's ancestor).
    """
    import torch

    heads = model.heads
    e = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
    logits = heads.classifier(e)
    t = float(model.params.t_clf)
    total = 0
    for lg, anc in zip(logits, heads.places.ancestors):
        total = total + torch.log_softmax(lg.double() / t, dim=1)[:, torch.from_numpy(np.asarray(anc, dtype=np.int64))]
    m = torch.from_numpy(mask)
    return torch.logsumexp(total[:, m], dim=1) - torch.logsumexp(total, dim=1)


def _gradcam_from_features(predictor, feats, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM on feature map (1, C, h, w): ReLU(sum_c mean-gradient_c * A_c), scaled to [0, 1]; and the log-prob."""
    import torch

    a = feats.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = _log_prob_of(predictor.model, a.mean((2, 3)), mask)[0]
        (grad,) = torch.autograd.grad(score, a)
    weights = grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * a.detach()).sum(1))[0].numpy().astype(np.float64)
    top = cam.max()
    return (cam / top if top > 0 else cam), float(score.detach())


def gradcam(predictor, image: Image.Image, target: str = "guess") -> np.ndarray:
    """Grad-CAM map (H, W) in [0, 1] at the photo's size, for the classifier's evidence for `target`."""
    return _explain_parts(predictor, image, target, occlusion=False)["_gradcam"]


# ---------------------------------------------------------------------------------------------- occlusion


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


def _target_mass(model, target: Target, ev, cell: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Posterior mass (raw, uncalibrated) on the target: within OCCLUSION_KM of its point, or inside its country."""
    from geopin.geo import haversine_km, pairwise_km

    places = model.heads.places
    if target.kind == "country":
        nb_cc = ev.nb_country if ev.nb_country is not None else np.full(ev.nb_lat.shape, "")
        return cell[:, target.mask].sum(1) + (nb * (nb_cc == target.value)).sum(1)
    near_places = pairwise_km(np.array([target.lat]), np.array([target.lon]), places.lat, places.lon)[0] <= OCCLUSION_KM
    near_nb = haversine_km(target.lat, target.lon, ev.nb_lat, ev.nb_lon) <= OCCLUSION_KM
    return cell[:, near_places].sum(1) + (nb * near_nb).sum(1)


def _posterior_of(model, emb: np.ndarray):
    ev = model.heads.evidence(emb)
    cell, nb = mixture(model.heads.places, ev, model.params)
    return ev, cell, nb


def _within_raw(model, point: tuple[float, float], ev, cell, nb) -> np.ndarray:
    """Raw posterior mass within every CONFIDENCE_KM radius of a point (B, R), as `decide` measures it."""
    from geopin.geo import haversine_km, pairwise_km

    places = model.heads.places
    d_places = pairwise_km(np.array([point[0]]), np.array([point[1]]), places.lat, places.lon)[0]
    d_nb = haversine_km(point[0], point[1], ev.nb_lat, ev.nb_lon)
    out = np.stack([cell[:, d_places <= r].sum(1) + (nb * (d_nb <= r)).sum(1) for r in CONFIDENCE_KM], axis=1)
    return np.clip(out, 0.0, 1.0)


def _occlusion(predictor, x, target: Target, base: float, cfg: OcclusionConfig):
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
            ev, cell, nb = _posterior_of(predictor.model, emb)
            drops[start : start + len(chunk)] = base - _target_mass(predictor.model, target, ev, cell, nb)
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


def _top_boxes(boxes, drops, k: int, max_overlap: float) -> list[int]:
    """Indices of the k patches with the largest positive drop, none mostly inside a better one."""
    chosen: list[int] = []
    for i in np.argsort(-drops):
        if drops[i] <= 0 or len(chosen) >= k:
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


def occlusion_map(
    predictor, image: Image.Image, target: str = "guess", scales: tuple[float, ...] = (0.25, 0.125), **options
) -> tuple[np.ndarray, list[dict]]:
    """Occlusion evidence (H, W) at the photo's size, and the crops that point most strongly to the target.

    The map holds how much the posterior's raw mass near the target (within 750 km of the guess or
    the cell; inside the country) drops when the region is hidden, averaged over the patches that
    cover each pixel and over the scales; negative where hiding it makes the target more likely.
    `options` are OcclusionConfig fields.
    """
    cfg = OcclusionConfig(scales=tuple(scales), **options)
    parts = _explain_parts(predictor, image, target, occlusion=True, occlusion_cfg=cfg, want_gradcam=False)
    return parts["_occlusion"], parts["occlusion"]["crops"]


# ---------------------------------------------------------------------------------------------- together


def _to_photo(map_hw: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """A map over the network input resized (bilinear) onto the photo box it covers; zero outside it."""
    w, h = size
    x0, y0, x1, y1 = box
    resized = Image.fromarray(np.asarray(map_hw, dtype=np.float32), mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
    out = np.zeros((h, w), dtype=np.float64)
    out[y0:y1, x0:x1] = np.asarray(resized, dtype=np.float64)
    return out


def _decoded(image: Image.Image) -> Image.Image:
    from geopin.dataset.images import ImageError, decode_rgb

    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL image, got {type(image).__name__} (decode files with geopin.features.embed.load_image)")
    try:
        return decode_rgb(image)
    except ImageError as exc:
        raise ValueError(f"{getattr(image, 'filename', '') or '<image>'}: cannot decode image: {exc.reason}: {exc.detail}") from exc


def _explain_parts(
    predictor,
    image: Image.Image,
    target: str,
    *,
    occlusion: bool,
    occlusion_cfg: OcclusionConfig = OcclusionConfig(),
    want_gradcam: bool = True,
    name: str = "<image>",
) -> dict:
    """One forward pass gives the prediction and the Grad-CAM features; occlusion adds its batched passes."""
    from geopin.runtime import torch_threads

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    img = _decoded(image)
    x, box = _input_tensor(predictor, img)
    with torch_threads(predictor.embed_cfg.threads):
        feats = _feature_map(predictor, x.unsqueeze(0)) if want_gradcam else None
        if feats is not None and not predictor.embed_cfg.tta:
            emb = feats.mean((2, 3)).numpy()  # what the backbone's forward returns: no second pass
        else:
            from geopin.features.embed import embed_images

            emb = embed_images([img], predictor.backbone, predictor.embed_cfg)
    model = predictor.model
    prediction = model.predict_embeddings(emb, top_k=predictor.cfg.top_k)[0]
    prediction["path"] = name
    ev, cell, nb = _posterior_of(model, emb)
    seconds["predict"] = time.perf_counter() - t0
    tgt = resolve_target(model, target, (prediction["lat"], prediction["lon"]), cell[0])
    out: dict[str, Any] = {"target": tgt.to_dict(), "prediction": prediction, "shape": [img.height, img.width]}
    if want_gradcam:
        t = time.perf_counter()
        cam, logp = _gradcam_from_features(predictor, feats, tgt.mask)
        full = np.clip(_to_photo(cam, box, img.size), 0.0, None)
        out["_gradcam"] = full / full.max() if full.max() > 0 else full  # resizing lowers the peak a little
        out["gradcam"] = {"shape": [img.height, img.width], "log_prob": logp, "probability": math.exp(logp),
                          "layer": "last conv block (head conv 1x1, after ReLU6)"}
        seconds["gradcam"] = time.perf_counter() - t
    if occlusion:
        t = time.perf_counter()
        base = float(_target_mass(model, tgt, ev, cell, nb)[0])
        drop_map, boxes, drops = _occlusion(predictor, x, tgt, base, occlusion_cfg)
        sx, sy = (box[2] - box[0]) / x.shape[2], (box[3] - box[1]) / x.shape[1]
        crops = []
        for i in _top_boxes(boxes, drops, occlusion_cfg.top_crops, occlusion_cfg.max_overlap):
            _, y0, x0, y1, x1 = boxes[i]
            crops.append({
                "box": [int(round(box[0] + x0 * sx)), int(round(box[1] + y0 * sy)), int(round(box[0] + x1 * sx)), int(round(box[1] + y1 * sy))],
                "drop": float(drops[i]),
                "scale": float(occlusion_cfg.scales[boxes[i][0]]),
            })
        quantity = (f"P(in {tgt.value})" if tgt.kind == "country" else f"P(within {OCCLUSION_KM:.0f} km of the {tgt.kind})")
        within = _within_raw(model, (tgt.lat, tgt.lon), ev, cell, nb)
        out["_occlusion"] = _to_photo(drop_map, box, img.size)
        out["occlusion"] = {
            "shape": [img.height, img.width],
            "quantity": quantity,
            "base": base,  # raw posterior mass, the unit of every drop
            "calibrated_within_750km": float(model.calibration.apply(within)[0, CONFIDENCE_KM.index(OCCLUSION_KM)]),
            "passes": len(boxes),
            "scales": list(occlusion_cfg.scales),
            "max_drop": float(drops.max()) if len(drops) else 0.0,
            "crops": crops,
        }
        seconds["occlusion"] = time.perf_counter() - t
    out["seconds"] = seconds
    out["_image"] = img
    return out


def explain_photo(predictor, image: Image.Image, target: str = "guess", *, occlusion: bool = True,
                  name: str = "<image>", occlusion_cfg: OcclusionConfig = OcclusionConfig()) -> dict:
    """Prediction, Grad-CAM and (optionally) occlusion evidence for one photo, JSON-ready.

    Each map comes as `png_base64` (the photo with the map drawn on, long side <= 768 px; occlusion's
    crops outlined and numbered: what the web page shows in place of the photo) and `layer_png_base64`
    (the map alone as an RGBA layer, transparent where there is no evidence, to stack over the photo).
    A bad target is a ValueError naming it.
    """
    return explain_with_maps(predictor, image, target, occlusion=occlusion, name=name, occlusion_cfg=occlusion_cfg)[0]


def explain_with_maps(predictor, image: Image.Image, target: str = "guess", *, occlusion: bool = True,
                      name: str = "<image>", occlusion_cfg: OcclusionConfig = OcclusionConfig()) -> tuple[dict, dict]:
    """explain_photo's result and the raw maps ({"gradcam", "occlusion", "image"}) for writing files."""
    t0 = time.perf_counter()
    parts = _explain_parts(predictor, image, target, occlusion=occlusion, occlusion_cfg=occlusion_cfg, name=name)
    t = time.perf_counter()
    img = parts["_image"]
    result = {"target": parts["target"], "gradcam": parts["gradcam"]}
    result["gradcam"]["png_base64"] = _png_b64(overlay(img, parts["_gradcam"]))
    result["gradcam"]["layer_png_base64"] = _png_b64(heat_layer(parts["_gradcam"]))
    if occlusion:
        occ = parts["occlusion"]
        shown = occlusion_display(parts["_occlusion"])
        occ["png_base64"] = _png_b64(overlay(img, shown, [c["box"] for c in occ["crops"]]))
        occ["layer_png_base64"] = _png_b64(heat_layer(shown))
        result["occlusion"] = occ
    else:
        result["occlusion"] = None
    result["prediction"] = parts["prediction"]
    seconds = parts["seconds"]
    seconds["render"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = seconds
    maps = {"gradcam": parts["_gradcam"], "occlusion": parts.get("_occlusion"), "image": img}
    return result, maps


# ---------------------------------------------------------------------------------------------- drawing

# a perceptual dark-to-bright ramp (inferno's anchors): high evidence reads as bright and warm
_RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=np.float64)


def colorize(map01: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] to (H, W, 3) uint8 on the ramp."""
    v = np.clip(np.asarray(map01, dtype=np.float64), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    f = (v - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - f) + _RAMP[hi] * f).astype(np.uint8)


def occlusion_display(drop_map: np.ndarray) -> np.ndarray:
    """The positive part of a drop map scaled to [0, 1] (what hiding makes the target less likely)."""
    pos = np.clip(drop_map, 0, None)
    top = pos.max()
    return pos / top if top > 0 else pos


def heat_layer(map01: np.ndarray, max_side: int = 384) -> Image.Image:
    """RGBA layer: ramp colour, opacity growing with the evidence (transparent where there is none)."""
    rgb = colorize(map01)
    alpha = np.round(np.clip(map01, 0, 1) ** 0.8 * 200).astype(np.uint8)
    layer = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    layer.thumbnail((max_side, max_side), Image.BILINEAR)
    return layer


def overlay(img: Image.Image, map01: np.ndarray, boxes: Sequence[Sequence[int]] = (), max_side: int = 768) -> Image.Image:
    """The photo with the heat layer blended on, and numbered outlines around `boxes` (photo coordinates)."""
    photo = img.convert("RGB")
    rgb = colorize(map01).astype(np.float64)
    a = (np.clip(map01, 0, 1) ** 0.8 * 0.7)[..., None]
    base = np.asarray(photo, dtype=np.float64) * 0.85  # dimmed slightly so the colours read
    out = Image.fromarray(np.round(base * (1 - a) + rgb * a).astype(np.uint8), "RGB")
    scale = min(1.0, max_side / max(out.size))
    if scale < 1:
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    font = _font(max(12, round(max(out.size) / 28)))
    for rank, b in enumerate(boxes, 1):
        x0, y0, x1, y1 = (round(v * scale) for v in b)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 0, 0), width=width + 2)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 255, 255), width=width)
        draw.text((x0 + width + 2, y0 + width), str(rank), fill=(0, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _png_b64(img: Image.Image) -> str:
    return base64.b64encode(_png_bytes(img)).decode("ascii")


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def write_explanation(result: dict, maps: dict, out_dir: str | Path) -> dict[str, Path]:
    """gradcam.png, occlusion.png (when computed) and explain.json (without the base64 images) in out_dir."""
    out_dir = Path(out_dir)
    files = {"gradcam": save_png(overlay(maps["image"], maps["gradcam"]), out_dir / "gradcam.png")}
    if result.get("occlusion"):
        boxes = [c["box"] for c in result["occlusion"]["crops"]]
        files["occlusion"] = save_png(overlay(maps["image"], occlusion_display(maps["occlusion"]), boxes), out_dir / "occlusion.png")
    doc = json.loads(json.dumps(result))
    for key in ("gradcam", "occlusion"):
        if doc.get(key):
            doc[key].pop("png_base64", None)
            doc[key].pop("layer_png_base64", None)
            doc[key]["png"] = files[key].name
    files["json"] = write_json(doc, out_dir / "explain.json")
    return files


# ---------------------------------------------------------------------------------------------- characterize


@dataclass
class CharacterizeConfig:
    """Bounded work per country: at most max_photos photos, five crops each (corners and centre)."""

    min_photos: int = 10
    crops_per_country: int = 12  # top crops kept per country, then clustered
    clusters: int = 4  # rows of the contact sheet: distinct kinds of evidence
    max_photos: int = 40
    crop_scale: float = 0.5
    max_crops_per_photo: int = 2  # among the kept crops, so one photo cannot fill the sheet
    max_countries: int | None = None
    tile: int = 160  # contact-sheet tile side, px
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_photos", "crops_per_country", "clusters", "max_photos", "max_crops_per_photo", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")


def crop_boxes(width: int, height: int, scale: float) -> list[tuple[int, int, int, int]]:
    """Four corners and the centre, each `scale` of the photo's width and height."""
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    xs, ys = (0, width - cw), (0, height - ch)
    boxes = [(x, y, x + cw, y + ch) for y in ys for x in xs]
    cx, cy = (width - cw) // 2, (height - ch) // 2
    boxes.append((cx, cy, cx + cw, cy + ch))
    return list(dict.fromkeys(boxes))


def _country_logprob(model, emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from geopin.locate.heads import classifier_logits

    probs = classifier_probs(model.heads.places, classifier_logits(model.heads.classifier, emb), model.params.t_clf)
    return np.log(np.maximum(probs[:, mask].sum(1), 1e-300))


def _embed_crops(predictor, img: Image.Image, boxes) -> np.ndarray:
    import torch

    cfg, bb = predictor.embed_cfg, predictor.backbone
    views = [bb.preprocess(img.crop(b), cfg.mode, cfg.long_side) for b in boxes]
    by_shape: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        by_shape.setdefault(tuple(v.shape), []).append(i)
    out = np.empty((len(views), bb.dim), dtype=np.float32)
    with torch.inference_mode():
        for idx in by_shape.values():
            out[idx] = bb.model(torch.stack([views[i] for i in idx])).float().numpy()
    return out


def _run_key(predictor, cfg: CharacterizeConfig, ids: list[str]) -> str:
    """What a country's saved result depends on: model files, crop settings and the photos chosen."""
    doc = {
        "model": predictor.model.params.to_dict(),
        "classifier": hashlib.sha256(
            b"".join(p.detach().numpy().tobytes() for p in predictor.model.heads.classifier.parameters())
        ).hexdigest(),
        "embed": {"backbone": predictor.backbone.version, "mode": predictor.embed_cfg.mode, "long_side": predictor.embed_cfg.long_side},
        "cfg": {k: v for k, v in asdict(cfg).items() if k != "max_countries"},
        "ids": ids,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def characterize(
    manifest,
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    embeddings: str | Path | None = None,
    cfg: CharacterizeConfig = CharacterizeConfig(),
    predictor=None,
) -> dict:
    """Per country with enough photos: the crops the classifier finds most typical of it, clustered.

    Writes `<out>/<CC>.png` (a contact sheet: one row per cluster of similar crops, best first),
    `<out>/<CC>.json` (the crops, their photo, box and probability) and `<out>/index.html`. A country
    whose JSON and PNG exist from a run with the same model, settings and photos is not redone; a
    photo that cannot be read is logged, counted and skipped.
    """
    import pandas as pd

    from geopin.countries import country_name, country_of
    from geopin.dataset.manifest import FOR_EMBED, read_manifest
    from geopin.features.embed import load_embeddings, load_image
    from geopin.locate.predict import PredictConfig, Predictor
    from geopin.runtime import torch_threads

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    df = read_manifest(manifest, FOR_EMBED, unique_ids=False)
    name = str(manifest) if not hasattr(manifest, "columns") else "manifest"
    missing = [c for c in ("lat", "lon") if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}: characterize needs each photo's position")
    if predictor is None:
        predictor = Predictor(PredictConfig(model_dir=Path(model_dir) if model_dir else None))
    model = predictor.model
    emb_all = None
    if embeddings is not None:
        emb_all, _ = load_embeddings(embeddings, df)
    df = df.reset_index(drop=True)
    try:
        df["_cc"] = country_of(pd.to_numeric(df["lat"], errors="coerce").to_numpy(float),
                               pd.to_numeric(df["lon"], errors="coerce").to_numpy(float))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    fine_cc = model._fine["country"]
    counts = df.loc[df["_cc"] != "", "_cc"].value_counts()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "countries": [], "skipped": [], "failed": [], "config": asdict(cfg)}
    chosen = []
    for cc, n in counts.items():
        if n < cfg.min_photos:
            summary["skipped"].append({"country": cc, "n_photos": int(n), "reason": f"fewer than {cfg.min_photos} photos"})
        elif not (fine_cc == cc).any():
            summary["skipped"].append({"country": cc, "n_photos": int(n), "reason": "the model has no place in this country"})
        else:
            chosen.append(cc)
    if cfg.max_countries is not None:
        for cc in chosen[cfg.max_countries:]:
            summary["skipped"].append({"country": cc, "n_photos": int(counts[cc]), "reason": f"beyond max_countries={cfg.max_countries}"})
        chosen = chosen[: cfg.max_countries]
    out_dir.mkdir(parents=True, exist_ok=True)
    n_crops = 0
    work_seconds = 0.0
    plans = {}
    for cc in chosen:
        rows = np.flatnonzero(df["_cc"].to_numpy() == cc)
        mask = fine_cc == cc
        if len(rows) > cfg.max_photos:
            if emb_all is not None:  # the photos the model already finds most typical of the country
                score = _country_logprob(model, np.asarray(emb_all[rows], dtype=np.float32), mask)
                rows = rows[np.argsort(-score, kind="stable")[: cfg.max_photos]]
            else:
                rng = np.random.default_rng([cfg.seed, *map(ord, cc)])
                rows = np.sort(rng.choice(rows, cfg.max_photos, replace=False))
        plans[cc] = rows
    bar = progress(total=sum(len(r) for r in plans.values()), desc="characterize", unit="photo")
    try:
        for cc, rows in plans.items():
            ids = df["id"].iloc[rows].astype(str).tolist()
            key = _run_key(predictor, cfg, ids)
            json_path, png_path = out_dir / f"{cc}.json", out_dir / f"{cc}.png"
            done = _read_done(json_path, png_path, key)
            if done is not None:
                summary["countries"].append(done["summary"])
                bar.update(len(rows))
                continue
            t = time.perf_counter()
            mask = fine_cc == cc
            crops, embs, failed = [], [], []
            with torch_threads(predictor.embed_cfg.threads):
                for r in rows:
                    path, pid = str(df["path"].iloc[r]), str(df["id"].iloc[r])
                    try:
                        # decoded large enough that each crop reaches the network at full input size
                        long_side = int(math.ceil(predictor.embed_cfg.long_side / cfg.crop_scale))
                        img = load_image(path, predictor.embed_cfg.mode, long_side, predictor.backbone.native_size)
                        boxes = crop_boxes(img.width, img.height, cfg.crop_scale)
                        e = _embed_crops(predictor, img, boxes)
                    except (OSError, ValueError) as exc:  # ImageError is a ValueError
                        log.warning("characterize %s: skipping %s: %s", cc, path, exc)
                        failed.append({"id": pid, "path": path, "error": str(exc)})
                        bar.update(1)
                        continue
                    for b in boxes:
                        crops.append({"id": pid, "path": path, "box": list(b), "size": [img.width, img.height]})
                    embs.append(e)
                    bar.update(1)
            summary["failed"] += [{**f, "country": cc} for f in failed]
            if not crops:
                summary["skipped"].append({"country": cc, "n_photos": int(counts[cc]), "reason": "no readable photo"})
                continue
            emb = np.concatenate(embs)
            n_crops += len(emb)
            logp = _country_logprob(model, emb, mask)
            kept = _keep_top(crops, logp, cfg)
            labels = _cluster(emb[kept], cfg.clusters)
            rows_out = []
            for i, lab in zip(kept, labels):
                rows_out.append({**crops[i], "log_prob": float(logp[i]), "probability": float(np.exp(logp[i])), "cluster": int(lab)})
            rows_out = _order_clusters(rows_out)
            sheet = contact_sheet(cc, country_name(cc), rows_out, len(rows), cfg.tile)
            save_png(sheet, png_path)
            info = {
                "country": cc,
                "name": country_name(cc),
                "n_photos": int(counts[cc]),
                "n_used": len(rows) - len(failed),
                "n_crops": int(len(emb)),
                "best_probability": max(r["probability"] for r in rows_out),
                "png": png_path.name,
            }
            write_json({"key": key, "summary": info, "crops": rows_out, "failed": failed}, json_path)
            summary["countries"].append(info)
            work_seconds += time.perf_counter() - t
    finally:
        bar.close()
    write_text(_index_html(summary), out_dir / "index.html")
    summary["index"] = str(out_dir / "index.html")
    summary["seconds"] = time.perf_counter() - t0
    summary["crops_embedded"] = n_crops
    summary["crops_per_s"] = n_crops / work_seconds if work_seconds > 0 else None
    log.info("characterize: %d countries, %d crops embedded in %.1f s", len(summary["countries"]), n_crops, summary["seconds"])
    return summary


def _read_done(json_path: Path, png_path: Path, key: str) -> dict | None:
    if not (json_path.is_file() and png_path.is_file()):
        return None
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); redoing the country", json_path, exc)
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == key and "summary" in doc else None


def _keep_top(crops: list[dict], logp: np.ndarray, cfg: CharacterizeConfig) -> list[int]:
    """The best-scoring crops, at most max_crops_per_photo from any one photo."""
    per_photo: dict[str, int] = {}
    kept = []
    for i in np.argsort(-logp, kind="stable"):
        pid = crops[i]["id"]
        if per_photo.get(pid, 0) >= cfg.max_crops_per_photo:
            continue
        per_photo[pid] = per_photo.get(pid, 0) + 1
        kept.append(int(i))
        if len(kept) >= cfg.crops_per_country:
            break
    return kept


def _cluster(emb: np.ndarray, n_clusters: int) -> np.ndarray:
    """Agglomerative clusters (cosine, average linkage) of the kept crops' embeddings."""
    from sklearn.cluster import AgglomerativeClustering

    from geopin.locate.heads import l2_normalize

    k = min(n_clusters, len(emb))
    if k <= 1:
        return np.zeros(len(emb), dtype=int)
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(l2_normalize(emb))


def _order_clusters(rows: list[dict]) -> list[dict]:
    """Clusters renumbered by their best crop (0 = the strongest kind of evidence), crops best first."""
    best: dict[int, float] = {}
    for r in rows:
        best[r["cluster"]] = max(best.get(r["cluster"], -np.inf), r["log_prob"])
    rank = {c: i for i, c in enumerate(sorted(best, key=lambda c: -best[c]))}
    for r in rows:
        r["cluster"] = rank[r["cluster"]]
    return sorted(rows, key=lambda r: (r["cluster"], -r["log_prob"]))


def contact_sheet(cc: str, name: str, rows: list[dict], n_photos: int, tile: int = 160, max_cols: int = 6) -> Image.Image:
    """One row per cluster: its crops (best first), each labelled with the probability and the photo id."""
    clusters: dict[int, list[dict]] = {}
    for r in rows:
        clusters.setdefault(r["cluster"], []).append(r)
    label_w, pad, caption = 120, 6, 30
    cols = min(max_cols, max(len(v) for v in clusters.values()))
    title_h = 44
    width = label_w + cols * (tile + pad) + pad
    height = title_h + len(clusters) * (tile + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    big, small = _font(18), _font(11)
    draw.text((pad, 8), f"{cc} {name}: crops the classifier finds most typical", fill=(20, 20, 20), font=big)
    draw.text((pad, 28), f"from {n_photos} photos; one row per cluster of similar crops; p = classifier P(country | crop)",
              fill=(90, 90, 90), font=small)
    cache: dict[str, Image.Image] = {}
    for row_i, (c, items) in enumerate(sorted(clusters.items())):
        y = title_h + row_i * (tile + caption + pad)
        draw.text((pad, y + tile // 2 - 14), f"kind {c + 1}", fill=(20, 20, 20), font=_font(14))
        draw.text((pad, y + tile // 2 + 4), f"{len(items)} crop{'s' if len(items) != 1 else ''}", fill=(90, 90, 90), font=small)
        for col, r in enumerate(items[:cols]):
            x = label_w + col * (tile + pad)
            thumb = _crop_thumb(r, tile, cache)
            if thumb is not None:
                sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
            else:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=(200, 0, 0))
            draw.text((x, y + tile + 2), f"p={r['probability']:.0%}", fill=(20, 20, 20), font=small)
            draw.text((x, y + tile + 15), _short(r["id"], 24), fill=(90, 90, 90), font=small)
    return sheet


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _crop_thumb(r: dict, tile: int, cache: dict) -> Image.Image | None:
    from geopin.features.embed import load_image

    path = r["path"]
    try:
        if path not in cache:
            cache.clear()  # rows of one photo come together often enough; keep one decoded photo
            w, h = r["size"]
            cache[path] = load_image(path, "whole", max(w, h))
        img = cache[path]
    except (OSError, ValueError) as exc:
        log.warning("contact sheet: cannot redraw %s: %s", path, exc)
        return None
    if list(img.size) != list(r["size"]):  # decoded at another size: scale the box
        sx, sy = img.width / r["size"][0], img.height / r["size"][1]
        box = tuple(round(v * s) for v, s in zip(r["box"], (sx, sy, sx, sy)))
    else:
        box = tuple(r["box"])
    thumb = img.crop(box)
    thumb.thumbnail((tile, tile), Image.BICUBIC)
    return thumb


def _index_html(summary: dict) -> str:
    rows = []
    for c in sorted(summary["countries"], key=lambda c: -c["n_photos"]):
        rows.append(
            f"<tr><td><a href=\"{html.escape(c['png'])}\">{html.escape(c['country'])}</a></td><td>{html.escape(c['name'])}</td>"
            f"<td>{c['n_photos']}</td><td>{c['n_used']}</td><td>{c['best_probability']:.0%}</td></tr>"
        )
    sheets = "\n".join(
        f"<h2 id=\"{html.escape(c['country'])}\">{html.escape(c['country'])} {html.escape(c['name'])}</h2>"
        f"<img src=\"{html.escape(c['png'])}\" alt=\"contact sheet for {html.escape(c['name'])}\">"
        for c in sorted(summary["countries"], key=lambda c: -c["n_photos"])
    )
    skipped = "".join(
        f"<li>{html.escape(s['country'])}: {s['n_photos']} photos, {html.escape(s['reason'])}</li>" for s in summary["skipped"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geopin: what each country looks like to the model</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}img{{max-width:100%;border:1px solid #ccc}}</style>
</head><body>
<h1>What each country looks like to the model</h1>
<p>For each country with enough photos: crops (corners and centre, half the photo's size) that the classifier finds
most typical of it, grouped by similarity (agglomerative clustering of their embeddings) so each row is a different
kind of evidence. p is the classifier's probability of the country given the crop alone.</p>
<table><tr><th>country</th><th>name</th><th>photos</th><th>used</th><th>best p</th></tr>
{''.join(rows)}
</table>
{sheets}
<h2>Not shown</h2><ul>{skipped or '<li>none</li>'}</ul>
</body></html>
"""


__all__ = [
    "OCCLUSION_KM",
    "Target",
    "resolve_target",
    "gradcam",
    "occlusion_map",
    "explain_photo",
    "explain_with_maps",
    "write_explanation",
    "OcclusionConfig",
    "CharacterizeConfig",
    "characterize",
    "crop_boxes",
    "contact_sheet",
]
