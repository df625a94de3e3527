"""Clues weighed into the posterior: no clue changes nothing, a weighed one moves the answer, weights are earned."""

from __future__ import annotations

import numpy as np
import pytest

from geopin.evidence.base import Clue, Spot
from geopin.geo import haversine_km
from geopin.locate.clues import apply_clues, fit_clue_weights
from geopin.locate.model import GeoModel
from geopin.locate.train import train_model
from test_train import FAST, SITES, synthetic

PRAIANO = (40.61, 14.52)


def _town(lat: float, lon: float, name: str = "Town", cc: str = "IT", read: str = "TOWN") -> Clue:
    return Clue("placename", read, f"{name}, {cc}", spots=(Spot(lat, lon, 1.0, name, cc),))


@pytest.fixture(scope="module")
def weak_model():
    """Embeddings with little geography in them: the model alone is close to the prior."""
    df, emb = synthetic(n_per_site=20, signal=0.15, seed=1)
    return train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST), emb[:6]


def test_no_clue_and_unweighed_clue_change_nothing(weak_model):
    model, emb = weak_model
    base = model.predict_embeddings(emb)
    none = model.predict_embeddings(emb, clues=[[] for _ in emb])
    assert [(r["lat"], r["lon"], r["within_km"]) for r in none] == [(r["lat"], r["lon"], r["within_km"]) for r in base]
    assert all(r["evidence"] == [] for r in none)
    # a source the model gives no weight: listed in the answer and the words, the answer unchanged
    unweighed = model.predict_embeddings(emb, clues=[[_town(*PRAIANO, "Praiano", read="PRAIANO")] for _ in emb])
    assert [(r["lat"], r["lon"], r["within_km"]) for r in unweighed] == [(r["lat"], r["lon"], r["within_km"]) for r in base]
    assert unweighed[0]["evidence"][0]["weight"] == 0 and unweighed[0]["evidence"][0]["read"] == "PRAIANO"
    assert "not weighed" in unweighed[0]["summary"]


def test_a_weighed_town_name_moves_the_guess_to_it(weak_model):
    model, emb = weak_model
    model = GeoModel(model.heads, _with_weights(model, placename=100.0), model.calibration, model.meta)
    out = model.predict_embeddings(emb[:2], clues=[[_town(*PRAIANO, "Praiano", read="PRAIANO")], []])
    assert haversine_km(out[0]["lat"], out[0]["lon"], *PRAIANO) < 1.0
    assert out[0]["top_k"][0].get("name") == "Praiano"
    ev = out[0]["evidence"][0]
    assert ev["probability_after"] > ev["probability_before"] and ev["probability_after"] > 0.5
    assert 'read "PRAIANO": Praiano, IT' in out[0]["summary"]
    # the other photo of the batch (no clue) is exactly what it was alone
    alone = model.predict_embeddings(emb[1:2])[0]
    assert (out[1]["lat"], out[1]["lon"], out[1]["within_km"]) == (alone["lat"], alone["lon"], alone["within_km"])


def test_country_clue_raises_that_countrys_mass(weak_model):
    model, emb = weak_model
    heads = model.heads
    from geopin.locate.posterior import mixture

    ev = heads.evidence(emb)
    cell, nb = mixture(heads.places, ev, model.params)
    clue = Clue("language", "Cyrillic script", "Russia", countries={"RU": 1.0})
    ru = heads.places.country == "RU"
    for lam, grows in ((0.0, False), (5.0, True)):
        _, c2, n2, eff = apply_clues(heads.places, ev, cell, nb, [[clue]] * len(emb), {"language": lam})
        assert np.allclose(c2.sum(1) + n2.sum(1), 1.0)
        assert (c2[:, ru].sum(1) > cell[:, ru].sum(1) + 1e-9).all() == grows
        assert eff[0][0].after >= eff[0][0].before


def test_weights_are_earned_on_held_out_photographers():
    """Right town names earn a weight; names pointing at random sites earn none."""
    df, emb = synthetic(n_per_site=16, signal=0.15, seed=2)
    rng = np.random.default_rng(0)
    right, wrong = [], []
    for s, lat, lon in zip(df.site, df.lat, df.lon):
        site_lat, site_lon = SITES[s]
        other = SITES[(s + 1 + rng.integers(len(SITES) - 1)) % len(SITES)]
        right.append([_town(site_lat + 0.02, site_lon)] if rng.random() < 0.5 else [])
        wrong.append([_town(*other)] if rng.random() < 0.5 else [])
    good = train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST, clues=right)
    bad = train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST, clues=wrong)
    assert good.params.clue_weights["placename"] > 0
    assert bad.params.clue_weights["placename"] == 0
    report = good.meta["fit_report"]["clue_weights"]["placename"]
    assert report["photos"] > 50 and report["gain"] > 0


def test_fit_leaves_unfired_sources_alone():
    assert fit_clue_weights([]) == ({}, 0.0, {"spot_floor": 0.0})


def _with_weights(model, **weights):
    from dataclasses import replace

    return replace(model.params, clue_weights=dict(weights))
