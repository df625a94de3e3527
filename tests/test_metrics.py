"""Geolocation and calibration metrics: known values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopin.geo import haversine_km
from geopin.metrics import (
    THRESHOLDS_KM,
    BootstrapDraws,
    accuracy_within,
    bootstrap_ece,
    bootstrap_mean,
    country_accuracy,
    expected_calibration_error,
    geoscore,
    global_average_precision,
    median_km,
    reliability_table,
    summarize,
)

distances = st.lists(st.floats(0, 20_016, allow_nan=False), min_size=1, max_size=50)


def test_geoscore_known_values():
    assert geoscore(0) == pytest.approx(5000.0)
    assert geoscore(1492.7) == pytest.approx(5000.0 / math.e)
    np.testing.assert_allclose(geoscore(np.array([0.0, 1492.7])), [5000.0, 5000.0 / math.e])


@given(distances)
@settings(deadline=None)
def test_geoscore_range_and_monotone(km):
    km = np.sort(np.array(km))
    s = geoscore(km)
    assert np.all((s > 0) & (s <= 5000))
    assert np.all(np.diff(s) <= 0)


@given(distances)
@settings(deadline=None)
def test_accuracy_is_a_share_and_grows_with_threshold(km):
    acc = accuracy_within(km)
    assert list(acc) == [str(t) for t in THRESHOLDS_KM]
    values = list(acc.values())
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)


def test_accuracy_known_values():
    acc = accuracy_within([0.5, 1.0, 30.0, 800.0], thresholds=(1, 25, 1000))
    assert acc == {"1": 0.5, "25": 0.5, "1000": 1.0}
    with pytest.raises(ValueError, match="non-negative"):
        accuracy_within([-1.0])
    assert math.isnan(accuracy_within([])["1"])
    assert median_km([1.0, 3.0, 100.0]) == 3.0


def test_country_accuracy_ignores_unknown_truth():
    assert country_accuracy(["FR", "GB", "US", "FR"], ["FR", "FR", "", None]) == 0.5
    assert country_accuracy(["fr"], ["FR"]) == 1.0
    assert math.isnan(country_accuracy(["FR", "GB"], ["", None]))
    with pytest.raises(ValueError, match="2 predictions for 1"):
        country_accuracy(["FR", "GB"], ["FR"])


def test_summarize_known_values():
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    s = summarize(
        [paris[0], paris[0]], [paris[1], paris[1]], [paris[0], london[0]], [paris[1], london[1]],
        pred_country=["FR", "FR"], true_country=["FR", "GB"],
    )
    d = haversine_km(*paris, *london)
    assert s["n"] == 2
    assert s["acc_1km"] == 0.5 and s["acc_200km"] == 0.5 and s["acc_750km"] == 1.0
    assert s["median_km"] == pytest.approx(d / 2)
    assert s["mean_km"] == pytest.approx(d / 2)
    assert s["geoscore"] == pytest.approx((5000 + 5000 * math.exp(-d / 1492.7)) / 2)
    assert s["country_acc"] == 0.5
    assert set(s) == {"n", "median_km", "mean_km", "geoscore", "country_acc"} | {f"acc_{t}km" for t in THRESHOLDS_KM}
    assert math.isnan(summarize([0], [0], [0], [0])["country_acc"])


def _calibrated_bins(counts_per_bin: list[int], n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Each bin's points share a confidence equal to their hit rate: a perfectly calibrated set."""
    prob, hit = [], []
    for b, n in enumerate(counts_per_bin):
        n *= 2 * n_bins  # so that (b + 0.5) / n_bins * n is a whole number of hits
        p = (b + 0.5) / n_bins
        hits = round(p * n)
        prob += [p] * n
        hit += [1] * hits + [0] * (n - hits)
    return np.array(prob), np.array(hit)


