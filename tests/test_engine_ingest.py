"""`geopin ingest|build --engine ray`: the local path's manifest and rejects row for row, downloads on the workers,
resume by partition (only a lost partition's URLs are fetched again), and a worker failure kept as reject rows."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the engine tests need Ray: pip install 'geopin[cluster]'")
from ray import cloudpickle  # Ray's own copy: the one that pickles task arguments
from synthetic import PhotoServer, SyntheticConfig, synthetic_photos

from geopin.cli import app
from geopin.dataset.fetch import FetchConfig
from geopin.dataset.ingest import (
    _PART_SCHEMA,
    REJECT_REASONS,
    IngestConfig,
    _engine_chunk,
    _options,
    _split_and_dedup,
    _Task,
    _worker_failed_row,
)
from geopin.scale.engine import (
    PARTS_DIR,
    EngineConfig,
    map_partitions,
    part_path,
    read_parts,
)

# The small functions below run inside Ray workers, which cannot import this test module: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PART = 8  # rows per partition in these tests
FAST = ["--long-side", "128", "--epochs", "15", "--hidden", "64", "--k", "8", "--inner-folds", "3", "--folds", "4"]
RUN_OPTS = ["--workers", "1", "--group-col", "author", "--retries", "3", "--timeout", "5"]


@pytest.fixture(scope="module")
def server():
    _, photos = synthetic_photos(SyntheticConfig(n=30, n_authors=4, seed=5))
    with PhotoServer(photos, flaky_failures=2) as srv:
        srv.names = list(photos)
        yield srv


def _local_photo(path: Path, seed: int, size=(160, 120)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize(size, Image.BILINEAR).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def mixed_table(server, tmp_path_factory) -> Path:
    """60 rows, partitions of 8: local photos (good, truncated, too small, bad coordinates, a duplicate, missing,
    empty) and URLs (good, 404, cut in half, HTML, flaky 503, one URL twice in partition 2, one URL in partitions
    0 and 6, a URL with bad coordinates that must not be fetched, two URLs with the same bytes)."""
    root = tmp_path_factory.mktemp("mixed")
    names, url = server.names, server.url
    good = [_local_photo(root / f"g{i:02d}.jpg", i) for i in range(14)]
    (root / "truncated.jpg").write_bytes(good[0].read_bytes()[:400])
    _local_photo(root / "small.jpg", 99, size=(40, 30))
    shutil.copyfile(good[3], root / "dup_of_g03.jpg")
    (root / "empty.jpg").write_bytes(b"")
    rows: list[tuple] = []
    # partition 0 (rows 0-7)
    rows += [("g00.jpg", 10.0, 20.0), (f"{url}/p/{names[0]}", 11.0, 21.0), ("truncated.jpg", 12.0, 22.0),
             (f"{url}/missing/{names[1]}", 13.0, 23.0), ("g01.jpg", 14.0, 24.0), (f"{url}/p/{names[2]}", 15.0, 25.0),
             ("small.jpg", 16.0, 26.0), (f"{url}/p/{names[3]}", 17.0, 27.0)]
    # partition 1 (rows 8-15)
    rows += [("g02.jpg", 95.0, 20.0), (f"{url}/broken/{names[4]}", 18.0, 28.0), ("g03.jpg", 19.0, 29.0),
             (f"{url}/html/x", 20.0, 30.0), ("missing.jpg", 21.0, 31.0), (f"{url}/p/{names[5]}", 22.0, 32.0),
             ("g04.jpg", "north", 33.0), (f"{url}/flaky/{names[6]}", 23.0, 33.0)]
    # partition 2 (rows 16-23): names[7] twice, a URL with bad coordinates (never fetched)
    rows += [(f"{url}/p/{names[7]}", 24.0, 34.0), ("g05.jpg", 25.0, 35.0), (f"{url}/p/{names[8]}", 0.0, 0.0),
             (f"{url}/p/{names[7]}", 24.0, 34.0), ("dup_of_g03.jpg", 26.0, 36.0), (f"{url}/p/{names[9]}", 27.0, 37.0),
             ("empty.jpg", 28.0, 38.0), (f"{url}/p/{names[10]}", 29.0, 39.0)]
    # partitions 3-5 (rows 24-47): good photos of both kinds; /flaky/ of names[11] stores the same bytes as /p/
    for i in range(24):
        if i in (0, 2):
            image = f"{url}/{'p' if i == 0 else 'flaky'}/{names[11]}"
        elif i % 2:
            image = f"{url}/p/{names[12 + i // 2]}"
        else:
            image = f"g{6 + i // 2 % 8:02d}.jpg"  # g06-g13, some listed twice: the repeat is a duplicate
        rows.append((image, -10.0 - i, 100.0 + i))
    # partition 6-7 (rows 48-59): names[0] again (also in partition 0), more good rows
    rows += [(f"{url}/p/{names[0]}", 11.0, 21.0)]
    rows += [(f"{url}/p/{names[24 + i % 6]}", 40.0 + i, -10.0 - i) if i % 2 else (f"g{i % 14:02d}.jpg", 45.0 + i, -5.0)
             for i in range(11)]
    assert len(rows) == 60
    df = pd.DataFrame(rows, columns=["image", "lat", "lon"])
    df["author"] = [f"a{i % 3}" for i in range(len(df))]
    path = root / "labels.csv"
    df.to_csv(path, index=False)
    return path


def _invoke(args: list[str]) -> dict:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def _comparable(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest and rejects with the store folder (one per output here) cut from the paths."""
    store = str(out / "photos")
    man, rej = pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(out / "rejects.parquet")
    for df in (man, rej):
        df["path"] = df["path"].str.replace(store, "<store>", regex=False)
    return man, rej


