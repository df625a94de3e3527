"""What in the photo gave the place away: Grad-CAM and occlusion evidence for one photo, JSON-ready.

Two views, each answering a different question:

* Grad-CAM (`gradcam`) asks the *classifier* which parts of the backbone's last convolutional
  feature map raise the log-probability of the target (the guess's place, a country, or one fine
  cell). It is one forward pass and a backward pass through the small classifier head.
* Occlusion (`occlusion`) asks the *whole posterior* (classifier, nearest training photos and prior
  mixed, as `geopin predict` answers): hide a patch of the photo and measure how much the posterior
  mass near the target drops. It is model-agnostic but costs one forward pass per patch, so the
  patches are batched and their number is bounded.

Across a dataset, `characterize` shows which crops of each country's photos the classifier finds
most typical of it. Maps are returned at the decoded photo's own size (H, W); `render` draws them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geopin.explain.gradcam import feature_map, gradcam_from_features, input_tensor
from geopin.explain.occlusion import OcclusionConfig, noise_threshold, null_drops, occlusion_drops, top_boxes
from geopin.explain.render import heat_layer, occlusion_display, overlay, png_b64, save_png, with_legend
from geopin.explain.target import OCCLUSION_KM, Target, mass_within, posterior, resolve_target, target_mass
from geopin.io import write_json
from geopin.locate.posterior import CONFIDENCE_KM


def gradcam(predictor, image: Image.Image, target: str = "guess") -> np.ndarray:
    """Grad-CAM map (H, W) in [0, 1] at the photo's size, for the classifier's evidence for `target`."""
    return _explain_parts(predictor, image, target, occlusion=False)["_gradcam"]


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


def explain_photo(predictor, image: Image.Image, target: str = "guess", *, occlusion: bool = True,
                  name: str = "<image>", occlusion_cfg: OcclusionConfig | None = None) -> dict:
    """Prediction, Grad-CAM and (optionally) occlusion evidence for one photo, JSON-ready.

    Each map comes as `png_base64` (the photo with the map drawn on, long side <= 768 px; occlusion's
    crops outlined and numbered: what the web page shows in place of the photo) and `layer_png_base64`
    (the map alone as an RGBA layer, transparent where there is no evidence, to stack over the photo).
    A bad target is a ValueError naming it. `occlusion_cfg` None: OcclusionConfig's defaults.
    """
    return explain_with_maps(predictor, image, target, occlusion=occlusion, name=name, occlusion_cfg=occlusion_cfg)[0]


def explain_with_maps(predictor, image: Image.Image, target: str = "guess", *, occlusion: bool = True,
                      name: str = "<image>", occlusion_cfg: OcclusionConfig | None = None) -> tuple[dict, dict]:
    """explain_photo's result and the raw maps ({"gradcam", "occlusion", "image"}) for writing files."""
    t0 = time.perf_counter()
    parts = _explain_parts(predictor, image, target, occlusion=occlusion, occlusion_cfg=occlusion_cfg, name=name)
    t = time.perf_counter()
    img = parts["_image"]
    result = {"target": parts["target"], "gradcam": parts["gradcam"]}
    result["gradcam"]["png_base64"] = png_b64(overlay(img, parts["_gradcam"]))
    result["gradcam"]["layer_png_base64"] = png_b64(heat_layer(parts["_gradcam"]))
    if occlusion:
        occ = parts["occlusion"]
        shown, _ = occlusion_display(parts["_occlusion"], occ["noise"]["threshold"])
        occ["png_base64"] = png_b64(occlusion_picture(img, parts["_occlusion"], occ))
        occ["layer_png_base64"] = png_b64(heat_layer(shown))
        result["occlusion"] = occ
    else:
        result["occlusion"] = None
    result["prediction"] = parts["prediction"]
    # the text read off the photo, each line's box numbered in reading order: evidence the pixel maps do not show
    lines = parts["text_lines"]
    result["text"] = {"lines": lines, "png_base64": png_b64(text_overlay(img, lines))} if lines else None
    seconds = parts["seconds"]
    seconds["render"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = seconds
    maps = {"gradcam": parts["_gradcam"], "occlusion": parts.get("_occlusion"), "image": img}
    return result, maps


def occlusion_picture(img: Image.Image, drop_map: np.ndarray, occ: dict) -> Image.Image:
    """The photo with the drops above the noise drawn on, the crops above it outlined, and a colour scale below."""
    shown, vmax = occlusion_display(drop_map, occ["noise"]["threshold"])
    occ["scale"] = {"min": 0.0, "max": vmax, "threshold": occ["noise"]["threshold"], "unit": "probability"}
    drawn = overlay(img, shown, [c["box"] for c in occ["crops"]])
    return with_legend(drawn, vmax, occ["noise"]["threshold"], occ["quantity"])


def text_overlay(img: Image.Image, lines: list[dict]) -> Image.Image:
    """The photo with each line of text read outlined and numbered (the numbers are the lines' order in the JSON)."""
    return overlay(img, np.zeros((img.height, img.width)), [line["box"] for line in lines])


def write_explanation(result: dict, maps: dict, out_dir: str | Path) -> dict[str, Path]:
    """gradcam.png, occlusion.png (when computed), text.png (when text was read) and explain.json (without the
    base64 images) in out_dir."""
    out_dir = Path(out_dir)
    files = {"gradcam": save_png(overlay(maps["image"], maps["gradcam"]), out_dir / "gradcam.png")}
    if result.get("occlusion"):
        files["occlusion"] = save_png(occlusion_picture(maps["image"], maps["occlusion"], result["occlusion"]), out_dir / "occlusion.png")
    if result.get("text"):
        files["text"] = save_png(text_overlay(maps["image"], result["text"]["lines"]), out_dir / "text.png")
    doc = json.loads(json.dumps(result))
    for key in ("gradcam", "occlusion", "text"):
        if doc.get(key):
            doc[key].pop("png_base64", None)
            doc[key].pop("layer_png_base64", None)
            doc[key]["png"] = files[key].name
    files["json"] = write_json(doc, out_dir / "explain.json")
    return files


# ---------------------------------------------------------------------------------------------- the parts


def _explain_parts(
    predictor,
    image: Image.Image,
    target: str,
    *,
    occlusion: bool,
    occlusion_cfg: OcclusionConfig | None = None,
    want_gradcam: bool = True,
    name: str = "<image>",
) -> dict:
    """One forward pass gives the prediction and the Grad-CAM features; occlusion adds its batched passes."""
    from geopin.runtime import torch_threads

    occlusion_cfg = OcclusionConfig() if occlusion_cfg is None else occlusion_cfg
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    img = _decoded(image)
    x, box = input_tensor(predictor, img)
    with torch_threads(predictor.embed_cfg.threads):
        feats = feature_map(predictor, x.unsqueeze(0)) if want_gradcam else None
        if feats is not None and not predictor.embed_cfg.tta and predictor.embed_cfg.precision == "f32":
            emb = feats.mean((2, 3)).numpy()  # what the backbone's forward returns: no second pass
        else:
            from geopin.features.embed import embed_images

            emb = embed_images([img], predictor.backbone, predictor.embed_cfg)
    model = predictor.model
    lines: list[dict] = []
    readings = None
    wanted = predictor.text_wanted(emb)
    if predictor.reads_text:  # what the photo says, in the answer as predict gives it (read where predict reads it)
        row: dict = {"path": name}
        reading = predictor.reading_or_none(img, row) if wanted[0] else None
        readings = [reading]
        lines = [line.to_dict() for line in reading.lines] if reading is not None else []
    prediction = predictor.answer(emb, [img], [name], readings=readings, wanted=wanted)[0]
    ev, cell, nb = posterior(model, emb)
    seconds["predict"] = time.perf_counter() - t0
    tgt = resolve_target(model, target, (prediction["lat"], prediction["lon"]), cell[0])
    # Grad-CAM and occlusion explain the pixels' part of the posterior; the text read (and its boxes) is the rest
    out: dict[str, Any] = {"target": tgt.to_dict(), "prediction": prediction, "shape": [img.height, img.width],
                           "text_lines": lines}  # boxes in the coordinates of `img`, as the maps
    if want_gradcam:
        t = time.perf_counter()
        out["_gradcam"], out["gradcam"] = _gradcam_part(predictor, feats, tgt, box, img)
        seconds["gradcam"] = time.perf_counter() - t
    if occlusion:
        t = time.perf_counter()
        out["_occlusion"], out["occlusion"] = _occlusion_part(predictor, x, tgt, box, img, (ev, cell, nb), occlusion_cfg)
        seconds["occlusion"] = time.perf_counter() - t
    out["seconds"] = seconds
    out["_image"] = img
    return out


def _gradcam_part(predictor, feats, tgt: Target, box, img: Image.Image) -> tuple[np.ndarray, dict]:
    """The Grad-CAM map on the photo, peak 1, and what it reports."""
    cam, logp = gradcam_from_features(predictor, feats, tgt.weights)
    full = np.clip(_to_photo(cam, box, img.size), 0.0, None)
    full = full / full.max() if full.max() > 0 else full  # resizing lowers the peak a little
    return full, {"shape": [img.height, img.width], "log_prob": logp, "probability": math.exp(logp),
                  "layer": "last conv block (head conv 1x1, after ReLU6)"}


def _occlusion_part(predictor, x, tgt: Target, box, img: Image.Image, post, cfg: OcclusionConfig) -> tuple[np.ndarray, dict]:
    """The drop map on the photo, and what it reports: the unoccluded mass, the passes, the top crops."""
    model = predictor.model
    ev, cell, nb = post
    base = float(target_mass(model, tgt, ev, cell, nb)[0])
    null = null_drops(predictor, x, tgt, base, cfg)
    threshold = noise_threshold(null, cfg)
    drop_map, boxes, drops = occlusion_drops(predictor, x, tgt, base, cfg)
    sx, sy = (box[2] - box[0]) / x.shape[2], (box[3] - box[1]) / x.shape[1]
    crops = []
    for i in top_boxes(boxes, drops, cfg.top_crops, cfg.max_overlap, threshold):
        _, y0, x0, y1, x1 = boxes[i]
        crops.append({
            "box": [int(round(box[0] + x0 * sx)), int(round(box[1] + y0 * sy)), int(round(box[0] + x1 * sx)), int(round(box[1] + y1 * sy))],
            "drop": float(drops[i]),
            "scale": float(cfg.scales[boxes[i][0]]),
        })
    quantity = (f"P(in {tgt.value})" if tgt.kind == "country" else f"P(within {OCCLUSION_KM:.0f} km of the {tgt.kind})")
    within = np.clip(mass_within(model.heads.places, ev, cell, nb, tgt.lat, tgt.lon, CONFIDENCE_KM), 0.0, 1.0)
    return _to_photo(drop_map, box, img.size), {
        "shape": [img.height, img.width],
        "quantity": quantity,
        "base": base,  # raw posterior mass, the unit of every drop
        "calibrated_within_750km": float(model.calibration.apply(within)[0, CONFIDENCE_KM.index(OCCLUSION_KM)]),
        "passes": len(boxes),
        "scales": list(cfg.scales),
        "max_drop": float(drops.max()) if len(drops) else 0.0,
        "crops": crops,  # only patches whose drop exceeds the noise threshold
        "noise": {
            "threshold": threshold,  # drops at or below it are not drawn, in the picture or as crops
            "null_drops": [float(v) for v in null],
            "null_rms": float(np.sqrt(np.mean(np.square(null)))) if len(null) else None,
            "method": (f"the photo against itself shifted by 1-2 px ({len(null)} passes): threshold = max({cfg.min_drop:g}, "
                       f"{cfg.noise_k:g} x RMS of those drops)"),
        },
        "patches_above_noise": int((drops > threshold).sum()),
    }


def _to_photo(map_hw: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """A map over the network input resized (bilinear) onto the photo box it covers; zero outside it."""
    w, h = size
    x0, y0, x1, y1 = box
    resized = Image.fromarray(np.asarray(map_hw, dtype=np.float32), mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
    out = np.zeros((h, w), dtype=np.float64)
    out[y0:y1, x0:x1] = np.asarray(resized, dtype=np.float64)
    return out


def _decoded(image: Image.Image) -> Image.Image:
    """The image decoded to RGB as `geopin predict` decodes it; ValueError naming it when it cannot be."""
    from geopin.dataset.images import ImageError, decode_rgb

    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL image, got {type(image).__name__} (decode files with geopin.features.embed.load_image)")
    try:
        return decode_rgb(image)
    except ImageError as exc:
        raise ValueError(f"{getattr(image, 'filename', '') or '<image>'}: cannot decode image: {exc.reason}: {exc.detail}") from exc


__all__ = ["gradcam", "occlusion_map", "explain_photo", "explain_with_maps", "write_explanation"]
