"""The visual candidate: where a photo's pixels say it was taken, from the bundled model or the library's own.

A library's references (its photos with GPS) are the best evidence there is for the rest of it: the same
person returns to the same places. Three ways to use them were measured on the shared photos taken as
libraries per photographer (bench/bench_tag_visual.py, numbers in VisualConfig):
  * "bundled":    the bundled model alone (trained on other people's photos);
  * "library":    a model trained with geopin's own train on the references alone (archive completion);
  * "references": the bundled model with the references added to its retrieval gallery, so a photo that
                  looks like one of the library's own is placed there, and its prior and classifier still
                  answer for the rest.
With at least VisualConfig.min_references references the library model answers (it beat the bundled model
by ~1,850 GeoScore there), with fewer the bundled model with the references in its gallery, with none the
bundled model alone. The radius and confidence of each candidate are read off the model's calibrated masses
within 25/200/750/2500 km (fit out of fold at training time; the library model's made conservative for the
few references they were fit on): the smallest radius holding at least `min_mass`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from geopin.countries import country_of, nearest_town
from geopin.library.combine import Candidate
from geopin.library.photos import LibraryPhoto
from geopin.locate.heads import Gallery
from geopin.locate.model import GeoModel, Heads, default_model_dir
from geopin.locate.posterior import CONFIDENCE_KM
from geopin.locate.train import TrainConfig, train_model

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "bundled", "library", "references")


@dataclass(frozen=True)
class VisualConfig:
    """How the visual candidate is made. `strategy` "auto" picks by the number of references (see below)."""

    strategy: str = "auto"
    # "auto": at least this many references -> a model trained on them ("library"), else the bundled model
    # with the references in its gallery ("references"; the bundled model alone when there are none).
    # Measured (bench/bench_tag_visual.py, 43 photographers as libraries, bundled model simulated by author
    # folds): the library model beats the bundled one in GeoScore from 2 references on (2136 vs 919 at 2,
    # 2362 vs 919 at 5, 2770 vs 918 at all ~14), but below 5 its confidence is fit on fewer than one held-out
    # reference per inner fold and stays off after the correction below (stated 36 %, observed 47 % at 2-4
    # references); the gallery path is honest there (ECE 3.6 points) and beats the bundled model alone.
    min_references: int = 5
    # The library model's calibration is fit on its n references out of fold: with few of them it is
    # overconfident (at 5-15 references, mass 75 % within 2500 km, observed 66 %). Each stated mass is the
    # lower end of the Wilson interval of z standard errors for a rate measured on n references; z = 1
    # brought stated and observed together at every size measured (see bench/results/tag_visual.json).
    library_z: float = 1.0
    min_mass: float = 0.5  # the radius stated is the smallest whose calibrated mass reaches this
    model_dir: str | None = None  # None: the bundled model
    train: TrainConfig = field(default_factory=lambda: TrainConfig(scenario="random"))  # the library model's
    batch: int = 512  # photos per posterior (photos x places floats)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"visual strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if not 0.0 < self.min_mass <= 1.0:
            raise ValueError(f"min_mass must be in (0, 1], got {self.min_mass}")
        if self.library_z < 0:
            raise ValueError(f"library_z must be at least 0, got {self.library_z}")
        if self.min_references < 1:
            raise ValueError(f"min_references must be at least 1, got {self.min_references}")


def with_references(model: GeoModel, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> GeoModel:
    """The model with the references added to its retrieval gallery (same mixing and calibration).

    A reference lands in the model's fine place that holds it (its own spot when no place does), as a
    training photo would; the centring vector stays the model's, so similarities keep their scale.
    """
    h = model.heads
    if len(emb) == 0:
        return model
    if not h.gallery.exact:
        raise ValueError("with_references: the model's gallery is an IVF index; references can only join an exact gallery")
    vectors = np.concatenate([h.gallery.vectors(), h.gallery.transform(np.asarray(emb, dtype=np.float32))])
    gallery = Gallery(vectors=vectors, mu=h.gallery.mu, exact_max=len(vectors))
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    _, place = model._fine_cells_of(lat, lon)
    heads = Heads(
        h.cells, h.granularities, h.places, h.classifier, gallery,
        np.concatenate([h.gallery_lat, lat]), np.concatenate([h.gallery_lon, lon]),
        np.concatenate([h.gallery_place, place.astype(h.gallery_place.dtype)]),
        np.concatenate([h.gallery_country.astype(str), country_of(lat, lon).astype(str)]),
        h.k,
    )
    meta = {**model.meta, "references_in_gallery": len(emb)}
    return GeoModel(heads, model.params, model.calibration, meta, model.backbone_config, model.format_version, model.scene,
                    model.text_gate)


def library_model(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, cfg: VisualConfig | None = None) -> GeoModel:
    """A model trained by geopin's train on the references alone (archive completion: random inner folds).

    Its mixing weights and calibration are fit out of fold on the references themselves, so its confidences
    speak for this library. Raises ValueError when the references cannot make a model (too few, one spot).
    """
    cfg = cfg or VisualConfig()
    t0 = time.perf_counter()
    model = train_model(np.asarray(emb, dtype=np.float32), lat, lon, None, replace(cfg.train, scenario="random"))
    log.info("library model trained on %d references in %.1f s: %s", len(lat), time.perf_counter() - t0, model.params)
    return model


@dataclass
class Answers:
    """A model's answers for a batch of photos: the guess, its calibrated masses and what it expects to score."""

    lat: np.ndarray
    lon: np.ndarray
    within: np.ndarray  # (n, R) calibrated probability that the truth is within CONFIDENCE_KM of the guess
    expected_geoscore: np.ndarray


