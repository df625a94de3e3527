"""Backbone features for every photo of a manifest, cached by content so no photo is embedded twice.

Output (`<out>/embeddings.npy`, float32 (N, dim), row i = manifest row i, not normalised; `<out>/embeddings.json`
with the backbone, its version, the config, the id order's hash, failures and throughput) is written atomically.
The cache is keyed by each photo's sha256 and by backbone + weights + preprocessing (+ the precision when int8),
and lives in append-only shard files, so an interrupted run (or another manifest sharing photos) embeds only
what is missing.

Speed on CPU: set OMP_WAIT_POLICY=PASSIVE before torch is imported (`geopin embed` does) so idle OpenMP threads
sleep rather than spin against the decode threads; see also `keep_freed_memory`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from geopin.dataset.images import ImageError, decode_rgb, open_image
from geopin.dataset.manifest import FOR_EMBED, read_manifest
from geopin.features.backbones import (
    DEFAULT_BACKBONE,
    DEFAULT_LONG_SIDE,
    MODES,
    Backbone,
    BackboneConfig,
    absolute_name,
    create_backbone,
    relative_name,
)
from geopin.features.onnx_forward import RUNTIMES, BatchForward, check_precision
from geopin.io import atomic_path, cache_root, sha256_file, write_json
from geopin.log import progress
from geopin.runtime import keep_freed_memory, keep_freed_memory_for_life, torch_threads
from geopin.scale.engine import (
    PARTS_DIR,
    EngineConfig,
    map_partitions,
    partition,
    ray_shutdown,
    read_parts,
    report_brief,
    start_ray,
)

logger = logging.getLogger(__name__)

# Bump when decoding or view generation changes in a way that changes vectors: it is part of the cache key.
# v2: decoding through geopin.dataset.images (16-bit photos scaled instead of clipped to white, transparency on white);
# ordinary 8-bit photos give the same vectors as v1.
PREPROCESS_VERSION = "v2"
LOCK_NAME = ".lock"
TTA_OPTIONS = ("flip", "crops")
CROP_FRACTION = 0.75  # side of each TTA crop relative to the base view
EMBEDDINGS_NPY = "embeddings.npy"
EMBEDDINGS_JSON = "embeddings.json"


def default_cache_dir() -> Path:
    """$GEOPIN_CACHE/embeddings if set (GEOPIN_CACHE is geopin's cache root), else ~/.cache/geopin/embeddings."""
    return cache_root() / "embeddings"


@dataclass
class EmbedConfig:
    backbone: str = DEFAULT_BACKBONE
    mode: str = "whole"  # "whole": own aspect ratio, long side = long_side; "center_crop": native-size square
    long_side: int = DEFAULT_LONG_SIDE
    batch_size: int = 32
    tta: tuple[str, ...] = ()  # "flip", "crops": features averaged over the extra views
    cache_dir: Path | None = None  # None: default_cache_dir()
    threads: int | None = None  # torch threads for the forward pass; None: all cores
    workers: int | None = None  # decode threads; None: min(4, cores)
    shard_size: int = 256  # photos per cache shard: what an interruption can lose at most
    use_cache: bool = True
    device: str = "cpu"
    # the forward pass: "onnx" (ONNX Runtime, exported once and cached), "torch", or "auto": ONNX Runtime when the
    # export works and agrees with PyTorch, else PyTorch with a warning saying why (see geopin.features.onnx_forward)
    runtime: str = "auto"
    # the forward pass's numbers: "f32", or "int8" (ONNX Runtime static quantization, ~2x faster, features within
    # cosine ~0.99 of f32). int8 vectors are other vectors: the precision is part of the cache key and of the
    # stored backbone config, so a head trained on one is not fed the other. Under runtime "auto", int8 that cannot
    # run here (no calibration table for the backbone) runs at f32 with a warning, and the output says f32.
    precision: str = "f32"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        check_precision(self.precision, self.runtime)
        if self.precision != "f32" and self.device != "cpu":
            raise ValueError(f"precision {self.precision!r} runs on the CPU only (ONNX Runtime), not on device {self.device!r}")
        if isinstance(self.tta, str):
            self.tta = tuple(t for t in self.tta.split(",") if t.strip())
        tta = {t.strip() for t in self.tta}
        unknown = tta - set(TTA_OPTIONS)
        if unknown:
            raise ValueError(f"unknown TTA option(s) {', '.join(sorted(unknown))}; choose from {', '.join(TTA_OPTIONS)}")
        self.tta = tuple(t for t in TTA_OPTIONS if t in tta)  # canonical order: same views, same cache key
        for name in ("long_side", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tta"] = list(self.tta)
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir is not None else None
        return d


@dataclass
class EmbedSummary:
    out_dir: Path
    embeddings_path: Path
    meta_path: Path
    backbone: str
    version: str
    dim: int
    n: int
    n_unique: int
    n_cached: int
    n_embedded: int
    n_failed: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0  # decode + forward of the photos not in the cache
    forward_seconds: float | None = 0.0  # None on the engine (measured in each worker, not summed)
    photos_per_s: float = 0.0  # newly embedded photos per second of embed_seconds
    cache_key: str = ""
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out_dir", "embeddings_path", "meta_path"):
            d[k] = str(d[k])
        return d


# ----------------------------------------------------------------------------------------------------------
# Cache


def cache_key(backbone: Backbone | BackboneConfig, cfg: EmbedConfig) -> str:
    """Folder name for vectors that are interchangeable: same weights, same preprocessing, same views."""
    spec = cache_spec(backbone, cfg)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    # A folder name: "finetuned:/a/b" must not nest folders (nor "finetuned:../x" climb out of the cache).
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in backbone.name)
    return f"{safe}-{cfg.mode}-{digest}"


def cache_spec(backbone: Backbone | BackboneConfig, cfg: EmbedConfig) -> dict[str, Any]:
    # cfg.runtime is left out on purpose: ONNX Runtime's features are checked to agree with PyTorch's within
    # 1e-4 (geopin.features.onnx_forward), so vectors from either runtime are interchangeable. The precision is
    # in (int8 features are other features), named only when not f32 so that f32 keys stay those of before it.
    spec = {
        "backbone": backbone.name,
        "version": backbone.version,
        "mode": cfg.mode,
        "long_side": cfg.long_side if cfg.mode == "whole" else None,
        "tta": list(cfg.tta),
        "preprocess": PREPROCESS_VERSION,
    }
    if cfg.precision != "f32":
        spec["precision"] = cfg.precision
    return spec


class EmbeddingCache:
    """Append-only shards `part-<uuid>.npz` (sha256 hex + float32 vectors), each written atomically.

    One file per few hundred photos keeps millions of photos to a few thousand files; a reader loads
    only the vectors it was asked for.
    """

    def __init__(self, folder: Path, dim: int, shard_size: int = 256, spec: dict | None = None):
        self.folder = Path(folder)
        self.dim = dim
        self.shard_size = shard_size
        self._hashes: list[str] = []
        self._vectors: list[np.ndarray] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        if spec is not None and not (self.folder / "key.json").exists():
            write_json(spec, self.folder / "key.json")

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))

    def lookup(self, wanted: set[str]) -> dict[str, np.ndarray]:
        """Vectors of the wanted hashes found in the shards; an unreadable shard is skipped with a warning."""
        found: dict[str, np.ndarray] = {}
        if not wanted:
            return found
        for shard in self.shards():
            try:
                with np.load(shard, allow_pickle=False) as npz:
                    hashes = npz["sha256"].astype(str)
                    vectors = npz["vectors"]
                    if vectors.ndim != 2 or vectors.shape != (len(hashes), self.dim):
                        raise ValueError(f"vectors of shape {vectors.shape}, expected ({len(hashes)}, {self.dim})")
                    idx = [i for i, h in enumerate(hashes) if h in wanted]
                    if idx:
                        rows = np.asarray(vectors[idx], dtype=np.float32)
                        for j, i in enumerate(idx):
                            found[hashes[i]] = rows[j]
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("skipping unreadable cache shard %s: %s", shard, exc)
        return found

    def add(self, sha256: str, vector: np.ndarray) -> None:
        self._hashes.append(sha256)
        self._vectors.append(np.asarray(vector, dtype=np.float32))
        if len(self._hashes) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        if not self._hashes:
            return None
        path = self.folder / f"part-{uuid.uuid4().hex}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, sha256=np.asarray(self._hashes, dtype="S64"), vectors=np.stack(self._vectors))
        logger.debug("wrote cache shard %s (%d vectors)", path, len(self._hashes))
        self._hashes, self._vectors = [], []
        return path


