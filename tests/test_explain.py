"""Explanations with the bundled model on generated photos: Grad-CAM, occlusion, targets, the CLI, characterize.

The photos are drawn with Pillow: a flat background with one textured, high-contrast patch, placed
left or right, so where the evidence lies is known. One Predictor is loaded per module.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from geopin.cli import app
from geopin.explain.characterize import CharacterizeConfig, characterize, crop_boxes
from geopin.explain.maps import explain_photo, explain_with_maps, gradcam, occlusion_map
from geopin.explain.occlusion import OcclusionConfig
from geopin.explain.target import country_weights, fine_places
from geopin.features.embed import embed_images
from geopin.io import write_parquet
from geopin.locate.heads import classifier_logits
from geopin.locate.model import default_model_dir
from geopin.locate.posterior import CONFIDENCE_KM, classifier_probs

MODEL_DIR = default_model_dir()
SIZE = (360, 240)  # not a multiple of 32: maps must come back at the photo's size, not the network's


def patch_photo(side: str, size: tuple[int, int] = SIZE, seed: int = 0) -> Image.Image:
    """A flat blue-grey photo with one textured, high-contrast square on the left or the right."""
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = (120, 140, 160)
    p = h // 3 + h // 12
    bits = np.kron(rng.integers(0, 2, (p // 8 + 1, p // 8 + 1)), np.ones((8, 8), dtype=np.int64))[:p, :p]
    tex = np.stack([bits * 255, (1 - bits) * 255, bits * 120], axis=-1).astype(np.uint8)
    x0 = w // 16 if side == "left" else w - w // 16 - p
    y0 = (h - p) // 2
    arr[y0 : y0 + p, x0 : x0 + p] = tex
    return Image.fromarray(arr)


def centre_of_mass_x(m: np.ndarray) -> float:
    """Horizontal centre of mass of a non-negative map, as a fraction of the width."""
    m = np.clip(m, 0, None)
    assert m.sum() > 0, "the map is empty"
    return float((m.sum(0) * np.arange(m.shape[1])).sum() / m.sum() / m.shape[1])


@pytest.fixture(scope="module")
def explained(predictor) -> dict:
    """explain_photo (with maps) for the patch on the left and on the right, computed once."""
    return {side: explain_with_maps(predictor, patch_photo(side)) for side in ("left", "right")}


# ------------------------------------------------------------------------------------------- Grad-CAM


def test_gradcam_has_the_photos_shape_and_is_not_constant(predictor):
    cam = gradcam(predictor, patch_photo("left"))
    assert cam.shape == (SIZE[1], SIZE[0])
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.01


def test_gradcam_scores_exactly_what_the_classifier_says(predictor):
    """The differentiable path reproduces classifier_logits' preprocessing and the hierarchical probability."""
    img = patch_photo("right")
    emb = embed_images([img], predictor.backbone, predictor.embed_cfg)
    model = predictor.model
    probs = classifier_probs(model.heads.places, classifier_logits(model.heads.classifier, emb), model.params.t_clf)[0]
    fine = fine_places(model)
    for target in ("US", "FR", "PL"):  # a country's places weighted by their share of its training photos
        got = explain_photo(predictor, img, target, occlusion=False)["gradcam"]["log_prob"]
        assert got == pytest.approx(np.log(probs @ country_weights(model, target)), abs=1e-4)
    res = explain_photo(predictor, img, occlusion=False)
    j = int(np.flatnonzero(fine["token"] == res["target"]["value"])[0]) if res["target"]["value"] in fine["token"] else None
    if j is not None:
        assert res["gradcam"]["log_prob"] == pytest.approx(np.log(probs[j]), abs=1e-4)


def test_gradcam_depends_on_the_target(predictor):
    img = patch_photo("left")
    a, b = gradcam(predictor, img, "US"), gradcam(predictor, img, "JP")
    assert np.abs(a - b).max() > 0.05


# ------------------------------------------------------------------------------------------- occlusion