def answer(model: GeoModel, emb: np.ndarray, batch: int = 512) -> Answers:
    """decide_all in batches: the posterior over places is (photos x places) floats."""
    n = len(emb)
    lat, lon, eg = np.empty(n), np.empty(n), np.empty(n)
    within = np.empty((n, len(CONFIDENCE_KM)))
    for s in range(0, n, batch):
        _, _, _, dec, conf, _, _ = model.decide_all(np.asarray(emb[s : s + batch], dtype=np.float32))
        lat[s : s + batch], lon[s : s + batch], eg[s : s + batch], within[s : s + batch] = dec.lat, dec.lon, dec.expected_geoscore, conf
    return Answers(lat, lon, np.clip(within, 0.0, 1.0), eg)


def wilson_lower(p: np.ndarray, n: int, z: float) -> np.ndarray:
    """The lower end of the Wilson score interval (z standard errors) of a rate p measured on n trials."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if z <= 0 or n <= 0:
        return p
    zz = z * z
    low = (p + zz / (2 * n) - z * np.sqrt(p * (1 - p) / n + zz / (4 * n * n))) / (1 + zz / n)
    return np.clip(low, 0.0, p)


def radius_and_confidence(within: np.ndarray, min_mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Per photo, the smallest calibration radius whose mass reaches min_mass (else the largest), and that mass."""
    within = np.atleast_2d(np.asarray(within, dtype=np.float64))
    reach = within >= min_mass
    idx = np.where(reach.any(axis=1), reach.argmax(axis=1), within.shape[1] - 1)
    radii = np.asarray(CONFIDENCE_KM, dtype=np.float64)
    return radii[idx], within[np.arange(len(within)), idx]


def choose(n_references: int, cfg: VisualConfig) -> tuple[str, str]:
    """Which model answers, and why, for a library with this many references."""
    if cfg.strategy != "auto":
        return cfg.strategy, f"strategy {cfg.strategy!r} chosen in the configuration"
    if n_references >= cfg.min_references:
        return "library", f"{n_references} references (at least {cfg.min_references}): a model trained on them"
    if n_references > 0:
        return "references", (f"{n_references} references (fewer than {cfg.min_references} to train on): "
                               "the bundled model with the references in its gallery")
    return "bundled", "no reference: the bundled model alone"


