"""The per-fold embeddings behind bench/bench_finetune.py's fine-tuned row, and its photographer subset.

A backbone fine-tuned on a fold's training photos gives that fold its own embedding matrix; evaluate_cv
must train and test each fold on the matrix the fold asked for, never on one shared matrix.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geopin.dataset.cells import Granularity
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.locate.heads import ClassifierConfig
from geopin.locate.train import TrainConfig

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_finetune.py"
SITES = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153), (35.6586, 139.7454)]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_finetune", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_finetune"] = mod
    spec.loader.exec_module(mod)
    return mod


def small_train() -> TrainConfig:
    return TrainConfig(
        granularities=[Granularity("coarse", 30, 2), Granularity("fine", 8, 2)],
        classifier=ClassifierConfig(epochs=5, hidden=0), k=4, inner_folds=2,
    )


def toy(n_photographers: int = 4, per_site: int = 8, dim: int = 16, seed: int = 0):
    """Photos at four far-apart sites: `clean` embeddings name the site, `noise` ones say nothing."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(SITES), dim))
    lat, lon, clean, groups = [], [], [], []
    for s, (la, lo) in enumerate(SITES):
        for i in range(per_site):
            lat.append(la + rng.normal(0, 0.01))
            lon.append(lo + rng.normal(0, 0.01))
            clean.append(centres[s] + rng.normal(0, 0.05, dim))
            groups.append(f"p{i % n_photographers}")
    noise = rng.normal(0, 1, (len(lat), dim))
    return np.array(clean, np.float32), noise.astype(np.float32), np.array(lat), np.array(lon), np.array(groups)


def test_each_fold_is_trained_and_tested_on_the_embeddings_it_asked_for():
    clean, noise, lat, lon, groups = toy()
    calls = []

    def fold_embeddings(scenario, fold, train_rows, test_rows):
        calls.append((scenario, fold, train_rows.copy(), test_rows.copy()))
        return clean

    cfg = EvalConfig(scenarios=("group",), folds=2, train=small_train())
    report = evaluate_cv(noise, lat, lon, groups, cfg, fold_embeddings=fold_embeddings)
    assert [(s, f) for s, f, _, _ in calls] == [("group", 0), ("group", 1)]
    tested = np.concatenate([te for *_, te in calls])
    assert sorted(tested) == list(range(len(lat)))  # every photo held out exactly once
    for _, _, tr, te in calls:
        assert not set(groups[tr]) & set(groups[te])  # no photographer on both sides
    with_clean = report["scenarios"]["group"]["methods"]["model"]["acc_25km"]
    plain = evaluate_cv(noise, lat, lon, groups, cfg)["scenarios"]["group"]["methods"]["model"]["acc_25km"]
    assert with_clean > 0.9 > plain + 0.3, (with_clean, plain)


def test_fold_embeddings_of_the_wrong_shape_are_refused_naming_the_fold():
    clean, noise, lat, lon, groups = toy()
    cfg = EvalConfig(scenarios=("group",), folds=2, train=small_train())
    with pytest.raises(ValueError, match="fold 0.*31 rows.*32 photos"):
        evaluate_cv(noise, lat, lon, groups, cfg, fold_embeddings=lambda s, f, tr, te: clean[1:])


def test_limit_keeps_whole_photographers_and_is_seeded():
    bench = load_bench()
    man = pd.DataFrame({"id": [f"i{i}" for i in range(60)], "group": [f"g{i % 7}" for i in range(60)]})
    a = bench.photographer_subset(man, 20, seed=0)
    assert a.equals(bench.photographer_subset(man, 20, seed=0))
    assert len(a) >= 20
    for g in a.group.unique():  # a photographer is in whole or not at all
        assert (a.group == g).sum() == (man.group == g).sum()
    assert not a.equals(bench.photographer_subset(man, 20, seed=1))


def test_native_long_sides_scale_with_the_backbone():
    bench = load_bench()
    assert [bench.native_long_side(n) for n in (224, 240, 260)] == [384, 416, 448]
