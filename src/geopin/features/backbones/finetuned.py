"""`finetuned:DIR`: an EfficientNet-Lite whose last blocks `geopin finetune` trained, loaded from its folder.

The folder (`weights.pt`, `finetune.json`) names its base backbone; loading it is the base network with the
trained tensors put in. The name holds a path, so embeddings and model folders record it relative to
themselves when the fine-tuned folder lies inside or beside them (`relative_name`, `absolute_name`): the
folders can then be moved or copied together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from geopin.features.backbones.registry import (
    Backbone,
    BackboneUnavailable,
    create_backbone,
    register_backbone,
)

log = logging.getLogger(__name__)

PREFIX = "finetuned:"
WEIGHTS = "weights.pt"
META = "finetune.json"


def finetuned_folder(name: str) -> Path:
    """The folder named by "finetuned:DIR" (absolute, normalised)."""
    if not name.startswith(PREFIX) or not name[len(PREFIX):].strip():
        raise ValueError(f"backbone {name!r}: expected finetuned:DIR, the folder written by `geopin finetune`")
    return Path(os.path.normpath(Path(name[len(PREFIX):]).expanduser().absolute()))


def finetuned_problem(name: str) -> str | None:
    """None when the folder holds a complete fine-tuning, else what is missing (cheap: no weights loaded)."""
    folder = finetuned_folder(name)
    if not folder.is_dir():
        return f"folder {folder} does not exist (write it with `geopin finetune ... --out {folder}`)"
    missing = [f for f in (WEIGHTS, META) if not (folder / f).is_file()]
    if missing:
        return f"folder {folder} lacks {' and '.join(missing)}: not a finished `geopin finetune` output"
    return None


@register_backbone(PREFIX, check=finetuned_problem, prefix=True, description="EfficientNet-Lite fine-tuned by `geopin finetune`, from folder DIR")
def load_finetuned(name: str, device: str = "cpu") -> Backbone:
    """The base backbone with the fine-tuned suffix weights; version = base version + the weights' sha256.

    The name is made absolute, so a model folder that records the backbone loads it from any working directory.
    """
    import torch

    folder = finetuned_folder(name)
    name = PREFIX + str(folder)
    problem = finetuned_problem(name)
    if problem is not None:
        raise BackboneUnavailable(f"backbone {name!r} is not available: {problem}")
    try:
        meta = json.loads((folder / META).read_text())
        base_name = meta["base_backbone"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneUnavailable(f"backbone {name!r}: {folder / META} is unreadable: {type(exc).__name__}: {exc}") from None
    data = (folder / WEIGHTS).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if meta.get("weights_sha256") not in (None, sha):
        raise BackboneUnavailable(f"backbone {name!r}: {folder / WEIGHTS} does not match the sha256 in {META} (changed or damaged)")
    base = create_backbone(base_name, device)
    if meta.get("base_version") not in (None, base.version):
        log.warning("%s was fine-tuned from %s %s; this machine has %s", folder, base_name, meta.get("base_version"), base.version)
    try:
        state = torch.load(folder / WEIGHTS, map_location=device, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BackboneUnavailable(f"backbone {name!r}: cannot read {folder / WEIGHTS}: {exc}") from None
    model = base.model
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if unknown or wrong or not state:
        raise BackboneUnavailable(
            f"backbone {name!r}: {folder / WEIGHTS} does not fit {base_name} "
            f"({len(unknown)} unknown and {len(wrong)} mis-shaped tensors, {len(state)} in all)"
        )
    model.load_state_dict(state, strict=False)
    config = dataclasses.replace(base.config, name=name, version=f"{base.version}+ft-{sha[:16]}")
    return Backbone(config, base.dim, model.eval())


def relative_name(name: str, folder: str | os.PathLike) -> str:
    """The backbone name to record in `folder`: "finetuned:REL" when the fine-tuned folder lies inside
    `folder` or beside it (under the same parent), so the two can move together; any other name unchanged."""
    if not name.startswith(PREFIX):
        return name
    target = finetuned_folder(name)
    here = Path(os.path.normpath(Path(folder).absolute()))
    if target == here or not target.is_relative_to(here.parent):
        return PREFIX + str(target)
    return PREFIX + os.path.relpath(target, here)


def absolute_name(name: str, folder: str | os.PathLike) -> str:
    """The backbone name recorded in `folder`, as create_backbone takes it: a relative DIR is read from `folder`."""
    if not name.startswith(PREFIX) or not name[len(PREFIX):].strip():
        return name
    path = Path(name[len(PREFIX):]).expanduser()
    return PREFIX + os.path.normpath(path if path.is_absolute() else Path(folder).absolute() / path)
