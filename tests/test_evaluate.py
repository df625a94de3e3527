"""Evaluation on small collections: the folds the data allows, said out loud; intervals over photographers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagefiles import three_photographer_dataset
from typer.testing import CliRunner

from geopin.dataset.cells import Granularity
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.evaluation.tables import format_methods_table
from geopin.locate.heads import ClassifierConfig
from geopin.locate.train import TrainConfig

SITES = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153), (35.6586, 139.7454)]


def small_train() -> TrainConfig:
    return TrainConfig(
        granularities=[Granularity("coarse", 30, 2), Granularity("fine", 8, 2)],
        classifier=ClassifierConfig(epochs=5, hidden=0), k=4, inner_folds=2,
    )


def toy_data(n_photographers: int, per_site: int = 6, dim: int = 16, seed: int = 0):
    """Photos at a few sites; each embedding leans towards its site, the rest is noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(SITES), dim))
    lat, lon, emb, groups = [], [], [], []
    for s, (la, lo) in enumerate(SITES):
        for i in range(per_site):
            lat.append(la + rng.normal(0, 0.01))
            lon.append(lo + rng.normal(0, 0.01))
            emb.append(centres[s] + rng.normal(0, 0.5, dim))
            groups.append(f"p{i % n_photographers}")
    return np.array(emb, np.float32), np.array(lat), np.array(lon), np.array(groups)


def test_fewer_photographers_than_folds_uses_the_folds_the_data_allows(caplog):
    emb, lat, lon, groups = toy_data(3)
    with caplog.at_level(logging.WARNING, logger="geopin.evaluation.crossval"):
        report = evaluate_cv(emb, lat, lon, groups, EvalConfig(folds=5, train=small_train()))
    g = report["scenarios"]["group"]
    assert (g["folds_requested"], g["folds_used"]) == (5, 3)
    assert "3 photographers" in g["note"]
    assert any("3 photographers" in r.getMessage() for r in caplog.records)
    assert report["per_photo"]["group"].fold.nunique() == 3
    r = report["scenarios"]["random"]
    assert (r["folds_requested"], r["folds_used"], r["note"]) == (5, 5, "")
    # the header of the printed table says it too
    assert "3 of 5 folds" in format_methods_table(report, "group")[0]


def test_one_photographer_skips_the_group_scenario_and_says_why(caplog):
    emb, lat, lon, groups = toy_data(1)
    with caplog.at_level(logging.WARNING, logger="geopin.evaluation.crossval"):
        report = evaluate_cv(emb, lat, lon, groups, EvalConfig(folds=3, train=small_train()))
    assert set(report["scenarios"]) == {"random"}
    assert "1 photographer" in report["skipped"]["group"]
    assert any("skipping" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="no scenario can run.*1 photographer"):
        evaluate_cv(emb, lat, lon, groups, EvalConfig(scenarios=("group",), folds=3, train=small_train()))
    with pytest.raises(ValueError, match="no scenario can run.*no photographer"):
        evaluate_cv(emb, lat, lon, None, EvalConfig(scenarios=("group",), folds=3, train=small_train()))


def test_fewer_photos_than_folds_in_the_random_scenario():
    emb, lat, lon, groups = toy_data(2, per_site=2)  # 8 photos
    train = TrainConfig(
        granularities=[Granularity("coarse", 30, 1), Granularity("fine", 8, 1)],
        classifier=ClassifierConfig(epochs=2, hidden=0), k=2, inner_folds=2,
    )
    report = evaluate_cv(emb, lat, lon, groups, EvalConfig(scenarios=("random",), folds=10, train=train))
    r = report["scenarios"]["random"]
    assert (r["folds_requested"], r["folds_used"]) == (10, 8)
    assert "8 photos" in r["note"]


def test_report_has_intervals_over_photographers_and_paired_differences():
    emb, lat, lon, groups = toy_data(4, per_site=8)
    report = evaluate_cv(emb, lat, lon, groups, EvalConfig(folds=2, train=small_train()))
    for scenario in ("group", "random"):
        sc = report["scenarios"][scenario]
        ci = sc["intervals"]
        assert ci["unit"] == "photographer" and ci["n_units"] == 4 and ci["n_boot"] == 1000
        for m, s in sc["methods"].items():
            for stat in ("geoscore", "acc_25km", "acc_750km"):
                iv = ci["methods"][m][stat]
                assert iv["lo"] <= s[stat] + 1e-9 and s[stat] <= iv["hi"] + 1e-9, (m, stat, iv, s[stat])
                assert iv["estimate"] == pytest.approx(s[stat])
        prior = ci["paired"]["model_minus_prior_constant"]
        assert prior["estimate"] == pytest.approx(sc["methods"]["model"]["geoscore"] - sc["methods"]["prior_constant"]["geoscore"])
        assert prior["lo"] <= prior["estimate"] <= prior["hi"]
        best = ci["paired"]["model_minus_best_baseline"]
        assert best["baseline"] not in ("model", "oracle")
        for key, c in sc["calibration"].items():
            iv = c["ece_interval"]
            assert iv["estimate"] == pytest.approx(c["ece"]) and 0 <= iv["lo"] <= iv["hi"] <= 1
        assert sc["prior_guard"]["folds"] == sc["folds_used"]
    # no photographers known: photos are resampled, and the report says so
    report = evaluate_cv(emb, lat, lon, None, EvalConfig(scenarios=("random",), folds=2, train=small_train()))
    ci = report["scenarios"]["random"]["intervals"]
    assert ci["unit"] == "photo" and ci["n_units"] == len(lat)
    header, table = format_methods_table(report, "random")
    assert "over photos" in header
    assert table.loc[table.method == "model", "GeoScore"].str.match(r"^\d+ \[\d+, \d+\]$").all()


