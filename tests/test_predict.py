"""Predicting with the bundled model on generated photos: schema, bad inputs, EXIF GPS, the CLI.

Runs on a fresh machine (no ../shared): the photos are drawn with Pillow, the model is the one shipped
inside the package. One Predictor is loaded per module and reused, as the CLI and an API server do.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geopin.countries import country_of
from imagefiles import gps_exif_bytes
from geopin.geo import haversine_km
from geopin.locate.model import default_model_dir
from geopin.locate.predict import EXAMPLE_PHOTO, EXAMPLE_TRUTH

MODEL_DIR = default_model_dir()
RADII = ["25", "200", "750", "2500"]


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A landscape-like picture (sky, horizon, ground, a few blocks); each seed gives a different one."""
    rng = np.random.default_rng(seed)
    w, h = size
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    horizon = rng.uniform(0.3, 0.7)
    sky = rng.uniform(90, 240, 3) * (1.0 - 0.35 * y)
    ground = rng.uniform(20, 170, 3) * (0.6 + 0.4 * y)
    arr = np.where(y < horizon, sky, ground) * np.ones((1, w, 1))
    for _ in range(rng.integers(2, 7)):
        x0, x1 = sorted(rng.integers(0, w, 2))
        top = int(rng.uniform(0.1, horizon) * h)
        arr[top : int(horizon * h), x0 : x1 + 1] = rng.uniform(0, 255, 3)
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def save_jpeg(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90, **kw)
    return path


def geopin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("geopin")
    cmd = [exe] if exe else [sys.executable, "-c", "from geopin.cli import main; main()"]
    return subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return save_jpeg(scene(1), tmp_path_factory.mktemp("one") / "street.jpg")


def check_result(r: dict, model) -> None:
    """Everything a user reads from one prediction, and how the parts must agree with each other."""
    assert "error" not in r, r.get("error")
    assert -90.0 <= r["lat"] <= 90.0 and -180.0 <= r["lon"] <= 180.0
    assert math.isfinite(r["lat"]) and math.isfinite(r["lon"])
    assert r["country"] == str(country_of(r["lat"], r["lon"]))  # the best guess's own country ("" at sea)
    assert isinstance(r["cell"], str)
    if r["cell"]:
        assert r["cell"] in set(model.fine_cells.token)
    assert list(r["within_km"]) == RADII
    conf = [r["within_km"][k] for k in RADII]
    assert all(0.0 <= c <= 1.0 for c in conf) and conf == sorted(conf), conf
    top = r["top_k"]
    assert 1 <= len(top) <= 5
    probs = [t["probability"] for t in top]
    # the guess first (issue 13: a user reads the first row as the answer), then the rest by probability
    assert top[0]["is_guess"] and (top[0]["lat"], top[0]["lon"]) == (r["lat"], r["lon"])
    assert probs[1:] == sorted(probs[1:], reverse=True) and all(p >= 0 for p in probs) and sum(probs) <= 1.0 + 1e-6
    for t in top:
        assert -90.0 <= t["lat"] <= 90.0 and -180.0 <= t["lon"] <= 180.0
        assert isinstance(t["country"], str) and len(t["country"]) in (0, 2)
    assert isinstance(r["summary"], str) and "km" in r["summary"]


def test_predict_generated_jpeg(predictor, photo):
    (r,) = list(predictor.predict_paths([photo]))
    assert r["path"] == str(photo)
    check_result(r, predictor.model)
    assert r["exif_gps"] is None
    assert json.loads(json.dumps(r)) == r  # plain JSON types only


