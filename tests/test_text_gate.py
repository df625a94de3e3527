"""The text gate: a probe on the embedding that decides which photos predict reads (OCR costs ~0.4 s a photo).

Fit on synthetic embeddings whose text photos lean one way (its out-of-fold recall must hold on new photos),
stored in model.json and read back, and used by the bundled model's Predictor on real rendered photos: a
photo of a sign is read and placed by what it says, a photo the gate expects no text on is not read and
gets exactly the pixels-only answer.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from geopin.evidence.base import Reading, TextLine
from geopin.geo import haversine_km
from geopin.locate.model import GeoModel, ModelError, default_model_dir
from geopin.locate.predict import PredictConfig, Predictor
from geopin.locate.text_gate import MIN_EACH, TextGate, fit_text_gate
from geopin.locate.train import TrainConfig, text_gate_of
from signs import sign_photo

PRAIANO = (40.61, 14.52)


def leaning(n: int, seed: int, share: float = 0.15, dim: int = 24):
    """n embeddings, `share` of them 'with text' and shifted along the first axis (with overlap), 1 group per 10."""
    rng = np.random.default_rng(seed)
    has_text = rng.random(n) < share
    emb = rng.normal(size=(n, dim))
    emb[:, 0] += np.where(has_text, 2.0, 0.0)
    return emb.astype(np.float32), has_text, np.arange(n) // 10


def test_the_gate_keeps_its_recall_on_new_photos():
    emb, has_text, groups = leaning(1500, 0)
    gate = fit_text_gate(emb, has_text, groups, recall=0.9)
    assert gate is not None
    q = gate.quality
    assert q["folds"] == "photographer" and q["with_text"] == int(has_text.sum())
    assert 0.88 <= q["text_recall"] <= 0.95  # out of fold, as asked
    assert q["read_share"] < 0.6  # it spares most photos the OCR
    new_emb, new_text, _ = leaning(3000, 1)
    read = gate.wants(new_emb)
    assert read[new_text].mean() >= 0.84  # photos it never saw: the recall holds, give or take sampling
    assert read[~new_text].mean() < 0.5


def test_a_higher_recall_reads_more():
    emb, has_text, groups = leaning(1200, 2)
    low, high = fit_text_gate(emb, has_text, groups, recall=0.7), fit_text_gate(emb, has_text, groups, recall=0.97)
    assert high.threshold < low.threshold and high.quality["read_share"] > low.quality["read_share"]


def test_no_gate_without_enough_photos_of_each_kind_or_at_full_recall():
    emb, has_text, groups = leaning(400, 3, share=0.02)
    assert has_text.sum() < MIN_EACH and fit_text_gate(emb, has_text, groups) is None
    emb, has_text, groups = leaning(400, 3)
    assert fit_text_gate(emb, has_text, groups, recall=1.0) is None
    with pytest.raises(ValueError, match="recall must be in"):
        fit_text_gate(emb, has_text, groups, recall=0.0)
    with pytest.raises(ValueError, match="400 embeddings but 399 labels"):
        fit_text_gate(emb, has_text[:-1], groups)


def test_training_readings_become_the_gate():
    """text_gate_of (what `geopin train --readings` runs): a photo with a line of text is a positive."""
    emb, has_text, groups = leaning(800, 4)
    line = TextLine("HOTEL PRAIANO", 0.95, (1.0, 2.0, 30.0, 12.0))
    found = [Reading((line,), 384, 256) if t else (Reading((), 384, 256) if i % 7 else None) for i, t in enumerate(has_text)]
    clues = [[] for _ in found]
    gate = text_gate_of(emb, found, clues, groups, TrainConfig(text_gate_recall=0.8), backbone="test-backbone")
    assert gate.backbone == "test-backbone" and gate.quality["with_text"] == int(has_text.sum())
    assert gate.quality["text_recall"] >= 0.78
    capped = text_gate_of(emb, found, clues, groups, TrainConfig(max_gate_photos=300))
    assert capped.quality["photos"] == 300


def test_model_json_keeps_the_gate(tmp_path):
    model = GeoModel.load()
    assert model.text_gate is not None, "the bundled model ships a text gate"
    q = model.text_gate.quality
    assert q["folds"] == "photographer" and q["read_share"] < 0.5 and q["clue_recall"] >= 0.9
    model.save(tmp_path / "m")
    again = GeoModel.load(tmp_path / "m")
    assert np.allclose(again.text_gate.coef, model.text_gate.coef, atol=1e-6)
    assert again.text_gate.threshold == pytest.approx(model.text_gate.threshold, abs=1e-6)
    assert TextGate.from_dict(model.text_gate.to_dict()).quality == q


@pytest.mark.parametrize("bad, message", [
    ({"coef": [1.0], "intercept": 0.0}, "missing threshold"),
    ({"coef": [], "intercept": 0.0, "threshold": 0.5}, "non-empty"),
    ({"coef": ["x"], "intercept": 0.0, "threshold": 0.5}, "not numbers"),
    ({"coef": [1.0], "intercept": 0.0, "threshold": 0.5, "kind": "forest"}, "unknown gate kind"),
])
def test_a_damaged_gate_is_named(bad, message):
    with pytest.raises(ValueError, match=f"model.json: text_gate: .*{message}"):
        TextGate.from_dict(bad, "model.json: text_gate")


def test_a_damaged_gate_in_model_json_is_a_model_error(tmp_path):
    import json

    GeoModel.load().save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["text_gate"]["coef"] = "many"
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="text_gate"):
        GeoModel.load(tmp_path / "m", verify=False)


@pytest.fixture(scope="module")
def gated():
    if not (default_model_dir() / "model.json").exists():
        pytest.skip("bundled default model missing")
    return Predictor(PredictConfig())  # text "auto": the gate decides


def test_a_sign_is_read_and_placed(gated, tmp_path):
    path = tmp_path / "sign.jpg"
    sign_photo("PRAIANO", (1200, 800)).save(path, quality=92)
    r = next(gated.predict_paths([path]))
    assert r["text_read"] is True
    assert haversine_km(r["lat"], r["lon"], *PRAIANO) <= 25, r["summary"]
    assert any(e["source"] == "placename" for e in r["evidence"])


def test_a_photo_the_gate_skips_gets_the_pixels_only_answer(gated, tmp_path):
    """A smooth sky-and-meadow picture: the gate expects no text, so it is not read, and its answer is exactly
    the one predict gives with text off; asked to read always, the same photo is read."""
    y = np.linspace(0, 1, 600)[:, None, None]
    sky = np.array([110, 160, 230]) * (1 - y) + np.array([70, 140, 60]) * y
    img = np.broadcast_to(sky, (600, 900, 3)) + np.random.default_rng(5).normal(0, 4, (600, 900, 3))
    path = tmp_path / "meadow.jpg"
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=92)
    emb = gated.embed([Image.open(path).convert("RGB").resize((384, 256))])
    assert not gated.text_wanted(emb)[0], gated.model.text_gate.scores(emb)
    r = next(gated.predict_paths([path]))
    assert r["text_read"] is False and r["evidence"] == []
    pixels = next(Predictor(replace(gated.cfg, text="never")).predict_paths([path]))
    assert "text_read" not in pixels
    for key in ("lat", "lon", "within_km", "summary", "top_k", "regions"):
        assert r[key] == pixels[key], key
    always = Predictor(replace(gated.cfg, text="always"))
    assert always.text_wanted(emb)[0] and next(always.predict_paths([path]))["text_read"] is True


def test_the_server_reads_only_what_the_gate_sends_and_answers_as_predict(gated, tmp_path):
    """Over HTTP, in one batch: the sign is read (beside the model thread) and placed by what it says; the meadow
    is answered without being read; both answers are the ones `predict` gives."""
    import io
    import threading

    pytest.importorskip("fastapi", reason="the server needs fastapi: pip install 'geopin[serve]'")
    from servers import RunningServer

    from geopin.serve.app import ServeConfig, create_app

    y = np.linspace(0, 1, 600)[:, None, None]
    meadow = np.broadcast_to(np.array([110, 160, 230]) * (1 - y) + np.array([70, 140, 60]) * y, (600, 900, 3))
    photos = {"sign.jpg": sign_photo("PRAIANO", (1200, 800)),
              "meadow.jpg": Image.fromarray((meadow + np.random.default_rng(5).normal(0, 4, meadow.shape)).clip(0, 255).astype(np.uint8))}
    data = {}
    for name, img in photos.items():
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        data[name] = buf.getvalue()
        (tmp_path / name).write_bytes(data[name])
    gated.prepare_text()  # the OCR models load here, not inside the server's start-up limit
    server = RunningServer(create_app(ServeConfig(batch_window_ms=200), gated), start_timeout_s=120)
    try:
        answers = {}

        def ask(name):
            answers[name] = server.client.post("/api/predict", files={"photo": (name, data[name], "image/jpeg")})

        threads = [threading.Thread(target=ask, args=(n,)) for n in data]  # inside one batch window
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.close()
    sign, plain = answers["sign.jpg"].json(), answers["meadow.jpg"].json()
    assert answers["sign.jpg"].status_code == 200 and answers["meadow.jpg"].status_code == 200
    assert sign["text_read"] is True and any(e["source"] == "placename" for e in sign["evidence"])
    assert haversine_km(sign["lat"], sign["lon"], *PRAIANO) <= 25, sign["summary"]
    assert plain["text_read"] is False and plain["evidence"] == []
    for name, got in (("sign.jpg", sign), ("meadow.jpg", plain)):
        want = next(gated.predict_paths([tmp_path / name]))
        for key in ("lat", "lon", "summary", "text_read"):
            assert got[key] == pytest.approx(want[key]) if isinstance(want[key], float) else got[key] == want[key], (name, key)


def test_a_busy_reader_answers_from_the_pixels_and_says_so(gated):
    """max_read_pending=1: of three signs sent at once, one is read and the others are answered unread at once,
    each answer saying why; /api/health counts them."""
    import io
    import threading

    pytest.importorskip("fastapi", reason="the server needs fastapi: pip install 'geopin[serve]'")
    from servers import RunningServer

    from geopin.serve.app import ServeConfig, create_app

    buf = io.BytesIO()
    sign_photo("PRAIANO", (1200, 800)).save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    gated.prepare_text()
    server = RunningServer(create_app(ServeConfig(batch_window_ms=200, max_read_pending=1), gated), start_timeout_s=120)
    try:
        answers = []

        def ask(i):
            answers.append(server.client.post("/api/predict", files={"photo": (f"sign{i}.jpg", data, "image/jpeg")}).json())

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = server.client.get("/api/health").json()
    finally:
        server.close()
    read = [a for a in answers if a["text_read"]]
    unread = [a for a in answers if not a["text_read"]]
    assert len(answers) == 3 and read and unread, [(a["text_read"], a.get("evidence_error")) for a in answers]
    assert all(any(e["source"] == "placename" for e in a["evidence"]) for a in read)
    for a in unread:
        assert a["evidence"] == [] and "the server is busy" in a["evidence_error"]
    assert health["text"]["unread_busy"] == len(unread) and health["text"]["reading"] == 0


def test_serve_refuses_a_bad_read_bound():
    from geopin.serve.app import ServeConfig

    with pytest.raises(ValueError, match="--max-read-pending -1: must be positive"):
        ServeConfig(max_read_pending=-1).check()