def test_prior_guard_is_counted_per_fold(monkeypatch):
    """The guard is read from model.meta when training reports it; evaluate never requires it."""
    import geopin.evaluation.crossval as ev

    emb, lat, lon, groups = toy_data(3)
    cfg = EvalConfig(scenarios=("group",), folds=3, train=small_train())
    report = evaluate_cv(emb, lat, lon, groups, cfg)
    guard, per_photo = report["scenarios"]["group"]["prior_guard"], report["per_photo"]["group"]
    assert guard["folds"] == 3
    applied = per_photo.groupby("fold").prior_guard.first()
    assert guard["folds_reported"] == int(applied.notna().sum())
    assert guard["folds_applied"] == int(applied.fillna(False).sum())

    # a model that reports it applied in every fold, and one that does not report it at all
    real = ev.train_model

    def reporting(applied):
        def train(*args, **kwargs):
            model = real(*args, **kwargs)
            fit = model.meta.setdefault("fit_report", {})
            if applied is None:
                fit.pop("prior_guard", None)
            else:
                fit["prior_guard"] = {"applied": applied, "shrink": 0.5}
            return model
        return train

    monkeypatch.setattr(ev, "train_model", reporting(True))
    report = evaluate_cv(emb, lat, lon, groups, cfg)
    assert report["scenarios"]["group"]["prior_guard"] == {"folds": 3, "folds_reported": 3, "folds_applied": 3}
    assert report["per_photo"]["group"]["prior_guard"].all()
    assert "prior guard applied in 3 of 3 folds" in format_methods_table(report, "group")[0]
    monkeypatch.setattr(ev, "train_model", reporting(None))
    report = evaluate_cv(emb, lat, lon, groups, cfg)
    assert report["scenarios"]["group"]["prior_guard"] == {"folds": 3, "folds_reported": 0, "folds_applied": 0}
    assert report["per_photo"]["group"]["prior_guard"].isna().all()


# ------------------------------------------------------------------ the command, on real photos


@pytest.fixture(scope="module")
def three_photographers(tmp_path_factory) -> Path:
    """A manifest and real embeddings of 24 generated photos by 3 photographers."""
    from geopin.features.embed import EmbedConfig, embed_manifest

    root = tmp_path_factory.mktemp("three")
    ds = three_photographer_dataset(root)
    embed_manifest(ds / "manifest.parquet", ds / "emb", EmbedConfig(long_side=96, cache_dir=root / "cache"))
    return ds


def test_evaluate_command_with_more_folds_than_photographers(three_photographers, tmp_path):
    from geopin.cli import app

    ds = three_photographers
    args = ["evaluate", str(ds / "manifest.parquet"), "--embeddings", str(ds / "emb"), "--out", str(tmp_path / "ev"),
            "--folds", "5", "--scenario", "group"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 of 5 folds" in r.output
    assert "GeoScore" in r.output and "[" in r.output
    doc = json.loads((tmp_path / "ev" / "report.json").read_text())
    g = doc["scenarios"]["group"]
    assert (g["folds_requested"], g["folds_used"]) == (5, 3) and "3 photographers" in g["note"]
    assert g["intervals"]["unit"] == "photographer"
    per_photo = pd.read_parquet(tmp_path / "ev" / "predictions_group.parquet")
    assert {"w_prior", "w_clf", "w_knn", "prior_guard"} <= set(per_photo.columns)


def test_evaluate_command_that_cannot_run_says_why_in_one_line(three_photographers, tmp_path):
    from geopin.cli import app
    from geopin.dataset.manifest import read_manifest

    ds = three_photographers
    man = read_manifest(ds / "manifest.parquet")
    one = tmp_path / "one.parquet"
    man.assign(group="everyone").to_parquet(one)
    r = CliRunner().invoke(app, ["evaluate", str(one), "--embeddings", str(ds / "emb"), "--out", str(tmp_path / "ev"),
                                 "--scenario", "group"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("geopin evaluate: no scenario can run") and "1 photographer" in lines[-1]
    assert "Traceback" not in r.output
    r = CliRunner().invoke(app, ["evaluate", str(ds / "manifest.parquet"), "--embeddings", str(ds / "emb"),
                                 "--out", str(tmp_path / "ev"), "--scenario", "groups"])
    assert r.exit_code == 2 and "scenario 'groups': choose from group, random" in r.output
