"""The backbone registry: a name -> a loader, as timm and open_clip do.

Adding a backbone is one function decorated with `@register_backbone(name)` that returns a `Backbone`
(its model and its `BackboneConfig`). A prefix entry (`prefix=True`, e.g. "finetuned:") stands for every
name that starts with it; its loader gets the whole name. Weights always come from disk: nothing is downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from geopin.features.backbones.preprocess import BackboneConfig, preprocess_image

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: The backbone of `geopin embed`, `finetune` and the bundled model unless told otherwise.
DEFAULT_BACKBONE = "efficientnet_lite0"


class BackboneUnavailable(RuntimeError):
    """A registered backbone whose weights or code are not installed on this machine."""


@dataclass(frozen=True)
class Backbone:
    """A loaded backbone: `model` maps a (B, 3, H, W) float tensor to (B, dim) pooled features; `config` says
    how photos become that tensor and which weights these are."""

    config: BackboneConfig
    dim: int
    model: "torch.nn.Module"  # torch is imported lazily
    classifier: "torch.nn.Module | None" = None  # features -> ImageNet logits, to check that weights loaded right

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        """Identifies the weights and the inference graph; part of every embedding cache key."""
        return self.config.version

    @property
    def native_size(self) -> int:
        return self.config.native_size

    def preprocess(self, img, mode: str | None = None, long_side: int | None = None):
        """(3, H, W) input tensor of a PIL image, in `mode` at `long_side` (default: the config's)."""
        return preprocess_image(img, self.config.for_input(mode, long_side))


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable  # (device) -> Backbone; for a prefix entry (full name, device) -> Backbone
    check: Callable  # () -> None when loadable, else why not; for a prefix entry (full name) -> ...
    description: str
    prefix: bool = False

    def problem(self, name: str) -> str | None:
        return self.check(name) if self.prefix else self.check()

    def load(self, name: str, device: str) -> Backbone:
        return self.factory(name, device) if self.prefix else self.factory(device)


# Filled once at import by the decorators of the family modules; never mutated afterwards.
_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str, *, check: Callable | None = None, description: str = "", prefix: bool = False
) -> Callable[[Callable], Callable]:
    """Register `factory(device) -> Backbone` under `name`; `check()` says cheaply whether it can load.

    With prefix=True, `name` (e.g. "finetuned:") covers every name starting with it, and the factory and
    check take the full name first: `factory(name, device)`, `check(name)`.
    """

    def decorator(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        default_check = (lambda _name: None) if prefix else (lambda: None)
        _REGISTRY[name] = _Entry(name, factory, check or default_check, description or (factory.__doc__ or "").strip(), prefix)
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Names that load as they are (prefix entries such as "finetuned:" need their argument)."""
    return sorted(n for n, e in _REGISTRY.items() if not e.prefix)


def backbone_status(name: str) -> dict:
    """Name, description and whether the weights are on this machine (without loading them)."""
    entry = _entry(name)
    reason = entry.problem(name)
    return {"name": name, "description": entry.description, "available": reason is None, "reason": reason}


def create_backbone(name: str = DEFAULT_BACKBONE, device: str = "cpu") -> Backbone:
    """Load a registered backbone in eval mode; BackboneUnavailable says how to install missing weights."""
    entry = _entry(name)
    reason = entry.problem(name)
    if reason is not None:
        raise BackboneUnavailable(f"backbone {name!r} is not available: {reason}")
    backbone = entry.load(name, device)
    backbone.model.eval()
    if backbone.classifier is not None:
        backbone.classifier.eval()
    logger.info("loaded backbone %s (%s, dim %d)", backbone.name, backbone.version, backbone.dim)
    return backbone


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is not None and not entry.prefix:
        return entry
    for prefix, entry in _REGISTRY.items():
        if entry.prefix and name.startswith(prefix):
            return entry
    prefixes = [f"{p}... ({e.description})" for p, e in sorted(_REGISTRY.items()) if e.prefix]
    raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones() + prefixes)}")
