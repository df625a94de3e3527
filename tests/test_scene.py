"""Scene type: the probe, the emptiness measure and the widening toward the prior (geopin.locate.scene)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageDraw

from geopin.locate.scene import (
    EMPTY_REASON,
    INDOOR_REASON,
    INFO_EMPTY,
    INFO_ENOUGH,
    SceneProbe,
    fit_keep,
    image_information,
    information_keep,
    scene_keep,
    scene_shares,
    widen,
)

# ------------------------------------------------------------------------------------------ the probe


def _synthetic_scenes(n: int, dim: int = 12, seed: int = 0):
    """Embeddings whose direction decides known scene shares (a softmax of a fixed linear map)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, dim)) * 4
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, size=(n, 1))  # the norm must not matter
    z = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ w.T
    y = np.exp(z - z.max(1, keepdims=True))
    return x, y / y.sum(1, keepdims=True)


def test_probe_learns_a_synthetic_scene_and_round_trips():
    x, y = _synthetic_scenes(700)
    probe = SceneProbe(C=100.0, backbone="test-backbone").fit(x[:500], y[:500])
    p = probe.predict(x[500:])
    assert p.shape == (200, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    r2 = 1 - ((p - y[500:]) ** 2).sum(0) / ((y[500:] - y[500:].mean(0)) ** 2).sum(0)
    assert (r2 > 0.9).all(), r2
    assert np.corrcoef(probe.indoor(x[500:]), y[500:, 0])[0, 1] > 0.95
    back = SceneProbe.from_dict(probe.to_dict())
    assert back.backbone == "test-backbone" and back.labels == probe.labels
    np.testing.assert_allclose(back.predict(x[500:]), p, atol=1e-5)  # 7 significant digits kept


def test_probe_refuses_bad_input():
    x, y = _synthetic_scenes(60)
    with pytest.raises(ValueError, match="not fit"):
        SceneProbe().predict(x)
    with pytest.raises(ValueError, match="sum to 1"):
        SceneProbe().fit(x, y * 2)
    with pytest.raises(ValueError, match="expected shape"):
        SceneProbe().fit(x, y[:, :2])
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        SceneProbe().fit(bad, y)
    probe = SceneProbe().fit(x, y)
    with pytest.raises(ValueError, match="dim 5"):
        probe.predict(x[:, :5])
    with pytest.raises(ValueError, match="model.json: scene: missing coef"):
        SceneProbe.from_dict({"labels": ["indoor", "natural", "urban"], "intercept": [0, 0, 0]}, "model.json: scene")
    d = probe.to_dict()
    d["coef"] = d["coef"][:2]
    with pytest.raises(ValueError, match="do not fit 3 labels"):
        SceneProbe.from_dict(d)


def test_scene_shares_reads_the_places365_columns():
    import pandas as pd

    t = pd.DataFrame({"prob_indoor": [0.2, 1.0], "prob_natural": [0.3, 0.0], "prob_urban": [0.5000001, 0.0], "x": [1, 2]})
    y = scene_shares(t)
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-15)
    assert y[1].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no column prob_urban"):
        scene_shares(t.drop(columns="prob_urban"))
    t.loc[1, "prob_natural"] = float("nan")
    with pytest.raises(ValueError, match="row 1"):
        scene_shares(t)


# ------------------------------------------------------------------------------------------ emptiness