@given(st.lists(st.integers(0, 6), min_size=10, max_size=10))
@settings(deadline=None)
def test_ece_is_zero_when_perfectly_calibrated(counts):
    if sum(counts) == 0:
        return
    prob, hit = _calibrated_bins(counts, 10)
    assert expected_calibration_error(prob, hit, n_bins=10) == pytest.approx(0.0, abs=1e-12)


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60))
@settings(deadline=None)
def test_ece_range_and_reliability_table(pairs):
    prob = np.array([p for p, _ in pairs])
    hit = np.array([h for _, h in pairs])
    ece = expected_calibration_error(prob, hit)
    assert 0.0 <= ece <= 1.0
    table = reliability_table(prob, hit)
    assert list(table.columns) == ["lo", "hi", "n", "mean_prob", "hit_rate"]
    assert len(table) == 10 and table["n"].sum() == len(pairs)
    filled = table[table["n"] > 0]
    assert np.all((filled["mean_prob"] >= filled["lo"] - 1e-12) & (filled["mean_prob"] <= filled["hi"] + 1e-12))


def test_ece_known_values():
    # Always sure, always wrong: the worst case.
    assert expected_calibration_error([1.0, 1.0], [0, 0]) == pytest.approx(1.0)
    # Two bins: 0.25 said, 0.5 hit (gap 0.25, 2 points); 0.95 said, 1.0 hit (gap 0.05, 2 points).
    assert expected_calibration_error([0.25, 0.25, 0.95, 0.95], [1, 0, 1, 1]) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="fractions"):
        expected_calibration_error([50.0], [1])
    assert expected_calibration_error([1 + 1e-12], [1]) == pytest.approx(0.0)  # rounding is tolerated
    with pytest.raises(ValueError, match="0/1"):
        expected_calibration_error([0.5], [2])
    assert math.isnan(expected_calibration_error([], []))


def test_gap_known_values():
    assert global_average_precision([0.2, 0.9, 0.5], [1, 1, 1]) == 1.0
    assert global_average_precision([0.2, 0.9, 0.5], [0, 0, 0]) == 0.0
    # Ranked: 0.9 right (P=1), 0.8 wrong, 0.7 right (P=2/3), 0.6 wrong -> (1 + 2/3) / 4.
    conf, correct = [0.6, 0.9, 0.7, 0.8], [0, 1, 1, 0]
    assert global_average_precision(conf, correct) == pytest.approx(5 / 12)
    assert math.isnan(global_average_precision([], []))


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60))
@settings(deadline=None)
def test_gap_at_most_accuracy_with_equality_for_a_perfect_ranking(pairs):
    conf = np.array([c for c, _ in pairs])
    correct = np.array([r for _, r in pairs])
    gap = global_average_precision(conf, correct)
    assert 0.0 <= gap <= correct.mean() + 1e-12
    # Confidences that put every right answer first reach the upper bound.
    assert global_average_precision(correct.astype(float), correct) == pytest.approx(correct.mean())


# ------------------------------------------------------------------ bootstrap over groups

values_and_groups = st.lists(
    st.tuples(st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False), st.integers(0, 7)), min_size=1, max_size=60
)


@given(values_and_groups)
@settings(max_examples=60)
def test_bootstrap_mean_interval_holds_the_point_estimate(pairs):
    x = np.array([v for v, _ in pairs])
    g = np.array([k for _, k in pairs])
    iv = bootstrap_mean(x, BootstrapDraws.of(g, n_boot=300, seed=1))
    assert iv.estimate == pytest.approx(x.mean(), rel=1e-9, abs=1e-9)
    tol = 1e-9 * (1 + np.abs(x).max())
    assert iv.lo - tol <= iv.estimate <= iv.hi + tol
    assert iv.lo >= x.min() - tol and iv.hi <= x.max() + tol


@given(st.floats(-1e4, 1e4, allow_nan=False), st.lists(st.integers(0, 5), min_size=1, max_size=40))
@settings(max_examples=40)
def test_bootstrap_of_constant_data_has_zero_width(c, groups):
    iv = bootstrap_mean(np.full(len(groups), c), BootstrapDraws.of(groups, n_boot=200))
    assert iv.hi - iv.lo == pytest.approx(0.0, abs=1e-9 * (1 + abs(c)))
    assert iv.estimate == pytest.approx(c)


@given(st.lists(st.floats(0, 5000, allow_nan=False), min_size=20, max_size=80, unique=True))
@settings(max_examples=25)
def test_one_photo_per_group_spreads_like_the_ordinary_bootstrap(x):
    """With singleton groups, the spread of the bootstrap means is the plug-in sd / sqrt(n)."""
    x = np.array(x)
    draws = BootstrapDraws.of(np.arange(len(x)), n_boot=4000, seed=3)
    assert draws.unit == "group" and draws.n_units == len(x)
    means = draws.weights @ x / draws.weights.sum(1)
    expected = x.std() / np.sqrt(len(x))
    assert means.std() == pytest.approx(expected, rel=0.1)
    # the same spread as an ordinary bootstrap of photos drawn with replacement
    ordinary = x[np.random.default_rng(4).integers(0, len(x), (4000, len(x)))].mean(1)
    assert means.std() == pytest.approx(ordinary.std(), rel=0.15)


