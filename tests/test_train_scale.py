"""The learning stages at scale: memory-mapped embeddings read in chunks, bounded refits, a quantised gallery.

The sizes are small enough for a test, chosen so that the old code's (photos x cells) label matrix
or whole-matrix copies show in the peak memory of a separate process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train import FAST, SITES, synthetic

from geopin.locate.heads import (
    ClassifierConfig,
    Gallery,
    effective_epochs,
    iter_rows,
    take_rows,
    train_classifier,
)
from geopin.locate.train import TrainConfig, fit_heads, out_of_fold, train_model


def clustered(n: int, dim: int, seed: int = 0, centres: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    return c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)


def test_epochs_shrink_with_the_photos_seen_but_never_below_one():
    cfg = ClassifierConfig(epochs=40)
    assert effective_epochs(2_652, cfg) == 40  # the shared set: unchanged
    assert effective_epochs(25_000, cfg) == 40
    assert effective_epochs(100_000, cfg) == 10
    assert effective_epochs(1_000_000, cfg) == 1
    assert effective_epochs(5_000_000, cfg) == 1
    assert effective_epochs(1_000_000, ClassifierConfig(max_samples=0)) == 40


def test_batchwise_soft_labels_are_the_full_matrix_rows():
    """Above a size the soft labels are made per batch from unit vectors; they must be smoothed_targets' rows."""
    import torch

    from geopin.geo import to_xyz
    from geopin.locate.heads import soft_labels, smoothed_targets

    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-89, 89, 300), rng.uniform(-180, 180, 300)
    lat[:5], lon[:5] = 48.8566, 2.3522  # on a cell's point: distance 0
    r_lat, r_lon = np.r_[48.8566, rng.uniform(-89, 89, 499)], np.r_[2.3522, rng.uniform(-180, 180, 499)]
    full = smoothed_targets(lat, lon, r_lat, r_lon, 75.0)
    xyz = torch.from_numpy(to_xyz(lat, lon).reshape(-1, 3))
    batch = soft_labels(xyz, torch.from_numpy(to_xyz(r_lat, r_lon).reshape(-1, 3)), 75.0).numpy()
    assert batch.dtype == np.float32 and batch.shape == full.shape
    assert np.allclose(batch, full, atol=1e-5, rtol=1e-4)


def test_batchwise_path_trains_a_classifier_as_good_as_the_dense_one(monkeypatch):
    import geopin.locate.heads as heads
    from geopin.locate.heads import classifier_logits

    df, emb = synthetic(n_per_site=20)
    lat, lon = df.lat.to_numpy(), df.lon.to_numpy()
    reps = [(np.array([s[0] for s in SITES]), np.array([s[1] for s in SITES]))]
    cfg = ClassifierConfig(epochs=20, hidden=16, batch_size=32)
    dense = train_classifier(emb, lat, lon, reps, cfg)
    monkeypatch.setattr(heads, "_DENSE_TARGET_BYTES", 0)  # the batch-by-batch labels
    monkeypatch.setattr(heads, "_DENSE_INPUT_BYTES", 0)  # float16 inputs, moments by chunks
    batched = train_classifier(emb, lat, lon, reps, cfg)
    assert np.allclose(batched.mu.numpy(), dense.mu.numpy(), atol=1e-6)
    assert np.allclose(batched.sd.numpy(), dense.sd.numpy(), atol=1e-5)
    a = classifier_logits(dense, emb)[0].argmax(1)
    b = classifier_logits(batched, emb)[0].argmax(1)
    assert np.mean(a == df.site.to_numpy()) > 0.9 and np.mean(a == b) > 0.97


def test_take_rows_and_iter_rows_read_a_memory_map_as_float32(tmp_path):
    emb = clustered(1000, 16)
    np.save(tmp_path / "e.npy", emb)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    rows = np.array([3, 999, 0, 500])
    assert np.array_equal(take_rows(mm, rows, chunk=3), emb[rows])
    back = np.concatenate([c for _, c in iter_rows(mm, chunk=300)])
    assert back.dtype == np.float32 and np.array_equal(back, emb)


def test_large_gallery_is_ivf_with_8_bit_vectors_and_finds_the_exact_neighbours(tmp_path):
    """Above exact_max the gallery is IVF-SQ8 (a quarter of IVFFlat's memory) built from a memory map."""
    import faiss

    emb = clustered(6000, 64)
    np.save(tmp_path / "e.npy", emb)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    big = Gallery(mm, exact_max=1000)
    exact = Gallery(emb)
    assert isinstance(big.index, faiss.IndexIVFScalarQuantizer)
    assert big.index.code_size == 64  # one byte per dimension
    assert np.allclose(big.mu, exact.mu, atol=1e-6)
    q = emb[:200] + 0.1 * np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    _, i_big = big.search(q, 10)
    _, i_exact = exact.search(q, 10)
    recall1 = np.mean(i_big[:, 0] == i_exact[:, 0])
    recall10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_big, i_exact)])
    assert recall1 >= 0.9 and recall10 >= 0.8, (recall1, recall10)


def test_inner_folds_refit_on_at_most_max_fold_photos(caplog):
    df, emb = synthetic(n_per_site=40)
    cfg = TrainConfig(
        granularities=FAST.granularities, classifier=ClassifierConfig(epochs=2), k=4, inner_folds=3, max_fold_photos=150,
        scale_inner_folds=0,
    )
    with caplog.at_level("INFO", logger="geopin.locate.train"):
        oof = out_of_fold(emb, df.lat.to_numpy(), df.lon.to_numpy(), df.group.to_numpy(), cfg)
    assert sum("max_fold_photos" in r.getMessage() for r in caplog.records) == 3
    for places in oof.places:  # the prior counts the photos the heads were fit on
        counts = places.prior * 150
        assert np.allclose(counts, np.round(counts))


