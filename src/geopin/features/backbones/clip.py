"""CLIP ViT-B/32's image tower, from a weights folder (never downloaded)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from geopin.features.backbones.preprocess import BackboneConfig
from geopin.features.backbones.registry import Backbone, register_backbone

FAMILY = "clip"
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

    # ViT-B/32 needs 224x224: whole mode letterboxes the full photo onto a mean-coloured square, center_crop
    # takes the central square of the short side.
    config = BackboneConfig(
        name="clip_vit_b32", family=FAMILY, version=f"{path.name}+open_clip-{importlib.metadata.version('open_clip_torch')}",
        mean=_CLIP_MEAN, std=_CLIP_STD, native_size=224, whole_fit="letterbox", crop_padding=0,
    )
    return Backbone(config, int(model.visual.output_dim), ImageTower(model).eval())