def test_occlusion_map_moves_with_the_distinctive_patch(explained):
    left = explained["left"][1]["occlusion"]
    right = explained["right"][1]["occlusion"]
    assert left.shape == right.shape == (SIZE[1], SIZE[0])
    assert left.std() > 0 and right.std() > 0
    cl, cr = centre_of_mass_x(left), centre_of_mass_x(right)
    assert cl < 0.45 < 0.55 < cr, (cl, cr)
    # and the strongest crop sits on the patch's side
    for side, (res, _) in explained.items():
        x0, _, x1, _ = res["occlusion"]["crops"][0]["box"]
        centre = (x0 + x1) / 2 / SIZE[0]
        assert (centre < 0.5) if side == "left" else (centre > 0.5), (side, res["occlusion"]["crops"])


def test_occlusion_measures_the_stated_confidence(predictor, explained):
    """Unoccluded, the measured mass is the prediction's own P(within 750 km), raw and calibrated."""
    res, _ = explained["left"]
    emb = embed_images([patch_photo("left")], predictor.backbone, predictor.embed_cfg)
    _, _, _, dec, conf = predictor.model.decide(emb)
    r750 = CONFIDENCE_KM.index(750.0)
    assert res["occlusion"]["base"] == pytest.approx(dec.raw_within[0, r750], abs=1e-5)
    assert res["occlusion"]["calibrated_within_750km"] == pytest.approx(res["prediction"]["within_km"]["750"], abs=1e-5)
    assert res["occlusion"]["calibrated_within_750km"] == pytest.approx(conf[0, r750], abs=1e-5)


def test_occlusion_passes_stay_within_budget():
    from geopin.explain.occlusion import _patch_grid

    h, w = 256, 384  # the network input of a 3:2 photo
    free = _patch_grid(h, w, OcclusionConfig(max_passes=10_000))
    assert len(free) == 7 * 5 + 15 * 10  # both scales at half-patch stride, edges covered
    default = _patch_grid(h, w, OcclusionConfig())
    assert len(default) <= OcclusionConfig().max_passes
    assert {b[0] for b in default} == {0, 1}  # both scales kept; the fine one lost its overlap first
    assert len(_patch_grid(h, w, OcclusionConfig(max_passes=60))) <= 60
    for _, y0, x0, y1, x1 in default:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w


def test_occlusion_map_options(predictor):
    m, crops = occlusion_map(predictor, patch_photo("right"), "guess", scales=(0.5,), top_crops=2, fill="mean")
    assert m.shape == (SIZE[1], SIZE[0])
    assert len(crops) <= 2
    for c in crops:
        x0, y0, x1, y1 = c["box"]
        assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1] and c["drop"] > 0 and c["scale"] == 0.5
    with pytest.raises(ValueError, match="fill 'paint'"):
        occlusion_map(predictor, patch_photo("right"), scales=(0.5,), fill="paint")
    with pytest.raises(ValueError, match="scale 2"):
        occlusion_map(predictor, patch_photo("right"), scales=(2,))


# ------------------------------------------------------------------------------------------- targets and JSON


def test_country_and_cell_targets(predictor):
    img = patch_photo("left")
    res = explain_photo(predictor, img, "jp", occlusion=False)
    assert res["target"]["kind"] == "country" and res["target"]["value"] == "JP"
    token = str(fine_places(predictor.model)["token"][0])
    res = explain_photo(predictor, img, token.upper(), occlusion=False)
    assert res["target"]["kind"] == "cell" and res["target"]["value"] == token
    assert res["target"]["n_places"] == 1


@pytest.mark.parametrize("bad", ["XQ", "zz", "ffffffffffff", "guesss", "", "F R"])
def test_bad_target_is_a_clear_value_error(predictor, bad):
    with pytest.raises(ValueError, match="target") as err:
        explain_photo(predictor, patch_photo("left"), bad, occlusion=False)
    assert repr(bad) in str(err.value)