# ----------------------------------------------------------------------------------------------------------
# Decoding and views


class BadImage(ValueError):
    """A photo that cannot be used; the message is the reason recorded for its row."""


def _draft_request(width: int, height: int, mode: str, long_side: int, native_size: int) -> tuple[int, int]:
    """Smallest decoded size that still holds every pixel the preprocessing keeps (for JPEG DCT scaling)."""
    if mode == "whole":
        scale = long_side / max(width, height)
    else:
        scale = (native_size + 32) / min(width, height)
    scale = min(1.0, scale)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def load_image(
    source: Path | str | bytes, mode: str = "whole", long_side: int = DEFAULT_LONG_SIDE, native_size: int = 224
) -> Image.Image:
    """Decode to an upright 8-bit RGB image through geopin.dataset.images (the decoding ingest and predict use too).

    Large JPEGs are decoded at reduced scale (much faster, same result size). Raises ImageError for bytes
    that are not a usable photo, OSError for a path that cannot be read.
    """
    img = open_image(source)
    return decode_rgb(img, draft=_draft_request(img.width, img.height, mode, long_side, native_size),
                      name=None if isinstance(source, bytes) else str(source))


def make_views(img: Image.Image, backbone: Backbone, cfg: EmbedConfig) -> list:
    """The base view plus the TTA views: a mirror, and/or four corner crops and a centre crop (3/4 side)."""
    import torch

    base = backbone.preprocess(img, cfg.mode, cfg.long_side)
    views = [base]
    if not cfg.tta:
        return views
    # Views are cut in NumPy: torch ops here would start an OpenMP team in every decode thread.
    arr = base.numpy()
    if "flip" in cfg.tta:
        views.append(torch.from_numpy(np.ascontiguousarray(arr[:, :, ::-1])))
    if "crops" in cfg.tta:
        h, w = arr.shape[-2:]
        ch, cw = max(1, int(h * CROP_FRACTION)), max(1, int(w * CROP_FRACTION))
        for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)):
            views.append(torch.from_numpy(np.ascontiguousarray(arr[:, top : top + ch, left : left + cw])))
    return views


