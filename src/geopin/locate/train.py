"""Train a geolocation model on cached embeddings.

The heads are cheap to fit, so the posterior's mixing weights, temperatures and calibration are
fit on out-of-fold predictions: the training photos are split into folds of the same kind as the
intended use (by photographer for new photographers, at random for archive completion), the heads
are refit without each fold (geocells included, so no held-out photo shapes a cell), and the fold is
predicted. The final heads are then fit on all training photos.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from geopin.countries import country_of
from geopin.dataset.cells import (
    Granularity,
    build_cells,
    coarse_to_fine,
    default_granularities,
    locate,
)
from geopin.dataset.splits import group_kfold, random_kfold, read_split
from geopin.evidence.base import Clue
from geopin.features.backbones import BackboneConfig
from geopin.geo import haversine_km, pairwise_km
from geopin.locate.heads import (
    ClassifierConfig,
    Gallery,
    iter_rows,
    l2_normalize,
    take_rows,
    train_classifier,
)
from geopin.locate.clues import FoldPosterior, applied, apply_clues, fit_clue_weights
from geopin.locate.model import GeoModel, Heads
from geopin.locate.text_gate import TextGate, fit_text_gate
from geopin.locate.posterior import (
    CONFIDENCE_KM,
    Calibration,
    Decision,
    Evidence,
    FitConfig,
    MixParams,
    Places,
    best_constant,
    decide,
    fit_mixture,
    mixture,
)
from geopin.metrics import geoscore

log = logging.getLogger(__name__)

SCENARIOS = ("group", "random")


@dataclass
class TrainConfig:
    granularities: list[Granularity] | None = None  # None: scaled to the number of training photos
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    k: int = 32  # neighbours retrieved per photo
    scenario: str = "group"  # how the held-out photos that fit the posterior are chosen
    inner_folds: int = 5
    seed: int = 0
    fit: FitConfig = field(default_factory=FitConfig)
    max_fit_photos: int = 20_000  # held-out photos used to fit the posterior: enough, and bounded memory
    # Training photos per inner fold: above it the inner heads are fit on a random subsample. They only
    # serve to fit a handful of mixing weights and temperatures; five refits on a million photos
    # would cost five times the final training. 0: no limit.
    max_fold_photos: int = 50_000
    # Inner folds once the set is at least 4 x max_fold_photos: every fold then refits heads of the same
    # capped size and holds out far more photos than max_fit_photos needs, so more folds only cost time
    # (each is a ninth of a 1 M training; bench_scale.py). 0: always inner_folds.
    scale_inner_folds: int = 2
    # Gallery of k-means representatives: at most this many per finest cell instead of every
    # training photo (0: every photo). Measured on the shared set in bench/bench_scale.py --part gallery.
    gallery_per_cell: int = 0
    prior_guard: bool = True  # fall back to the prior when the posterior clearly loses to it out of fold
    guard_z: float = 0.5  # standard errors by which the posterior must lose to the prior to fall back
    # Share of the training photos with text that the text gate (geopin.locate.text_gate) must still have read,
    # out of fold; 1: no gate, predict reads every photo. 0.9 read 33 % of the shared photos and kept 92 % of
    # the photos with a clue (bench/bench_evidence.py).
    text_gate_recall: float = 0.9
    max_gate_photos: int = 50_000  # photos the gate is fit on at most (a random draw)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, not {self.scenario!r}")
        if not 0.0 < self.text_gate_recall <= 1.0:
            raise ValueError(f"text_gate_recall must be in (0, 1], got {self.text_gate_recall}")


def fit_heads(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, cfg: TrainConfig) -> Heads:
    """Geocells, classifier, gallery and prior from one set of training photos."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    grans = ordered_granularities(cfg.granularities or default_granularities(len(lat)))
    part = build_cells(lat, lon, grans)
    names = [g.name for g in grans]
    tables = [part.table(name) for name in names]
    for name, t in zip(names, tables):
        if len(t) == 0:
            raise ValueError(f"granularity {name!r} has no cell with enough photos: lower its min or add photos")
    fine = tables[-1]
    f_lat, f_lon = fine.lat.to_numpy(), fine.lon.to_numpy()
    ancestors = [locate(f_lat, f_lon, part, name) for name in names[:-1]] + [np.arange(len(fine))]
    for name, anc in zip(names, ancestors):
        if (anc < 0).any():  # build_cells nests by construction; a miss here is a bug, never a silent -1
            raise RuntimeError(f"{int((anc < 0).sum())} finest place(s) have no {name!r} ancestor")
    # The prior counts every photo: one whose fine cell was dropped counts for its nearest place.
    photo_place = part.assignments[f"class_{names[-1]}"].to_numpy()
    nearest = photo_place.copy()
    lost = np.flatnonzero(nearest < 0)
    for s in range(0, len(lost), 4096):  # in chunks: (photos x places) km at a million photos is gigabytes
        part_rows = lost[s : s + 4096]
        nearest[part_rows] = np.argmin(pairwise_km(lat[part_rows], lon[part_rows], f_lat, f_lon), axis=1)
    prior = np.bincount(nearest, minlength=len(fine)).astype(np.float64)
    prior /= prior.sum()
    places = Places(f_lat, f_lon, prior, ancestors, best_constant(lat, lon, seed=cfg.seed))
    clf = train_classifier(emb, lat, lon, [(t.lat.to_numpy(), t.lon.to_numpy()) for t in tables], cfg.classifier)
    cells = pd.concat(tables, ignore_index=True)
    if cfg.gallery_per_cell > 0:
        gallery, rows, g_lat, g_lon = cluster_gallery(emb, lat, lon, photo_place, cfg.gallery_per_cell, cfg.seed)
        return Heads(cells, names, places, clf, gallery, g_lat, g_lon, photo_place[rows], country_of(g_lat, g_lon), cfg.k)
    return Heads(cells, names, places, clf, Gallery(emb), lat, lon, photo_place, country_of(lat, lon), cfg.k)