def _hits(server, before: Counter) -> Counter:
    return server.hits - before


@pytest.fixture(scope="module")
def local_run(mixed_table, server, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "ds"
    before = server.hits
    summary = _invoke(["ingest", str(mixed_table), "--out", str(out), "--json", *RUN_OPTS])
    return out, summary, _hits(server, before)


def test_ingest_on_two_workers_equals_the_local_path_and_resumes_by_partition(cluster, mixed_table, server,
                                                                               local_run, tmp_path):
    local_out, local_summary, _ = local_run
    out = tmp_path / "ds"
    before = server.hits
    summary = _invoke(["ingest", str(mixed_table), "--out", str(out), "--json", *RUN_OPTS, "--engine", "ray",
                       "--engine-workers", "2", "--partition-size", str(PART)])
    hits = _hits(server, before)

    man, rej = _comparable(out)
    local_man, local_rej = _comparable(local_out)
    pd.testing.assert_frame_equal(man, local_man)
    pd.testing.assert_frame_equal(rej, local_rej)
    assert summary["reasons"] == local_summary["reasons"]
    assert summary["n_input"] == 60 and summary["n_kept"] == local_summary["n_kept"] > 30
    reasons = dict(zip(rej["id"], rej["reason"]))
    names = server.names
    assert reasons[f"{server.url}/missing/{names[1]}"] == "download_failed"
    assert reasons[f"{server.url}/broken/{names[4]}"] == "truncated"
    assert reasons[f"{server.url}/html/x"] == "not_an_image"
    assert reasons[f"{server.url}/p/{names[8]}"] == "coords_null_island"
    assert reasons[f"{server.url}/flaky/{names[11]}"] == "duplicate"  # same bytes as /p/ of it: stored once
    assert {"truncated.jpg", "small.jpg", "g02.jpg", "g04.jpg", "dup_of_g03.jpg", "missing.jpg", "empty.jpg"} <= set(rej["id"])
    assert f"{server.url}/p/{names[7]}" in set(man["id"])  # listed twice: kept once, the repeat a duplicate
    # downloads happened on the workers, not on the driver: no ledger; the store is content-addressed
    store = out / "photos"
    assert not (store / "ledger.jsonl").exists() and (local_out / "photos" / "ledger.jsonl").exists()
    assert sorted(p.name for p in (store / "objects").rglob("*.jpg")) == \
        sorted(p.name for p in (local_out / "photos" / "objects").rglob("*.jpg"))
    assert hits[f"/p/{names[7]}"] == 1  # twice in one partition: fetched once
    assert hits[f"/p/{names[8]}"] == 0  # bad coordinates: never fetched
    assert 1 <= hits[f"/p/{names[0]}"] <= 2  # in partitions 0 and 6: may be fetched by both, stored once
    assert summary["engine"]["computed"] == 8 and summary["engine"]["workers"] == 2  # both Ray workers took parts
    parts = out / PARTS_DIR
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == [part_path(parts, k).name for k in range(8)]

    # resume: partition 2 lost; a rerun redoes only it and fetches only its URLs again
    part_path(parts, 2).unlink()
    manifest_before = (out / "manifest.parquet").read_bytes()
    before = server.hits
    again = _invoke(["ingest", str(mixed_table), "--out", str(out), "--json", *RUN_OPTS, "--engine", "ray",
                     "--engine-workers", "2", "--partition-size", str(PART)])
    assert again["n_resumed"] == 60 - PART and again["engine"]["computed"] == 1
    assert _hits(server, before) == Counter({f"/p/{names[7]}": 1, f"/p/{names[9]}": 1, f"/p/{names[10]}": 1})
    assert (out / "manifest.parquet").read_bytes() == manifest_before
    pd.testing.assert_frame_equal(pd.read_parquet(out / "rejects.parquet"), pd.read_parquet(local_out / "rejects.parquet")
                                  .assign(path=lambda d: d["path"].str.replace(str(local_out), str(out), regex=False)))

    # a rerun with nothing lost fetches nothing
    before = server.hits
    third = _invoke(["ingest", str(mixed_table), "--out", str(out), "--json", *RUN_OPTS, "--engine", "ray",
                     "--engine-workers", "2", "--partition-size", str(PART)])
    assert third["n_resumed"] == 60 and not _hits(server, before)


def _always_fails(tasks: list) -> list[dict]:
    raise MemoryError("worker ran out of memory")


def test_a_partition_that_keeps_failing_becomes_worker_failed_rejects(tmp_path):
    assert "worker_failed" in REJECT_REASONS
    tasks = [_Task(id=f"t{i}", path=f"/nowhere/t{i}.jpg", source_row=i, raw_lat=1.0, raw_lon=2.0) for i in range(3)]
    report = map_partitions(_always_fails, [tasks], tmp_path / "parts", EngineConfig("local", retries=1),
                            schema=_PART_SCHEMA, on_error=_worker_failed_row)
    assert report.failed == [0]
    table = pq.read_table(part_path(tmp_path / "parts", 0))
    kept, rejects = _split_and_dedup(table.replace_schema_metadata(None))
    assert kept.num_rows == 0
    assert rejects.column("reason").to_pylist() == ["worker_failed"] * 3
    assert rejects.column("id").to_pylist() == ["t0", "t1", "t2"]
    assert all("MemoryError: worker ran out of memory" in d for d in rejects.column("detail").to_pylist())


@pytest.fixture(scope="module")
def url_table(server, tmp_path_factory) -> Path:
    """24 URL rows by 4 photographers around a few cities (the synthetic table's own positions)."""
    table, _ = synthetic_photos(SyntheticConfig(n=30, n_authors=4, seed=5))
    table = table.iloc[:24]
    df = pd.DataFrame({"image": [f"{server.url}/p/{n}" for n in table["name"]], "lat": table["lat"],
                       "lon": table["lon"], "author": table["author"]})
    path = tmp_path_factory.mktemp("urls") / "labels.csv"
    df.to_csv(path, index=False)
    return path


def test_build_on_the_engine_runs_to_a_model_and_its_fingerprint_ignores_the_engine(cluster, url_table, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["build", str(url_table), "--out", str(out), "--cache-dir", str(cache), "--json", "--no-evaluate", *FAST]
    summary = _invoke([*args, "--engine", "ray", "--engine-workers", "2", "--partition-size", "8"])
    assert {s: r["status"] for s, r in summary["stages"].items()} == {
        "ingest": "done", "cells": "done", "split": "done", "embed": "done", "read": "done", "train": "done"}
    assert summary["stages"]["ingest"]["summary"]["n_kept"] == 24
    assert (out / "dataset" / PARTS_DIR / "part-00002.parquet").exists()  # ingest ran on the engine
    assert json.loads((out / "emb" / "embeddings.json").read_text())["engine"]["n_partitions"] == 3  # so did embed
    assert (out / "readings" / PARTS_DIR / "part-00002.parquet").exists()  # and the text reading
    assert (out / "model" / "model.json").exists()
    again = _invoke(args)  # the local engine: same results, so nothing to redo
    assert {r["status"] for r in again["stages"].values()} == {"skipped"}


def _ingest_chunk_and_modules(store: str, tasks: list) -> list[dict]:
    """The engine's ingest partition as it runs on a worker, plus what that worker process had to import."""
    rows = _engine_chunk(tasks, _options(IngestConfig(), from_exif=False), store, FetchConfig(retries=0, timeout_s=5))
    return [{"id": r["id"], "reason": r["reason"], "torch_loaded": "torch" in sys.modules} for r in rows]


def _torch_threads(state, items: list) -> list[dict]:
    import torch

    return [{"item": i, "threads": torch.get_num_threads(), "state": state} for i in items]


def _setup_with_torch() -> str:
    import torch  # as the embed and predict setups do: the model needs it

    return f"torch {torch.__version__}"


def test_an_ingest_worker_does_not_pay_for_importing_torch(cluster, server, tmp_path):
    """Ingest needs no torch: its import (2-8 s on a busy 2-core machine) was a third of a 5,000-URL job's time."""
    import functools

    photo = _local_photo(tmp_path / "local.jpg", 1)
    tasks = [_Task(id=f"{server.url}/p/{server.names[i]}", path=f"{server.url}/p/{server.names[i]}", source_row=i,
                   raw_lat=10.0 + i, raw_lon=20.0) for i in range(3)]
    tasks.append(_Task(id="local.jpg", path=str(photo), source_row=3, raw_lat=1.0, raw_lon=2.0))
    parts = tmp_path / "parts"
    report = map_partitions(functools.partial(_ingest_chunk_and_modules, str(tmp_path / "store")), [tasks[:2], tasks[2:]],
                            parts, EngineConfig("ray", workers=2, partition_size=2))
    assert report.failed == [] and len(report.workers) == 2
    table = read_parts(parts, 2).to_pylist()
    assert [r["reason"] for r in table] == [None] * 4  # the photos were downloaded and checked
    assert [r["torch_loaded"] for r in table] == [False] * 4


def test_a_worker_whose_setup_imports_torch_still_gets_its_share_of_the_threads(cluster, tmp_path):
    """torch is set to cpus_per_worker threads once something loads it, not by importing it up front."""
    parts = tmp_path / "parts"
    report = map_partitions(_torch_threads, [[0, 1], [2, 3]], parts, EngineConfig("ray", workers=2, partition_size=2),
                            setup=_setup_with_torch)
    assert report.failed == []
    rows = read_parts(parts, 2).to_pylist()
    assert [r["threads"] for r in rows] == [1] * 4 and rows[0]["state"].startswith("torch ")
