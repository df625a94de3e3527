"""The posterior: mixing, decisions and calibration, on constructed evidence with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.geo import haversine_km, pairwise_km
from geopin.locate.posterior import (
    CONFIDENCE_KM,
    Calibration,
    Evidence,
    FitConfig,
    MixParams,
    Places,
    best_constant,
    classifier_probs,
    decide,
    fit_mixture,
    mass_within,
    mixture,
)
from geopin.metrics import geoscore

CITIES = {
    "paris": (48.8566, 2.3522),
    "rome": (41.9028, 12.4964),
    "new_york": (40.7128, -74.0060),
    "tokyo": (35.6762, 139.6503),
    "sydney": (-33.8688, 151.2093),
    "rio": (-22.9068, -43.1729),
}


def make_places(prior=None) -> Places:
    lat = np.array([c[0] for c in CITIES.values()])
    lon = np.array([c[1] for c in CITIES.values()])
    k = len(lat)
    prior = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, float)
    # one coarse level grouping (paris, rome) | (new_york, rio) | (tokyo, sydney), then the fine level
    coarse = np.array([0, 0, 1, 2, 2, 1])
    return Places(lat, lon, prior, [coarse, np.arange(k)], best_constant(lat, lon))


def make_evidence(places: Places, fine_logits, nb_lat, nb_lon, nb_sim) -> Evidence:
    b = len(fine_logits)
    coarse = np.zeros((b, 3))
    return Evidence(
        [coarse, np.asarray(fine_logits, float)],
        np.asarray(nb_sim, float),
        np.asarray(nb_lat, float),
        np.asarray(nb_lon, float),
        np.full(np.shape(nb_sim), -1),
    )


def test_all_mass_on_one_place_gives_that_place_and_certainty():
    places = make_places()
    logits = np.full((1, 6), -50.0)
    logits[0, 3] = 50.0  # tokyo
    ev = make_evidence(places, logits, [[35.0]], [[139.0]], [[0.5]])
    cell, nb = mixture(places, ev, MixParams(w_prior=0.0, w_clf=1.0, w_knn=0.0, t_clf=1.0))
    dec = decide(places, ev, cell, nb)
    assert haversine_km(dec.lat[0], dec.lon[0], *CITIES["tokyo"]) < 1e-6
    np.testing.assert_allclose(dec.raw_within[0], 1.0, atol=1e-6)
    assert dec.expected_geoscore[0] == pytest.approx(5000.0, rel=1e-4)


def test_best_guess_maximises_expected_geoscore_over_candidates():
    places = make_places()
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(20, 6)) * 3
    nb_lat = rng.uniform(-60, 60, size=(20, 4))
    nb_lon = rng.uniform(-180, 180, size=(20, 4))
    ev = make_evidence(places, logits, nb_lat, nb_lon, rng.uniform(0.2, 0.9, size=(20, 4)))
    params = MixParams(w_prior=0.2, w_clf=0.5, w_knn=0.3, t_clf=1.0, t_knn=0.1)
    cell, nb = mixture(places, ev, params)
    dec = decide(places, ev, cell, nb)
    for i in range(20):
        s_lat = np.concatenate([places.lat, nb_lat[i]])
        s_lon = np.concatenate([places.lon, nb_lon[i]])
        mass = np.concatenate([cell[i], nb[i]])
        assert mass.sum() == pytest.approx(1.0, abs=1e-6)
        cand_lat = np.concatenate([s_lat, [places.best_constant[0]]])
        cand_lon = np.concatenate([s_lon, [places.best_constant[1]]])
        expected = geoscore(pairwise_km(cand_lat, cand_lon, s_lat, s_lon)) @ mass
        assert dec.expected_geoscore[i] == pytest.approx(expected.max(), rel=1e-4)
        d = haversine_km(dec.lat[i], dec.lon[i], s_lat, s_lon)
        for r_i, r in enumerate(CONFIDENCE_KM):
            assert dec.raw_within[i, r_i] == pytest.approx(mass[d <= r].sum(), abs=1e-6)


def test_hierarchical_probabilities_multiply_levels():
    places = make_places()
    coarse = np.log(np.array([[0.7, 0.2, 0.1]]))
    fine = np.log(np.full((1, 6), 1 / 6))
    ev = Evidence([coarse, fine], np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), -1))
    p = classifier_probs(places, ev.logits, 1.0)[0]
    expected = np.array([0.7, 0.7, 0.2, 0.1, 0.1, 0.2])
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-9)


def test_fit_gives_no_weight_to_noise_and_weight_to_signal():
    rng = np.random.default_rng(0)
    places = make_places(prior=[0.4, 0.3, 0.1, 0.1, 0.05, 0.05])
    names = list(CITIES)
    n = 400
    true_idx = rng.choice(6, size=n, p=places.prior)
    t_lat = places.lat[true_idx] + rng.normal(0, 0.05, n)
    t_lon = places.lon[true_idx] + rng.normal(0, 0.05, n)
    noise_logits = rng.normal(size=(n, 6)) * 4  # says nothing about the truth
    # neighbours: the first one is at the truth for 60 % of photos, elsewhere random cities
    nb_idx = rng.integers(0, 6, size=(n, 5))
    good = rng.random(n) < 0.6
    nb_idx[good, 0] = true_idx[good]
    sims = np.where(np.arange(5)[None, :] == 0, 0.8, 0.5) * np.ones((n, 5))
    sims[~good, 0] = 0.5
    ev = make_evidence(places, noise_logits, places.lat[nb_idx], places.lon[nb_idx], sims)
    params, report = fit_mixture([places], [ev], [(t_lat, t_lon)], FitConfig())
    assert params.w_clf < 0.1, params
    assert params.w_knn > 0.3, params
    assert report["loglik"] >= report["loglik_prior_only"]
    assert names  # the cities used above


@settings(max_examples=25, deadline=None)
@given(
    raw=st.lists(st.tuples(*[st.floats(0, 1) for _ in CONFIDENCE_KM]), min_size=20, max_size=60),
    seed=st.integers(0, 1000),
)
def test_calibration_is_monotone_and_bounded(raw, seed):
    raw = np.sort(np.asarray(raw), axis=1)
    hit = np.random.default_rng(seed).random(raw.shape) < raw
    cal = Calibration.fit(raw, hit)
    out = cal.apply(raw)
    assert np.all(out >= 0) and np.all(out <= 1)
    assert np.all(np.diff(out, axis=1) >= -1e-12)  # a larger radius is never less likely
    again = Calibration.from_dict(cal.to_dict()).apply(raw)
    np.testing.assert_allclose(out, again)


def test_calibration_recovers_a_known_miscalibration():
    rng = np.random.default_rng(1)
    raw = rng.random((20000, len(CONFIDENCE_KM)))
    hit = rng.random(raw.shape) < raw**2  # stated p, true frequency p^2: overconfident
    cal = Calibration.fit(raw, hit)
    probe = np.tile(np.array([[0.2], [0.5], [0.9]]), (1, len(CONFIDENCE_KM)))
    out = cal.apply(probe)
    np.testing.assert_allclose(out[:, 0], [0.04, 0.25, 0.81], atol=0.04)


def test_best_constant_is_the_brute_force_optimum():
    rng = np.random.default_rng(2)
    lat = np.concatenate([rng.normal(48, 3, 60), rng.normal(40, 2, 20), rng.normal(-33, 1, 10)])
    lon = np.concatenate([rng.normal(5, 4, 60), rng.normal(-74, 2, 20), rng.normal(151, 1, 10)])
    c = best_constant(lat, lon)
    scores = geoscore(pairwise_km(lat, lon, lat, lon)).mean(1)
    j = int(np.argmax(scores))
    assert c == (lat[j], lon[j])
    assert 40 < c[0] < 56 and -5 < c[1] < 15  # in Europe, where most photos are


@settings(max_examples=60, deadline=None)
@given(st.floats(-89.0, 89.0), st.floats(-180.0, 180.0), st.integers(0, 10_000))
def test_mass_within_grows_with_the_radius_and_equals_decide_at_the_guess(lat, lon, seed):
    rng = np.random.default_rng(seed)
    places = make_places()
    ev = make_evidence(places, rng.normal(0, 2, (2, 6)), rng.uniform(-60, 60, (2, 3)), rng.uniform(-180, 180, (2, 3)),
                       rng.uniform(0, 1, (2, 3)))
    cell, nb = mixture(places, ev, MixParams(w_prior=0.3, w_clf=0.4, w_knn=0.3, t_clf=1.5, t_knn=0.1))
    radii = (1.0, 25.0, 750.0, 2500.0, 20_100.0)
    m = mass_within(places, ev, cell, nb, lat, lon, radii)
    assert m.shape == (2, len(radii))
    assert (np.diff(m, axis=1) >= -1e-12).all()  # a larger circle holds at least as much
    np.testing.assert_allclose(m[:, -1], cell.sum(1) + nb.sum(1))  # half the Earth's circumference: everything
    dec = decide(places, ev, cell, nb)
    for i in range(2):  # at the guess, the same mass decide states
        one = Evidence([lg[i:i + 1] for lg in ev.logits], ev.nb_sim[i:i + 1], ev.nb_lat[i:i + 1], ev.nb_lon[i:i + 1],
                       ev.nb_place[i:i + 1])
        np.testing.assert_allclose(mass_within(places, one, cell[i:i + 1], nb[i:i + 1], dec.lat[i], dec.lon[i])[0],
                                   np.clip(dec.raw_within[i], 0, 1), atol=1e-6)