@pytest.mark.parametrize("max_fold_photos, expected", [(100, 2), (0, 3), (10_000, 3)])
def test_sets_of_four_capped_folds_or_more_fit_the_posterior_on_fewer_folds(max_fold_photos, expected):
    df, emb = synthetic(n_per_site=40)
    assert 4 * 100 <= len(df) < 4 * 10_000
    cfg = TrainConfig(granularities=FAST.granularities, classifier=ClassifierConfig(epochs=2), k=4, inner_folds=3,
                      max_fold_photos=max_fold_photos)
    oof = out_of_fold(emb, df.lat.to_numpy(), df.lon.to_numpy(), df.group.to_numpy(), cfg)
    assert len(oof.places) == expected
    held_out = np.concatenate(oof.rows)
    assert len(np.unique(held_out)) == len(held_out)


def test_clustered_gallery_keeps_at_most_k_per_cell_at_real_photo_spots(tmp_path):
    df, emb = synthetic(n_per_site=40)
    lat, lon = df.lat.to_numpy(), df.lon.to_numpy()
    cfg = TrainConfig(granularities=FAST.granularities, classifier=ClassifierConfig(epochs=2), k=4, gallery_per_cell=3)
    heads = fit_heads(emb, lat, lon, cfg)
    full = fit_heads(emb, lat, lon, TrainConfig(granularities=FAST.granularities, classifier=ClassifierConfig(epochs=2), k=4))
    n_places = len(heads.places.lat)
    assert len(heads.gallery) < len(full.gallery)
    kept = pd.Series(heads.gallery_place)
    assert (kept[kept >= 0].value_counts() <= 3).all()
    assert len(kept[kept >= 0].unique()) == (full.gallery_place >= 0).any() * len(np.unique(full.gallery_place[full.gallery_place >= 0]))
    assert n_places > 0
    spots = set(zip(lat.round(9), lon.round(9)))
    assert all((a, b) in spots for a, b in zip(heads.gallery_lat.round(9), heads.gallery_lon.round(9)))
    model = train_model(emb, lat, lon, df.group.to_numpy(), TrainConfig(
        granularities=FAST.granularities, classifier=ClassifierConfig(epochs=2), k=4, inner_folds=3, gallery_per_cell=3))
    from geopin.locate.model import GeoModel

    again = GeoModel.load(model.save(tmp_path / "m"))
    assert len(again.heads.gallery) == len(model.heads.gallery) < len(emb)
    assert len(again.predict_embeddings(emb[:5])) == 5


_TRAIN_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from geopin.dataset.cells import Granularity
    from geopin.locate.heads import ClassifierConfig
    from geopin.locate.train import TrainConfig, train
    folder = sys.argv[1]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = TrainConfig(
        granularities=[Granularity("coarse", 400, 5), Granularity("fine", 25, 5)],
        classifier=ClassifierConfig(epochs=1, hidden=0), k=4, inner_folds=2, max_fit_photos=500,
    )
    model = train(folder + "/manifest.parquet", folder + "/emb", folder + "/model", cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "classes": model.heads.classifier.n_classes}))
    """
)


def _write_set(folder: Path, n: int, dim: int) -> None:
    from geopin.dataset.manifest import MANIFEST_COLUMNS
    from geopin.features.embed import EMBEDDINGS_JSON, EMBEDDINGS_NPY, ids_digest
    from geopin.io import write_json, write_parquet

    rng = np.random.default_rng(0)
    centres = rng.uniform([-50, -180], [65, 180], size=(300, 2))
    city = rng.integers(0, 300, n)
    lat = np.clip(centres[city, 0] + rng.normal(0, 0.3, n), -89, 89)
    lon = (centres[city, 1] + rng.normal(0, 0.3, n) + 180) % 360 - 180
    ids = [f"p{i}" for i in range(n)]
    man = pd.DataFrame({"id": ids, "path": ids, "lat": lat, "lon": lon, "group": [f"g{c}_{i % 3}" for i, c in enumerate(city)],
                        "width": 10, "height": 10, "sha256": ids, "source_row": np.arange(n)})[list(MANIFEST_COLUMNS)]
    (folder / "emb").mkdir(parents=True)
    arr = np.lib.format.open_memmap(folder / "emb" / EMBEDDINGS_NPY, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, 20_000):
        e = min(n, s + 20_000)
        arr[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32) + lat[s:e, None] / 30
    arr.flush()
    del arr
    write_parquet(man, folder / "manifest.parquet")
    write_json({"backbone": "synthetic", "dim": dim, "n": n, "ids_sha256": ids_digest(man["id"])}, folder / "emb" / EMBEDDINGS_JSON)


def test_train_from_files_stays_within_a_memory_budget(tmp_path):
    """60k photos, 1,000+ fine cells: the old (photos x cells) float64 labels and whole-matrix copies took GBs."""
    n, dim = 60_000, 512  # embeddings: 123 MB on disk
    _write_set(tmp_path, n, dim)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("GEOPIN_SRC"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["classes"][-1] > 1000
    assert res["peak_mb"] - res["base_mb"] < 1024, res  # the code before: 8,590 MB more