def test_folder_is_expanded_and_bad_files_become_error_rows(predictor, tmp_path):
    trip = tmp_path / "trip"
    good = [
        save_jpeg(scene(10), trip / "a.jpg"),
        save_jpeg(scene(11), trip / "day2" / "B.JPG"),
        save_jpeg(scene(12, (200, 300)), trip / "day2" / "night" / "c.jpeg"),
    ]
    png = trip / "day2" / "d.png"
    scene(13).convert("L").save(png)  # greyscale PNG: converted, not rejected
    good.append(png)
    text_jpg = trip / "day2" / "notes.jpg"
    text_jpg.write_text("these are my holiday notes, not a photo\n")
    empty_jpg = trip / "empty.jpg"
    empty_jpg.write_bytes(b"")
    (trip / "day2" / "readme.txt").write_text("not an image: never listed")
    missing = tmp_path / "gone.jpg"
    single = save_jpeg(scene(14), tmp_path / "single.jpg")

    results = list(predictor.predict_paths([trip, missing, single]))

    in_folder = sorted([*good, text_jpg, empty_jpg])  # images only, recursively, in path order
    assert [r["path"] for r in results] == [str(p) for p in [*in_folder, missing, single]]
    by_path = {r["path"]: r for r in results}
    for bad in (text_jpg, empty_jpg):
        err = by_path[str(bad)]["error"]
        assert str(bad) in err and "image" in err, err
        assert "lat" not in by_path[str(bad)]
    assert str(missing) in by_path[str(missing)]["error"]
    assert "no such file" in by_path[str(missing)]["error"]
    for p in [*good, single]:
        check_result(by_path[str(p)], predictor.model)

    # the error rows shift nothing: each photo gets the answer it gets alone
    for p in (good[0], single):
        (alone,) = list(predictor.predict_paths([p]))
        assert alone["lat"] == pytest.approx(by_path[str(p)]["lat"], abs=1e-4)
        assert alone["lon"] == pytest.approx(by_path[str(p)]["lon"], abs=1e-4)
        assert alone["within_km"] == pytest.approx(by_path[str(p)]["within_km"], abs=1e-4)


def test_exif_gps_is_reported_but_the_guess_comes_from_pixels(predictor, tmp_path):
    img = scene(21)
    lat, lon = -33.856784, 151.215297  # Sydney Opera House
    plain = save_jpeg(img, tmp_path / "plain.jpg")
    tagged = save_jpeg(img, tmp_path / "tagged.jpg", exif=gps_exif_bytes(lat, lon))
    broken = save_jpeg(img, tmp_path / "broken_gps.jpg", exif=gps_exif_bytes(None, None, gps={2: ((33, 1), (51, 1), (0, 1))}))

    (r_plain,) = list(predictor.predict_paths([plain]))
    (r_tagged,) = list(predictor.predict_paths([tagged]))
    (r_broken,) = list(predictor.predict_paths([broken]))

    assert r_plain["exif_gps"] is None
    assert r_tagged["exif_gps"]["lat"] == pytest.approx(lat, abs=1e-6)
    assert r_tagged["exif_gps"]["lon"] == pytest.approx(lon, abs=1e-6)
    # a malformed position is reported as such, and the photo is still predicted
    assert r_broken["exif_gps"] is None and "GPSLongitude" in r_broken["exif_gps_error"]
    for r in (r_tagged, r_broken):
        check_result(r, predictor.model)
        for key in ("lat", "lon", "country", "cell", "within_km", "top_k", "summary"):
            assert r[key] == r_plain[key], key


def test_reused_predictor_gives_identical_results(predictor, photo, tmp_path):
    other = save_jpeg(scene(31, (400, 300)), tmp_path / "other.jpg")
    first = list(predictor.predict_paths([photo]))
    list(predictor.predict_paths([other, other]))
    again = list(predictor.predict_paths([photo]))
    assert first == again


