"""Fine-tune the last blocks of an EfficientNet-Lite backbone for geolocation, on a CPU.

The frozen part of the network (the *prefix*: stem and all blocks but the last few) is run once per
augmented view of each photo and its output cached on disk in float16, keyed by the photo's sha256,
the backbone and the view settings. Training then runs only the trainable *suffix* (the last
`train_blocks` MBConv blocks and the head conv) on the cached activations, which is what makes a
fine-tuning of 2,000 photos fit in minutes on two cores. A second call with other training photos (another
fold) reuses every cached photo.

Loss: cross-entropy against haversine-smoothed soft labels over the training photos' geocells at
every granularity (PIGEON), optionally plus a GPS-contrastive term between the image and a random
Fourier feature encoding of its position (GeoCLIP). Views keep geography: crops and mild colour jitter;
no mirror images unless asked (text and the driving side carry the place).

The result is a folder (`weights.pt`, `finetune.json`) that `create_backbone("finetuned:DIR")` loads
like any registered backbone (geopin.features.backbones.finetuned): the base network with the suffix
weights replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from geopin.dataset.cells import build_cells, default_granularities
from geopin.dataset.images import ImageError
from geopin.dataset.manifest import FOR_EMBED, read_manifest
from geopin.dataset.splits import group_split, random_split
from geopin.features.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    channels_last,
    create_backbone,
    trunk_stages,
)
from geopin.features.backbones.finetuned import META, PREFIX, WEIGHTS
from geopin.features.embed import (
    PREPROCESS_VERSION,
    BadImage,
    _hash_file,
    _ordered_prefetch,
    default_cache_dir,
    ids_digest,
    load_image,
)
from geopin.geo import haversine_km, to_xyz
from geopin.io import atomic_path, write_json
from geopin.locate.heads import CellClassifier, soft_labels
from geopin.log import progress
from geopin.metrics import geoscore
from geopin.runtime import torch_threads

log = logging.getLogger(__name__)

# Bump when the views change (crop rule, jitter, decoding): it is part of the prefix cache key.
AUG_VERSION = "v1"
MIN_AREA = 0.35  # smallest crop, as a fraction of the photo's area
JITTER = 0.2  # brightness, contrast and saturation factors drawn in [1 - JITTER, 1 + JITTER]
# The cache stops at least this many blocks before the end, so runs training 1..4 blocks share one cache
# (the frozen blocks between the cut and the trained ones run, without gradients, at each step). For
# Lite0 the cut is then the start of the last 9x9 stage (192 channels), the same size as deeper cuts.
CACHE_MIN_BLOCKS = 4
HEAD_LR_SCALE = 10.0  # the new cell head learns faster than the pretrained blocks
_GATHER_IN_RAM_BYTES = 2 << 30  # larger training sets are gathered into a memory-mapped file instead


@dataclass
class FinetuneConfig:
    """Defaults measured on the shared photos' by-photographer train split (2,120 photos)."""

    backbone: str = DEFAULT_BACKBONE
    # Last MBConv blocks trained (+ the head conv). Measured (lr 1e-4, held-out photographers of the train
    # split, GeoScore of the head's finest cell after epoch 1/2): 1 block 384/418, 2 blocks 396/411, 4 blocks
    # 423/448, all below the linear probe on the base features (504): the data (2,120 photos) cannot tell them apart.
    train_blocks: int = 2
    views: int = 4  # augmented views per photo, precomputed through the frozen prefix (view 0: the whole photo)
    crop_size: int = 288  # square side of every view; a multiple of 32 so the stride-32 maps stack
    flip: bool = False  # mirror half of the views: off, since text and driving side carry geography
    epochs: int = 10
    max_minutes: float | None = None  # stop after the epoch that would overrun this wall-time budget
    # AdamW learning rate of the trained blocks (the new cell head: HEAD_LR_SCALE x). Measured on the shared
    # photos' train split (2 blocks): 1e-3 dropped the held-out GeoScore of epoch 1 to 294, 1e-4 to 396, from 504.
    lr: float = 1e-4
    batch_size: int = 64
    label_tau_km: float = 75.0  # PIGEON's haversine label smoothing
    contrastive_weight: float = 0.0  # weight of the GeoCLIP-style image/location InfoNCE term
    val_fraction: float = 0.1  # photographers held out inside the training photos to pick the epoch
    seed: int = 0
    device: str = "auto"  # "auto": cuda when torch sees a GPU, else cpu
    cache_dir: Path | None = None  # None: <geopin cache>/finetune-prefix

    def __post_init__(self) -> None:
        for name in ("train_blocks", "views", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_size < 64 or self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 and at least 64, got {self.crop_size}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.label_tau_km > 0:
            raise ValueError(f"label_tau_km must be positive, got {self.label_tau_km}")
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir().parent / "finetune-prefix"

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir is not None else None
        return d


# ----------------------------------------------------------------------------------------------------------
# Views: geography-keeping augmentations, in PIL/NumPy


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation, each by a factor in [1 - JITTER, 1 + JITTER]."""
    arr = np.asarray(img, dtype=np.float32)
    b, c, s = rng.uniform(1.0 - JITTER, 1.0 + JITTER, size=3)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    arr = arr * b
    mean = float((arr @ weights).mean())
    arr = (arr - mean) * c + mean
    gray = (arr @ weights)[..., None]
    arr = gray + (arr - gray) * s
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def make_views(img: Image.Image, n_views: int, crop_size: int, rng: np.random.Generator, flip: bool = False) -> list[Image.Image]:
    """View 0: the whole photo; then random crops (area MIN_AREA..1, aspect between square and the photo's)
    with colour jitter, each resized to a crop_size square."""
    w, h = img.size
    views = [img.resize((crop_size, crop_size), Image.BICUBIC)]
    for _ in range(n_views - 1):
        area = rng.uniform(MIN_AREA, 1.0) * w * h
        aspect = (w / h) ** rng.uniform(0.0, 1.0)
        cw = max(1, min(w, int(round(math.sqrt(area * aspect)))))
        ch = max(1, min(h, int(round(math.sqrt(area / aspect)))))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        view = img.resize((crop_size, crop_size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
        if flip and rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(_jitter(view, rng))
    return views


def _photo_rng(seed: int, sha256: str) -> np.random.Generator:
    """The same views for a photo whatever the call, so the cache is valid across folds and reruns."""
    return np.random.default_rng([seed, int(sha256[:16], 16)])


# ----------------------------------------------------------------------------------------------------------
# Prefix / suffix of the fused network


def _base(cfg: FinetuneConfig) -> Backbone:
    backbone = create_backbone(cfg.backbone, "cpu")
    try:
        n = len(trunk_stages(backbone.model).blocks)
    except ValueError:
        raise ValueError(f"backbone {cfg.backbone!r} cannot be fine-tuned: only EfficientNet-Lite backbones can") from None
    if backbone.name.startswith(PREFIX):
        raise ValueError(f"backbone {cfg.backbone!r} is already fine-tuned: fine-tune its base instead")
    if cfg.train_blocks > n:
        raise ValueError(f"train_blocks {cfg.train_blocks} exceeds the {n} blocks of {cfg.backbone}")
    return backbone


def _cut(n_blocks: int, train_blocks: int) -> int:
    """Index of the first block not in the cached prefix."""
    return max(0, n_blocks - max(train_blocks, CACHE_MIN_BLOCKS))


class _Prefix(nn.Module):
    """The stem and the blocks before the cache cut: run once per view, its output cached."""

    def __init__(self, fused, cut: int):
        super().__init__()
        trunk = trunk_stages(fused)
        self.stem, self.blocks = trunk.stem, trunk.blocks[:cut]

    def forward(self, x):
        return self.blocks(self.stem(channels_last(x)))


class _Suffix(nn.Module):
    """Frozen blocks after the cache cut, then the trained blocks and the head conv, mean-pooled."""

    def __init__(self, fused, cut: int, start: int):
        super().__init__()
        trunk = trunk_stages(fused)
        self.frozen, self.trained, self.head = trunk.blocks[cut:start], trunk.blocks[start:], trunk.head

    def forward(self, x):
        if len(self.frozen):
            with torch.no_grad():
                x = self.frozen(x)
        return self.head(self.trained(x)).mean((2, 3))


def _trained_prefixes(fused, train_blocks: int) -> tuple[str, ...]:
    """State-dict key prefixes of the trained modules (the last train_blocks blocks and the head conv)."""
    trunk = trunk_stages(fused)
    names = {id(m): n for n, m in fused.named_modules()}
    return tuple(names[id(m)] + "." for m in [*trunk.blocks[len(trunk.blocks) - train_blocks:], trunk.head])


# ----------------------------------------------------------------------------------------------------------
# The prefix cache


def _cache_folder(cfg: FinetuneConfig, backbone: Backbone, cut: int) -> Path:
    spec = {
        "backbone": backbone.name, "version": backbone.version, "cut": cut, "views": cfg.views,
        "crop_size": cfg.crop_size, "flip": cfg.flip, "seed": cfg.seed, "aug": AUG_VERSION,
        "min_area": MIN_AREA, "jitter": JITTER, "preprocess": PREPROCESS_VERSION,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cfg.resolved_cache_dir() / f"{backbone.name}-cut{cut}-{digest}"
    if not (folder / "spec.json").exists():
        write_json(spec, folder / "spec.json")
    return folder


def _cache_file(folder: Path, sha256: str) -> Path:
    return folder / sha256[:2] / f"{sha256}.npy"


def _decode_views(path: str, sha256: str, backbone: Backbone, cfg: FinetuneConfig) -> np.ndarray:
    """(views, 3, S, S) float32 network inputs for one photo; BadImage says why a photo cannot be used."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read {path}: {exc.strerror or exc}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BadImage("sha256 mismatch: the file changed since the manifest was built (re-run ingest)")
    # Decoded large enough that the smallest crop still has crop_size pixels a side.
    decode_side = int(math.ceil(cfg.crop_size / math.sqrt(MIN_AREA)))
    try:
        img = load_image(data, "center_crop", native_size=decode_side)
    except ImageError as exc:
        raise BadImage(f"cannot decode image: {exc.reason}: {exc.detail}") from None
    views = make_views(img, cfg.views, cfg.crop_size, _photo_rng(cfg.seed, sha256), cfg.flip)
    return np.stack([backbone.preprocess(v, "whole", cfg.crop_size).numpy() for v in views])


def _fill_cache(rows: pd.DataFrame, folder: Path, prefix: _Prefix, backbone: Backbone, cfg: FinetuneConfig,
                device: str) -> tuple[int, list[dict]]:
    """Compute and store the prefix output of every photo not yet cached; (photos computed, failures)."""
    todo = [(p, s) for p, s in zip(rows["path"], rows["sha256"]) if not _cache_file(folder, s).exists()]
    todo = list({s: (p, s) for p, s in todo}.values())  # one per distinct photo
    failures: list[dict] = []
    if not todo:
        return 0, failures
    log.info("prefix cache %s: %d of %d photos to compute (%d views each)", folder, len(todo), rows["sha256"].nunique(), cfg.views)
    per_batch = max(1, 32 // cfg.views)
    done = 0
    bar = progress(total=len(todo), desc="prefix", unit="photo")

    def run(batch: list[tuple[str, np.ndarray]]) -> None:
        x = torch.from_numpy(np.concatenate([v for _, v in batch])).to(device)
        with torch.inference_mode():
            y = prefix(x).float().cpu().numpy().astype(np.float16)
        for i, (sha, _) in enumerate(batch):
            target = _cache_file(folder, sha)
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(y[i * cfg.views : (i + 1) * cfg.views]))

    def decode(path: str, sha: str):
        try:
            return _decode_views(path, sha, backbone, cfg)
        except BadImage as exc:
            return exc

    batch: list[tuple[str, np.ndarray]] = []
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, torch_threads(None):
        for (path, sha), result in zip(todo, _ordered_prefetch(pool, decode, todo, 4 * per_batch)):
            bar.update(1)
            if isinstance(result, BadImage):
                failures.append({"path": path, "sha256": sha, "error": str(result)})
                log.warning("%s: skipped: %s", path, result)
                continue
            batch.append((sha, result))
            if len(batch) >= per_batch:
                run(batch)
                done += len(batch)
                batch = []
        if batch:
            run(batch)
            done += len(batch)
    bar.close()
    return done, failures


def _gather(folder: Path, shas: Sequence[str], scratch: Path) -> np.ndarray:
    """(photos, views, C, h, w) float16 from the per-photo cache files; memory-mapped when large."""
    first = np.load(_cache_file(folder, shas[0]), mmap_mode="r")
    shape = (len(shas),) + first.shape
    if int(np.prod(shape)) * 2 <= _GATHER_IN_RAM_BYTES:
        out = np.empty(shape, dtype=np.float16)
    else:
        scratch.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float16, shape=shape)
        log.info("gathering %.1f GB of cached activations into %s", out.nbytes / 1e9, scratch)
    for i, sha in enumerate(shas):
        out[i] = np.load(_cache_file(folder, sha))
    return out


# ----------------------------------------------------------------------------------------------------------
# Heads used only while training


class LocationEncoder(nn.Module):
    """GeoCLIP-style: random Fourier features of the unit position vector at several scales -> MLP."""

    def __init__(self, out_dim: int = 128, n_features: int = 256, sigmas: Sequence[float] = (1.0, 8.0, 64.0), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.cat([torch.randn(3, n_features, generator=gen) * s for s in sigmas], dim=1))
        self.mlp = nn.Sequential(nn.Linear(2 * self.freqs.shape[1], 512), nn.ReLU(), nn.Linear(512, out_dim))

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        z = xyz.float() @ self.freqs
        return self.mlp(torch.cat([torch.sin(z), torch.cos(z)], dim=1))


def _info_nce(img: torch.Tensor, loc: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between image and location embeddings of one batch."""
    img = nn.functional.normalize(img, dim=1)
    loc = nn.functional.normalize(loc, dim=1)
    logits = logit_scale.exp().clamp(max=100.0) * img @ loc.T
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


# ----------------------------------------------------------------------------------------------------------
# Training


def _resolve_groups(df: pd.DataFrame, groups_col: str | None) -> np.ndarray | None:
    """Photographer per photo: the named column, else the manifest's `group` / a table's `author`."""
    if groups_col is None:
        return None
    for col in (groups_col, "group", "author"):
        if col in df.columns and df[col].notna().all():
            if col != groups_col:
                log.info("no complete %r column: holding out photographers by %r", groups_col, col)
            return df[col].astype(str).to_numpy()
    log.warning("no photographer column (%r): the validation photos are drawn at random", groups_col)
    return None


def _validation_split(groups: np.ndarray | None, n: int, cfg: FinetuneConfig) -> np.ndarray:
    if cfg.val_fraction <= 0 or n < 10:
        return np.zeros(n, dtype=bool)
    is_val = group_split(groups, cfg.val_fraction, cfg.seed) if groups is not None else random_split(n, cfg.val_fraction, cfg.seed)
    if is_val.all() or not is_val.any():
        return np.zeros(n, dtype=bool)
    return is_val


def _select(df: pd.DataFrame, train_ids: Sequence[str] | None, name: str) -> pd.DataFrame:
    for col in ("lat", "lon"):
        if col not in df.columns:
            raise ValueError(f"{name}: missing column {col!r} (fine-tuning needs each photo's position)")
    if train_ids is not None:
        wanted = pd.Index(pd.Series(list(train_ids), dtype=str).unique())
        unknown = wanted.difference(df["id"])
        if len(unknown):
            log.warning("%d train id(s) not in %s, e.g. %s", len(unknown), name, ", ".join(map(str, unknown[:3])))
        df = df[df["id"].isin(wanted)]
    df = df[np.isfinite(df["lat"].astype(float)) & np.isfinite(df["lon"].astype(float))]
    if len(df) == 0:
        raise ValueError(f"{name}: no photo with a position to fine-tune on" + (" among train_ids" if train_ids is not None else ""))
    return df.reset_index(drop=True)


def _hash_missing(df: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    failures = []
    shas = list(df["sha256"])
    for i, (path, sha) in enumerate(zip(df["path"], shas)):
        if sha is None:
            result = _hash_file(str(path))
            if isinstance(result, BadImage):
                failures.append({"path": str(path), "sha256": None, "error": str(result)})
            else:
                shas[i] = result
    df = df.assign(sha256=shas)
    return df[df["sha256"].notna()].reset_index(drop=True), failures


def finetune(
    manifest: Path | str | pd.DataFrame,
    out_dir: Path | str,
    cfg: FinetuneConfig | None = None,
    train_ids: Sequence[str] | None = None,
    groups_col: str | None = "group",
) -> dict:
    """Fine-tune cfg.train_blocks blocks on the manifest's photos (or those in train_ids) into out_dir.

    Returns the summary also written to out_dir/finetune.json. Photos that cannot be read are skipped
    and listed; the run stops early when cfg.max_minutes would be overrun by another epoch.
    """
    cfg = cfg or FinetuneConfig()
    t0 = time.monotonic()
    name = str(manifest) if not isinstance(manifest, pd.DataFrame) else "manifest"
    df = _select(read_manifest(manifest, FOR_EMBED, unique_ids=False), train_ids, name)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    device = cfg.resolved_device()
    torch.manual_seed(cfg.seed)
    backbone = _base(cfg)
    fused = copy.deepcopy(backbone.model).float().to(device)
    n_blocks = len(trunk_stages(fused).blocks)
    cut, start = _cut(n_blocks, cfg.train_blocks), n_blocks - cfg.train_blocks
    for p in fused.parameters():
        p.requires_grad_(False)
    prefix, suffix = _Prefix(fused, cut), _Suffix(fused, cut, start)
    for p in suffix.trained.parameters():
        p.requires_grad_(True)
    for p in suffix.head.parameters():
        p.requires_grad_(True)

    df, failures = _hash_missing(df)
    folder = _cache_folder(cfg, backbone, cut)
    t_prefix = time.monotonic()
    n_computed, bad = _fill_cache(df, folder, prefix, backbone, cfg, device)
    failures += bad
    prefix_seconds = time.monotonic() - t_prefix
    ok = np.array([_cache_file(folder, s).exists() for s in df["sha256"]])
    df = df[ok].reset_index(drop=True)
    if len(df) < 2:
        raise ValueError(f"{name}: fewer than 2 usable photos to fine-tune on ({len(failures)} could not be read)")

    groups = _resolve_groups(df, groups_col)
    is_val = _validation_split(groups, len(df), cfg)
    fit, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    lat, lon = df["lat"].to_numpy(np.float64), df["lon"].to_numpy(np.float64)
    grans = default_granularities(len(fit))
    part = build_cells(lat[fit], lon[fit], grans)
    tables = [t for t in (part.table(g.name) for g in grans) if len(t)]
    rep_xyz = [torch.from_numpy(to_xyz(t.lat.to_numpy(), t.lon.to_numpy()).reshape(-1, 3)).double() for t in tables]
    xyz = torch.from_numpy(to_xyz(lat, lon).reshape(-1, 3)).double()
    fine = tables[-1]

    scratch = folder.parent / f".gather-{uuid.uuid4().hex}.npy"
    try:
        acts = _gather(folder, list(df["sha256"]), scratch)
        loop = _Loop(acts, fit, val, xyz, rep_xyz, (fine.lat.to_numpy(), fine.lon.to_numpy()), lat, lon, suffix, cfg, device)
        result = _train(loop, fused, _trained_prefixes(fused, cfg.train_blocks), t0)
    finally:
        if scratch.exists():
            scratch.unlink()

    state = {k: v.detach().cpu().clone() for k, v in result["state"].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        torch.save(state, tmp)
    weights_sha = hashlib.sha256((out_dir / WEIGHTS).read_bytes()).hexdigest()
    n_groups = int(len(np.unique(groups))) if groups is not None else None
    summary = {
        "out_dir": str(out_dir),
        "base_backbone": backbone.name,
        "base_version": backbone.version,
        "train_blocks": cfg.train_blocks,
        "cache_cut": cut,
        "n_blocks": n_blocks,
        "config": cfg.to_dict(),
        "n_photos": int(len(df)),
        "n_fit": int(len(fit)),
        "n_val": int(len(val)),
        "n_photographers": n_groups,
        "classes": {t.granularity.iloc[0]: int(len(t)) for t in tables},
        "manifest_digest": ids_digest(df["id"]),
        "manifest": name,
        "failures": failures,
        "n_failed": len(failures),
        "prefix": {"cache": str(folder), "computed": int(n_computed), "cached": int(len(df) - min(n_computed, len(df))),
                   "seconds": round(prefix_seconds, 1)},
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "epochs_run": len(result["history"]) - 1,
        "stopped_on_time": result["stopped_on_time"],
        "device": device,
        "seconds": round(time.monotonic() - t0, 1),
        "weights_sha256": weights_sha,
        "preprocessing": {
            "mean_std": "the base backbone's (geopin.features.backbones)", "native_size": backbone.native_size,
            "train_views": f"view 0 whole photo, others crops of area {MIN_AREA}-1 with colour jitter {JITTER}, "
                           f"resized to {cfg.crop_size}x{cfg.crop_size}; flips {'on' if cfg.flip else 'off'}",
            "aug_version": AUG_VERSION, "decode": PREPROCESS_VERSION,
        },
    }
    write_json(summary, out_dir / META)
    if result["stopped_on_time"]:
        log.warning("stopped on time after %d epoch(s) (max_minutes %s)", summary["epochs_run"], cfg.max_minutes)
    log.info("fine-tuned %s (%d blocks) on %d photos in %.0f s -> %s", backbone.name, cfg.train_blocks, len(df), summary["seconds"], out_dir)
    return summary


@dataclass
class _Loop:
    """What LP-FT reads at every step: the cached prefix activations, the photos' places, the trained suffix."""

    acts: np.ndarray  # (photos, views, C, h, w) float16, maybe memory-mapped
    fit: np.ndarray  # rows trained on
    val: np.ndarray  # rows that pick the epoch (may be empty)
    xyz: torch.Tensor  # (photos, 3) unit position of every photo
    rep_xyz: list[torch.Tensor]  # per granularity, the cells' representative positions
    fine_rep: tuple[np.ndarray, np.ndarray]  # lat, lon of the finest cells
    lat: np.ndarray
    lon: np.ndarray
    suffix: _Suffix
    cfg: FinetuneConfig
    device: str

    def batch_x(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to a memory-mapped file
        x = np.empty((len(rows),) + self.acts.shape[2:], dtype=np.float16)
        x[order] = self.acts[rows[order], views[order]]
        return channels_last(torch.from_numpy(x).float().to(self.device))

    def features(self, rows: np.ndarray, view: int) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for s in range(0, len(rows), 128):
                r = rows[s : s + 128]
                out.append(self.suffix(self.batch_x(r, np.full(len(r), view))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)

    def targets(self, rows: np.ndarray) -> list[torch.Tensor]:
        return [soft_labels(self.xyz[rows], r, self.cfg.label_tau_km).to(self.device) for r in self.rep_xyz]

    def evaluate(self, head: CellClassifier) -> dict:
        """Validation loss and GeoScore of the head's finest cell on view 0 of the held-out photos."""
        if len(self.val) == 0:
            return {}
        head.eval()
        with torch.inference_mode():
            f = _unit(self.features(self.val, 0)).to(self.device)
            outs = head(f)
            loss = float(_cell_loss(outs, self.targets(self.val)))
            best = outs[-1].argmax(1).cpu().numpy()
        head.train()
        km = haversine_km(self.fine_rep[0][best], self.fine_rep[1][best], self.lat[self.val], self.lon[self.val])
        return {"val_loss": round(loss, 4), "val_geoscore": round(float(np.mean(geoscore(km))), 1)}


def _cell_loss(outs, tgts) -> torch.Tensor:
    return sum(-(t * torch.log_softmax(o, dim=1)).sum(1).mean() for o, t in zip(outs, tgts))


def _unit(f: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(f, dim=1)


def _linear_probe(loop: _Loop, rng: np.random.Generator) -> CellClassifier:
    """1. The cell head fit on the frozen features of every view (cheap: one forward pass, then 1280-d inputs)."""
    fit, cfg = loop.fit, loop.cfg
    n_views = loop.acts.shape[1]
    base = torch.stack([loop.features(fit, v) for v in range(n_views)], dim=1)  # (fit, views, dim)
    head = CellClassifier(base.shape[-1], [len(r) for r in loop.rep_xyz], hidden=0, dropout=0.2).to(loop.device)
    u0 = _unit(base[:, 0])
    head.mu.copy_(u0.mean(0).to(loop.device))
    head.sd.copy_(u0.std(0, correction=0).clamp_min(1e-6).to(loop.device))
    probe = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-2)
    head.train()
    for _ in range(10):
        perm = rng.permutation(len(fit))
        for s in range(0, len(fit), cfg.batch_size):
            i = perm[s : s + cfg.batch_size]
            v = rng.integers(0, n_views, len(i))
            loss = _cell_loss(head(_unit(base[i, v]).to(loop.device)), loop.targets(fit[i]))
            probe.zero_grad()
            loss.backward()
            probe.step()
    return head


@dataclass
class _Contrastive:
    """The GeoCLIP-style term: image features projected, positions encoded, InfoNCE between them."""

    loc_enc: LocationEncoder
    img_proj: nn.Linear
    logit_scale: nn.Parameter

    def loss(self, f: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        return _info_nce(self.img_proj(f), self.loc_enc(xyz), self.logit_scale)


def _optimizer(loop: _Loop, head: CellClassifier, total_steps: int):
    """AdamW over the trained blocks (lr), the cell head and the contrastive parts (HEAD_LR_SCALE x lr), with a
    cosine schedule over total_steps; and the contrastive term, or None when its weight is 0."""
    cfg, device = loop.cfg, loop.device
    contrastive = None
    params = [{"params": [p for p in loop.suffix.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": list(head.parameters()), "lr": cfg.lr * HEAD_LR_SCALE}]
    if cfg.contrastive_weight > 0:
        contrastive = _Contrastive(LocationEncoder(seed=cfg.seed).to(device), nn.Linear(head.dim, 128).to(device),
                                   nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device)))
        params.append({"params": list(contrastive.loc_enc.parameters()) + list(contrastive.img_proj.parameters())
                       + [contrastive.logit_scale], "lr": cfg.lr * HEAD_LR_SCALE})
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps)))
    return opt, sched, contrastive


def _epoch(loop: _Loop, head: CellClassifier, opt, sched, contrastive: _Contrastive | None, rng: np.random.Generator,
           bar) -> float:
    """One pass over the fit photos, a random view each; the mean training loss."""
    cfg = loop.cfg
    loop.suffix.train()
    perm = rng.permutation(len(loop.fit))
    losses = []
    for s in range(0, len(loop.fit), cfg.batch_size):
        i = perm[s : s + cfg.batch_size]
        rows = loop.fit[i]
        f = loop.suffix(loop.batch_x(rows, rng.integers(0, loop.acts.shape[1], len(i))))
        loss = _cell_loss(head(_unit(f)), loop.targets(rows))
        if contrastive is not None and len(rows) > 1:
            loss = loss + cfg.contrastive_weight * contrastive.loss(f, loop.xyz[rows].to(loop.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
    loop.suffix.eval()
    return float(np.mean(losses))


def _train(loop: _Loop, fused: nn.Module, trained: tuple[str, ...], t0: float) -> dict:
    """LP-FT: the cell head is first fit on the frozen features (linear probe), then trained with the blocks.

    Keeps the trained tensors of the epoch with the lowest validation loss (the last epoch without validation
    photos); stops after the epoch that would overrun cfg.max_minutes with another one.
    """
    cfg = loop.cfg
    rng = np.random.default_rng(cfg.seed)
    head = _linear_probe(loop, rng)
    history = [{"epoch": 0, "phase": "linear probe", **loop.evaluate(head), "seconds": round(time.monotonic() - t0, 1)}]
    log.info("epoch 0 (linear probe): %s", history[-1])

    # 2. Fine-tune the blocks and the head together.
    total = cfg.epochs * max(1, -(-len(loop.fit) // cfg.batch_size))
    opt, sched, contrastive = _optimizer(loop, head, total)

    def snapshot() -> dict:
        return {k: v.detach().cpu().clone() for k, v in fused.state_dict().items() if k.startswith(trained)}

    best_state, best_epoch = snapshot(), 0
    best_loss = history[0].get("val_loss", math.inf)
    stopped_on_time = False
    bar = progress(total=total, desc="finetune", unit="step")
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.monotonic()
        train_loss = _epoch(loop, head, opt, sched, contrastive, rng, bar)
        row = {"epoch": epoch, "train_loss": round(train_loss, 4), **loop.evaluate(head),
               "seconds": round(time.monotonic() - t0, 1)}
        history.append(row)
        log.info("epoch %d: %s", epoch, row)
        if row.get("val_loss", -math.inf) <= best_loss or not len(loop.val):
            best_loss, best_state, best_epoch = row.get("val_loss", best_loss), snapshot(), epoch
        if cfg.max_minutes is not None and epoch < cfg.epochs:
            elapsed, last = time.monotonic() - t0, time.monotonic() - t_epoch
            if elapsed + last > cfg.max_minutes * 60:
                stopped_on_time = True
                break
    bar.close()
    return {"state": best_state, "best_epoch": best_epoch, "history": history, "stopped_on_time": stopped_on_time}
