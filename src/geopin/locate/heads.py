"""The learned parts: a multi-granularity geocell classifier and a retrieval gallery.

Both work on cached embeddings, so training takes seconds on a CPU and can be repeated inside
cross-validation to fit the posterior's mixing weights on held-out photos.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from geopin.geo import EARTH_RADIUS_KM, pairwise_km, to_xyz
from geopin.log import progress
from geopin.runtime import torch_threads

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def iter_rows(emb: np.ndarray, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 rows) in order; a memory-mapped file's pages are let go after each chunk.

    A million 1280-d embeddings are 5.1 GB: read through a mapping, every page read stays counted in
    the process's resident memory until the kernel needs it back, which is what a memory limit sees.
    """
    release = _release_pages(emb)
    for s in range(0, len(emb), chunk):
        yield s, np.array(emb[s : s + chunk], dtype=np.float32)
        release()


def _release_pages(emb) -> "callable":
    """A function dropping the resident pages of a read-only memory map (a no-op for arrays in memory)."""
    mm = getattr(emb, "_mmap", None)
    if not isinstance(emb, np.memmap) or mm is None or getattr(emb, "mode", "r") != "r" or not hasattr(mm, "madvise"):
        return lambda: None

    def release() -> None:
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError) as exc:  # advice only: never worth failing a training for
            log.debug("madvise(MADV_DONTNEED) failed: %s", exc)

    return release