@pytest.mark.slow
def test_cli_predict(predictor, photo, tmp_path):
    r = geopin("predict", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for option in ("--json", "--model", "--top-k"):
        assert option in r.stdout

    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    r = geopin("predict", str(bad), str(photo), "--json", "--top-k", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # one bad input among good ones is not a failed run
    rows = json.loads(r.stdout)
    assert [row["path"] for row in rows] == [str(bad), str(photo)]
    assert str(bad) in rows[0]["error"]
    out = rows[1]
    check_result(out, predictor.model)
    assert len(out["top_k"]) <= 3
    (here,) = list(predictor.predict_paths([photo]))  # the CLI is a thin layer over Predictor
    assert out["lat"] == pytest.approx(here["lat"], abs=1e-4) and out["lon"] == pytest.approx(here["lon"], abs=1e-4)


@pytest.mark.slow
def test_cli_exits_1_when_every_input_is_bad(predictor, tmp_path):  # predictor: skips without the model
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    r = geopin("predict", str(empty), str(missing), cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [line for line in r.stdout.splitlines() if "ERROR" in line]
    assert len(lines) == 2 and str(empty) in lines[0] and str(missing) in lines[1]


def test_cli_missing_model_is_a_clear_error(tmp_path):
    nowhere = tmp_path / "no_model_here"
    r = geopin("predict", str(tmp_path / "x.jpg"), "--model", str(nowhere), cwd=tmp_path)
    assert r.returncode == 2
    assert str(nowhere) in r.stderr and "model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_demo(predictor, tmp_path):
    r = geopin("demo", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["path"] == str(EXAMPLE_PHOTO)
    assert out["truth"] == {"lat": EXAMPLE_TRUTH[0], "lon": EXAMPLE_TRUTH[1]}
    assert math.isfinite(out["error_km"]) and out["error_km"] >= 0
    assert out["error_km"] == pytest.approx(float(haversine_km(out["lat"], out["lon"], *EXAMPLE_TRUTH)), rel=1e-9)
    check_result(out, predictor.model)
    (here,) = list(predictor.predict_paths([EXAMPLE_PHOTO]))
    assert out["lat"] == pytest.approx(here["lat"], abs=1e-4) and out["lon"] == pytest.approx(here["lon"], abs=1e-4)

    r = geopin("demo", cwd=tmp_path)  # the table a person reads
    assert r.returncode == 0, r.stderr
    assert "best guess" in r.stdout and "truth" in r.stdout
    assert f"{out['error_km']:.0f} km" in r.stdout


# --------------------------------------------------------------------------------------------- issue 13


def test_high_bit_depth_photo_is_predicted_like_its_8bit_twin(predictor, tmp_path):
    from imagefiles import twin_of, write_high_bit_files

    files = write_high_bit_files(tmp_path / "img", size=(192, 144))
    names = ["gray16.png", "gray16b.tif", "rgb48.png", "float01.tif"]
    results = {Path(r["path"]).name: r for r in predictor.predict_paths([files[n] for n in names]
                                                                       + [files["gray8.png"], files["rgb8.png"]])}
    for name in names:
        got, twin = results[name], results[twin_of(name)]
        check_result(got, predictor.model)
        assert (got["lat"], got["lon"]) == pytest.approx((twin["lat"], twin["lon"]), abs=1e-4), name
        assert got["within_km"] == pytest.approx(twin["within_km"], abs=1e-4), name


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the point of the test
def test_photo_too_big_for_ingest_is_too_big_for_predict(predictor, tmp_path):
    from imagefiles import big_png

    from geopin.dataset.ingest import IngestConfig, ingest

    huge = big_png(tmp_path / "photos" / "huge.png")  # 144 MP, a few hundred kB on disk
    (r,) = list(predictor.predict_paths([huge]))
    assert "decompression_bomb" in r["error"] and str(huge) in r["error"], r
    import pandas as pd

    pd.DataFrame({"image": ["photos/huge.png"], "lat": [1.0], "lon": [2.0]}).to_csv(tmp_path / "t.csv", index=False)
    summary = ingest(tmp_path / "t.csv", tmp_path / "out", IngestConfig(workers=1))
    assert summary.reasons["decompression_bomb"] == 1


def test_folder_symlinks_are_followed_and_dangling_ones_reported(predictor, tmp_path):
    trip, elsewhere = tmp_path / "trip", tmp_path / "elsewhere"
    a = save_jpeg(scene(40), trip / "a.jpg")
    b = save_jpeg(scene(41), elsewhere / "b.jpg")
    (trip / "linked").symlink_to(elsewhere, target_is_directory=True)
    (trip / "linked" / "loop").symlink_to(trip, target_is_directory=True)
    (trip / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    results = list(predictor.predict_paths([trip]))
    assert [r["path"] for r in results] == [str(a), str(trip / "gone.jpg"), str(trip / "linked" / "b.jpg")]
    assert "no such file" in results[1]["error"]
    check_result(results[2], predictor.model)
    assert b.exists()


@pytest.mark.slow
def test_cli_no_photos_at_all_exits_2_with_a_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no photos here")
    for args in ([str(empty)], [str(notes)], [str(empty), str(notes), "--json"]):
        r = geopin("predict", *args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "no photos" in r.stderr and args[0] in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------- the backbone config, stored and checked


def _model_copy(tmp_path: Path, edit) -> Path:
    """The bundled model copied, its model.json edited by edit(doc) (model.json is not among the checksummed files)."""
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    doc = json.loads((folder / "model.json").read_text())
    edit(doc)
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


def test_bundled_model_records_the_preprocessing_predict_uses(predictor):
    stored = predictor.model.backbone_config
    assert stored is not None and stored.name == "efficientnet_lite0"
    assert (stored.mode, stored.long_side, stored.native_size) == ("whole", 384, 224)
    assert stored.mean == (127.0, 127.0, 127.0) and stored.std == (128.0, 128.0, 128.0)
    assert (predictor.embed_cfg.backbone, predictor.embed_cfg.mode, predictor.embed_cfg.long_side) == ("efficientnet_lite0", "whole", 384)
    assert predictor.backbone.config.for_input(stored.mode, stored.long_side) == stored


@pytest.mark.parametrize("field, value", [("mean", [0.0, 0.0, 0.0]), ("native_size", 260), ("interpolation", "bilinear"),
                                          ("family", "clip")])
def test_a_stored_config_the_backbone_disagrees_with_is_an_error_naming_file_and_field(tmp_path, field, value):
    from geopin.features.backbones import BackboneMismatch
    from geopin.locate.predict import PredictConfig, Predictor

    folder = _model_copy(tmp_path, lambda doc: doc["backbone_config"].update({field: value}))
    with pytest.raises(BackboneMismatch) as err:
        Predictor(PredictConfig(model_dir=folder))
    message = str(err.value)
    assert str(folder / "model.json") in message and f"backbone_config: {field} is" in message, message


def test_a_malformed_stored_config_is_a_model_error_naming_the_field(tmp_path):
    from geopin.locate.model import GeoModel, ModelError

    folder = _model_copy(tmp_path, lambda doc: doc["backbone_config"].update(mode="stretch"))
    with pytest.raises(ModelError, match=r"model\.json: backbone_config: unknown mode 'stretch'"):
        GeoModel.load(folder)
    folder2 = _model_copy(tmp_path / "b", lambda doc: doc["backbone_config"].pop("std"))
    with pytest.raises(ModelError, match=r"model\.json: backbone_config: missing field\(s\) std"):
        GeoModel.load(folder2)


def test_a_format_3_model_without_a_config_predicts_as_lite0_and_says_so(predictor, photo, tmp_path, caplog):
    from geopin.locate.predict import PredictConfig, Predictor

    def to_format_3(doc):
        doc["format_version"] = 3
        del doc["backbone_config"]
        doc["meta"].pop("backbone")
        doc["meta"].pop("embedding")

    folder = _model_copy(tmp_path, to_format_3)
    with caplog.at_level("WARNING", logger="geopin.locate.predict"):
        old = Predictor(PredictConfig(model_dir=folder))
    assert old.model.backbone_config is None and old.backbone.name == "efficientnet_lite0"
    assert any("model format 3" in r.message and "assuming efficientnet_lite0" in r.message for r in caplog.records)
    (a,) = list(old.predict_paths([photo]))
    (b,) = list(predictor.predict_paths([photo]))
    assert (a["lat"], a["lon"]) == pytest.approx((b["lat"], b["lon"]), abs=1e-6)


def test_a_format_4_model_that_names_no_backbone_cannot_predict_photos(tmp_path):
    from geopin.locate.model import ModelError
    from geopin.locate.predict import PredictConfig, Predictor

    def no_backbone(doc):
        doc["backbone_config"] = None
        doc["meta"].pop("backbone")
        doc["meta"].pop("embedding")

    folder = _model_copy(tmp_path, no_backbone)
    with pytest.raises(ModelError, match=r"model\.json: no backbone_config and no backbone named"):
        Predictor(PredictConfig(model_dir=folder))
