"""Training, saving and predicting with real heads on embeddings that carry a known amount of geography."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geopin.dataset.cells import Granularity
from geopin.geo import haversine_km
from geopin.locate.heads import ClassifierConfig
from geopin.locate.model import GeoModel
from geopin.locate.train import TrainConfig, train_model
from geopin.metrics import geoscore

SITES = [  # (lat, lon) of photo hot spots, each shot by several photographers
    (48.86, 2.35), (41.90, 12.50), (40.71, -74.01), (35.68, 139.65), (-33.87, 151.21),
    (-22.91, -43.17), (51.51, -0.13), (37.77, -122.42), (30.04, 31.24), (19.43, -99.13),
    (55.75, 37.62), (1.35, 103.82),
]


def synthetic(n_per_site: int = 40, signal: float = 1.0, seed: int = 0):
    """Embeddings = a site signature * signal + noise; groups = photographers, 4 per site."""
    rng = np.random.default_rng(seed)
    dim = 48
    sig = rng.normal(size=(len(SITES), dim))
    rows = []
    for s, (lat, lon) in enumerate(SITES):
        for i in range(n_per_site):
            rows.append((s, lat + rng.normal(0, 0.05), lon + rng.normal(0, 0.05), f"p{s}_{i % 4}"))
    df = pd.DataFrame(rows, columns=["site", "lat", "lon", "group"])
    emb = signal * sig[df.site.to_numpy()] + rng.normal(size=(len(df), dim))
    return df, emb.astype(np.float32)


FAST = TrainConfig(
    granularities=[Granularity("coarse", 120, 3), Granularity("fine", 30, 3)],
    classifier=ClassifierConfig(epochs=15),
    k=8,
    inner_folds=3,
)


@pytest.fixture(scope="module")
def trained():
    df, emb = synthetic()
    test = df.group.str.endswith("_3").to_numpy()  # one photographer per site is never seen
    model = train_model(emb[~test], df.lat[~test], df.lon[~test], df.group[~test].to_numpy(), FAST)
    return model, df[test].reset_index(drop=True), emb[test]


def test_model_beats_the_prior_when_photos_carry_geography(trained):
    model, test, emb = trained
    out = model.predict_embeddings(emb, top_k=3)
    km = haversine_km([o["lat"] for o in out], [o["lon"] for o in out], test.lat, test.lon)
    c_lat, c_lon = model.heads.places.best_constant
    km_prior = haversine_km(c_lat, c_lon, test.lat, test.lon)
    assert geoscore(km).mean() > geoscore(km_prior).mean() + 1000
    assert np.mean(km <= 25) > 0.8
    assert model.params.w_prior < 0.5  # the fit trusted the informative heads


def test_prediction_schema_and_consistency(trained):
    model, test, emb = trained
    out = model.predict_embeddings(emb[:5], top_k=4)
    for o in out:
        conf = [o["within_km"][k] for k in ("25", "200", "750", "2500")]
        assert all(0.0 <= c <= 1.0 for c in conf) and conf == sorted(conf)
        probs = [t["probability"] for t in o["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert 1 <= len(o["top_k"]) <= 4
        assert all(len(t["country"]) in (0, 2) for t in o["top_k"])
        assert set(o["regions"]) == {"50%", "90%"}
        assert isinstance(o["summary"], str) and o["summary"]


def test_save_and_load_roundtrip(trained, tmp_path):
    model, test, emb = trained
    path = model.save(tmp_path / "model")
    again = GeoModel.load(path)
    a = model.predict_embeddings(emb[:6])
    b = again.predict_embeddings(emb[:6])
    for x, y in zip(a, b):
        assert x["lat"] == pytest.approx(y["lat"], abs=1e-3)
        assert x["within_km"]["2500"] == pytest.approx(y["within_km"]["2500"], abs=1e-3)
    # saving again over an existing model swaps the folder whole
    model.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["cells.parquet", "classifier.pt", "gallery.npz", "model.json", "places.npz"]


def test_no_geography_means_low_confidence_and_prior_like_answers():
    df, emb = synthetic(signal=0.0, seed=1)
    test = df.group.str.endswith("_3").to_numpy()
    model = train_model(emb[~test], df.lat[~test], df.lon[~test], df.group[~test].to_numpy(), FAST)
    out = model.predict_embeddings(emb[test])
    conf25 = np.array([o["within_km"]["25"] for o in out])
    # 12 equally likely sites: honest confidence within 25 km is near 1/12, never near certainty
    assert conf25.max() < 0.5
    # and without evidence the answers score about as well as the prior's constant, not worse
    km = haversine_km([o["lat"] for o in out], [o["lon"] for o in out], df.lat[test], df.lon[test])
    km_prior = haversine_km(*model.heads.places.best_constant, df.lat[test], df.lon[test])
    assert geoscore(km).mean() > geoscore(km_prior).mean() - 250


def test_group_scenario_needs_groups():
    df, emb = synthetic(n_per_site=10)
    with pytest.raises(ValueError, match="group"):
        train_model(emb, df.lat, df.lon, None, FAST)


def test_posterior_fit_uses_a_bounded_sample_of_held_out_photos():
    from dataclasses import replace

    from geopin.locate.train import out_of_fold

    df, emb = synthetic(n_per_site=10)
    oof = out_of_fold(emb, df.lat.to_numpy(), df.lon.to_numpy(), df.group.to_numpy(), replace(FAST, max_fit_photos=30))
    rows = np.concatenate(oof.rows)
    assert len(rows) == 30 and len(np.unique(rows)) == 30


@pytest.mark.parametrize("reverse", [False, True])
def test_granularities_nest_whatever_their_mins_and_order(reverse):
    """coarse:200:10 over fine:50:2 gave fine places ancestor -1, which then read the last coarse class."""
    df, emb = synthetic(n_per_site=20)
    rng = np.random.default_rng(1)
    lonely = [(-54.8, -68.3), (64.1, -21.9), (-17.7, 168.3), (21.3, -157.9), (78.2, 15.6)]
    extra = pd.DataFrame(
        [(lat + rng.normal(0, 0.01), lon + rng.normal(0, 0.01), f"x{i}") for i, (lat, lon) in enumerate(lonely) for _ in range(3)],
        columns=["lat", "lon", "group"],
    )
    df = pd.concat([df, extra], ignore_index=True)
    emb = np.vstack([emb, rng.normal(size=(len(extra), emb.shape[1])).astype(np.float32)])
    grans = [Granularity("coarse", 200, 10), Granularity("fine", 50, 2)]
    cfg = TrainConfig(granularities=grans[::-1] if reverse else grans, classifier=ClassifierConfig(epochs=3), k=4, inner_folds=2)
    model = train_model(emb, df.lat, df.lon, df.group.to_numpy(), cfg)
    assert model.heads.granularities == ["coarse", "fine"]
    places = model.heads.places
    n_coarse = (model.heads.cells.granularity == "coarse").sum()
    for anc in places.ancestors:
        assert anc.min() >= 0
    assert places.ancestors[0].max() < n_coarse
    # lonely spots that share no coarse cell with a site keep a coarse class under its min of 10
    assert (model.heads.cells.query("granularity == 'coarse'")["count"] < 10).sum() >= 1


def test_photos_without_geography_fall_back_to_the_prior():
    """Noise embeddings: the posterior must not do worse than the prior's constant answer; it becomes it."""
    df, emb = synthetic(n_per_site=25, signal=0.0)
    model = train_model(emb, df.lat, df.lon, df.group.to_numpy(), FAST)
    guard = model.meta["fit_report"]["prior_guard"]
    assert guard["applied"] and guard["gain"] + guard["z"] * guard["se"] < 0
    assert model.params.prior_only
    out = model.predict_embeddings(emb[:5], top_k=3)
    assert all((o["lat"], o["lon"]) == model.heads.places.best_constant for o in out)
    assert all(o["top_k"][0]["is_guess"] for o in out)


def test_photos_with_geography_keep_the_full_posterior(trained):
    model, _, _ = trained
    guard = model.meta["fit_report"]["prior_guard"]
    assert not guard["applied"] and not model.params.prior_only
    assert guard["oof_geoscore_model"] > guard["oof_geoscore_prior"]
