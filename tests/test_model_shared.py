"""The model on real photos: never worse than the prior, and honest about it (shared Im2GPS3k set).

Embeds all 2,652 photos (a few minutes on 2 cores) and runs the new-photographers evaluation over
5 folds by photographer, as bench/bench_accuracy.py does, with the assertions the project stands on.
"""

from __future__ import annotations

import numpy as np
import pytest

from geopin.evaluation.crossval import EvalConfig, evaluate_cv

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(im2gps_embedded):
    man, emb = im2gps_embedded
    assert np.isfinite(emb).all()
    return evaluate_cv(emb, man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy(), EvalConfig(scenarios=("group",)))


def test_model_beats_prior_and_baselines_for_new_photographers(report):
    m = report["scenarios"]["group"]["methods"]
    baselines = ["prior_constant", "nearest_neighbour", "classifier_hierarchical", "classifier_fine"]
    assert m["model"]["geoscore"] >= max(m[b]["geoscore"] for b in baselines), m
    assert m["model"]["acc_25km"] > m["prior_constant"]["acc_25km"], m
    assert m["oracle"]["geoscore"] > m["model"]["geoscore"]


def test_stated_confidences_are_calibrated_for_new_photographers(report):
    calib = report["scenarios"]["group"]["calibration"]
    for radius, c in calib.items():
        assert c["ece"] <= 0.035, (radius, c["ece"])  # bench target 3 points; a little slack for noise
        assert abs(c["mean_confidence"] - c["hit_rate"]) <= 0.02, (radius, c)