def take_rows(emb: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """emb[rows] as float32, gathered chunk by chunk so a memory-mapped file never sits whole in memory.

    Small chunks: each scattered row read maps the pages around it too (the kernel's fault-around),
    so 50,000 rows drawn from a million mapped 3 GB at once before their pages were let go.
    """
    rows = np.asarray(rows)
    out = np.empty((len(rows), emb.shape[1]), dtype=np.float32)
    release = _release_pages(emb)
    for s in range(0, len(rows), chunk):
        out[s : s + chunk] = emb[rows[s : s + chunk]]
        release()
    return out


@dataclass
class ClassifierConfig:
    """Defaults measured on the shared set (see bench/bench_accuracy.py)."""

    hidden: int = 512  # 0: one linear layer per granularity on the embedding
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    dropout: float = 0.2
    label_tau_km: float = 75.0  # PIGEON's haversine label smoothing
    seed: int = 0
    # Photos seen in all (epochs * photos): above it the epochs shrink (at least one). 40 epochs of
    # 2,652 photos are few steps; 40 of a million would take most of a day on a CPU (bench_scale.py).
    max_samples: int = 1_000_000


def effective_epochs(n: int, cfg: ClassifierConfig) -> int:
    """cfg.epochs, lowered so that epochs * n stays within cfg.max_samples (never below one epoch)."""
    if cfg.max_samples <= 0 or n * cfg.epochs <= cfg.max_samples:
        return cfg.epochs
    return max(1, cfg.max_samples // max(n, 1))


# Above these sizes the classifier keeps the inputs as float16 and makes its soft labels batch by batch.
_DENSE_INPUT_BYTES = 1 << 30
_DENSE_TARGET_BYTES = 256 << 20
_THREADED_CLASSES = 4000


def smoothed_targets(lat, lon, rep_lat, rep_lon, tau_km: float) -> np.ndarray:
    """Soft labels exp(-(d_c - d_min)/tau): a near miss costs less than a wrong continent (PIGEON)."""
    d = pairwise_km(lat, lon, rep_lat, rep_lon)
    d = d - d.min(axis=1, keepdims=True)
    t = np.exp(-d / tau_km)
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


def soft_labels(xyz: torch.Tensor, rep_xyz: torch.Tensor, tau_km: float) -> torch.Tensor:
    """smoothed_targets for one batch from unit vectors (float64): one product instead of per-pair trigonometry.

    The chord |a-b| from the dot product gives the great-circle distance 2R asin(|a-b|/2); in float64
    it agrees with pairwise_km to well under a metre, far below the 75 km smoothing. 20x faster than
    smoothed_targets on a batch of 256 against 5,000 cells, which at a million photos was most of a step.
    """
    chord = torch.sqrt(torch.clamp(2.0 - 2.0 * (xyz @ rep_xyz.T), min=0.0))
    d = (2.0 * EARTH_RADIUS_KM) * torch.asin(torch.clamp(chord / 2.0, max=1.0))
    d = d - d.min(dim=1, keepdim=True).values
    t = torch.exp(-d / tau_km)
    return (t / t.sum(dim=1, keepdim=True)).float()


class CellClassifier(nn.Module):
    """A shared (optional) hidden layer and one linear head per granularity."""

    def __init__(self, dim: int, n_classes: list[int], hidden: int = 0, dropout: float = 0.2):
        super().__init__()
        self.dim, self.n_classes, self.hidden, self.dropout = dim, list(n_classes), hidden, dropout  # saved to rebuild it
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        if hidden > 0:
            self.trunk = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU())
            width = hidden
        else:
            self.trunk = nn.Dropout(dropout)
            width = dim
        self.heads = nn.ModuleList(nn.Linear(width, k) for k in n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk((x - self.mu) / self.sd)
        return [head(z) for head in self.heads]


def train_classifier(
    emb: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    reps: list[tuple[np.ndarray, np.ndarray]],
    cfg: ClassifierConfig | None = None,
) -> CellClassifier:
    """Train all granularities jointly on smoothed labels; returns the model in eval mode."""
    cfg = cfg or ClassifierConfig()
    # Small heads (the shared set's few hundred cells): one thread, as threads cost more in sync than
    # they gain and results stay the same on every machine. Thousands of cells (a million photos): all
    # cores, 217 -> 144 ms a step on 2 cores with 12,686 cells (measured, bench_scale.py).
    threads = None if sum(len(r[0]) for r in reps) >= _THREADED_CLASSES else 1
    with torch_threads(threads):
        return _train_classifier(emb, lat, lon, reps, cfg)


def _train_classifier(emb, lat, lon, reps, cfg: ClassifierConfig) -> CellClassifier:
    n, dim = emb.shape
    n_classes = [len(r[0]) for r in reps]
    if n * dim * 4 <= _DENSE_INPUT_BYTES:
        unit = np.empty((n, dim), dtype=np.float32)
        for s, rows in iter_rows(emb):  # row by row the same as l2_normalize(emb), without a mapped file's pages
            unit[s : s + len(rows)] = l2_normalize(rows)
        x = torch.from_numpy(unit)
        mu, sd = x.mean(0), x.std(0, correction=0)
    else:  # a million photos: unit vectors in float16 (2.6 GB, not 5.1), moments in float64, by chunks
        x, mu, sd = _unit_half(emb)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if n * sum(n_classes) * 4 <= _DENSE_TARGET_BYTES:
        full = [torch.from_numpy(smoothed_targets(lat, lon, rl, rn, cfg.label_tau_km)) for rl, rn in reps]

        def targets(idx: torch.Tensor) -> list[torch.Tensor]:
            return [t[idx] for t in full]
    else:  # (photos x cells) would not fit: the same labels, made for each batch by a matrix product
        xyz = torch.from_numpy(to_xyz(lat, lon).reshape(-1, 3))
        rep_xyz = [torch.from_numpy(to_xyz(rl, rn).reshape(-1, 3)) for rl, rn in reps]

        def targets(idx: torch.Tensor) -> list[torch.Tensor]:
            return [soft_labels(xyz[idx], r, cfg.label_tau_km) for r in rep_xyz]

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = CellClassifier(dim, n_classes, cfg.hidden, cfg.dropout)
    model.mu.copy_(mu)
    model.sd.copy_(sd.clamp_min(1e-6))  # population sd: defined for one photo too
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = effective_epochs(n, cfg)
    if epochs < cfg.epochs:
        log.info("classifier: %d epoch(s) instead of %d on %d photos (max_samples %d)", epochs, cfg.epochs, n, cfg.max_samples)
    steps = epochs * max(1, -(-n // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    model.train()
    bar = progress(total=steps, desc="classifier", unit="step", disable=None if steps >= 2000 else True)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            outs = model(x[idx].float())
            loss = sum(-(t * torch.log_softmax(o, dim=1)).sum(1).mean() for o, t in zip(outs, targets(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.eval()
    return model


def _unit_half(emb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit rows as a float16 tensor, with their float32 mean and population sd, read chunk by chunk."""
    n, dim = emb.shape
    out = np.empty((n, dim), dtype=np.float16)
    s1 = np.zeros(dim, dtype=np.float64)
    s2 = np.zeros(dim, dtype=np.float64)
    for s, rows in iter_rows(emb):
        u = l2_normalize(rows)
        s1 += u.sum(0, dtype=np.float64)
        s2 += np.square(u, dtype=np.float64).sum(0)
        out[s : s + len(u)] = u
    mean = s1 / max(n, 1)
    var = np.maximum(s2 / max(n, 1) - mean**2, 0.0)
    return torch.from_numpy(out), torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(np.sqrt(var).astype(np.float32))


@torch.inference_mode()
def classifier_logits(model: CellClassifier, emb: np.ndarray, batch: int = 4096) -> list[np.ndarray]:
    x = torch.from_numpy(l2_normalize(emb))
    chunks = [model(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    return [torch.cat([c[level] for c in chunks]).numpy() for level in range(len(model.heads))]


class Gallery:
    """Nearest neighbours by cosine similarity after centring, backed by FAISS.

    Centring (subtracting the training photos' mean direction) removes what all photos share, so
    similarity reflects what sets a view apart: on the shared set it lifted 1-NN GeoScore from 815
    to 856 across photographers. Up to `exact_max` photos the search is exact; above it an inverted
    file (IVF) index visits only the `nprobe` nearest of ~4*sqrt(n) clusters, which keeps a query on
    a million photos in milliseconds (bench/bench_gallery.py measures speed and recall against exact),
    and stores 8-bit vectors, built from the embeddings chunk by chunk (bench/bench_scale.py).
    """

    def __init__(
        self,
        emb: np.ndarray | None = None,
        *,
        vectors: np.ndarray | None = None,
        mu: np.ndarray | None = None,
        index=None,
        exact_max: int = 200_000,
        nprobe: int = 32,
        seed: int = 0,
    ):
        if index is not None:  # a saved index, read back as it was: no k-means again at load
            if mu is None:
                raise ValueError("Gallery(index=...) needs the centring vector mu saved with it")
            self.mu = np.asarray(mu, dtype=np.float32)
            self.index = index
            return
        if vectors is None and len(emb) > exact_max:  # never the whole float32 matrix in memory at once
            self.mu = centring_mean(emb)
            self.index = _ivf_index(_Centred(emb, self.mu), emb.shape[1], nprobe, seed)
            return
        if vectors is None:
            vectors, mu = _centred_unit(emb)
        self.mu = np.asarray(mu, dtype=np.float32)
        self.index = build_index(np.ascontiguousarray(vectors, dtype=np.float32), exact_max, nprobe, seed)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def exact(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexFlat)

    @property
    def kind(self) -> str:
        """'flat' (exact; saved as float16 vectors, rebuilt by a copy) or 'ivf' (saved as the FAISS index)."""
        return "flat" if self.exact else "ivf"

    def transform(self, emb: np.ndarray) -> np.ndarray:
        return l2_normalize(l2_normalize(emb) - self.mu)

    def vectors(self) -> np.ndarray:
        if not self.exact:
            self.index.make_direct_map()
        return self.index.reconstruct_n(0, len(self))

    def search(self, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        sims, idx = self.index.search(self.transform(emb), k)
        return sims, idx


def centring_mean(emb: np.ndarray) -> np.ndarray:
    """The mean of the unit embeddings (float32), summed in float64 chunk by chunk."""
    total = np.zeros(emb.shape[1], dtype=np.float64)
    for _, rows in iter_rows(emb):
        total += l2_normalize(rows).sum(0, dtype=np.float64)
    return (total / max(len(emb), 1)).astype(np.float32)


def _centred_unit(emb: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors minus their mean, renormalised; in chunks (for galleries up to exact_max)."""
    mu = centring_mean(emb)
    out = np.empty((len(emb), emb.shape[1]), dtype=np.float32)
    for s, rows in iter_rows(emb, chunk):
        out[s : s + len(rows)] = l2_normalize(l2_normalize(rows) - mu)
    return out, mu


class _Centred:
    """Rows of an embedding matrix as the gallery's centred unit vectors, made on demand, chunk by chunk."""

    def __init__(self, emb: np.ndarray, mu: np.ndarray | None):
        self.emb, self.mu = emb, mu

    def __len__(self) -> int:
        return len(self.emb)

    def _map(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)
        return rows if self.mu is None else l2_normalize(l2_normalize(rows) - self.mu)

    def take(self, idx: np.ndarray, chunk: int = 16384) -> np.ndarray:
        idx = np.sort(idx)
        out = np.empty((len(idx), self.emb.shape[1]), dtype=np.float32)
        for s in range(0, len(idx), chunk):  # mapped chunk by chunk: one float32 copy of the sample, not four
            out[s : s + chunk] = self._map(take_rows(self.emb, idx[s : s + chunk]))
        return out

    def chunks(self) -> Iterator[np.ndarray]:
        for _, rows in iter_rows(self.emb):
            yield np.ascontiguousarray(self._map(rows))


def build_index(vectors: np.ndarray, exact_max: int = 200_000, nprobe: int = 32, seed: int = 0):
    """Exact inner-product index for small galleries, IVF above `exact_max` vectors."""
    import faiss

    n, dim = vectors.shape
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    return _ivf_index(_Centred(vectors, None), dim, nprobe, seed)


def _ivf_index(rows: _Centred, dim: int, nprobe: int, seed: int):
    """An inverted file over ~4*sqrt(n) lists with 8-bit scalar-quantised vectors, filled chunk by chunk.

    8 bits per dimension keep a million 1280-d photos in 1.3 GB where IVFFlat held 5.1 GB (and
    the same again on disk and at load); bench/bench_scale.py measures the recall against exact.
    """
    import faiss

    n = len(rows)
    nlist = int(4 * np.sqrt(n))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = rows.take(rng.choice(n, size=min(n, 64 * nlist), replace=False))
    log.info("training an IVF-SQ8 index with %d lists on %d of %d vectors", nlist, len(sample), n)
    index.train(sample)
    del sample
    for chunk in rows.chunks():
        index.add(chunk)
    index.nprobe = nprobe
    return index


def write_index(index, path: str | os.PathLike) -> None:
    """Save a FAISS index, so loading a large gallery reads it instead of training k-means again.

    FAISS reports a failed write as RuntimeError; it is raised as OSError (with errno where the
    message shows one, e.g. a full disk), like any other failed file write.
    """
    import faiss

    try:
        faiss.write_index(index, os.fspath(path))
    except RuntimeError as exc:
        text = str(exc)
        code = next((e for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT) if os.strerror(e) in text), None)
        if code is not None:
            raise OSError(code, os.strerror(code), os.fspath(path)) from exc
        raise OSError(f"{path}: FAISS could not write the index: {text.strip().splitlines()[-1]}") from exc


def read_index(path: str | os.PathLike):
    """Read an index written by `write_index`; a damaged file is a ValueError naming it."""
    import faiss

    try:
        return faiss.read_index(os.fspath(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable FAISS index: {str(exc).strip().splitlines()[-1]}") from exc