def cluster_gallery(emb, lat, lon, photo_place: np.ndarray, per_cell: int, seed: int = 0):
    """A gallery of at most `per_cell` k-means representatives per finest cell, instead of every photo.

    Each representative is a centroid of the cell's centred unit vectors, placed at the member
    photo nearest to it (a real spot inside the cell). Photos whose cell was dropped stay as they are.
    Returns (gallery, the member row behind each entry, its lat, its lon).
    """
    import faiss

    from geopin.locate.heads import centring_mean

    mu = centring_mean(emb)
    order = np.argsort(photo_place, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(photo_place[order]) != 0])
    bounds = np.r_[starts, len(order)]
    vecs, rows = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = np.sort(order[a:b])
        v = l2_normalize(l2_normalize(take_rows(emb, members)) - mu)
        if photo_place[members[0]] < 0 or len(members) <= per_cell:
            vecs.append(v)
            rows.append(members)
            continue
        km = faiss.Kmeans(v.shape[1], per_cell, niter=20, seed=seed + int(photo_place[members[0]]), spherical=True)
        km.train(v)
        centroids = l2_normalize(km.centroids)
        nearest = np.argmax(v @ centroids.T, axis=0)  # per centroid, its closest member photo
        vecs.append(centroids)
        rows.append(members[nearest])
    rows_all = np.concatenate(rows)
    gallery = Gallery(vectors=np.concatenate(vecs), mu=mu)
    log.info("gallery: %d representatives for %d photos (at most %d per cell)", len(rows_all), len(lat), per_cell)
    return gallery, rows_all, lat[rows_all], lon[rows_all]


def ordered_granularities(grans) -> list[Granularity]:
    """Coarse to fine, as hierarchical inference reads them; a user's other order is fixed, not trusted."""
    grans = list(grans)
    ordered = [grans[i] for i in coarse_to_fine(grans)]
    if ordered != grans:
        log.warning("granularities reordered coarse to fine by max_photos: %s", ", ".join(g.name for g in ordered))
    return ordered


def inner_folds(n: int, groups, cfg: TrainConfig) -> np.ndarray:
    if cfg.scenario == "group":
        if groups is None:
            raise ValueError("scenario 'group' needs a group (photographer) for every photo; use scenario 'random'")
        n_groups = len(pd.unique(pd.Series(groups)))
        if n_groups >= 2:
            want = _inner_k(n, cfg)
            k = min(want, n_groups)
            if k < want:
                log.warning("only %d photographers: fitting the posterior on %d folds by group", n_groups, k)
            return group_kfold(np.asarray(groups), k=k, seed=cfg.seed)
        log.warning("one photographer only: fitting the posterior on random folds")
    return random_kfold(n, k=min(_inner_k(n, cfg), n), seed=cfg.seed)


def _inner_k(n: int, cfg: TrainConfig) -> int:
    if 0 < cfg.scale_inner_folds < cfg.inner_folds and 0 < cfg.max_fold_photos and n >= 4 * cfg.max_fold_photos:
        log.info("%d photos: %d inner folds instead of %d (scale_inner_folds)", n, cfg.scale_inner_folds, cfg.inner_folds)
        return cfg.scale_inner_folds
    return cfg.inner_folds


