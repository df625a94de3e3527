"""`geopin build`: one command from a table to a model; reruns skip finished stages; a kill resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_pipeline import SITES, geopin, site_photo

FAST = ["--long-side", "128", "--epochs", "15", "--hidden", "64", "--k", "8", "--inner-folds", "3", "--folds", "4"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """60 photos of 5 sites by 4 photographers, listed in a CSV with an author column (no EXIF needed)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = []
    for s, (lat, lon) in enumerate(SITES):
        for i in range(12):
            name = f"site{s}_{i}.jpg"
            site_photo(s, i, rng).save(root / name, quality=92)
            rows.append({"image": name, "lat": lat + rng.normal(0, 0.01), "lon": lon + rng.normal(0, 0.01),
                         "author": f"photographer{i % 4}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def build_args(table: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["build", str(table), "--out", str(out), "--cache-dir", str(cache), "--json", *FAST, *extra]


def statuses(summary: dict) -> dict[str, str]:
    return {name: rec["status"] for name, rec in summary["stages"].items()}


def row_counts(out: Path) -> dict[str, int]:
    return {
        "manifest": len(pd.read_parquet(out / "dataset" / "manifest.parquet")),
        "rejects": len(pd.read_parquet(out / "dataset" / "rejects.parquet")),
        "split": len(pd.read_parquet(out / "split.parquet")),
        "embeddings": int(np.load(out / "emb" / "embeddings.npy").shape[0]),
        "model_train": json.loads((out / "build.json").read_text())["stages"]["train"]["summary"]["n_train"],
    }


def test_build_end_to_end_then_rerun_skips_every_stage(table, tmp_path):
    out, cache = tmp_path / "b", tmp_path / "cache"
    r = geopin(*build_args(table, out, cache), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert statuses(first) == {s: "done" for s in ("ingest", "cells", "split", "embed", "read", "train", "evaluate")}
    assert first["group_col"] == "author"  # found without being told
    assert first["split"]["by"] == "group"
    assert first["stages"]["train"]["summary"]["n_train"] == 60
    assert (out / "eval" / "report.json").is_file() and (out / "cells" / "cells.json").exists()

    probe = tmp_path / "probe.jpg"
    site_photo(2, 99, np.random.default_rng(5)).save(probe)  # a new photo of the Sydney site
    r = geopin("predict", str(probe), "--model", first["model"], "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [res] = json.loads(r.stdout)
    assert np.isfinite(res["lat"]) and np.isfinite(res["lon"])

    # a download killed in an earlier run left a part file; the up-to-date rerun (ingest skipped) removes it
    tmp_dir = out / "dataset" / "photos" / "tmp"
    made = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from geopin.dataset.fetch import _part_prefix; "
                           "p = Path(sys.argv[1]) / (_part_prefix() + 'x.part'); p.parent.mkdir(parents=True); "
                           "p.touch(); print(p)", str(tmp_dir)], capture_output=True, text=True, check=True)
    leftover = Path(made.stdout.strip())
    assert leftover.exists()

    # the human-readable rerun: every stage skipped, the evaluation table and the model path still printed
    t0 = time.perf_counter()
    r = geopin(*[a for a in build_args(table, out, cache) if a != "--json"], cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skipped") >= 7 and "model:" in r.stdout and "GeoScore" in r.stdout  # the table, reprinted
    assert seconds < first["seconds"], (seconds, first["seconds"])
    assert not leftover.exists(), "an up-to-date build left a dead download's part file"
    ledger = json.loads((out / "build.json").read_text())
    assert set(ledger["stages"]) == {"ingest", "cells", "split", "embed", "read", "train", "evaluate"}


def test_changed_table_reruns_ingest_and_later_stages(table, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(table.parent, src)
    out, cache = tmp_path / "b", tmp_path / "cache"
    r = geopin(*build_args(src / "labels.csv", out, cache, "--no-evaluate"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "evaluate" not in json.loads(r.stdout)["stages"]

    df = pd.read_csv(src / "labels.csv")
    site_photo(0, 50, np.random.default_rng(9)).save(src / "extra.jpg", quality=92)
    df.loc[len(df)] = {"image": "extra.jpg", "lat": SITES[0][0], "lon": SITES[0][1], "author": "photographer0"}
    df.to_csv(src / "labels.csv", index=False)
    r = geopin(*build_args(src / "labels.csv", out, cache, "--no-evaluate"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert statuses(again) == {s: "done" for s in ("ingest", "cells", "split", "embed", "read", "train")}
    assert again["stages"]["train"]["summary"]["n_train"] == 61
    assert again["stages"]["embed"]["summary"]["n_cached"] == 60  # only the new photo was embedded


def test_killed_build_resumes_to_the_same_outputs(table, tmp_path):
    cmd = [sys.executable, "-c", "from geopin.cli import main; main()"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(cmd + build_args(table, killed, tmp_path / "cache1", "--no-evaluate"),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = killed / "build.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the split is recorded: in embed or train
        if ledger.is_file() and "split" in json.loads(ledger.read_text() or "{}").get("stages", {}):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "train" not in json.loads(ledger.read_text())["stages"]

    r = geopin(*build_args(table, killed, tmp_path / "cache1", "--no-evaluate"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = json.loads(r.stdout)
    assert statuses(resumed)["ingest"] == "skipped" and statuses(resumed)["train"] == "done"

    r = geopin(*build_args(table, clean, tmp_path / "cache2", "--no-evaluate"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert row_counts(killed) == row_counts(clean)


def test_ingest_that_keeps_nothing_stops_with_exit_1(tmp_path):
    (tmp_path / "t.csv").write_text("image,lat,lon\nmissing.jpg,10,10\n")
    r = geopin("build", str(tmp_path / "t.csv"), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]  # the log lines come before the one-line verdict
    assert last.startswith("geopin build:") and "kept no photos of 1 (file_missing 1)" in last
    assert "Traceback" not in r.stderr


def test_bad_input_is_one_line_exit_2(tmp_path):
    r = geopin("build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("geopin build:") and "nope.csv" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "t.csv").write_text("picture,lat,lon\na.jpg,1,2\n")
    r = geopin("build", str(tmp_path / "t.csv"), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("geopin build:") and "image" in last and "Traceback" not in r.stderr