def _decode_views(path: Path, expected_sha: str | None, backbone: Backbone, cfg: EmbedConfig) -> list:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImage(f"file not found: {path}") from None
    except OSError as exc:
        raise BadImage(f"cannot read {path}: {exc}") from None
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise BadImage("sha256 mismatch: the file changed since the manifest was built (re-run ingest)")
    try:
        img = load_image(data, cfg.mode, cfg.long_side, backbone.native_size)
    except ImageError as exc:
        raise BadImage(f"cannot decode image: {exc.reason}: {exc.detail}") from None
    try:
        return make_views(img, backbone, cfg)
    except Exception as exc:  # noqa: BLE001 - any preprocessing failure is this record's problem, never the job's
        raise BadImage(f"cannot preprocess image: {type(exc).__name__}: {exc}") from None


def _safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args):
        try:
            return fn(*args)
        except BadImage as exc:
            return exc

    return wrapped


def _ordered_prefetch(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """fn(*item) for each item, in order, with at most `window` results decoded ahead (a bounded queue)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------------------------------------
# Batching


class _Batcher:
    """Groups views by shape (each bucket stacks without padding) and averages each photo's views.

    A bucket runs when it holds batch_size views; when too many views wait in small buckets, the fullest
    runs early so memory stays bounded whatever the mix of aspect ratios.
    """

    def __init__(self, forward: Callable[[Any], np.ndarray], batch_size: int, max_pending: int | None = None):
        self.forward = forward  # (B, 3, H, W) tensor -> (B, dim) float32 array: a BatchForward
        self.batch_size = batch_size
        self.max_pending = max_pending or 4 * batch_size
        self.buckets: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}
        self.n_pending = 0
        self._sums: dict[Any, np.ndarray] = {}
        self._left: dict[Any, int] = {}
        self._n_views: dict[Any, int] = {}
        self.forward_seconds = 0.0

    def add(self, key: Any, views: Sequence) -> list[tuple[Any, np.ndarray]]:
        if not views:
            raise ValueError(f"no views for {key!r}")
        self._left[key] = self._n_views[key] = len(views)
        done: list[tuple[Any, np.ndarray]] = []
        for view in views:
            shape = tuple(view.shape)
            bucket = self.buckets.setdefault(shape, [])
            bucket.append((key, view))
            self.n_pending += 1
            if len(bucket) >= self.batch_size:
                done += self._run(shape)
        if self.n_pending > self.max_pending:
            done += self._run(max(self.buckets, key=lambda s: len(self.buckets[s])))
        return done

    def flush(self) -> list[tuple[Any, np.ndarray]]:
        done: list[tuple[Any, np.ndarray]] = []
        for shape in list(self.buckets):
            done += self._run(shape)
        return done

    def _run(self, shape: tuple[int, ...]) -> list[tuple[Any, np.ndarray]]:
        import torch

        items = self.buckets.pop(shape)
        self.n_pending -= len(items)
        t0 = time.perf_counter()
        feats = self.forward(torch.stack([v for _, v in items]))
        self.forward_seconds += time.perf_counter() - t0
        done = []
        for (key, _), vec in zip(items, feats):
            if key in self._sums:
                self._sums[key] += vec
            else:
                self._sums[key] = vec.astype(np.float64)
            self._left[key] -= 1
            if self._left[key] == 0:
                total = self._sums.pop(key)
                del self._left[key]
                done.append((key, (total / self._n_views.pop(key)).astype(np.float32)))
        return done


# ----------------------------------------------------------------------------------------------------------
# Public API


def embed_images(images: Sequence[Image.Image | Path | str], backbone: Backbone, cfg: EmbedConfig | None = None) -> np.ndarray:
    """Features (len(images), dim) for a few photos, e.g. at prediction time; no cache, no threads."""
    import torch

    cfg = cfg or EmbedConfig(backbone=backbone.name)
    check_embed_backbone(backbone, cfg)
    out = np.full((len(images), backbone.dim), np.nan, dtype=np.float32)
    batcher = _Batcher(batch_forward(backbone, cfg), cfg.batch_size)
    with torch_threads(cfg.threads), torch.inference_mode():
        for i, image in enumerate(images):
            try:
                if isinstance(image, Image.Image):
                    img = decode_rgb(image)
                else:
                    img = load_image(Path(image), cfg.mode, cfg.long_side, backbone.native_size)
            except FileNotFoundError:
                raise FileNotFoundError(f"{image}: no such file") from None
            except OSError as exc:
                raise ValueError(f"{image}: cannot read: {exc.strerror or exc}") from exc
            except ImageError as exc:
                raise ValueError(f"{image}: cannot decode image: {exc.reason}: {exc.detail}") from exc
            for key, vec in batcher.add(i, make_views(img, backbone, cfg)):
                out[key] = vec
        for key, vec in batcher.flush():
            out[key] = vec
    return out


def embed_stream(
    todo: Sequence[tuple[Any, Path | str, str | None]], backbone: Backbone, cfg: EmbedConfig,
    pool: ThreadPoolExecutor, batcher: "_Batcher",
) -> Iterator[tuple[Any, np.ndarray | BadImage]]:
    """(key, vector) per (key, path, expected sha256 or None), as batches complete; (key, BadImage) for a photo
    that cannot be used. The one decode-batch-forward loop that embed_manifest and the engine's workers share,
    so both give the same vectors and the same reasons. The caller sets threads and inference mode."""
    decode = _safe(lambda key, path, sha: _decode_views(path, sha, backbone, cfg))
    window = max(2 * cfg.batch_size, 8)
    for (key, _, _), views in zip(todo, _ordered_prefetch(pool, decode, todo, window)):
        if isinstance(views, BadImage):
            yield key, views
            continue
        yield from batcher.add(key, views)
    yield from batcher.flush()


def embed_rows(rows: Sequence[dict], backbone: Backbone, cfg: EmbedConfig, pool: ThreadPoolExecutor) -> list[dict]:
    """One partition of manifest rows (dicts with id, path, sha256 or None) -> the same dicts with `sha256`,
    `embedding` (float32, or None) and `error` (None, or the reason embed_manifest records). What an engine
    worker runs: the hashing and embed_stream of embed_manifest, without its cache and output file."""
    import torch

    out = [dict(r, embedding=None, error=None) for r in rows]
    shas = [r.get("sha256") or None for r in out]
    failures: dict[int, str] = {}
    rows_of = _rows_by_sha(shas, [str(r["path"]) for r in out], pool, failures)
    for r, s in zip(out, shas):
        r["sha256"] = s
    for i, reason in failures.items():
        out[i]["error"] = reason
    todo = [(s, Path(out[rows[0]]["path"]), s) for s, rows in rows_of.items()]
    batcher = _Batcher(batch_forward(backbone, cfg), cfg.batch_size)
    with torch_threads(cfg.threads), torch.inference_mode():
        for s, result in embed_stream(todo, backbone, cfg, pool, batcher):
            for i in rows_of[s]:
                if isinstance(result, BadImage):
                    out[i]["error"] = str(result)
                else:
                    out[i]["embedding"] = result
    return out


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the id order, so a reader can check that row i of the embeddings is its manifest's row i."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def _hash_file(path: str) -> str | BadImage:
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return BadImage(f"file not found: {path}")
    except OSError as exc:
        return BadImage(f"cannot read {path}: {exc}")


def embed_manifest(
    manifest: Path | str | pd.DataFrame,
    out_dir: Path | str,
    cfg: EmbedConfig | None = None,
    backbone: Backbone | None = None,
) -> EmbedSummary:
    """Embed every photo of the manifest into <out_dir>/embeddings.npy (+ .json); bad photos give NaN rows.

    Photos already in the cache are not decoded; newly embedded ones are added to the cache every
    `cfg.shard_size` photos, so a killed run loses at most that much work. One run at a time writes
    an output folder: a second one raises OutputBusy naming the first (see output_lock).
    """
    cfg = cfg or EmbedConfig()
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    df = read_manifest(manifest, FOR_EMBED, unique_ids=False)
    with output_lock(out_dir):
        return _embed_locked(df, out_dir, cfg, backbone, t_start)


def _embed_locked(df: pd.DataFrame, out_dir: Path, cfg: EmbedConfig, backbone: Backbone | None,
                  t_start: float) -> EmbedSummary:
    if backbone is None:
        backbone = create_backbone(cfg.backbone, cfg.device)
    check_embed_backbone(backbone, cfg)
    cfg = precision_that_runs(backbone, cfg)
    key = cache_key(backbone, cfg)
    workers = decode_workers(cfg)
    paths = df["path"].tolist()
    failures: dict[int, str] = {}
    with ThreadPoolExecutor(workers, thread_name_prefix="geopin-decode") as pool:
        rows_of = _rows_by_sha(df["sha256"].tolist(), paths, pool, failures)
        cache = None
        if cfg.use_cache:
            cache = EmbeddingCache(cfg.resolved_cache_dir() / key, backbone.dim, cfg.shard_size, cache_spec(backbone, cfg))
        found = cache.lookup(set(rows_of)) if cache is not None else {}
        todo = [(s, Path(paths[rows[0]])) for s, rows in rows_of.items() if s not in found]
        logger.info(
            "%d photos (%d distinct): %d in the cache, %d to embed with %s (%s mode, %d decode threads)",
            len(df), len(rows_of), len(found), len(todo), backbone.name, cfg.mode, workers,
        )
        with write_embeddings(out_dir, df["id"], embedded_config(backbone, cfg), backbone.dim, cfg) as out:
            for s, vec in found.items():
                out.vectors[rows_of[s]] = vec
            del found
            run = _embed_missing(todo, rows_of, out.vectors, failures, backbone, cfg, pool, cache)
            failure_list = _failure_rows(df, failures, out_dir / EMBEDDINGS_JSON)
            summary = EmbedSummary(
                out_dir=out_dir, embeddings_path=out_dir / EMBEDDINGS_NPY, meta_path=out_dir / EMBEDDINGS_JSON,
                backbone=backbone.name, version=backbone.version, dim=backbone.dim, n=len(df), n_unique=len(rows_of),
                n_cached=len(rows_of) - len(todo), n_embedded=run["n_embedded"], n_failed=len(failure_list),
                failures=failure_list, seconds=time.perf_counter() - t_start, embed_seconds=run["embed_seconds"],
                forward_seconds=run["forward_seconds"], photos_per_s=run["photos_per_s"], cache_key=key,
                cache_dir=str(cfg.resolved_cache_dir() / key) if cache is not None else None,
            )
            out.finish(summary, torch_threads=run["torch_threads"], decode_threads=workers, runtime=run["runtime"])
    logger.info(
        "embedded %d new photos in %.1f s (%.1f photos/s; forward %.1f s), %d from cache, %d failed -> %s",
        summary.n_embedded, summary.embed_seconds, summary.photos_per_s, summary.forward_seconds, summary.n_cached,
        summary.n_failed, summary.embeddings_path,
    )
    return summary


def _rows_by_sha(shas: list[str | None], paths: list[str], pool: ThreadPoolExecutor, failures: dict[int, str]) -> dict[str, list[int]]:
    """Manifest rows per distinct photo; photos without a sha256 are hashed first (unreadable ones go to failures)."""
    missing = [i for i, s in enumerate(shas) if s is None]
    if missing:
        logger.info("hashing %d photos without a sha256 in the manifest", len(missing))
        for i, result in zip(missing, pool.map(_hash_file, [paths[i] for i in missing])):
            if isinstance(result, BadImage):
                failures[i] = str(result)
            else:
                shas[i] = result
    rows_of: dict[str, list[int]] = {}
    for i, s in enumerate(shas):
        if s is not None:
            rows_of.setdefault(s, []).append(i)
    return rows_of


def _embed_missing(todo: list[tuple[str, Path]], rows_of: dict[str, list[int]], out: np.ndarray, failures: dict[int, str],
                   backbone: Backbone, cfg: EmbedConfig, pool: ThreadPoolExecutor, cache: EmbeddingCache | None) -> dict:
    """Embed the photos not in the cache into their rows of `out` (and the cache); the run's figures."""
    import torch

    forward = batch_forward(backbone, cfg)
    if todo:
        logger.info("forward pass of %s on %s", backbone.name, forward.resolve())  # an export is not embedding time
    t_embed = time.perf_counter()
    batcher = _Batcher(forward, cfg.batch_size)
    n_embedded = 0
    with torch_threads(cfg.threads) as n_threads, keep_freed_memory(), torch.inference_mode():
        bar = progress(total=len(todo), desc=f"embed {backbone.name}", unit="photo")
        try:
            for s, result in embed_stream([(s, p, s) for s, p in todo], backbone, cfg, pool, batcher):
                bar.update(1)
                if isinstance(result, BadImage):
                    for i in rows_of[s]:
                        failures[i] = str(result)
                    continue
                out[rows_of[s]] = result
                if cache is not None:
                    cache.add(s, result)
                n_embedded += 1
                if n_embedded % cfg.shard_size == 0:
                    elapsed = time.perf_counter() - t_embed
                    logger.info("embedded %d/%d photos (%.1f photos/s)", n_embedded, len(todo), n_embedded / elapsed)
        finally:
            bar.close()
            if cache is not None:
                cache.flush()
    embed_seconds = time.perf_counter() - t_embed
    return {
        "n_embedded": n_embedded, "embed_seconds": embed_seconds, "forward_seconds": batcher.forward_seconds,
        "photos_per_s": n_embedded / embed_seconds if n_embedded and embed_seconds > 0 else 0.0, "torch_threads": n_threads,
        "runtime": forward.runtime,  # None when every photo came from the cache
    }


def _failure_rows(df: pd.DataFrame, failures: dict[int, str], listed_in: Path) -> list[dict]:
    """One row per failed photo, in manifest order; the first 20 logged."""
    rows = [{"row": i, "id": df.at[i, "id"], "path": df.at[i, "path"], "reason": failures[i]} for i in sorted(failures)]
    for f in rows[:20]:
        logger.warning("row %d (%s): %s", f["row"], f["id"], f["reason"])
    if len(rows) > 20:
        logger.warning("... and %d more failed photos (listed in %s)", len(rows) - 20, listed_in)
    return rows


def batch_forward(backbone: Backbone, cfg: EmbedConfig) -> BatchForward:
    """The forward pass of cfg.runtime at cfg.precision with cfg.threads (chosen, and exported if needed, on the
    first batch)."""
    if cfg.device != "cpu" and cfg.runtime == "auto":
        return BatchForward(backbone, "torch", cfg.threads)  # ONNX Runtime runs on the CPU here
    return BatchForward(backbone, cfg.runtime, cfg.threads, precision=cfg.precision)


def precision_that_runs(backbone: Backbone, cfg: EmbedConfig) -> EmbedConfig:
    """cfg, at f32 when it asks for int8 that cannot run here under runtime "auto" (warned once): decided before
    the cache is opened, so that f32 vectors never go under an int8 key. Exports (or loads) the int8 file."""
    if cfg.precision == "f32":
        return cfg
    forward = batch_forward(backbone, cfg)
    forward.resolve()
    return cfg if forward.precision_used == cfg.precision else dataclasses.replace(cfg, precision=forward.precision_used)


def decode_workers(cfg: EmbedConfig) -> int:
    """Decode threads of a run: cfg.workers, else min(4, cores)."""
    return cfg.workers or max(1, min(4, os.cpu_count() or 1))


def embedded_config(backbone: Backbone, cfg: EmbedConfig) -> BackboneConfig:
    """The backbone's config as this embed config feeds it (its mode, long side and precision)."""
    return backbone.config.for_input(cfg.mode, cfg.long_side, cfg.precision)


def check_embed_backbone(backbone: Backbone, cfg: EmbedConfig) -> None:
    """The backbone given is the one the embed config names (a finetuned:DIR relative to the working folder too)."""
    if absolute_name(cfg.backbone, Path.cwd()) != backbone.name:
        raise ValueError(f"backbone {backbone.name!r} given, but the config names {cfg.backbone!r}")


# ----------------------------------------------------------------------------------------------------------
# The embeddings folder: one writer, one reader


@dataclass
class _EmbeddingsOut:
    """What write_embeddings yields: the rows to fill, and `finish` to call with the run's summary."""

    vectors: np.ndarray
    run: dict | None = None

    def finish(self, summary: EmbedSummary, *, torch_threads: int | None, decode_threads: int,
               engine: dict | None = None, runtime: str | None = None) -> None:
        self.run = {
            "runtime": runtime,  # what ran the forward pass: "onnx", "torch", or None (nothing embedded here)
            "torch_threads": torch_threads,
            "decode_threads": decode_threads,
            "n_cached": summary.n_cached,
            "n_embedded": summary.n_embedded,
            "n_failed": summary.n_failed,
            "failures": summary.failures,
            "seconds": round(summary.seconds, 3),
            "embed_seconds": round(summary.embed_seconds, 3),
            "forward_seconds": None if summary.forward_seconds is None else round(summary.forward_seconds, 3),
            "photos_per_s": round(summary.photos_per_s, 2),
            **({"engine": engine} if engine is not None else {}),
        }


@contextlib.contextmanager
def write_embeddings(out_dir: Path, ids: Iterable[str], config: BackboneConfig, dim: int,
                     cfg: EmbedConfig) -> Iterator[_EmbeddingsOut]:
    """The one writer of an embed output folder; call it holding output_lock(out_dir).

    Yields a NaN-filled (n, dim) float32 array to fill (memory-mapped: millions of rows need not fit in RAM),
    and `finish(summary, ...)` to call before the block ends. Then embeddings.npy is renamed into place and
    embeddings.json written: the backbone config (a finetuned: folder relative to out_dir when it lies inside
    or beside it, so the two can move together), the embed config, the id order's hash and the run's figures.
    An error in the block leaves the folder as it was.
    """
    from numpy.lib.format import open_memmap

    ids = list(ids)
    n = len(ids)
    _remove_stale_temp_files(out_dir, EMBEDDINGS_NPY)
    with atomic_path(out_dir / EMBEDDINGS_NPY) as tmp:
        vectors = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
        vectors[:] = np.nan
        out = _EmbeddingsOut(vectors)
        yield out
        if out.run is None:
            raise RuntimeError("write_embeddings: finish() was not called")
        if n:
            vectors.flush()
        else:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a path
                np.save(fh, vectors)
        out.vectors = vectors = None
    name = relative_name(config.name, out_dir)
    meta = {
        "backbone": name,
        "version": config.version,
        "dim": dim,
        "n": n,
        "ids_sha256": ids_digest(ids),
        "normalised": False,
        "config": {**cfg.to_dict(), "backbone": name},
        "cache_key": cache_key(config, cfg),
        "preprocess": PREPROCESS_VERSION,
        "backbone_config": {**config.to_dict(), "name": name},
        **out.run,
    }
    write_json(meta, out_dir / EMBEDDINGS_JSON)


def load_embeddings(out_dir: Path | str, manifest: Path | str | pd.DataFrame | None = None) -> tuple[np.ndarray, dict]:
    """(embeddings, meta) from an embed output folder; with a manifest, checks the rows are its rows.

    The one reader of embeddings.npy/.json. In meta, backbone names are absolute again (a finetuned: folder
    recorded relative to out_dir is read from there), and `backbone_config`, when the folder records one
    (older ones do not), is checked to be a complete config.
    """
    out_dir = Path(out_dir)
    npy, meta_path = out_dir / EMBEDDINGS_NPY, out_dir / EMBEDDINGS_JSON
    for p in (npy, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file (run `geopin embed` first)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path}: cannot be read: {exc}") from None
    missing = [k for k in ("n", "dim", "ids_sha256") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{meta_path}: missing key(s) {', '.join(missing)}")
    emb = np.load(npy, mmap_mode="r")
    if emb.shape != (meta["n"], meta["dim"]):
        raise ValueError(f"{npy}: shape {emb.shape} does not match {meta_path} (n={meta['n']}, dim={meta['dim']})")
    if manifest is not None:
        df = read_manifest(manifest, FOR_EMBED, unique_ids=False)
        if len(df) != meta["n"] or ids_digest(df["id"]) != meta["ids_sha256"]:
            raise ValueError(f"{out_dir}: embeddings were made from a different manifest (ids or their order differ)")
    if isinstance(meta.get("backbone"), str):
        meta["backbone"] = absolute_name(meta["backbone"], out_dir)
    if isinstance(meta.get("config"), dict) and isinstance(meta["config"].get("backbone"), str):
        meta["config"]["backbone"] = absolute_name(meta["config"]["backbone"], out_dir)
    if meta.get("backbone_config") is not None:
        config = BackboneConfig.from_dict(meta["backbone_config"], f"{meta_path}: backbone_config")
        meta["backbone_config"] = {**config.to_dict(), "name": absolute_name(config.name, out_dir)}
    return emb, meta


def embeddings_backbone_config(meta: dict) -> BackboneConfig | None:
    """The backbone config of embeddings read by load_embeddings; None for folders written before it was recorded."""
    stored = meta.get("backbone_config")
    return None if stored is None else BackboneConfig.from_dict(stored, "backbone_config")


class OutputBusy(RuntimeError):
    """Another run is writing the same output folder."""


@contextlib.contextmanager
def output_lock(out_dir: Path | str) -> Iterator[Path]:
    """Hold `<out_dir>/.lock` (flock, with our pid, host and start time inside) while the block writes out_dir.

    A second run fails at once with OutputBusy naming the holder, instead of deleting the first run's
    temporary output as stale. The kernel drops a flock when its process dies, so the lock of a killed
    run never blocks the next one; its leftover temporary files are removed by whoever holds the lock.
    """
    import fcntl
    import socket
    from datetime import datetime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(f"{out_dir} is being written by {_lock_holder(fd)}; wait or choose another --out") from None
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: nobody to name any more
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _lock_holder(fd: int) -> str:
    """'pid N since T' (with the host when it is another machine's) from a held lock file."""
    import socket

    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        pid, since, host = holder["pid"], holder["since"], holder.get("host")
    except (OSError, ValueError, TypeError, KeyError):
        return "another process (it has not written its pid yet)"
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    return f"pid {pid}{where} since {since}"


def _remove_stale_temp_files(folder: Path, name: str) -> None:
    """Temporary outputs left by a killed run; called only while holding output_lock, so none is another run's."""
    if not folder.exists():
        return
    for tmp in folder.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            logger.debug("removed stale temporary file %s", tmp)


# ----------------------------------------------------------------------------------------------------------
# embed on the engine


# Decode threads of each engine worker unless cfg.workers says: a worker has cpus_per_worker cores (1 by default).
ENGINE_DECODE_WORKERS = 2


def _embed_setup(cfg) -> dict:
    """Per worker, once: the backbone, a decode pool, and glibc keeping freed memory (as embed_manifest does)."""
    keep_freed_memory_for_life()  # the worker embeds until it exits: every partition reuses the same activation memory
    return {"backbone": create_backbone(cfg.backbone, cfg.device), "cfg": cfg,
            "pool": ThreadPoolExecutor(decode_workers(cfg), thread_name_prefix="geopin-decode")}


def _embed_partition(state: dict, items: list[dict]) -> list[dict]:
    return embed_rows(items, state["backbone"], state["cfg"], state["pool"])


def _embed_error_row(item: dict, message: str) -> dict:
    return {**item, "embedding": None, "error": message}


def embed_schema(dim: int) -> pa.Schema:
    return pa.schema([("row", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim)), ("error", pa.string())])


def embed_manifest_engine(manifest, out_dir: Path | str, cfg=None, engine: EngineConfig | None = None):
    """embed_manifest on the engine: `<out>/parts/part-NNNNN.parquet` (row, id, path, sha256, embedding, error),
    then embeddings.npy + embeddings.json in the local path's layout (so `geopin train` reads it unchanged).

    The parts are the resume: a rerun computes only missing or stale partitions. The embedding cache is neither
    read nor written here (it lives on one machine's disk; the parts play its role on the cluster).
    """
    cfg = cfg or EmbedConfig()
    engine = engine or EngineConfig("ray")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    df = read_manifest(manifest, FOR_EMBED, unique_ids=False)
    worker_cfg = dataclasses.replace(cfg, threads=engine.cpus_per_worker, use_cache=False,
                                     workers=cfg.workers or ENGINE_DECODE_WORKERS)
    items = [{"row": i, "id": str(r.id), "path": str(r.path), "sha256": r.sha256}
             for i, r in enumerate(df[["id", "path", "sha256"]].itertuples(index=False))]
    with output_lock(out_dir), ThreadPoolExecutor(1) as ex:
        # the driver needs the backbone only for dim, version and key: load it while the cluster starts
        loading = ex.submit(create_backbone, cfg.backbone, cfg.device)
        owned = start_ray(engine) if engine.name == "ray" else False
        try:
            backbone = loading.result()
            if cfg.precision != "f32":  # decided here, once: a worker must not fall back to f32 under an int8 key
                cfg = precision_that_runs(backbone, cfg)
                worker_cfg = dataclasses.replace(worker_cfg, precision=cfg.precision,
                                                 runtime="onnx" if cfg.precision != "f32" else worker_cfg.runtime)
            report = map_partitions(
                _embed_partition, partition(items, engine.partition_size), out_dir / PARTS_DIR,
                engine, setup=functools.partial(_embed_setup, worker_cfg),
                fingerprint={"kind": "embed", "spec": cache_spec(backbone, cfg)},
                on_error=_embed_error_row, schema=embed_schema(backbone.dim),
            )
        finally:
            if owned:
                ray_shutdown()
        table = read_parts(out_dir / PARTS_DIR, report.n_partitions)
        n = len(df)
        if table.num_rows != n or table.column("row").to_pylist() != list(range(n)):
            raise RuntimeError(f"{out_dir / PARTS_DIR}: the parts hold {table.num_rows} rows, not the manifest's {n} in order")
        errors = table.column("error").to_pylist()
        shas = table.column("sha256").to_pylist()
        with write_embeddings(out_dir, df["id"], embedded_config(backbone, cfg), backbone.dim, cfg) as out:
            for i, vec in enumerate(table.column("embedding").to_pylist()):
                if vec is not None:
                    out.vectors[i] = vec
            failures = _failure_rows(df, {i: e for i, e in enumerate(errors) if e is not None}, out_dir / EMBEDDINGS_JSON)
            n_embedded = len({s for s, e in zip(shas, errors) if e is None})
            summary = EmbedSummary(
                out_dir=out_dir, embeddings_path=out_dir / EMBEDDINGS_NPY, meta_path=out_dir / EMBEDDINGS_JSON,
                backbone=backbone.name, version=backbone.version, dim=backbone.dim, n=n, n_unique=len({s for s in shas if s}),
                n_cached=0, n_embedded=n_embedded, n_failed=len(failures), failures=failures,
                seconds=time.perf_counter() - t_start, embed_seconds=report.seconds, forward_seconds=None,
                photos_per_s=n_embedded / report.seconds if report.seconds > 0 else 0.0, cache_key=cache_key(backbone, cfg),
            )
            out.finish(summary, torch_threads=worker_cfg.threads, decode_threads=worker_cfg.workers,
                       engine={**engine.to_dict(), **report_brief(report)})
    summary.engine_report = report  # type: ignore[attr-defined]  # for callers that count partitions
    return summary
