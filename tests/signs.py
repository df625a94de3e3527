"""Photos with a sign on them, rendered with Pillow, for the evidence tests and bench/bench_evidence.py.

The fonts come from the machine: matplotlib's DejaVu Sans Bold (Latin, Cyrillic, Greek) always; a CJK font
from Debian's fonts-noto-cjk or fonts-wqy-zenhei where installed (`cjk_font()` is None otherwise, and the
tests that need it skip, saying so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)


def latin_font() -> str:
    """DejaVu Sans Bold, shipped with matplotlib: Latin, Cyrillic and Greek."""
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf")


def cjk_font() -> str | None:
    return next((f for f in _CJK_FONTS if Path(f).exists()), None)


def needs_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


def sign_photo(text: str, size: tuple[int, int] = (1200, 800), seed: int = 0, font: str | None = None) -> Image.Image:
    """A street-like scene (sky, a textured ground) with a large white sign carrying `text` in black."""
    w, h = size
    rng = np.random.default_rng(seed)
    sky = np.linspace([120, 165, 215], [190, 210, 235], h // 2)[:, None, :].repeat(w, axis=1)
    ground = (rng.normal(0, 18, (h - h // 2, w, 3)) + [95, 100, 90]).clip(0, 255)
    img = Image.fromarray(np.concatenate([sky, ground]).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    draw = ImageDraw.Draw(img)
    font = font or (cjk_font() if needs_cjk(text) else latin_font())
    if font is None:
        raise FileNotFoundError("no CJK font installed (apt-get install fonts-noto-cjk)")
    size_px = max(12, int(h * 0.13))
    face = ImageFont.truetype(font, size_px)
    while face.getbbox(text)[2] > 0.8 * w and size_px > 12:
        size_px = int(size_px * 0.9)
        face = ImageFont.truetype(font, size_px)
    x0, y0, x1, y1 = face.getbbox(text)
    tw, th = x1 - x0, y1 - y0
    left, top = (w - tw) // 2, int(h * 0.3)
    pad = max(6, size_px // 3)
    draw.rectangle((left - pad, top - pad, left + tw + pad, top + th + pad), fill=(245, 245, 240), outline=(20, 20, 20), width=max(2, pad // 3))
    draw.text((left - x0, top - y0), text, fill=(15, 15, 15), font=face)
    post = max(2, pad // 2)
    draw.rectangle((w // 2 - post // 2, top + th + pad, w // 2 + post // 2, h), fill=(70, 70, 70))
    return img
