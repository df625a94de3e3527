"""Train/validation splits and folds that keep each photographer on one side.

A photographer's photos share places, cameras and style; with the same person in training and
validation a model can recognise the person instead of the place, and scores look better than they
are for new photographers. Group splits are the honest default. Random splits answer a different
question ("archive completion": locate the rest of a collection whose other photos are labelled).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.dataset.manifest import read_manifest
from geopin.io import read_table, write_parquet

log = logging.getLogger(__name__)

SPLIT_TRAIN = "train"
SPLIT_VAL = "val"


def group_codes(groups) -> np.ndarray:
    """Integer group per photo; groups are numbered in sorted-label order so that the result does not
    depend on the row order, and every photo with a null group becomes a group of its own."""
    series = pd.Series(groups, dtype="object")
    null = series.isna().to_numpy() | (series.astype(str).str.strip() == "").to_numpy()
    labels = series[~null].astype(str)
    uniq = np.sort(labels.unique())
    codes = np.empty(len(series), dtype=np.int64)
    codes[~null] = np.searchsorted(uniq, labels.to_numpy())
    codes[null] = uniq.size + np.arange(int(null.sum()))
    return codes


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")


def group_split(groups, val_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """True for validation photos; whole groups go to one side, validation close to `val_fraction`.

    Groups are visited in a seeded random order and each one joins validation if that brings its photo
    count closer to the target.
    """
    _check_fraction(val_fraction)
    codes = group_codes(groups)
    n = codes.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    sizes = np.bincount(codes)
    target = val_fraction * n
    rng = np.random.default_rng(seed)
    in_val = np.zeros(sizes.size, dtype=bool)
    taken = 0
    for g in rng.permutation(sizes.size):
        if abs(taken + sizes[g] - target) < abs(taken - target):
            in_val[g] = True
            taken += sizes[g]
    if taken == 0 or taken == n:
        log.warning("group_split: %d group(s) cannot be split near %.0f%% validation", sizes.size, 100 * val_fraction)
    return in_val[codes]


def group_kfold(groups, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) per photo, each group in a single fold, fold photo counts balanced greedily.

    Groups are shuffled by seed (so ties break differently per seed) then placed largest first into the
    fold with the fewest photos so far.
    """
    codes = group_codes(groups)
    sizes = np.bincount(codes) if codes.size else np.zeros(0, dtype=np.int64)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if sizes.size < k:
        raise ValueError(f"group_kfold: {sizes.size} group(s) cannot fill {k} folds; use fewer folds")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(sizes.size)
    by_size = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(sizes.size, dtype=np.int64)
    for g in by_size:
        f = int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += sizes[g]
    return fold_of_group[codes]


def random_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """True for validation photos, drawn uniformly ("archive completion": photographers are shared)."""
    _check_fraction(val_fraction)
    n_val = int(round(val_fraction * n))
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return out


def random_kfold(n: int, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold per photo, uniformly at random with sizes differing by at most one ("archive completion")."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if n < k:
        raise ValueError(f"random_kfold: {n} photo(s) cannot fill {k} folds")
    folds = np.empty(n, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return folds


@dataclass(frozen=True)
class SplitConfig:
    """by: "group" (photographer-disjoint) or "random"; k folds, or a single split when val_fraction is set."""

    by: str = "group"
    k: int | None = 5
    val_fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.by not in ("group", "random"):
            raise ValueError(f"split by {self.by!r}: choose 'group' or 'random'")
        if (self.k is None) == (self.val_fraction is None):
            raise ValueError("give either k (folds) or val_fraction (one split), not both or neither")


@dataclass
class SplitSummary:
    out: str
    by: str
    seed: int
    n_photos: int
    n_groups: int
    column: str
    sizes: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def run_split(manifest_path: str | Path, out_path: str | Path, cfg: SplitConfig | None = None) -> SplitSummary:
    """Write a Parquet of (id, fold) or (id, split) for the manifest's photos."""
    cfg = cfg or SplitConfig()
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path, ("id",))
    if cfg.by == "group" and "group" not in manifest.columns:
        raise ValueError(f"{manifest_path}: no 'group' column to split by; use --by random or add photographers")
    n = len(manifest)
    if n == 0:
        raise ValueError(f"{manifest_path}: manifest has no photos")
    groups = manifest["group"] if cfg.by == "group" else None
    out = pd.DataFrame({"id": manifest["id"].astype(str)})
    if cfg.k is not None:
        folds = group_kfold(groups, cfg.k, cfg.seed) if groups is not None else random_kfold(n, cfg.k, cfg.seed)
        out["fold"] = folds.astype(np.int64)
        column = "fold"
        sizes = {str(f): int(c) for f, c in enumerate(np.bincount(folds, minlength=cfg.k))}
    else:
        is_val = (
            group_split(groups, cfg.val_fraction, cfg.seed) if groups is not None
            else random_split(n, cfg.val_fraction, cfg.seed)
        )
        out["split"] = np.where(is_val, SPLIT_VAL, SPLIT_TRAIN)
        column = "split"
        sizes = {SPLIT_TRAIN: int((~is_val).sum()), SPLIT_VAL: int(is_val.sum())}
    write_parquet(out, out_path)
    n_groups = int(np.unique(group_codes(groups)).size) if groups is not None else n
    log.info("%s: %d photos, %d groups, %s sizes %s", out_path, n, n_groups, column, sizes)
    return SplitSummary(str(out_path), cfg.by, cfg.seed, n, n_groups, column, sizes)


def read_split(path: str | Path, value: str = SPLIT_TRAIN) -> list[str]:
    """The ids whose `split` is `value` in a split file written by `geopin split --val-fraction`.

    The one reader of the split format: a missing file, a fold file (no `split` column) or a value no row
    has is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a split: run `geopin split` first)")
    sp = read_table(path)
    missing = [c for c in ("id", "split") if c not in sp.columns]
    if missing:
        raise ValueError(f"{path}: not a split file: missing column(s) {', '.join(missing)} "
                         f"(write one with `geopin split --val-fraction`)")
    ids = sp.loc[sp["split"].astype(str) == value, "id"].astype(str).tolist()
    if not ids:
        values = sorted(sp["split"].astype(str).unique())
        raise ValueError(f"{path}: no row has split {value!r} (it has {', '.join(map(repr, values))})")
    return ids
