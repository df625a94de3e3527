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
    accuracy_within,
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
