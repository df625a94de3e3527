"""The whole path a user takes, through the CLI, on generated geotagged photos (fresh machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import gps_exif_bytes

SITES = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153), (35.6586, 139.7454), (-22.9519, -43.2105)]


def geopin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("geopin")
    cmd = [exe] if exe else [sys.executable, "-c", "from geopin.cli import main; main()"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=600)


def site_photo(site: int, i: int, rng: np.random.Generator) -> Image.Image:
    """Each site has its own palette and stripe direction, so pixels carry its location."""
    h, w = 96, 128
    base = np.array([[200, 60, 40], [40, 160, 60], [40, 80, 200], [220, 200, 40], [150, 40, 180]][site], float)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin((xx * np.cos(site) + yy * np.sin(site)) / (3 + site)) * 50
    img = base[None, None, :] + stripes[..., None] + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trip")
    rng = np.random.default_rng(0)
    for s, (lat, lon) in enumerate(SITES):
        for i in range(12):
            who = root / f"photographer{i % 3}"
            who.mkdir(exist_ok=True)
            exif = gps_exif_bytes(lat + rng.normal(0, 0.01), lon + rng.normal(0, 0.01))
            site_photo(s, i, rng).save(who / f"site{s}_{i}.jpg", exif=exif, quality=92)
    (root / "photographer0" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_user_path_from_photo_folder_to_prediction(photo_folder, tmp_path):
    ds = tmp_path / "ds"
    r = geopin("ingest", str(photo_folder), "--out", str(ds), "--group-from", "subfolder", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_kept"] == 60 and summary["n_rejected"] == 1

    r = geopin("embed", str(ds / "manifest.parquet"), "--out", str(ds / "emb"), "--long-side", "128",
               "--cache-dir", str(tmp_path / "cache"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    r = geopin("train", str(ds / "manifest.parquet"), "--embeddings", str(ds / "emb"), "--out", str(tmp_path / "model"),
               "--granularity", "coarse:30:2", "--granularity", "fine:8:2", "--inner-folds", "3", "--k", "8",
               "--epochs", "20", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    trained = json.loads(r.stdout)
    assert trained["n_train"] == 60

    probe = tmp_path / "probe.jpg"
    site_photo(2, 99, np.random.default_rng(5)).save(probe)  # a new photo of the Sydney site
    r = geopin("predict", str(probe), "--model", str(tmp_path / "model"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [res] = json.loads(r.stdout)
    from geopin.geo import haversine_km

    assert haversine_km(res["lat"], res["lon"], *SITES[2]) < 25
    assert res["within_km"]["2500"] > 0.5
    assert res["exif_gps"] is None


def test_evaluate_compares_every_method_on_the_same_folds(photo_folder, tmp_path):
    ds = tmp_path / "ds"
    assert geopin("ingest", str(photo_folder), "--out", str(ds), "--group-from", "subfolder", cwd=tmp_path).returncode == 0
    assert geopin("embed", str(ds / "manifest.parquet"), "--out", str(ds / "emb"), "--long-side", "128",
                  "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path).returncode == 0
    from geopin.dataset.cells import Granularity
    from geopin.dataset.manifest import read_manifest
    from geopin.evaluation.crossval import EvalConfig, evaluate_cv
    from geopin.evaluation.plots import write_plots
    from geopin.features.embed import load_embeddings
    from geopin.locate.heads import ClassifierConfig
    from geopin.locate.train import TrainConfig

    man = read_manifest(ds / "manifest.parquet")
    emb, _ = load_embeddings(ds / "emb", man)
    cfg = EvalConfig(
        folds=3,
        train=TrainConfig(
            granularities=[Granularity("coarse", 30, 2), Granularity("fine", 8, 2)],
            classifier=ClassifierConfig(epochs=20), k=8, inner_folds=2,
        ),
    )
    report = evaluate_cv(emb, man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy(), cfg)
    for scenario in ("group", "random"):
        methods = report["scenarios"][scenario]["methods"]
        assert {"model", "classifier_hierarchical", "nearest_neighbour", "prior_constant", "oracle"} <= set(methods)
        assert methods["oracle"]["geoscore"] >= methods["model"]["geoscore"]
        assert methods["model"]["geoscore"] > methods["prior_constant"]["geoscore"]
        assert set(report["scenarios"][scenario]["calibration"]) == {"25", "200", "750", "2500"}
    plots = write_plots(report, tmp_path / "plots")
    assert len(plots) == 6 and all(p.stat().st_size > 1000 for p in plots)

    # the same through the command, with its defaults: report, per-photo predictions and plots
    r = geopin("evaluate", str(ds / "manifest.parquet"), "--embeddings", str(ds / "emb"), "--out", str(tmp_path / "ev"),
               "--folds", "3", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["scenarios"]) == {"group", "random"}
    assert (tmp_path / "ev" / "report.json").exists() and (tmp_path / "ev" / "predictions_group.parquet").exists()
    # the command adds similarity against distance in km (once on all photos) to the six per-scenario plots
    assert len(doc["plots"]) == 7 and any(Path(x).name == "similarity_km.png" for x in doc["plots"])
    assert "similarity_km" in doc