@dataclass
class OutOfFold:
    """Held-out evidence from the inner folds, kept for fitting and for reports."""

    places: list[Places]
    evidence: list[Evidence]
    truth: list[tuple[np.ndarray, np.ndarray]]
    rows: list[np.ndarray]
    groups: list[np.ndarray] = field(default_factory=list)  # photographer of each held-out photo, if known
    clues: list[list[list[Clue]]] = field(default_factory=list)  # what evidence sources read off each held-out photo


def out_of_fold(emb, lat, lon, groups, cfg: TrainConfig, clues: Sequence[Sequence[Clue]] | None = None) -> OutOfFold:
    folds = inner_folds(len(lat), groups, cfg)
    oof = OutOfFold([], [], [], [])
    rng = np.random.default_rng(cfg.seed)
    per_fold = max(1, cfg.max_fit_photos // max(1, len(np.unique(folds))))
    for f in np.unique(folds):
        tr, va = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        if len(va) > per_fold:
            va = np.sort(rng.choice(va, per_fold, replace=False))
        if 0 < cfg.max_fold_photos < len(tr):
            log.info("inner fold %s: heads fit on %d of its %d training photos (max_fold_photos)", f, cfg.max_fold_photos, len(tr))
            tr = np.sort(rng.choice(tr, cfg.max_fold_photos, replace=False))
        heads = fit_heads(take_rows(emb, tr), lat[tr], lon[tr], cfg)
        oof.places.append(heads.places)
        oof.evidence.append(heads.evidence(take_rows(emb, va)))
        oof.truth.append((lat[va], lon[va]))
        oof.rows.append(va)
        if groups is not None:
            oof.groups.append(np.asarray(groups)[va])
        if clues is not None:
            oof.clues.append([list(clues[r]) for r in va])
    return oof


def fit_posterior(oof: OutOfFold, cfg: TrainConfig) -> tuple[MixParams, Calibration, dict]:
    params, report = fit_mixture(oof.places, oof.evidence, oof.truth, cfg.fit)
    decisions = _oof_decisions(oof, params)
    if cfg.prior_guard:
        guarded, report["prior_guard"] = guard_against_prior(oof, params, decisions, cfg.guard_z)
        if guarded != params:
            params, decisions = guarded, _oof_decisions(oof, guarded)
    raw, hit = [], []
    for (dec, km) in decisions:
        raw.append(dec.raw_within)
        hit.append(km[:, None] <= np.asarray(CONFIDENCE_KM)[None, :])
    if oof.clues and any(c for fold in oof.clues for c in fold):
        folds = []
        for k, (places, ev, (t_lat, t_lon), fold_clues) in enumerate(zip(oof.places, oof.evidence, oof.truth, oof.clues)):
            cell, nb = mixture(places, ev, params)
            folds.append(FoldPosterior(places, ev, cell, nb, t_lat, t_lon, fold_clues, oof.groups[k] if oof.groups else None))
        weights, spot_floor, report["clue_weights"] = fit_clue_weights(folds, reach_km=params.clue_reach_km)
        params = replace(params, clue_weights=weights, clue_floor=spot_floor)
        decisions = _oof_decisions(oof, params)  # the calibration sees the clues as predict will
    raw, hit = [], []
    for (dec, km) in decisions:
        raw.append(dec.raw_within)
        hit.append(km[:, None] <= np.asarray(CONFIDENCE_KM)[None, :])
    calibration = Calibration.fit(np.concatenate(raw), np.concatenate(hit))
    return params, calibration, report


def _oof_decisions(oof: OutOfFold, params: MixParams) -> list[tuple[Decision, np.ndarray]]:
    """Each inner fold's decisions under `params` (with the held-out photos' clues, if any), with the error in
    km of each best guess."""
    out = []
    for k, (places, ev, (t_lat, t_lon)) in enumerate(zip(oof.places, oof.evidence, oof.truth)):
        cell, nb = mixture(places, ev, params)
        fold_clues = oof.clues[k] if oof.clues and params.clue_weights else None
        ev2, cell, nb, effects = apply_clues(places, ev, cell, nb, fold_clues, params.clue_weights, params.clue_reach_km,
                                             params.clue_floor)
        prior_only = np.array([params.prior_only and not applied(e) for e in effects], dtype=bool)
        dec = decide(places, ev2, cell, nb, prior_only=prior_only)
        out.append((dec, haversine_km(dec.lat, dec.lon, t_lat, t_lon)))
    return out


def prior_params(params: MixParams) -> MixParams:
    """The same model with all weight on the training prior: the photo itself no longer counts."""
    return replace(params, w_prior=1.0, w_clf=0.0, w_knn=0.0)


def guard_against_prior(
    oof: OutOfFold, params: MixParams, decisions: list[tuple[Decision, np.ndarray]], z: float = 0.5
) -> tuple[MixParams, dict]:
    """Keep the promise that the model is not worse than the prior's best constant answer.

    The mixture is fit for log-likelihood of the truth's neighbourhoods, not for the guess's GeoScore;
    on few photos its guesses can score far below the constant answer (300 shared photos: 996 against
    1041 for new photographers). When the held-out guesses lose to the constant by more than `z`
    standard errors (over photographers: one person's photos rise and fall together), the posterior
    becomes the prior and the guess its constant. Only a clear loss counts: on all 2,652 shared photos
    the held-out gain of the full model swings by +-90 between folds while it wins overall, and any
    rule that fell back on a dip, or that shrank the mixture part-way, lost GeoScore out of sample
    (measured over 4 subsets of 300 photos, 2 of 600 and the whole set; z=0.5 did best).
    """
    prior = np.concatenate([
        geoscore(haversine_km(*places.best_constant, t_lat, t_lon)) for places, (t_lat, t_lon) in zip(oof.places, oof.truth)
    ])
    gain = np.concatenate([geoscore(km) for _, km in decisions]) - prior  # `decisions`: _oof_decisions(oof, params)
    groups = np.concatenate(oof.groups) if oof.groups else np.arange(len(gain))
    mean = float(gain.mean())
    per_group = pd.DataFrame({"gain": gain, "group": groups}).groupby("group", sort=False)["gain"].agg(["sum", "count"])
    se = float(np.sqrt(((per_group["sum"] - mean * per_group["count"]) ** 2).sum()) / len(gain))
    applied = mean + z * se < 0
    report = {
        "applied": bool(applied),
        "oof_geoscore_model": round(float(prior.mean()) + mean, 1),
        "oof_geoscore_prior": round(float(prior.mean()), 1),
        "gain": round(mean, 1),
        "se": round(se, 1),
        "z": z,
        "n": int(len(gain)),
        "n_groups": int(len(np.unique(groups))),
    }
    if not applied:
        return params, report
    log.warning(
        "the posterior's guesses lost %.0f GeoScore (se %.0f over %d photographers) to the prior's constant answer "
        "out of fold: the model falls back to the prior",
        -mean, se, report["n_groups"],
    )
    return prior_params(params), report


def train_model(
    emb: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    groups=None,
    cfg: TrainConfig | None = None,
    meta: dict | None = None,
    backbone_config: BackboneConfig | None = None,
    clues: Sequence[Sequence[Clue]] | None = None,
) -> GeoModel:
    """Heads and posterior fit on the embeddings; `backbone_config` (how photos become those embeddings) is
    kept with the model, so that predict prepares new photos the same way. `clues` (per photo, what the
    evidence sources read off it) fit each source's weight out of fold; without them no source counts."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    if not (isinstance(emb, np.ndarray) and emb.dtype == np.float32):  # a float32 memory map is read as it is
        emb = np.asarray(emb, dtype=np.float32)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if len(emb) != len(lat):
        raise ValueError(f"{len(emb)} embeddings but {len(lat)} locations")
    if clues is not None and len(clues) != len(lat):
        raise ValueError(f"clues for {len(clues)} photos but {len(lat)} locations")
    oof = out_of_fold(emb, lat, lon, groups, cfg, clues)
    params, calibration, report = fit_posterior(oof, cfg)
    heads = fit_heads(emb, lat, lon, cfg)
    info = dict(meta or {})
    info.update(
        {
            "n_train": int(len(lat)),
            "n_groups": int(len(pd.unique(pd.Series(groups)))) if groups is not None else None,
            "train_config": config_dict(cfg),
            "fit_report": {k: v for k, v in report.items() if k != "grid"},
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    log.info("trained in %.1fs: %s", time.perf_counter() - t0, params)
    return GeoModel(heads, params, calibration, info, backbone_config)


def manifest_readings(ids: Sequence[str], readings: str | Path) -> list:
    """Each photo's Reading from a readings file (`geopin read`), in manifest order; None where it has none."""
    from geopin.evidence.readings import read_readings, readings_path

    by_id = read_readings(readings)
    missing = sum(i not in by_id for i in ids)
    if missing == len(ids):
        raise ValueError(f"{readings_path(readings)}: no reading for any of the {len(ids)} training photos (read for another manifest?)")
    if missing:
        log.warning("%s: %d of %d training photos have no reading; they count as photos where nothing was read",
                    readings_path(readings), missing, len(ids))
    return [by_id.get(i) for i in ids]


def manifest_clues(ids: Sequence[str], readings: str | Path, found: list | None = None) -> tuple[list[list[Clue]], dict]:
    """Each photo's clues from a readings file (`geopin read`), in manifest order, and what to record of them
    (`found`: manifest_readings' output, when the caller has it already)."""
    from geopin.evidence.readings import readings_meta
    from geopin.evidence.registry import clues_of_readings, create_sources

    found = manifest_readings(ids, readings) if found is None else found
    sources = create_sources()
    clues = clues_of_readings(found, sources)
    fired = {s.name: sum(any(c.source == s.name for c in cl) for cl in clues) for s in sources}
    info = {"sources": [s.name for s in sources], "photos_read": sum(r is not None for r in found),
            "photos_with_clues": sum(bool(c) for c in clues), "fired": fired, "ocr": readings_meta(readings)}
    log.info("evidence: %d of %d training photos gave clues (%s)", info["photos_with_clues"], len(ids), fired)
    return clues, info


def text_gate_of(emb: np.ndarray, found: list, clues: Sequence[Sequence[Clue]], groups, cfg: TrainConfig,
                 backbone: str = "") -> TextGate | None:
    """The gate deciding which photos predict reads, fit on these photos' readings (a photo with a line of text
    is a positive); on at most cfg.max_gate_photos of them, drawn at random, so a million photos stay cheap."""
    has_text = np.array([r is not None and len(r.lines) > 0 for r in found])
    has_clue = np.array([bool(c) for c in clues])
    rows = np.arange(len(has_text))
    if cfg.max_gate_photos and len(rows) > cfg.max_gate_photos:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_gate_photos, replace=False))
    return fit_text_gate(np.asarray(emb[rows], dtype=np.float32), has_text[rows], None if groups is None else np.asarray(groups)[rows],
                         recall=cfg.text_gate_recall, has_clue=has_clue[rows], backbone=backbone)


