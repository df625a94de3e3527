"""Photographer-disjoint and random splits and folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from geopin.cli import app
from geopin.dataset.splits import (
    SplitConfig,
    group_kfold,
    group_split,
    random_kfold,
    random_split,
    run_split,
)

# Group labels drawn from a small alphabet so that groups repeat; None = unknown photographer.
group_arrays = st.lists(st.one_of(st.sampled_from([f"u{i}" for i in range(12)]), st.none()), min_size=1, max_size=120)


def group_sizes(groups) -> dict:
    """Photos per group, with each null its own group (keyed by position)."""
    sizes: dict = {}
    for i, g in enumerate(groups):
        key = ("null", i) if g is None else g
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


def assert_groups_not_split(groups, labels):
    seen: dict = {}
    for g, lab in zip(groups, labels):
        if g is None or pd.isna(g):
            continue
        assert seen.setdefault(g, lab) == lab, f"group {g} is in both {seen[g]} and {lab}"


@given(group_arrays, st.integers(2, 6), st.integers(0, 2**31))
@settings(deadline=None)
def test_group_kfold_keeps_groups_whole_and_balances(groups, k, seed):
    n_groups = len(group_sizes(groups))
    if n_groups < k:
        with pytest.raises(ValueError, match="cannot fill"):
            group_kfold(groups, k, seed)
        return
    folds = group_kfold(groups, k, seed)
    assert folds.shape == (len(groups),) and folds.dtype == np.int64
    assert set(folds.tolist()) <= set(range(k))
    assert_groups_not_split(groups, folds)
    # Greedy largest-first into the lightest fold: loads differ by at most the largest group.
    loads = np.bincount(folds, minlength=k)
    assert loads.max() - loads.min() <= max(group_sizes(groups).values())
    assert loads.min() > 0
    np.testing.assert_array_equal(folds, group_kfold(groups, k, seed))


@given(group_arrays, st.floats(0.05, 0.95), st.integers(0, 2**31))
@settings(deadline=None)
def test_group_split_keeps_groups_whole_near_the_fraction(groups, fraction, seed):
    is_val = group_split(groups, fraction, seed)
    assert is_val.shape == (len(groups),) and is_val.dtype == bool
    assert_groups_not_split(groups, is_val)
    assert abs(is_val.sum() - fraction * len(groups)) <= max(group_sizes(groups).values())
    np.testing.assert_array_equal(is_val, group_split(groups, fraction, seed))


def test_nulls_are_their_own_groups():
    folds = group_kfold([None] * 10, k=5, seed=0)
    assert np.bincount(folds).tolist() == [2, 2, 2, 2, 2]
    # NaN and "" count as unknown too.
    folds = group_kfold([np.nan, "", None, "a", "a"], k=4, seed=0)
    assert folds[3] == folds[4] and len(set(folds.tolist())) == 4


def test_seed_changes_the_split_and_row_order_does_not():
    rng = np.random.default_rng(0)
    groups = np.array([f"author{int(i)}" for i in rng.integers(0, 60, size=1000)], dtype=object)
    a, b = group_kfold(groups, 5, seed=0), group_kfold(groups, 5, seed=1)
    assert not np.array_equal(a, b)
    perm = rng.permutation(len(groups))
    np.testing.assert_array_equal(group_kfold(groups[perm], 5, seed=0), a[perm])
    np.testing.assert_array_equal(group_split(groups[perm], 0.2, seed=3), group_split(groups, 0.2, seed=3)[perm])


def test_many_small_groups_give_even_folds():
    groups = np.repeat(np.arange(200).astype(str), np.arange(200) % 7 + 1)
    loads = np.bincount(group_kfold(groups, 5, seed=0))
    assert loads.max() - loads.min() <= 7
    share = group_split(groups, 0.2, seed=0).mean()
    assert share == pytest.approx(0.2, abs=0.01)


@given(st.integers(2, 300), st.integers(2, 7), st.integers(0, 2**31))
@settings(deadline=None)
def test_random_kfold_balanced_and_deterministic(n, k, seed):
    if n < k:
        with pytest.raises(ValueError):
            random_kfold(n, k, seed)
        return
    folds = random_kfold(n, k, seed)
    loads = np.bincount(folds, minlength=k)
    assert loads.max() - loads.min() <= 1 and loads.sum() == n
    np.testing.assert_array_equal(folds, random_kfold(n, k, seed))


def test_random_split():
    is_val = random_split(1000, 0.2, seed=4)
    assert is_val.sum() == 200
    np.testing.assert_array_equal(is_val, random_split(1000, 0.2, seed=4))
    assert not np.array_equal(is_val, random_split(1000, 0.2, seed=5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="between 0 and 1"):
        group_split(["a", "b"], 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        group_kfold(["a", "b"], k=1)
    with pytest.raises(ValueError, match="2 group"):
        group_kfold(["a", "b", "b"], k=3)
    with pytest.raises(ValueError, match="'group' or 'random'"):
        SplitConfig(by="author")
    with pytest.raises(ValueError, match="either k"):
        SplitConfig(k=5, val_fraction=0.2)


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    groups = np.array([f"a{int(i)}" for i in rng.integers(0, 40, size=n)], dtype=object)
    groups[:5] = None
    df = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "lat": rng.uniform(-60, 60, n),
                       "lon": rng.uniform(-180, 180, n), "group": groups})
    path = tmp_path / "manifest.parquet"
    df.to_parquet(path, index=False)
    return path


def test_run_split_writes_folds_and_splits(manifest, tmp_path):
    df = pd.read_parquet(manifest)
    summary = run_split(manifest, tmp_path / "folds.parquet", SplitConfig(k=4, seed=2))
    folds = pd.read_parquet(tmp_path / "folds.parquet")
    assert list(folds.columns) == ["id", "fold"] and folds["id"].tolist() == df["id"].tolist()
    assert_groups_not_split(df["group"].tolist(), folds["fold"])
    assert sum(summary.sizes.values()) == len(df) and summary.n_groups == df["group"].nunique() + 5

    run_split(manifest, tmp_path / "split.parquet", SplitConfig(k=None, val_fraction=0.25, by="random", seed=2))
    split = pd.read_parquet(tmp_path / "split.parquet")
    assert list(split.columns) == ["id", "split"] and set(split["split"]) == {"train", "val"}
    assert (split["split"] == "val").sum() == 100

    no_group = tmp_path / "nogroup.parquet"
    df.drop(columns=["group"]).to_parquet(no_group)
    with pytest.raises(ValueError, match="no 'group' column"):
        run_split(no_group, tmp_path / "x.parquet")


def test_cli_split(manifest, tmp_path):
    runner = CliRunner()
    out = tmp_path / "folds.parquet"
    result = runner.invoke(app, ["split", str(manifest), "--out", str(out), "--k", "3", "--seed", "7", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["column"] == "fold" and sum(summary["sizes"].values()) == 400
    np.testing.assert_array_equal(
        pd.read_parquet(out)["fold"], group_kfold(pd.read_parquet(manifest)["group"], 3, seed=7)
    )
    result = runner.invoke(app, ["split", str(manifest), "--out", str(out), "--val-fraction", "0.2"])
    assert result.exit_code == 0 and "split sizes" in result.stdout
    both = runner.invoke(app, ["split", str(manifest), "--out", str(out), "--k", "3", "--val-fraction", "0.2"])
    assert both.exit_code == 2 and "not both" in both.output


def test_read_split_is_the_one_reader_of_split_files(tmp_path):
    from geopin.dataset.splits import read_split

    man = tmp_path / "m.csv"
    pd.DataFrame({"id": [f"p{i}" for i in range(10)], "group": [f"g{i % 5}" for i in range(10)]}).to_csv(man, index=False)
    run_split(man, tmp_path / "split.parquet", SplitConfig(k=None, val_fraction=0.4))
    train, val = read_split(tmp_path / "split.parquet"), read_split(tmp_path / "split.parquet", "val")
    assert sorted(train + val) == sorted(f"p{i}" for i in range(10)) and train and val
    with pytest.raises(ValueError, match=r"split\.parquet: no row has split 'test' \(it has 'train', 'val'\)"):
        read_split(tmp_path / "split.parquet", "test")
    run_split(man, tmp_path / "folds.parquet", SplitConfig(k=2))
    with pytest.raises(ValueError, match=r"folds\.parquet: not a split file: missing column\(s\) split"):
        read_split(tmp_path / "folds.parquet")
    with pytest.raises(FileNotFoundError, match="nothere.parquet"):
        read_split(tmp_path / "nothere.parquet")