def _textured(w: int = 640, h: int = 480, seed: int = 0) -> Image.Image:
    """A stand-in photo: sky gradient, ground, buildings with windows and some grain."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h // 2):
        draw.line([(0, y), (w, y)], fill=(100 + y // 4, 150 + y // 6, 230))
    draw.rectangle([0, h // 2, w, h], fill=(90, 110, 70))
    for _ in range(25):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(h // 6, h // 2))
        x1, y1 = x0 + int(rng.integers(20, 80)), int(rng.integers(h // 2, h))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(40, 220, 3)))
        for wy in range(y0 + 5, y1 - 5, 12):
            draw.rectangle([x0 + 4, wy, x0 + 9, wy + 5], fill=(250, 240, 180))
    a = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_information_orders_blank_tiny_and_a_photo():
    blank = Image.new("RGB", (640, 480), (255, 255, 255))
    grey_jpeg = _jpeg(Image.new("RGB", (640, 480), (128, 128, 128)))
    transparent = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    noise_4x4 = Image.fromarray(np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8))
    photo = _textured()
    thumb_32 = photo.resize((32, 24), Image.Resampling.BOX)
    # no pixels to speak of, or no structure in them: the answer must be the prior's
    for empty in (blank, grey_jpeg, transparent, noise_4x4):
        assert image_information(empty) < INFO_EMPTY
        assert information_keep(image_information(empty)) == 0.0
    # a tiny 4x4 image scores no more than a blank one: its colours show no place
    assert image_information(noise_4x4) == image_information(blank) == 0.0
    assert INFO_EMPTY < image_information(thumb_32) < image_information(photo)
    assert image_information(photo) > 0.95 and information_keep(image_information(photo)) == 1.0
    # the measure does not depend on the resolution a photo is decoded at (predict decodes large JPEGs reduced)
    big = photo.resize((1280, 960), Image.Resampling.BICUBIC)
    assert abs(image_information(big) - image_information(photo)) < 0.05


def test_information_of_a_smooth_sky_is_between():
    """A clear sky has content but little structure: lower than a scene, well above a blank (kept whole still)."""
    sky = Image.fromarray(np.tile(np.linspace(120, 200, 480)[:, None, None], (1, 640, 3)).astype(np.uint8))
    info = image_information(sky)
    assert 0.0 < info < image_information(_textured())
    assert information_keep(info) == 1.0


def test_information_refuses_what_is_not_an_image():
    with pytest.raises(TypeError, match="PIL image"):
        image_information(np.zeros((10, 10)))


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(1, 90),
    h=st.integers(1, 90),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16"]),
    seed=st.integers(0, 2**16),
)
def test_information_lies_in_0_1_for_any_image(w, h, mode, seed):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a).convert(mode) if mode != "I;16" else Image.fromarray(a[..., 0].astype(np.uint16) * 257)
    info = image_information(img)
    assert 0.0 <= info <= 1.0
    if w * h <= 64:  # geometric-mean side <= 8 px
        assert info == 0.0


# ------------------------------------------------------------------------------------------ widening


@st.composite
def posteriors(draw):
    b, k_places, k_nb = draw(st.integers(1, 5)), draw(st.integers(1, 12)), draw(st.integers(0, 6))
    mass = st.floats(0.0, 1.0, allow_nan=False)
    cell = draw(hnp.arrays(np.float64, (b, k_places), elements=mass))
    nb = draw(hnp.arrays(np.float64, (b, k_nb), elements=mass))
    prior = draw(hnp.arrays(np.float64, (k_places,), elements=mass)) + 1e-3
    total = cell.sum(1, keepdims=True) + nb.sum(1, keepdims=True) + 1e-3
    cell = (cell + 1e-3 / k_places) / total
    nb = nb / total
    keep = draw(hnp.arrays(np.float64, (b,), elements=st.floats(0.0, 1.0, allow_nan=False)))
    return cell, nb, prior / prior.sum(), keep


@settings(max_examples=80, deadline=None)
@given(posteriors())
def test_widen_keeps_mass_and_its_ends(case):
    cell, nb, prior, keep = case
    c2, n2 = widen(cell, nb, prior, keep)
    np.testing.assert_allclose(c2.sum(1) + n2.sum(1), cell.sum(1) + nb.sum(1), atol=1e-12)
    np.testing.assert_allclose(c2.sum(1) + n2.sum(1), 1.0, atol=1e-9)
    assert (c2 >= 0).all() and (n2 >= 0).all()
    c1, n1 = widen(cell, nb, prior, 1.0)
    np.testing.assert_array_equal(c1, cell)
    np.testing.assert_array_equal(n1, nb)
    c0, n0 = widen(cell, nb, prior, 0.0)
    np.testing.assert_array_equal(c0, np.broadcast_to(prior, cell.shape))
    assert not n0.any()


def test_widen_refuses_bad_keep_and_shapes():
    cell, nb, prior = np.full((2, 3), 0.2), np.full((2, 2), 0.2), np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="0..1"):
        widen(cell, nb, prior, 1.5)
    with pytest.raises(ValueError, match="one per photo"):
        widen(cell, nb, prior, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="prior of shape"):
        widen(cell, nb, prior[:2], 0.5)


def test_fit_keep_widens_only_where_the_posterior_is_overconfident():
    rng = np.random.default_rng(0)
    prior = rng.uniform(0.05, 0.3, (200, 4))
    sure_and_right = np.clip(prior + 0.4, 0, 1)
    sure_and_wrong = np.where(rng.uniform(size=(200, 4)) < 0.7, 0.0, 0.9)  # mostly no mass near the truth
    assert fit_keep(sure_and_right, prior)[0] == 1.0
    keep, rep = fit_keep(sure_and_wrong, prior)
    assert keep < 0.5 and rep["loglik"] > rep["loglik_keep_1"]
    assert fit_keep(prior, prior)[0] == 1.0  # the posterior is the prior: nothing to gain, nothing widened
    with pytest.raises(ValueError, match="no held-out photo"):
        fit_keep(np.zeros((0, 4)), np.zeros((0, 4)))


def test_scene_keep_says_why():
    info = np.array([0.0, 0.9, 0.9, 0.0, 0.15])
    indoor = np.array([0.1, 0.1, 0.8, 0.9, 0.1])
    keep, why = scene_keep(info, indoor, keep_indoor=0.6)
    np.testing.assert_allclose(keep, [0.0, 1.0, 0.6, 0.0, 0.5])
    assert why[0] == EMPTY_REASON and why[3] == EMPTY_REASON  # empty beats indoor
    assert why[1] == "" and why[2] == INDOOR_REASON
    assert "widened" in why[4] and why[4] != INDOOR_REASON
    keep, why = scene_keep(info, indoor)  # indoor photos not widened by default
    assert keep[2] == 1.0 and why[2] == ""
    with pytest.raises(ValueError, match="2 indoor shares for 5 photos"):
        scene_keep(info, indoor[:2])
    assert information_keep(INFO_ENOUGH) == 1.0


def test_blank_and_tiny_photos_get_the_priors_answer_and_say_why(predictor, tmp_path):
    """End to end with the bundled model: a blank PNG and a 4x4 image answer with the prior, in words too."""
    from PIL import Image

    from geopin.locate.scene import EMPTY_REASON

    blank, tiny = tmp_path / "blank.png", tmp_path / "tiny.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(blank)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tiny)
    const = predictor.model.heads.places.best_constant
    for r in predictor.predict_paths([blank, tiny]):
        assert r["scene"]["kept"] == 0.0 and r["scene"]["information"] < 0.05, r["scene"]
        assert EMPTY_REASON in r["summary"]
        assert (r["lat"], r["lon"]) == pytest.approx(const)


def test_scene_words_say_what_was_done_and_why():
    from geopin.locate.scene import EMPTY_REASON, THIN_REASON, scene_words

    assert scene_words(1.0) == "" and scene_words(1.0, 0.2) == ""
    assert scene_words(0.0, 0.9) == "; " + EMPTY_REASON  # nothing shown beats indoors
    assert scene_words(0.5) == "; " + THIN_REASON
    assert "indoors (90%)" in scene_words(1.0, 0.9)
