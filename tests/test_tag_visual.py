"""The visual candidate of `geopin tag`: the bundled model's calibrated masses, and the library's own model
once the library has enough references. Real bundled model, real generated photos, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from synthetic import SyntheticConfig, synthetic_photo, synthetic_positions

from geopin.geo import haversine_km
from geopin.library.photos import LibraryPhoto
from geopin.library.visual import (
    VisualConfig,
    choose,
    radius_and_confidence,
    visual_candidates,
    wilson_lower,
    with_references,
)
from geopin.locate.posterior import CONFIDENCE_KM, best_constant
from geopin.metrics import geoscore


@pytest.fixture(scope="module")
def library(tmp_path_factory, predictor):
    """A generated library of 96 photos around a few cities (colour follows latitude, texture longitude),
    embedded by the bundled model's backbone: (photos with GPS, L2-normalised embeddings)."""
    from geopin.features.embed import embed_images

    folder = tmp_path_factory.mktemp("library")
    table = synthetic_positions(SyntheticConfig(n=96, n_authors=3, seed=7))
    paths = []
    for i, row in enumerate(table.itertuples()):
        path = folder / row.name
        path.write_bytes(synthetic_photo(row.lat, row.lon, (160, 120), seed=7000 + i))
        paths.append(path)
    emb = embed_images(paths, predictor.backbone, predictor.embed_cfg)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    photos = [LibraryPhoto(path=str(p), rel=p.name, sha256="", camera="", lat=float(la), lon=float(lo), gps_from="exif")
              for p, la, lo in zip(paths, table.lat, table.lon)]
    return photos, emb.astype(np.float32)


def hide(photos: list[LibraryPhoto], targets: list[int]) -> list[LibraryPhoto]:
    """The library as the scanner sees it when the targets have no GPS."""
    out = list(photos)
    for i in targets:
        p = photos[i]
        out[i] = LibraryPhoto(path=p.path, rel=p.rel, sha256=p.sha256, camera=p.camera)
    return out


def test_without_references_the_bundled_model_answers_with_its_calibrated_mass(library, predictor):
    photos, emb = library
    targets = list(range(0, 96, 4))
    cfg = VisualConfig()
    cands, summary = visual_candidates(hide(photos, targets), emb, targets, [], cfg, model=predictor.model)
    assert summary["model"] == "bundled" and summary["references"] == 0 and summary["targets"] == len(targets)
    assert sorted(cands) == sorted(photos[i].rel for i in targets)
    _, _, _, dec, conf = predictor.model.decide(emb[targets])
    for j, i in enumerate(targets):
        c = cands[photos[i].rel]
        assert c.source == "visual"
        assert (c.lat, c.lon) == pytest.approx((dec.lat[j], dec.lon[j]))
        assert c.radius_km in CONFIDENCE_KM and 0.0 <= c.confidence <= 1.0
        r_i = CONFIDENCE_KM.index(c.radius_km)
        assert c.confidence == pytest.approx(conf[j, r_i])  # the model's calibrated mass at the stated radius
        smaller = conf[j, :r_i]
        assert (smaller < cfg.min_mass).all()  # the smallest radius that holds min_mass
        assert c.confidence >= cfg.min_mass or c.radius_km == CONFIDENCE_KM[-1]
        assert c.detail["within_km"] == {str(int(r)): pytest.approx(conf[j, k], abs=1e-4) for k, r in enumerate(CONFIDENCE_KM)}


def test_below_the_threshold_the_bundled_model_answers_with_the_references_in_its_gallery(library, predictor):
    photos, emb = library
    cfg = VisualConfig()
    refs = list(range(cfg.min_references - 1))
    targets = list(range(cfg.min_references - 1, 96))
    cands, summary = visual_candidates(hide(photos, targets), emb, targets, refs, cfg, model=predictor.model)
    assert summary["model"] == "references" and summary["references"] == len(refs)
    assert str(cfg.min_references) in summary["why"]
    # the answer is the bundled model's, with the references found by retrieval
    model = with_references(predictor.model, emb[refs], [photos[i].lat for i in refs], [photos[i].lon for i in refs])
    assert len(model.heads.gallery) == len(predictor.model.heads.gallery) + len(refs)
    _, _, _, dec, conf = model.decide(emb[targets])
    for j, i in enumerate(targets):
        c = cands[photos[i].rel]
        assert (c.lat, c.lon) == pytest.approx((dec.lat[j], dec.lon[j]))
        assert c.confidence == pytest.approx(conf[j, CONFIDENCE_KM.index(c.radius_km)])
    # the bundled model itself is left as it was
    assert len(predictor.model.heads.gallery) == predictor.model.meta["n_train"]