def test_explain_photo_is_json_with_pngs(explained):
    res, _ = explained["right"]
    doc = json.loads(json.dumps(res))
    assert set(doc) >= {"target", "gradcam", "occlusion", "prediction", "seconds"}
    assert doc["target"]["kind"] == "guess" and {"lat", "lon", "value"} <= set(doc["target"])
    assert doc["prediction"]["lat"] == doc["target"]["lat"] and "within_km" in doc["prediction"]
    for key in ("gradcam", "occlusion"):
        assert doc[key]["shape"] == [SIZE[1], SIZE[0]]
        for field, mode in (("png_base64", "RGB"), ("layer_png_base64", "RGBA")):
            png = Image.open(io.BytesIO(base64.b64decode(doc[key][field])))
            assert png.format == "PNG" and png.mode == mode
            if key == "occlusion" and field == "png_base64":  # the photo above its colour scale
                photo_h = round(png.width * SIZE[1] / SIZE[0])
                assert png.height > photo_h + 20
                png = png.crop((0, 0, png.width, photo_h))
            assert abs(png.width / png.height - SIZE[0] / SIZE[1]) < 0.02
        # the page shows png_base64 in place of the photo: it must be the photo, not a bare heat layer
        shown = Image.open(io.BytesIO(base64.b64decode(doc[key]["png_base64"])))
        shown = np.asarray(shown.crop((0, 0, shown.width, round(shown.width * SIZE[1] / SIZE[0]))).resize((60, 40)), float)
        photo = np.asarray(patch_photo("right").resize((60, 40)), float)
        assert np.corrcoef(shown.ravel(), photo.ravel())[0, 1] > 0.5
    assert doc["seconds"]["occlusion"] > 0 and doc["seconds"]["total"] >= doc["seconds"]["occlusion"]


# ------------------------------------------------------------------------------------------- CLI