def visual_candidates(
    photos: list[LibraryPhoto],
    embeddings: np.ndarray,
    targets: list[int],
    references: list[int],
    cfg: VisualConfig | None = None,
    model: GeoModel | None = None,
) -> tuple[dict[str, Candidate], dict]:
    """A visual Candidate for each target photo (indices into photos and embedding rows), by photo rel.

    `references` are the indices of the library's reference photos (their lat/lon are the truth the
    library model and the gallery learn from). `model` is the bundled model when already loaded.
    Returns the candidates and a summary: which model answered, on how many references, and why.
    """
    cfg = cfg or VisualConfig()
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(photos):
        raise ValueError(f"embeddings: expected one row per photo ({len(photos)}), got shape {embeddings.shape}")
    for name, idx in (("targets", targets), ("references", references)):
        bad = [i for i in idx if not 0 <= i < len(photos)]
        if bad:
            raise ValueError(f"{name}: indices {bad[:5]} are outside the {len(photos)} photos")
    no_gps = [photos[i].rel for i in references if not photos[i].has_gps]
    if no_gps:
        raise ValueError(f"references without GPS: {', '.join(no_gps[:5])}")
    refs = list(references)
    ref_emb = embeddings[refs].astype(np.float32) if refs else np.zeros((0, embeddings.shape[1]), np.float32)
    ref_lat = np.array([photos[i].lat for i in refs], dtype=np.float64)
    ref_lon = np.array([photos[i].lon for i in refs], dtype=np.float64)
    kind, why = choose(len(refs), cfg)
    summary = {"references": len(refs), "targets": len(targets), "strategy": cfg.strategy,
               "min_references": cfg.min_references, "min_mass": cfg.min_mass}
    if not targets:
        return {}, {**summary, "model": "none", "why": "no photo to place"}
    t0 = time.perf_counter()
    # every path needs the bundled model: the library path falls back to it when its training fails
    bundled = model if model is not None else GeoModel.load(cfg.model_dir or default_model_dir())
    used = bundled
    if kind == "library":
        try:
            used = library_model(ref_emb, ref_lat, ref_lon, cfg)
        except ValueError as exc:  # the references cannot make a model (e.g. all at one spot): say so, use the gallery
            log.warning("no library model from %d references (%s): the bundled model with the references answers", len(refs), exc)
            kind, why = "references", f"{why}; training failed ({exc}), so the bundled model with the references answers"
    if kind == "references":
        used = with_references(bundled, ref_emb, ref_lat, ref_lon)
    tg = list(targets)
    ans = answer(used, embeddings[tg], cfg.batch)
    stated = ans.within
    if kind == "library":  # its calibration saw only the references: the masses it can vouch for on that many
        stated = np.maximum.accumulate(wilson_lower(ans.within, len(refs), cfg.library_z), axis=1)
    radius, conf = radius_and_confidence(stated, cfg.min_mass)
    cc = country_of(ans.lat, ans.lon)
    town = nearest_town(ans.lat, ans.lon)
    out: dict[str, Candidate] = {}
    for j, i in enumerate(tg):
        detail = {
            "model": kind,
            "model_within_km": {str(int(r)): round(float(ans.within[j, r_i]), 4) for r_i, r in enumerate(CONFIDENCE_KM)},
            "within_km": {str(int(r)): round(float(stated[j, r_i]), 4) for r_i, r in enumerate(CONFIDENCE_KM)},
            "expected_geoscore": round(float(ans.expected_geoscore[j]), 1),
            "country": str(cc[j]),
            "near": str(town[j]),
        }
        out[photos[i].rel] = Candidate("visual", float(ans.lat[j]), float(ans.lon[j]), float(radius[j]), float(conf[j]), detail)
    summary.update({"model": kind, "why": why, "seconds": round(time.perf_counter() - t0, 2),
                    "model_trained_on": int(used.meta.get("n_train", 0)) if kind == "library" else None})
    log.info("visual: %d photos placed by the %s model (%s)", len(out), kind, why)
    return out, summary

