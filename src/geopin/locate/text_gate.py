"""Which photos are worth reading: a probe on the embedding that predicts "OCR will find a line of text".

Reading a 384 px photo costs about 0.4 s (the text detector runs at 736 px on the short side), ten times the
rest of a prediction, and on the shared photos only 300 of 2,652 gave any line and 94 a clue. The backbone's
embedding already knows a shop front or a street sign from a forest, so a logistic probe on it, fit on the
readings the model was trained with, decides which photos are read: the rest skip OCR and answer in ~30 ms.

The threshold is chosen out of fold (by photographer where the photos have groups), so that `recall` of the
photos with text would still have been read; what that costs in clues is measured, not assumed
(`quality`, and bench/bench_evidence.py's "gated" rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: Fewer photos with text (or without) than this and no gate is fit: every photo is read.
MIN_EACH = 20
#: Inverse L2 strength of the probe: of 0.1, 1 and 10, 0.1 kept the most clue photos per photo read
#: out of fold by photographer on the shared photos.
GATE_C = 0.1


def _unit_rows(emb: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a (photos, dim) matrix, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass
class TextGate:
    """A logistic probe (coef, intercept) on L2-normalised embeddings and the score from which a photo is read."""

    coef: np.ndarray  # (dim,)
    intercept: float
    threshold: float  # read a photo when its score is at least this
    backbone: str = ""  # version of the backbone whose embeddings it was fit on
    quality: dict = field(default_factory=dict)  # out-of-fold: share read, recall of text / clue photos

    def fits(self, emb: np.ndarray) -> bool:
        """Whether these embeddings have the dimension the gate was fit on (another backbone's do not)."""
        return np.ndim(emb) == 2 and np.shape(emb)[1] == len(self.coef)

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """P(the photo has a line of text), per photo (photos,); non-finite rows score 1 (read, to be safe)."""
        x = _unit_rows(emb, "text gate embeddings")
        if x.shape[1] != len(self.coef):
            raise ValueError(f"text gate: embeddings of dim {x.shape[1]}, the gate was fit on dim {len(self.coef)}")
        with np.errstate(invalid="ignore", over="ignore"):
            z = x @ self.coef + self.intercept
            p = 1.0 / (1.0 + np.exp(-z))
        return np.where(np.isfinite(p), p, 1.0)

    def wants(self, emb: np.ndarray) -> np.ndarray:
        """Which photos to read (photos,) bool."""
        return self.scores(emb) >= self.threshold

    def to_dict(self) -> dict:
        short = lambda v: float(f"{v:.7g}")
        return {"kind": "logistic", "backbone": self.backbone, "threshold": short(self.threshold),
                "intercept": short(self.intercept), "coef": [short(v) for v in self.coef], "quality": self.quality}

    @classmethod
    def from_dict(cls, d: dict, where: str = "text gate") -> TextGate:
        """Read back to_dict's output; `where` (e.g. 'model.json: text_gate') names it in errors."""
        if not isinstance(d, dict):
            raise TypeError(f"{where}: expected an object, found {type(d).__name__}")
        missing = [k for k in ("coef", "intercept", "threshold") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if d.get("kind", "logistic") != "logistic":
            raise ValueError(f"{where}: unknown gate kind {d.get('kind')!r} (this geopin reads 'logistic')")
        try:
            coef = np.asarray(d["coef"], dtype=np.float64)
            intercept, threshold = float(d["intercept"]), float(d["threshold"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: coef/intercept/threshold are not numbers: {exc}") from None
        if coef.ndim != 1 or not len(coef) or not np.isfinite(coef).all() or not np.isfinite([intercept, threshold]).all():
            raise ValueError(f"{where}: coef must be a non-empty list of finite numbers, intercept and threshold finite")
        return cls(coef, intercept, threshold, str(d.get("backbone", "")), dict(d.get("quality") or {}))


def out_of_fold_scores(emb: np.ndarray, has_text: np.ndarray, groups: np.ndarray | None, folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Each photo's gate score from a probe fit without its fold (its photographer's photos, given groups)."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    x = _unit_rows(emb, "text gate embeddings")
    y = np.asarray(has_text, dtype=bool)
    if groups is not None and len(np.unique(groups)) >= folds:
        splits = GroupKFold(folds).split(x, y, groups)
    else:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    out = np.zeros(len(y))
    for train, test in splits:
        out[test] = _probe(x[train], y[train]).predict_proba(x[test])[:, 1]
    return out


def _probe(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=GATE_C, max_iter=2000, class_weight="balanced").fit(x, y)


def fit_text_gate(emb: np.ndarray, has_text: np.ndarray, groups: np.ndarray | None = None, *, recall: float = 0.9,
                  has_clue: np.ndarray | None = None, backbone: str = "") -> TextGate | None:
    """The gate that would have read `recall` of the photos with text, out of fold; None (read every photo)
    when there are fewer than MIN_EACH photos with text or without, or `recall` is 1."""
    y = np.asarray(has_text, dtype=bool)
    if len(y) != len(emb):
        raise ValueError(f"text gate: {len(emb)} embeddings but {len(y)} labels")
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"text gate: recall must be in (0, 1], got {recall}")
    n_text = int(y.sum())
    if recall >= 1.0 or min(n_text, len(y) - n_text) < MIN_EACH:
        log.info("no text gate: %d of %d photos have text (needs %d of each), recall %.2f; every photo is read",
                 n_text, len(y), MIN_EACH, recall)
        return None
    finite = np.isfinite(np.asarray(emb, dtype=np.float64)).all(axis=1)
    x, y = np.asarray(emb)[finite], y[finite]
    g = None if groups is None else np.asarray(groups)[finite]
    oof = out_of_fold_scores(x, y, g)
    threshold = float(np.quantile(oof[y], 1.0 - recall, method="lower"))
    read = oof >= threshold
    quality = {"photos": int(len(y)), "with_text": int(y.sum()), "target_recall": recall,
               "read_share": round(float(read.mean()), 4), "text_recall": round(float(read[y].mean()), 4),
               "folds": "photographer" if g is not None else "random"}
    if has_clue is not None:
        clue = np.asarray(has_clue, dtype=bool)[finite]
        if clue.any():
            quality["clue_photos"] = int(clue.sum())
            quality["clue_recall"] = round(float(read[clue].mean()), 4)
    probe = _probe(_unit_rows(x, "text gate embeddings"), y)
    gate = TextGate(probe.coef_[0].copy(), float(probe.intercept_[0]), threshold, backbone, quality)
    log.info("text gate: reads %.0f%% of photos, out of fold %.0f%% of those with text%s", 100 * quality["read_share"],
             100 * quality["text_recall"],
             f", {100 * quality['clue_recall']:.0f}% of those with a clue" if "clue_recall" in quality else "")
    return gate


__all__ = ["TextGate", "fit_text_gate", "out_of_fold_scores", "MIN_EACH"]
