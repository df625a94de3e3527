"""The learned parts: a multi-granularity geocell classifier and a retrieval gallery.

Both work on cached embeddings, so training takes seconds on a CPU and can be repeated inside
cross-validation to fit the posterior's mixing weights on held-out photos.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from geopin.embed import torch_threads
from geopin.geo import pairwise_km

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


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


def smoothed_targets(lat, lon, rep_lat, rep_lon, tau_km: float) -> np.ndarray:
    """Soft labels exp(-(d_c - d_min)/tau): a near miss costs less than a wrong continent (PIGEON)."""
    d = pairwise_km(lat, lon, rep_lat, rep_lon)
    d = d - d.min(axis=1, keepdims=True)
    t = np.exp(-d / tau_km)
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


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
    cfg: ClassifierConfig = ClassifierConfig(),
) -> CellClassifier:
    """Train all granularities jointly on smoothed labels; returns the model in eval mode."""
    with torch_threads(1):  # small matrices: threads cost more in sync than they gain
        return _train_classifier(emb, lat, lon, reps, cfg)


def _train_classifier(emb, lat, lon, reps, cfg: ClassifierConfig) -> CellClassifier:
    x = torch.from_numpy(l2_normalize(emb))
    targets = [torch.from_numpy(smoothed_targets(lat, lon, rl, rn, cfg.label_tau_km)) for rl, rn in reps]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = CellClassifier(x.shape[1], [len(r[0]) for r in reps], cfg.hidden, cfg.dropout)
    model.mu.copy_(x.mean(0))
    model.sd.copy_(x.std(0, correction=0).clamp_min(1e-6))  # population sd: defined for one photo too
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    steps = cfg.epochs * max(1, -(-n // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            outs = model(x[idx])
            loss = sum(
                -(t[idx] * torch.log_softmax(o, dim=1)).sum(1).mean() for o, t in zip(outs, targets)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


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
    a million photos in milliseconds (bench/bench_gallery.py measures speed and recall against exact).
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


def _centred_unit(emb: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors minus their mean, renormalised; in chunks, so a million photos fit in memory."""
    n = len(emb)
    mu = np.zeros(emb.shape[1], dtype=np.float64)
    for s in range(0, n, chunk):
        mu += l2_normalize(emb[s : s + chunk]).sum(0)
    mu = (mu / max(n, 1)).astype(np.float32)
    out = np.empty((n, emb.shape[1]), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s : s + chunk] = l2_normalize(l2_normalize(emb[s : s + chunk]) - mu)
    return out, mu


def build_index(vectors: np.ndarray, exact_max: int = 200_000, nprobe: int = 32, seed: int = 0):
    """Exact inner-product index for small galleries, IVF above `exact_max` vectors."""
    import faiss

    n, dim = vectors.shape
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    nlist = int(4 * np.sqrt(n))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    log.info("training an IVF index with %d lists on %d of %d vectors", nlist, len(sample), n)
    index.train(sample)
    index.add(vectors)
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