def config_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    if cfg.granularities is None:
        d["granularities"] = None
    return d


def train(
    manifest: str | Path,
    embeddings_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    split: str | Path | None = None,
    split_value: str = "train",
    readings: str | Path | None = None,
) -> GeoModel:
    """Train from files: the manifest, its embeddings (row-aligned) and optionally a split file.

    The model keeps the embeddings' backbone config (older embeddings folders have none: predict then says
    which backbone it assumes).
    """
    from geopin.dataset.manifest import read_manifest
    from geopin.features.embed import embeddings_backbone_config, load_embeddings

    cfg = cfg or TrainConfig()
    man = read_manifest(manifest)
    emb, emb_meta = load_embeddings(embeddings_dir, man)
    keep = np.ones(len(emb), dtype=bool)
    for s, rows in iter_rows(emb):  # in chunks: a million embeddings are read, never held, here
        keep[s : s + len(rows)] = np.isfinite(rows).all(axis=1)
    if split is not None:
        keep &= man["id"].isin(set(read_split(split, split_value))).to_numpy()
    if (~keep).any():
        log.warning("training on %d of %d photos (%d without embedding or outside the split)", keep.sum(), len(man), (~keep).sum())
    m = man[keep].reset_index(drop=True)
    groups = m["group"].to_numpy() if "group" in m.columns and m["group"].notna().all() else None
    if cfg.scenario == "group" and groups is None:
        log.warning("not every photo has a group: fitting the posterior on random folds (archive completion)")
        cfg = replace(cfg, scenario="random")
    if not keep.all():  # the rows kept, copied in float32 (chunk by chunk)
        emb = take_rows(emb, np.flatnonzero(keep))
    meta = {"backbone": emb_meta.get("backbone"), "embedding": {k: v for k, v in emb_meta.items() if k != "backbone_config"},
            "manifest": Path(manifest).name}
    clues = found = None
    if readings is not None:
        found = manifest_readings(m["id"].astype(str).tolist(), readings)
        clues, meta["evidence"] = manifest_clues(m["id"].astype(str).tolist(), readings, found)
    model = train_model(
        emb,
        m["lat"].to_numpy(),
        m["lon"].to_numpy(),
        groups,
        cfg,
        meta=meta,
        backbone_config=embeddings_backbone_config(emb_meta),
        clues=clues,
    )
    if found is not None:  # which photos predict will read: the training photos' own readings say
        model.text_gate = text_gate_of(emb, found, clues, groups, cfg, str(emb_meta.get("version") or ""))
    model.save(out_dir)
    return model
