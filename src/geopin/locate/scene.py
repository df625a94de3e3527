"""What kind of scene a photo shows, and when that should widen the answer toward the prior.

Two signals, both cheap:
  * `SceneProbe`: a multinomial logistic probe on the L2-normalised backbone embedding that predicts
    the Places365 scene shares (indoor, natural, urban). Indoors little of the place shows: a kitchen
    or a museum hall looks much the same in Lyon and in Ohio.
  * `image_information`: how much a photo could show at all, from its pixels (nothing learned). A blank
    PNG, a flat colour or a 4x4 image carries no place information; the backbone still maps it to some
    point of its feature space, and the bundled model answered a blank PNG "Europe (63%)" with 29% within
    750 km, and a 4x4 image and a grey JPEG with two other confident-sounding answers.

`widen` then mixes a posterior with the training prior, keep * posterior + (1 - keep) * prior, and
`scene_keep` says how much of each photo's own posterior to keep, and why, in words.

Measured on the 2,652 shared Im2GPS3k photos (bench/bench_scene.py, docs/scene.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: The scene shares the probe predicts, in this order (the Places365 columns of the shared labels).
SCENE_LABELS: tuple[str, ...] = ("indoor", "natural", "urban")

#: A photo is called indoor when the probe gives the indoor share more than this.
INDOOR = 0.5

# ---- image_information's scales; the thresholds are justified by the shared photos (docs/scene.md)
#: Long side (px) the grayscale image is reduced to before its gradients are measured: a box filter that
#: averages sensor noise and JPEG ringing away, and makes the measure the same for any resolution.
CONTENT_SIDE = 64
#: Mean absolute grey-level step between neighbouring pixels at which structure counts 1 - 1/e.
GRADIENT_SCALE = 1.0
#: Geometric-mean side (px) at or below which an image is too small to show a place, and at or above which
#: its size no longer limits what it shows (log-linear between).
SIZE_NONE, SIZE_FULL = 8.0, 128.0
#: Below INFO_EMPTY the photo's own posterior counts for nothing (the answer is the prior's); above
#: INFO_ENOUGH it counts fully; linear between. Every one of the 2,652 shared photos scored >= 0.49.
INFO_EMPTY, INFO_ENOUGH = 0.05, 0.25

EMPTY_REASON = "the photo shows little (a blank or tiny image): the answer is the prior's"
THIN_REASON = "the photo shows little (a nearly blank or tiny image): the answer is widened toward the prior"
INDOOR_REASON = "indoors: little of the place shows, so the answer is widened toward the prior"


# ------------------------------------------------------------------------------------------ the probe


def _normalise(emb: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a (photos, dim) matrix, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} row(s) hold NaN or inf (first: row {int(np.flatnonzero(bad)[0])})")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{what}: {int((norm == 0).sum())} all-zero row(s): no direction to normalise")
    return x / norm


@dataclass
class SceneProbe:
    """Multinomial logistic regression from the L2-normalised embedding to the scene shares.

    Fit on soft targets (each photo's Places365 shares, not a hard label): each photo enters once per
    scene with its share as sample weight, which is exactly the cross-entropy against the shares. Its
    outputs are shares too (non-negative, summing to 1). Out of fold by photographer on the shared photos
    it beat ridge regression at every setting tried (docs/scene.md); C=3 did best among 0.5..100.
    """

    C: float = 3.0  # inverse L2 strength of sklearn's LogisticRegression
    coef: np.ndarray | None = None  # (3, dim)
    intercept: np.ndarray | None = None  # (3,)
    backbone: str = ""  # version of the backbone whose embeddings it was fit on: another's are meaningless to it
    labels: tuple[str, ...] = SCENE_LABELS
    n_train: int = 0
    quality: dict = field(default_factory=dict)  # out-of-fold figures, if measured (R2 per label, AUC indoor)

    def fit(self, emb: np.ndarray, targets: np.ndarray, max_iter: int = 2000) -> SceneProbe:
        from sklearn.linear_model import LogisticRegression

        x = _normalise(emb, "scene probe embeddings")
        y = np.asarray(targets, dtype=np.float64)
        k = len(self.labels)
        if y.shape != (len(x), k):
            raise ValueError(f"scene targets: expected shape ({len(x)}, {k}) for {', '.join(self.labels)}, got {y.shape}")
        if not np.isfinite(y).all() or (y < 0).any():
            raise ValueError("scene targets: every share must be a finite number >= 0")
        sums = y.sum(axis=1)
        if (np.abs(sums - 1) > 1e-3).any():
            worst = int(np.argmax(np.abs(sums - 1)))
            raise ValueError(f"scene targets: each row must sum to 1 (row {worst} sums to {sums[worst]:.4f})")
        if len(x) < 2 * k:
            raise ValueError(f"scene probe: {len(x)} photos are too few to fit {k} scene shares")
        classes = np.tile(np.arange(k), len(x))
        weights = y.ravel()
        keep = weights > 0  # rows of zero weight only slow the solver down
        lr = LogisticRegression(C=self.C, max_iter=max_iter)
        lr.fit(np.repeat(x, k, axis=0)[keep], classes[keep], sample_weight=weights[keep])
        if list(lr.classes_) != list(range(k)):
            raise ValueError(f"scene targets: some scene never has any share ({', '.join(self.labels)})")
        self.coef, self.intercept, self.n_train = lr.coef_.copy(), lr.intercept_.copy(), len(x)
        return self

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """Scene shares (photos, 3) in the order of `labels`; each row sums to 1."""
        if self.coef is None or self.intercept is None:
            raise ValueError("scene probe: not fit (call fit, or from_dict a fitted one)")
        x = _normalise(emb, "scene probe embeddings")
        if x.shape[1] != self.coef.shape[1]:
            raise ValueError(f"scene probe: embeddings of dim {x.shape[1]}, the probe was fit on dim {self.coef.shape[1]}")
        z = x @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def fits(self, emb: np.ndarray) -> bool:
        """Whether these embeddings have the dimension the probe was fit on (another backbone's do not)."""
        return self.coef is not None and np.ndim(emb) == 2 and np.shape(emb)[1] == self.coef.shape[1]

    def indoor(self, emb: np.ndarray) -> np.ndarray:
        """The indoor share of each photo (photos,)."""
        return self.predict(emb)[:, self.labels.index("indoor")]

    def to_dict(self) -> dict:
        """Plain lists (7 significant digits: float32 precision), for model.json."""
        if self.coef is None or self.intercept is None:
            raise ValueError("scene probe: not fit, nothing to save")
        short = lambda v: float(f"{v:.7g}")
        return {
            "kind": "logistic",
            "labels": list(self.labels),
            "C": self.C,
            "backbone": self.backbone,
            "n_train": self.n_train,
            "quality": self.quality,
            "coef": [[short(v) for v in row] for row in self.coef],
            "intercept": [short(v) for v in self.intercept],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "scene probe") -> SceneProbe:
        """Read back to_dict's output; `where` (e.g. 'model.json: scene') names it in errors."""
        if not isinstance(d, dict):
            raise TypeError(f"{where}: expected an object, found {type(d).__name__}")
        missing = [k for k in ("labels", "coef", "intercept") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if d.get("kind", "logistic") != "logistic":
            raise ValueError(f"{where}: unknown probe kind {d.get('kind')!r} (this geopin reads 'logistic')")
        labels = tuple(str(s) for s in d["labels"])
        if "indoor" not in labels:
            raise ValueError(f"{where}: labels {labels} have no 'indoor'")
        try:
            coef = np.asarray(d["coef"], dtype=np.float64)
            intercept = np.asarray(d["intercept"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: coef/intercept are not numbers: {exc}") from None
        if coef.ndim != 2 or coef.shape[0] != len(labels) or intercept.shape != (len(labels),):
            raise ValueError(f"{where}: coef {coef.shape} and intercept {intercept.shape} do not fit {len(labels)} labels")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError(f"{where}: coef/intercept hold NaN or inf")
        return cls(float(d.get("C", 3.0)), coef, intercept, str(d.get("backbone", "")), labels,
                   int(d.get("n_train", 0)), dict(d.get("quality") or {}))


def scene_shares(table) -> np.ndarray:
    """(photos, 3) scene shares from a table's prob_indoor, prob_natural, prob_urban columns (the Places365
    scores of the shared labels.csv), each row rescaled to sum to exactly 1; the targets SceneProbe.fit takes."""
    cols = [f"prob_{s}" for s in SCENE_LABELS]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"scene shares: no column {', '.join(missing)} (expected {', '.join(cols)})")
    y = table[cols].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(y).all(axis=1) | (y < 0).any(axis=1) | (y.sum(axis=1) <= 0)
    if bad.any():
        raise ValueError(f"scene shares: {int(bad.sum())} row(s) are missing, negative or all zero (first: row {int(np.flatnonzero(bad)[0])})")
    return y / y.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ emptiness, from pixels


def image_information(img) -> float:
    """How much a photo could show of a place, 0..1, from its pixels alone (nothing learned).

    information = size x structure:
      size: 0 for an image whose geometric-mean side is <= SIZE_NONE (8 px), 1 from SIZE_FULL (128 px),
            log-linear between: a 4x4 image shows nothing whatever its colours;
      structure: 1 - exp(-g / GRADIENT_SCALE), g the mean absolute grey-level step between neighbouring
            pixels once the image is reduced to CONTENT_SIDE (64 px) on its long side: 0 for a blank or flat
            colour, ~1 for anything with edges. A smooth sky scores about 0.5, real photos 0.96 and more
            at the 1st percentile of the shared set.
    Random noise scores high: it is not empty, only meaningless, which this does not try to judge.
    Pass the decoded image (e.g. geopin.features.embed.load_image's, which never upsamples).
    """
    from PIL import Image

    if not isinstance(img, Image.Image):
        raise TypeError(f"image_information: expected a PIL image, got {type(img).__name__}")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError(f"image_information: image of size {w}x{h} has no pixels")
    side = math.sqrt(w * h)
    size = min(1.0, max(0.0, math.log(side / SIZE_NONE) / math.log(SIZE_FULL / SIZE_NONE)))
    if size == 0.0:
        return 0.0
    grey = img.convert("L")
    scale = CONTENT_SIDE / max(w, h)
    if scale < 1:
        grey = grey.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    a = np.asarray(grey, dtype=np.float64)
    steps = [np.abs(np.diff(a, axis=ax)).ravel() for ax in (0, 1) if a.shape[ax] > 1]
    g = float(np.concatenate(steps).mean()) if steps else 0.0
    structure = 1.0 - math.exp(-g / GRADIENT_SCALE)
    return float(size * structure)


def information_keep(information) -> np.ndarray:
    """Share of a photo's own posterior to keep given its image_information: 0 below INFO_EMPTY, 1 above
    INFO_ENOUGH, linear between."""
    info = np.asarray(information, dtype=np.float64)
    if np.isnan(info).any():
        raise ValueError("information_keep: information is NaN")
    return np.clip((info - INFO_EMPTY) / (INFO_ENOUGH - INFO_EMPTY), 0.0, 1.0)


# ------------------------------------------------------------------------------ widening the posterior


def _keep_vector(keep, b: int) -> np.ndarray:
    k = np.broadcast_to(np.asarray(keep, dtype=np.float64), (b,)) if np.ndim(keep) == 0 else np.asarray(keep, dtype=np.float64)
    if k.shape != (b,):
        raise ValueError(f"keep: expected one value or {b} (one per photo), got shape {k.shape}")
    if np.isnan(k).any() or (k < 0).any() or (k > 1).any():
        raise ValueError("keep: every value must lie in 0..1")
    return k


def widen(cell: np.ndarray, nb: np.ndarray, prior: np.ndarray, keep) -> tuple[np.ndarray, np.ndarray]:
    """keep * posterior + (1 - keep) * prior, per photo.

    cell (B, K): masses on the fine places; nb (B, k): masses on the neighbours' own spots (and named
    spots); prior (K,): the training prior on the places; keep: one value or (B,) in 0..1. The prior has
    no mass on the neighbours' spots, so nb only shrinks. keep=1 returns the posterior unchanged (as new
    float64 arrays), keep=0 the prior exactly; total mass is kept (1 in, 1 out).
    """
    cell = np.asarray(cell)
    nb = np.asarray(nb)
    prior = np.asarray(prior, dtype=np.float64)
    if cell.ndim != 2 or nb.ndim != 2 or cell.shape[0] != nb.shape[0]:
        raise ValueError(f"widen: cell {cell.shape} and nb {nb.shape} must be (photos, places) and (photos, spots)")
    if prior.shape != (cell.shape[1],):
        raise ValueError(f"widen: prior of shape {prior.shape} for {cell.shape[1]} places")
    k = _keep_vector(keep, cell.shape[0])[:, None]
    return k * cell + (1.0 - k) * prior[None, :], k * nb


def fit_keep(post_within: np.ndarray, prior_within: np.ndarray, floor: float = 1e-4,
             grid: Sequence[float] | None = None) -> tuple[float, dict]:
    """The keep that maximises mean log(floor + keep * post + (1 - keep) * prior) over held-out photos.

    post_within / prior_within (n, R): mass the posterior / the prior put within each confidence radius of
    each photo's true location (the objective fit_mixture maximises, so the two fits agree on what "better"
    means). Concave in keep, so a fine grid finds the maximum. Returns keep and the log-likelihoods at
    keep and at 1 (no widening).
    """
    post = np.asarray(post_within, dtype=np.float64)
    prior = np.asarray(prior_within, dtype=np.float64)
    if post.shape != prior.shape:
        raise ValueError(f"fit_keep: posterior masses {post.shape} and prior masses {prior.shape} differ in shape")
    if post.size == 0:
        raise ValueError("fit_keep: no held-out photo to fit on")
    keeps = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=np.float64)
    ll = np.array([np.log(floor + k * post + (1 - k) * prior).mean() for k in keeps])
    # ties (the posterior is the prior, or no photo tells) go to the largest keep: widen only where it helps
    best = np.flatnonzero(ll >= ll.max() - 1e-12)
    j = int(best[np.argmax(keeps[best])])
    ll_one = float(np.log(floor + post).mean())
    return float(keeps[j]), {"keep": float(keeps[j]), "loglik": float(ll[j]), "loglik_keep_1": ll_one, "n": int(post.shape[0])}


def scene_words(keep: float, indoor: float | None = None) -> str:
    """What the answer's words add: that a photo showed too little to keep all of its own posterior, or that it
    was taken indoors (said, not acted on: widening indoor photos did not help on held-out photographers,
    and their confidences were already honest; docs/scene.md)."""
    if keep < 1.0:
        return "; " + (EMPTY_REASON if keep <= 0.0 else THIN_REASON)
    if indoor is not None and indoor > INDOOR:
        return f"; indoors ({indoor:.0%}): little of the place shows, and the confidences above already allow for it"
    return ""


def scene_keep(information, indoor=None, keep_indoor: float = 1.0, indoor_threshold: float = INDOOR) -> tuple[np.ndarray, list[str]]:
    """How much of each photo's own posterior to keep, and why in words ('' where nothing changes).

    information (B,): image_information; indoor (B,) or None: the probe's indoor share; keep_indoor: the
    share kept for an indoor photo (1: indoor photos are not widened). The smaller keep wins.
    """
    info = np.atleast_1d(np.asarray(information, dtype=np.float64))
    keep_info = information_keep(info)
    keep = keep_info.copy()
    is_indoor = np.zeros(len(info), dtype=bool)
    if indoor is not None:
        p = np.atleast_1d(np.asarray(indoor, dtype=np.float64))
        if p.shape != info.shape:
            raise ValueError(f"scene_keep: {len(p)} indoor shares for {len(info)} photos")
        if not 0.0 <= keep_indoor <= 1.0:
            raise ValueError(f"scene_keep: keep_indoor must lie in 0..1, got {keep_indoor}")
        is_indoor = p > indoor_threshold
        keep = np.where(is_indoor, np.minimum(keep, keep_indoor), keep)
    reasons = []
    for k, ki in zip(keep, keep_info):
        if k >= 1.0:
            reasons.append("")
        elif ki <= k:  # the emptiness decided
            reasons.append(EMPTY_REASON if ki == 0.0 else THIN_REASON)
        else:
            reasons.append(INDOOR_REASON)
    return keep, reasons


__all__ = [
    "scene_words",
    "INDOOR",
    "INFO_EMPTY",
    "INFO_ENOUGH",
    "SCENE_LABELS",
    "SceneProbe",
    "fit_keep",
    "image_information",
    "information_keep",
    "scene_keep",
    "scene_shares",
    "widen",
]