def test_above_the_threshold_a_model_trained_on_the_references_beats_their_prior(library, predictor):
    photos, emb = library
    cfg = VisualConfig()
    targets = list(range(0, 96, 3))
    refs = [i for i in range(96) if i not in targets]
    assert len(refs) >= cfg.min_references
    lib = hide(photos, targets)
    cands, summary = visual_candidates(lib, emb, targets, refs, cfg, model=predictor.model)
    assert summary["model"] == "library" and summary["model_trained_on"] == len(refs)
    t_lat = np.array([photos[i].lat for i in targets])
    t_lon = np.array([photos[i].lon for i in targets])
    got = [cands[photos[i].rel] for i in targets]
    km = haversine_km([c.lat for c in got], [c.lon for c in got], t_lat, t_lon)
    const = best_constant(np.array([photos[i].lat for i in refs]), np.array([photos[i].lon for i in refs]))
    prior_km = haversine_km(const[0], const[1], t_lat, t_lon)
    assert geoscore(km).mean() > geoscore(prior_km).mean() + 300  # the library's own geography is learnt
    for c in got:
        assert c.radius_km in CONFIDENCE_KM and 0.0 <= c.confidence <= 1.0
        key = str(int(c.radius_km))
        assert c.confidence == pytest.approx(c.detail["within_km"][key], abs=1e-4)
        # stated: the library model's calibrated mass, lowered for the few references it was fit on
        model_mass = c.detail["model_within_km"][key]
        assert c.confidence == pytest.approx(float(wilson_lower(np.array([model_mass]), len(refs), cfg.library_z)[0]), abs=2e-4)
        assert c.confidence <= model_mass + 1e-4
    # deterministic: the same library gives the same candidates
    again, _ = visual_candidates(lib, emb, targets, refs, cfg, model=predictor.model)
    assert again == cands


def test_bad_input_is_named(library, predictor):
    photos, emb = library
    with pytest.raises(ValueError, match="one row per photo"):
        visual_candidates(photos, emb[:10], [0], [], model=predictor.model)
    with pytest.raises(ValueError, match="targets: indices"):
        visual_candidates(photos, emb, [500], [], model=predictor.model)
    lib = hide(photos, [3])
    with pytest.raises(ValueError, match=r"references without GPS: photo0000003\.jpg"):
        visual_candidates(lib, emb, [0], [3], model=predictor.model)
    with pytest.raises(ValueError, match="visual strategy"):
        VisualConfig(strategy="best")


def test_no_target_no_work(library):
    photos, emb = library
    cands, summary = visual_candidates(photos, emb, [], [0, 1])
    assert cands == {} and summary["model"] == "none"


def test_choose_by_reference_count():
    cfg = VisualConfig()
    assert choose(0, cfg)[0] == "bundled"
    assert choose(cfg.min_references - 1, cfg)[0] == "references"
    assert choose(cfg.min_references, cfg)[0] == "library"
    assert choose(10_000, VisualConfig(strategy="bundled"))[0] == "bundled"


masses = st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).map(lambda v: np.maximum.accumulate(np.array(v)))


@given(st.lists(masses, min_size=1, max_size=20), st.floats(0.01, 1.0))
def test_radius_is_the_smallest_holding_min_mass(rows, min_mass):
    within = np.stack(rows)
    radius, conf = radius_and_confidence(within, min_mass)
    for w, r, c in zip(within, radius, conf):
        k = CONFIDENCE_KM.index(r)
        assert c == w[k]
        assert (w[:k] < min_mass).all()
        assert c >= min_mass or k == len(CONFIDENCE_KM) - 1


@given(st.floats(0.0, 1.0), st.integers(1, 10_000), st.floats(0.1, 3.0))
def test_wilson_lower_is_below_the_rate_and_tightens_with_more_references(p, n, z):
    low = float(wilson_lower(np.array([p]), n, z)[0])
    assert 0.0 <= low <= p
    assert float(wilson_lower(np.array([p]), 4 * n, z)[0]) >= low - 1e-12  # more references: closer to p
    assert float(wilson_lower(np.array([p]), n, 0.0)[0]) == p
