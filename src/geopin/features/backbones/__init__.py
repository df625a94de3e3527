"""Image backbones behind one interface, found by name in a registry (as timm and open_clip do).

A backbone turns a photo into a fixed-size feature vector that the geolocation heads learn from. Its
preprocessing is data (`BackboneConfig`), stored with every embeddings folder and model and checked when
they are read. One module per family registers its entries on import:

  registry.py          Backbone, the registry, create_backbone, DEFAULT_BACKBONE
  preprocess.py        BackboneConfig and the one photo -> tensor function it drives; DEFAULT_LONG_SIDE
  efficientnet_lite.py EfficientNet-Lite0/1/2 (fused for CPU), trunk_stages
  clip.py              CLIP ViT-B/32 from a weights folder
  finetuned.py         finetuned:DIR, the folders `geopin finetune` writes
"""

from __future__ import annotations

from geopin.features.backbones import clip, efficientnet_lite, finetuned  # noqa: F401 (they register on import)
from geopin.features.backbones.efficientnet_lite import (
    channels_last,
    lite_weights_path,
    load_efficientnet_lite,
    trunk_stages,
)
from geopin.features.backbones.finetuned import absolute_name, relative_name
from geopin.features.backbones.preprocess import (
    DEFAULT_LONG_SIDE,
    MODES,
    BackboneConfig,
    BackboneMismatch,
    center_crop_box,
    check_backbone_config,
    preprocess_image,
    whole_size,
)
from geopin.features.backbones.registry import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneUnavailable,
    backbone_status,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE", "DEFAULT_LONG_SIDE", "MODES", "Backbone", "BackboneConfig", "BackboneMismatch", "BackboneUnavailable",
    "absolute_name", "backbone_status", "center_crop_box", "channels_last", "check_backbone_config", "create_backbone",
    "list_backbones", "load_efficientnet_lite", "lite_weights_path", "preprocess_image", "register_backbone",
    "relative_name", "trunk_stages", "whole_size",
]