def test_cli_explain_writes_the_files(tmp_path):
    photo = tmp_path / "patch.jpg"
    patch_photo("left").save(photo, quality=95)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(photo), "--target", "US", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    for name in ("gradcam.png", "occlusion.png", "explain.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "explain.json").read_text())
    assert doc["target"]["value"] == "US" and doc["occlusion"]["png"] == "occlusion.png"
    assert "png_base64" not in doc["gradcam"]
    assert Image.open(out / "gradcam.png").size == SIZE
    assert json.loads(result.stdout)["target"]["kind"] == "country"


def test_cli_explain_bad_input_exits_2_naming_it(tmp_path):
    photo = tmp_path / "patch.png"
    patch_photo("left").save(photo)
    res = CliRunner().invoke(app, ["explain", str(photo), "--target", "QQ", "--out", str(tmp_path / "o"), "--no-occlusion"])
    assert res.exit_code == 2 and "'QQ'" in res.output
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo at all")
    res = CliRunner().invoke(app, ["explain", str(junk), "--out", str(tmp_path / "o"), "--no-occlusion"])
    assert res.exit_code == 2 and "junk.jpg" in res.output
    assert not (tmp_path / "o" / "explain.json").exists()


# ------------------------------------------------------------------------------------------- characterize

TOWNS = {"FR": (48.8566, 2.3522), "JP": (35.6895, 139.6917), "US": (40.7128, -74.0060)}


def _generated_manifest(folder: Path, per_country: int = 3) -> Path:
    rows = []
    for ci, (cc, (lat, lon)) in enumerate(TOWNS.items()):
        for k in range(per_country):
            path = folder / "photos" / f"{cc}_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            patch_photo("left" if k % 2 else "right", size=(320, 240), seed=10 * ci + k).save(path, quality=90)
            rows.append({"id": f"{cc}_{k}", "path": str(path), "lat": lat + 0.01 * k, "lon": lon})
    # a photo that cannot be read: counted and skipped, the run goes on
    broken = folder / "photos" / "FR_broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    rows.append({"id": "FR_broken", "path": str(broken), "lat": 48.85, "lon": 2.35})
    return write_parquet(pd.DataFrame(rows), folder / "manifest.parquet")


def test_crop_boxes_are_corners_and_centre():
    boxes = crop_boxes(400, 300, 0.5)
    assert boxes == [(0, 0, 200, 150), (200, 0, 400, 150), (0, 150, 200, 300), (200, 150, 400, 300), (100, 75, 300, 225)]


def test_characterize_writes_a_sheet_per_country_and_an_index(predictor, tmp_path):
    manifest = _generated_manifest(tmp_path)
    out = tmp_path / "char"
    cfg = CharacterizeConfig(min_photos=2, max_photos=4, crops_per_country=6, clusters=2)
    summary = characterize(manifest, None, out, cfg=cfg, predictor=predictor)
    assert sorted(c["country"] for c in summary["countries"]) == ["FR", "JP", "US"]
    assert [f["id"] for f in summary["failed"]] == ["FR_broken"]
    for cc in TOWNS:
        sheet = Image.open(out / f"{cc}.png")
        assert sheet.format == "PNG" and sheet.width > 300 and sheet.height > 150
        doc = json.loads((out / f"{cc}.json").read_text())
        assert 1 <= len(doc["crops"]) <= 6
        assert {c["cluster"] for c in doc["crops"]} <= {0, 1}
        assert all(c["id"].startswith(cc) for c in doc["crops"])
        probs = [c["probability"] for c in doc["crops"] if c["cluster"] == 0]
        assert probs == sorted(probs, reverse=True)
    index = (out / "index.html").read_text()
    for cc in TOWNS:
        assert f'href="{cc}.png"' in index
    assert summary["crops_embedded"] == 9 * 5
    # a second run with the same model, settings and photos redoes nothing
    again = characterize(manifest, None, out, cfg=cfg, predictor=predictor)
    assert again["crops_embedded"] == 0
    assert sorted(c["country"] for c in again["countries"]) == ["FR", "JP", "US"]


def test_characterize_needs_positions(predictor, tmp_path):
    path = write_parquet(pd.DataFrame({"id": ["a"], "path": ["a.jpg"]}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="m.parquet.*lat"):
        characterize(path, None, tmp_path / "out", predictor=predictor)


def test_cli_characterize(tmp_path):
    manifest = _generated_manifest(tmp_path, per_country=2)
    out = tmp_path / "char"
    res = CliRunner().invoke(app, ["characterize", str(manifest), "--out", str(out), "--min-photos", "2",
                                   "--max-countries", "1", "--crops-per-country", "3"])
    assert res.exit_code == 0, res.output
    assert (out / "index.html").is_file() and len(list(out.glob("*.png"))) == 1


@pytest.mark.shared
def test_characterize_on_shared_photos(predictor, im2gps_dir, tmp_path):
    """A few countries of the research photos, capped; the sheets stay under tmp (never in the project)."""
    labels = pd.read_csv(im2gps_dir / "labels.csv")
    df = pd.DataFrame({"id": labels["image"].astype(str), "path": [str(im2gps_dir / p) for p in labels["image"]],
                       "lat": labels["lat"], "lon": labels["lon"]})
    manifest = write_parquet(df, tmp_path / "manifest.parquet")
    cfg = CharacterizeConfig(min_photos=20, max_photos=6, crops_per_country=6, clusters=2, max_countries=2)
    summary = characterize(manifest, None, tmp_path / "char", cfg=cfg, predictor=predictor)
    assert len(summary["countries"]) == 2 and not summary["failed"]
    for c in summary["countries"]:
        assert (tmp_path / "char" / c["png"]).is_file()


def test_characterize_names_the_manifest_for_bad_positions(predictor, tmp_path):
    path = write_parquet(pd.DataFrame({"id": ["a"], "path": ["a.jpg"], "lat": [123.0], "lon": [0.0]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet.*out of range"):
        characterize(path, None, tmp_path / "out", predictor=predictor)


def test_characterize_with_embeddings_looks_at_the_most_typical_photos(predictor, tmp_path):
    from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings

    manifest = _generated_manifest(tmp_path)
    embed_manifest(manifest, tmp_path / "emb", EmbedConfig(cache_dir=tmp_path / "cache"))
    df = pd.read_parquet(manifest)
    emb, _ = load_embeddings(tmp_path / "emb", manifest)
    model = predictor.model
    probs = classifier_probs(model.heads.places, classifier_logits(model.heads.classifier, np.asarray(emb)), model.params.t_clf)
    cfg = CharacterizeConfig(min_photos=2, max_photos=2, crops_per_country=4, clusters=2)
    summary = characterize(manifest, None, tmp_path / "char", embeddings=tmp_path / "emb", cfg=cfg, predictor=predictor)
    assert {c["country"] for c in summary["countries"]} == {"JP", "US", "FR"}
    for cc in ("JP", "US"):
        rows = np.flatnonzero(df["id"].str.startswith(cc).to_numpy())
        p = probs[rows] @ country_weights(model, cc)  # the places weighted by their share of the country
        best = set(df["id"].iloc[rows[np.argsort(-p)[:2]]])
        used = {c["id"] for c in json.loads((tmp_path / "char" / f"{cc}.json").read_text())["crops"]}
        assert used <= best, (cc, used, best)


def _sheet_rows(folder: Path, cc: str) -> dict[int, list[str]]:
    rows: dict[int, list[str]] = {}
    for c in json.loads((folder / f"{cc}.json").read_text())["crops"]:
        rows.setdefault(c["cluster"], []).append(c["path"])
    return rows


@pytest.mark.parametrize("per_photo", [None, 2])
def test_characterize_never_shows_a_photo_twice_in_a_row(predictor, tmp_path, per_photo):
    """Two crops of one photo look alike, cluster together and sat side by side: by default a photo gives one crop;
    allowed more, a row (cluster) still shows it once."""
    manifest = _generated_manifest(tmp_path)
    cfg = CharacterizeConfig(min_photos=2, max_photos=4, crops_per_country=6, clusters=2)
    if per_photo is not None:
        cfg.max_crops_per_photo = per_photo
    summary = characterize(manifest, None, tmp_path / "char", cfg=cfg, predictor=predictor)
    assert sorted(c["country"] for c in summary["countries"]) == ["FR", "JP", "US"]
    for cc in TOWNS:
        rows = _sheet_rows(tmp_path / "char", cc)
        for row in rows.values():
            assert len(row) == len(set(row)), (cc, rows)
        shown = [p for row in rows.values() for p in row]
        if per_photo is None:
            assert len(shown) == len(set(shown)) == 3, (cc, rows)  # three photos, one crop each
        else:
            assert max(shown.count(p) for p in shown) <= 2


def test_characterize_lists_a_country_whose_places_sit_across_a_border(predictor, tmp_path):
    """The bundled model has no place whose point is in Poland, but its Prague place holds the Polish training
    photos: Poland is characterised (and explained) through that share, not skipped as having no place."""
    model = predictor.model
    assert not (fine_places(model)["country"] == "PL").any()  # the situation the issue met
    w = country_weights(model, "PL")
    assert 0 < w.max() < 1 and (w > 0).sum() >= 1
    heads = model.heads
    j = int(np.argmax(w))
    in_j = np.asarray(heads.gallery_place) == j
    assert w[j] == pytest.approx((np.asarray(heads.gallery_country)[in_j] == "PL").mean())
    # every place's shares over the countries add up to one
    codes = sorted(set(np.asarray(heads.gallery_country).astype(str)) | set(fine_places(model)["country"]))
    total = sum(country_weights(model, c) for c in codes)
    assert np.allclose(total, 1.0)

    rows = []
    for k, (lat, lon) in enumerate([(50.0614, 19.9366), (52.2297, 21.0122), (51.1079, 17.0385)]):  # Krakow, Warsaw, Wroclaw
        path = tmp_path / "photos" / f"PL_{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        patch_photo("left", size=(320, 240), seed=70 + k).save(path, quality=90)
        rows.append({"id": f"PL_{k}", "path": str(path), "lat": lat, "lon": lon})
    manifest = write_parquet(pd.DataFrame(rows), tmp_path / "manifest.parquet")
    cfg = CharacterizeConfig(min_photos=2, max_photos=3, crops_per_country=3, clusters=1)
    summary = characterize(manifest, None, tmp_path / "char", cfg=cfg, predictor=predictor)
    assert [c["country"] for c in summary["countries"]] == ["PL"], summary["skipped"]
    assert summary["countries"][0]["name"] == "Poland" and not summary["skipped"]
    res = explain_photo(predictor, patch_photo("left"), "PL", occlusion=False)
    assert res["target"]["value"] == "PL" and res["target"]["n_places"] == int((w > 0).sum())