def test_groups_of_identical_photos_count_once():
    """Ten copies of each photographer's photo must not narrow the interval: the unit is the photographer."""
    x = np.array([0.0, 1.0, 5.0, 2.0, 9.0, 4.0])
    single = bootstrap_mean(x, BootstrapDraws.of(np.arange(6), n_boot=500, seed=7))
    copies = bootstrap_mean(np.repeat(x, 10), BootstrapDraws.of(np.repeat(np.arange(6), 10), n_boot=500, seed=7))
    assert (copies.lo, copies.estimate, copies.hi) == pytest.approx((single.lo, single.estimate, single.hi))
    # resampling the photos instead treats the copies as evidence and narrows the interval
    by_photo = BootstrapDraws.of(None, n=60, n_boot=500, seed=7)
    photos = bootstrap_mean(np.repeat(x, 10), by_photo)
    assert by_photo.unit == "photo" and photos.hi - photos.lo < 0.6 * (single.hi - single.lo)


def test_bootstrap_columns_share_draws_so_differences_are_paired():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(30), 5)
    a = rng.normal(0, 1, 150) + g * 0.1  # strongly group-driven
    b = a - 0.2 + rng.normal(0, 0.01, 150)
    draws = BootstrapDraws.of(g, n_boot=1000, seed=0)
    ivs = bootstrap_mean(np.stack([a, b, a - b], 1), draws)
    assert [iv.estimate for iv in ivs] == pytest.approx([a.mean(), b.mean(), 0.2], abs=0.01)
    # each mean is uncertain, their paired difference hardly is
    assert ivs[2].hi - ivs[2].lo < 0.1 * (ivs[0].hi - ivs[0].lo)
    assert ivs[0].to_dict().keys() == {"estimate", "lo", "hi"}


def test_bootstrap_ece_matches_the_ece_and_a_loop_over_draws():
    rng = np.random.default_rng(2)
    prob = rng.uniform(0, 1, 120)
    hit = rng.uniform(0, 1, 120) < prob ** 2
    g = rng.integers(0, 15, 120)
    draws = BootstrapDraws.of(g, n_boot=50, seed=5)
    iv = bootstrap_ece(prob, hit, draws, n_bins=10)
    assert iv.estimate == pytest.approx(expected_calibration_error(prob, hit, 10))
    # the vectorised draws equal the ECE recomputed on each resample of photographers
    codes = np.unique(g, return_inverse=True)[1]
    loop = []
    for w in draws.weights:
        rep = np.repeat(np.arange(120), w[codes].astype(int))
        loop.append(expected_calibration_error(prob[rep], hit[rep], 10))
    assert (iv.lo, iv.hi) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))


def test_bootstrap_bad_input_is_named():
    with pytest.raises(ValueError, match="groups: 3 labels for 2 values"):
        bootstrap_mean([1.0, 2.0], BootstrapDraws.of([0, 1, 1]))
    with pytest.raises(ValueError, match="n_boot"):
        BootstrapDraws.of([0, 1], n_boot=0)
    with pytest.raises(ValueError, match="no values"):
        BootstrapDraws.of([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([1.0, np.nan], BootstrapDraws.of([0, 1]))


def test_bootstrap_of_a_whole_evaluation_is_fast():
    """Im2GPS3k size: 2,652 photos, 8 methods x 3 statistics + 2 differences, 4 ECEs, 1000 draws, each way."""
    import time

    rng = np.random.default_rng(0)
    n = 2652
    for groups in (rng.integers(0, 173, n), None):
        t0 = time.perf_counter()
        draws = BootstrapDraws.of(groups, n=n)
        bootstrap_mean(rng.uniform(0, 5000, (n, 26)), draws)
        for _ in range(4):
            bootstrap_ece(rng.uniform(0, 1, n), rng.uniform(0, 1, n) < 0.3, draws)
        assert time.perf_counter() - t0 < 5.0
