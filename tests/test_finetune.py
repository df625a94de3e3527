"""`geopin finetune`: fine-tuning on cached prefix activations, the finetuned:DIR backbone, the CLI.

Real photos (generated with Pillow, ingested with geopin.dataset.ingest), the real EfficientNet-Lite0 weights,
no mocks. Three places on three continents; each place's photos share a palette and a texture, so a
fine-tuning that learns anything must pull each place's photos together.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from geopin.cli import app
from geopin.dataset.cells import Granularity
from geopin.dataset.ingest import IngestConfig, ingest
from geopin.dataset.manifest import read_manifest
from geopin.features.backbones import (
    BackboneUnavailable,
    backbone_status,
    create_backbone,
)
from geopin.features.embed import EmbedConfig, cache_key, embed_images, embed_manifest
from geopin.locate.finetune import FinetuneConfig, finetune
from geopin.locate.heads import ClassifierConfig
from geopin.locate.predict import PredictConfig, Predictor
from geopin.locate.train import TrainConfig, train

PLACES = [  # (lat, lon, base colour, stripe direction)
    (48.85, 2.35, (200, 60, 50), "h"),  # Paris
    (35.68, 139.69, (40, 150, 70), "v"),  # Tokyo
    (-33.87, 151.21, (60, 80, 210), "d"),  # Sydney... far from Tokyo, other hemisphere
]
PER_PLACE = 14
SMALL = dict(views=2, crop_size=64, epochs=3, batch_size=16, train_blocks=2, lr=1e-3, val_fraction=0.25)


def _photo(rng: np.random.Generator, colour, stripes: str) -> Image.Image:
    w, h = int(rng.integers(96, 128)), int(rng.integers(72, 96))
    base = np.clip(np.array(colour) + rng.normal(0, 25, 3), 0, 255)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    dark = tuple(int(c * 0.4) for c in base)
    for k in range(0, max(w, h), 12):
        if stripes == "h":
            draw.line([(0, k), (w, k)], fill=dark, width=3)
        elif stripes == "v":
            draw.line([(k, 0), (k, h)], fill=dark, width=3)
        else:
            draw.line([(k, 0), (0, k)], fill=dark, width=3)
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """42 JPEGs in 3 places by 6 photographers, ingested; a by-photographer split file."""
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(7)
    rows = []
    for p, (lat, lon, colour, stripes) in enumerate(PLACES):
        for i in range(PER_PLACE):
            name = f"p{p}_{i:02d}.jpg"
            _photo(rng, colour, stripes).save(root / name, quality=92)
            rows.append({"image": name, "lat": lat + rng.normal(0, 0.05), "lon": lon + rng.normal(0, 0.05),
                         "author": f"a{p}_{i % 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    summary = ingest(root / "labels.csv", root / "ds", IngestConfig(group_col="author", workers=1))
    man = read_manifest(summary.manifest_path)
    assert len(man) == len(PLACES) * PER_PLACE
    split = pd.DataFrame({"id": man["id"], "split": ["val" if i % 7 == 0 else "train" for i in range(len(man))]})
    split.to_parquet(root / "split.parquet")
    place = np.array([int(Path(p).name[1]) for p in man["path"]])
    return {"root": root, "manifest": Path(summary.manifest_path), "man": man, "place": place, "split": root / "split.parquet"}


@pytest.fixture(scope="module")
def tuned(dataset) -> tuple[Path, dict]:
    out = dataset["root"] / "ft"
    cfg = FinetuneConfig(cache_dir=dataset["root"] / "cache", **SMALL)
    return out, finetune(dataset["manifest"], out, cfg)


def _separation(emb: np.ndarray, place: np.ndarray) -> float:
    """Mean distance between place centroids over mean distance of photos to their own centroid (unit vectors)."""
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    u = u - u.mean(0)
    cents = np.stack([u[place == p].mean(0) for p in np.unique(place)])
    within = np.mean([np.linalg.norm(u[place == p] - cents[p], axis=1).mean() for p in np.unique(place)])
    between = np.mean([np.linalg.norm(cents[a] - cents[b]) for a in range(len(cents)) for b in range(a + 1, len(cents))])
    return float(between / within)


def test_finetune_writes_weights_and_provenance(tuned, dataset):
    out, summary = tuned
    assert (out / "weights.pt").is_file() and (out / "finetune.json").is_file()
    meta = json.loads((out / "finetune.json").read_text())
    assert meta == json.loads(json.dumps(summary))
    assert meta["base_backbone"] == "efficientnet_lite0" and meta["base_version"]
    assert meta["train_blocks"] == 2 and meta["n_photos"] == len(dataset["man"])
    assert meta["n_photographers"] == 6 and meta["n_val"] > 0  # whole photographers held out
    assert meta["config"]["views"] == 2 and meta["preprocessing"]["native_size"] == 224
    assert meta["epochs_run"] == 3 and len(meta["history"]) == 4 and 0 <= meta["best_epoch"] <= 3
    assert meta["prefix"]["computed"] == len(dataset["man"])
    state = torch.load(out / "weights.pt", weights_only=True)
    assert sorted({k.split(".")[0] + "." + k.split(".")[1] for k in state if k.startswith("blocks.")}) == ["blocks.14", "blocks.15"]
    assert any(k.startswith("head.") for k in state)


def test_finetuned_backbone_embeds_and_separates_places_better(tuned, dataset):
    out, _ = tuned
    name = f"finetuned:{out}"
    assert backbone_status(name)["available"]
    ft = create_backbone(name)
    base = create_backbone("efficientnet_lite0")
    assert ft.name == name and ft.dim == 1280 and ft.version.startswith(base.version + "+ft-")
    paths = list(dataset["man"]["path"])
    e_ft = embed_images(paths, ft, EmbedConfig(backbone=name, long_side=128))  # the photos are ~110 px
    e_base = embed_images(paths, base, EmbedConfig(long_side=128))
    assert np.isfinite(e_ft).all()
    assert np.abs(e_ft - e_base).max() > 1e-3  # the fine-tuned weights are in use
    s_ft, s_base = _separation(e_ft, dataset["place"]), _separation(e_base, dataset["place"])
    print(f"separation between places: fine-tuned {s_ft:.3f}, base {s_base:.3f}")
    assert s_ft > 1.1 * s_base, (s_ft, s_base)


def test_second_call_reuses_the_prefix_cache(tuned, dataset):
    cache = dataset["root"] / "cache"
    files = sorted(p.name for p in cache.rglob("*.npy"))
    other = dataset["man"]["id"].iloc[::2].tolist()  # another "fold"
    cfg = FinetuneConfig(cache_dir=cache, **{**SMALL, "epochs": 1})
    summary = finetune(dataset["manifest"], dataset["root"] / "ft_other", cfg, train_ids=other)
    assert summary["n_photos"] == len(other)
    assert summary["prefix"]["computed"] == 0 and summary["prefix"]["cached"] == len(other)
    assert sorted(p.name for p in cache.rglob("*.npy")) == files


def test_missing_or_incomplete_folder_is_backbone_unavailable(tmp_path, tuned):
    missing = tmp_path / "nowhere"
    with pytest.raises(BackboneUnavailable, match=str(missing)):
        create_backbone(f"finetuned:{missing}")
    half = tmp_path / "half"
    half.mkdir()
    (half / "finetune.json").write_text(json.dumps(json.loads((tuned[0] / "finetune.json").read_text())))
    with pytest.raises(BackboneUnavailable, match="weights.pt"):
        create_backbone(f"finetuned:{half}")
    status = backbone_status(f"finetuned:{half}")
    assert not status["available"] and str(half) in status["reason"]


def test_embedding_cache_folder_of_a_finetuned_backbone_stays_one_folder(tuned):
    backbone = create_backbone(f"finetuned:{tuned[0]}")
    key = cache_key(backbone, EmbedConfig(backbone=backbone.name))
    assert "/" not in key and ":" not in key  # was "finetuned:/tmp/.../ft-whole-<digest>": nested folders


def test_bad_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="crop_size"):
        FinetuneConfig(crop_size=100)
    with pytest.raises(ValueError, match="train_blocks"):
        FinetuneConfig(train_blocks=0)


def test_cli_help_and_run(dataset):
    runner = CliRunner()
    help_ = runner.invoke(app, ["finetune", "--help"])
    assert help_.exit_code == 0 and "--train-blocks" in help_.output and "--max-minutes" in help_.output
    out = dataset["root"] / "ft_cli"
    res = runner.invoke(app, [
        "finetune", str(dataset["manifest"]), "--split", str(dataset["split"]), "--out", str(out),
        "--views", "2", "--crop-size", "64", "--epochs", "1", "--batch-size", "16",
        "--cache-dir", str(dataset["root"] / "cache"), "--contrastive-weight", "0.5", "--json",
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    n_train = int((pd.read_parquet(dataset["split"])["split"] == "train").sum())
    assert summary["n_photos"] == n_train and (out / "weights.pt").is_file()
    assert summary["config"]["contrastive_weight"] == 0.5
    bad = runner.invoke(app, ["finetune", str(dataset["root"] / "missing.parquet"), "--out", str(out)])
    assert bad.exit_code == 2 and "missing.parquet" in bad.output


def test_time_budget_stops_after_the_epoch_that_hits_it(tuned, dataset):
    cfg = FinetuneConfig(cache_dir=dataset["root"] / "cache", **{**SMALL, "epochs": 5, "max_minutes": 1e-4})
    summary = finetune(dataset["manifest"], dataset["root"] / "ft_budget", cfg)
    assert summary["stopped_on_time"] and summary["epochs_run"] == 1
    assert (dataset["root"] / "ft_budget" / "weights.pt").is_file()


def test_a_relative_folder_is_recorded_absolute_so_models_load_it_from_anywhere(tuned, monkeypatch):
    folder = Path(tuned[0])
    monkeypatch.chdir(folder.parent)
    backbone = create_backbone(f"finetuned:{folder.name}")
    assert backbone.name == f"finetuned:{folder}"
    monkeypatch.chdir("/")
    assert create_backbone(backbone.name).version == backbone.version


def test_a_model_on_a_finetuned_backbone_still_predicts_after_its_folders_move(tuned, dataset, tmp_path):
    """embeddings.json and model.json name the fine-tuned folder beside them relative to themselves."""
    root = tmp_path / "project"
    shutil.copytree(tuned[0], root / "ft")
    name = f"finetuned:{root / 'ft'}"
    embed_manifest(dataset["manifest"], root / "emb",
                   EmbedConfig(backbone=name, long_side=128, cache_dir=tmp_path / "cache", threads=1, workers=1))
    emb_doc = json.loads((root / "emb" / "embeddings.json").read_text())
    assert emb_doc["backbone"] == emb_doc["config"]["backbone"] == emb_doc["backbone_config"]["name"] == "finetuned:../ft"
    cfg = TrainConfig(granularities=[Granularity("coarse", 60, 3), Granularity("fine", 14, 3)],
                      classifier=ClassifierConfig(epochs=5), k=4, inner_folds=2)
    train(dataset["manifest"], root / "emb", root / "model", cfg)
    doc = json.loads((root / "model" / "model.json").read_text())
    assert doc["backbone_config"]["name"] == "finetuned:../ft"
    assert doc["backbone_config"]["version"] == emb_doc["version"] == create_backbone(name).version
    photos = list(dataset["man"]["path"][:4])
    before = list(Predictor(PredictConfig(model_dir=root / "model")).predict_paths(photos))

    moved = tmp_path / "elsewhere" / "copy"
    moved.mkdir(parents=True)
    for folder in ("ft", "model"):
        shutil.move(root / folder, moved / folder)
    assert not (root / "ft").exists()  # the old absolute path would not load
    predictor = Predictor(PredictConfig(model_dir=moved / "model"))
    assert predictor.backbone.name == f"finetuned:{moved / 'ft'}" and predictor.embed_cfg.long_side == 128
    after = list(predictor.predict_paths(photos))
    assert all("error" not in r for r in after)
    for a, b in zip(before, after):
        assert (a["lat"], a["lon"]) == pytest.approx((b["lat"], b["lon"]), abs=1e-6)
        assert a["within_km"] == pytest.approx(b["within_km"], abs=1e-6)
