"""Drawing the maps: a perceptual colour ramp, the map blended over the photo (crops outlined and
numbered), the map alone as an RGBA layer, and PNGs written whole or as base64 for JSON.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geopin.io import atomic_path

# a perceptual dark-to-bright ramp (inferno's anchors): high evidence reads as bright and warm
_RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)], dtype=np.float64)


def colorize(map01: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] to (H, W, 3) uint8 on the ramp."""
    v = np.clip(np.asarray(map01, dtype=np.float64), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    f = (v - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - f) + _RAMP[hi] * f).astype(np.uint8)


def occlusion_display(drop_map: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, float]:
    """(map in [0, 1], the drop that 1 stands for): drops scaled by the largest, zero (not drawn) at or below `threshold`.

    The colour is proportional to the drop itself (0 = no drop), so the legend reads in probability
    points; what does not exceed the noise threshold stays transparent.
    """
    drop_map = np.asarray(drop_map, dtype=np.float64)
    top = float(drop_map.max()) if drop_map.size else 0.0
    if top <= max(threshold, 0.0):
        return np.zeros_like(drop_map), max(threshold, 0.0)
    return np.where(drop_map > threshold, np.clip(drop_map, 0, None) / top, 0.0), top


def _ticks(vmax: float) -> list[float]:
    """Round tick values (probability units) from 0 up to vmax, at most 6."""
    pp = vmax * 100
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 25, 50):
        if pp / step <= 5:
            break
    return [v * step / 100 for v in range(int(pp / step + 1e-9) + 1)]


def with_legend(img: Image.Image, vmax: float, threshold: float, quantity: str, min_width: int = 360) -> Image.Image:
    """`img` above a colour scale: the drop in `quantity` (probability points) that each colour stands for, 0 to
    vmax, with the part at or below `threshold` greyed out as noise (not drawn on the photo)."""
    width = max(img.width, min_width)
    font_px = max(11, round(width / 48))
    font = default_font(font_px)
    pad = max(4, font_px // 2)
    bar_h = max(8, font_px)
    band_h = pad + font_px + pad // 2 + bar_h + pad // 2 + font_px + pad
    out = Image.new("RGB", (width, img.height + band_h), (255, 255, 255))
    out.paste(img.convert("RGB"), ((width - img.width) // 2, 0))
    draw = ImageDraw.Draw(out)
    y = img.height + pad
    title = f"drop in {quantity} when hidden (probability points); grey: noise, up to {threshold * 100:.2g}, not drawn"
    while draw.textlength(title, font=font) > width - 2 * pad and font_px > 8:  # a narrow photo: smaller words
        font_px -= 1
        font = default_font(font_px)
    draw.text((pad, y), title, fill=(20, 20, 20), font=font)
    y += font_px + pad // 2
    x0, x1 = pad + font_px, width - pad - font_px
    vmax = max(vmax, 1e-12)
    ramp = colorize(np.linspace(0, 1, max(2, x1 - x0))[None, :])[0]
    cut = x0 + int(round(min(max(threshold, 0.0) / vmax, 1.0) * (x1 - x0)))
    for i, c in enumerate(ramp):
        x = x0 + i
        draw.line((x, y, x, y + bar_h - 1), fill=tuple(int(v) for v in c) if x >= cut else (200, 200, 200))
    draw.rectangle((x0, y, x1 - 1, y + bar_h - 1), outline=(80, 80, 80))
    ty = y + bar_h + pad // 4
    last_right = -1e9
    for v in _ticks(vmax):
        text = f"{v * 100:g}"
        tw = draw.textlength(text, font=font)
        left = min(max(x0 + (x1 - x0) * v / vmax - tw / 2, 0), width - tw)
        if left < last_right + pad:
            continue  # a label that would overlap its neighbour is left out
        draw.text((left, ty), text, fill=(20, 20, 20), font=font)
        last_right = left + tw
    return out


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
    label_font = default_font(max(12, round(max(out.size) / 28)))
    for rank, b in enumerate(boxes, 1):
        x0, y0, x1, y1 = (round(v * scale) for v in b)
        x1, y1 = max(x1 - 1, x0), max(y1 - 1, y0)  # a box on a photo of a few pixels shrinks to nothing: keep a point
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=width + 2)
        draw.rectangle((x0, y0, x1, y1), outline=(0, 255, 255), width=width)
        draw.text((x0 + width + 2, y0 + width), str(rank), fill=(0, 255, 255), font=label_font, stroke_width=2, stroke_fill=(0, 0, 0))
    return out


def default_font(size: int):
    """Pillow's default font at `size` px (one bitmap size on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def png_b64(img: Image.Image) -> str:
    """The image as PNG, base64 text for JSON."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


__all__ = ["colorize", "occlusion_display", "with_legend", "heat_layer", "overlay", "default_font", "png_b64", "save_png"]
