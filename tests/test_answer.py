"""The answer reads the same in JSON and in words: continent, country inside it, then the guess."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geopin.answer import Place, read_region, summary, top_places
from geopin.countries import continent_of, country_name

LOW = np.array([0.03, 0.05, 0.2, 0.35])


def places(*rows) -> list[Place]:
    return [Place(i, lat, lon, f"t{i}", cc, m) for i, (lat, lon, cc, m) in enumerate(rows)]


def test_a_london_photo_counts_britain_in_europe():
    """GB had no continent, so its 47 % vanished: 'Europe 23%' beside 'United Kingdom 47%'."""
    ps = places((51.5, -0.1, "GB", 0.47), (48.9, 2.3, "FR", 0.13), (52.5, 13.4, "DE", 0.10), (40.7, -74.0, "US", 0.30))
    region = read_region(ps, "GB")
    assert region["continent"] == "Europe"
    assert region["continent_probability"] == pytest.approx(0.70)
    assert region["country"] == "GB" and region["country_name"] == "United Kingdom"
    assert region["guess_in"] == "country"
    words = summary(LOW, region, "GB")
    assert words.startswith("Europe (70%), most likely United Kingdom (47%), best guess in United Kingdom")


def test_the_country_named_lies_inside_the_continent_named():
    """'Asia (35%), perhaps United States (25%)' named a country outside the continent."""
    ps = places(
        (35.7, 139.7, "JP", 0.15), (37.6, 127.0, "KR", 0.10), (39.9, 116.4, "CN", 0.10),
        (40.7, -74.0, "US", 0.25), (45.5, -73.6, "CA", 0.05),
    )
    region = read_region(ps, "US")
    assert region["continent"] == "Asia" and region["continent_probability"] == pytest.approx(0.35)
    assert region["country"] == "JP"
    assert continent_of([region["country"]])[0] == region["continent"]
    words = summary(LOW, region, "US")
    assert "Asia (35%), most likely Japan (15%)" in words
    assert "United States" in words and "outside" in words  # the guess elsewhere, said plainly


def test_a_guess_in_another_country_of_the_same_continent_is_said_plainly():
    ps = places((48.9, 2.3, "FR", 0.30), (52.5, 13.4, "DE", 0.25), (41.9, 12.5, "IT", 0.20), (40.7, -74.0, "US", 0.25))
    region = read_region(ps, "DE")
    assert region["country"] == "FR" and region["guess_in"] == "continent"
    words = summary(LOW, region, "DE")
    assert "most likely France (30%)" in words and "best guess is in Germany (25%)" in words


def test_confident_answers_name_the_guess_country():
    region = read_region(places((48.86, 2.35, "FR", 0.9), (51.5, -0.1, "GB", 0.1)), "FR")
    words = summary(np.array([0.7, 0.8, 0.9, 0.95]), region, "FR")
    assert words == "France, Europe: 70% within 25 km of the guess"


def test_top_k_starts_with_the_guess_then_alternatives_by_probability():
    ps = {p.key: p for p in places((10, 10, "NG", 0.1), (20, 20, "LY", 0.5), (30, 30, "EG", 0.3), (0, 0, "", 0.1))}
    guess = {"lat": 10.0, "lon": 10.0, "cell": "t0", "country": "NG"}
    rows = top_places(ps, guess, 0, k=3)
    assert rows[0]["is_guess"] and (rows[0]["lat"], rows[0]["lon"]) == (10.0, 10.0)
    assert rows[0]["probability"] == pytest.approx(0.1)
    assert [r["probability"] for r in rows[1:]] == [0.5, 0.3]
    assert not any(r["is_guess"] for r in rows[1:])


# ---------------------------------------------------------------- the bundled model, end to end


def check_coherent(r: dict) -> None:
    """What a user reads in the JSON, in the words and on the map must agree."""
    top = r["top_k"]
    assert top[0]["is_guess"] and (top[0]["lat"], top[0]["lon"]) == (r["lat"], r["lon"])
    assert top[0]["country"] == r["country"] and top[0]["cell"] == r["cell"]
    probs = [t["probability"] for t in top[1:]]
    assert probs == sorted(probs, reverse=True)
    assert sum(t["probability"] for t in top) <= 1 + 1e-6
    reg = r["region"]
    assert reg["country_probability"] <= reg["continent_probability"] + 1e-9 <= 1 + 1e-6
    if reg["country"]:
        assert continent_of([reg["country"]])[0] == reg["continent"]
    assert r["continent"] == (continent_of([r["country"]])[0] if r["country"] else "")
    words = r["summary"]
    if r["country"]:
        assert country_name(r["country"]) in words  # the guess's own country is always named
    if reg["guess_in"] == "elsewhere" and r["within_km"]["200"] < 0.5:
        assert "outside" in words
    for t in top:
        cont = continent_of([t["country"]])[0] if t["country"] else ""
        assert t["country"] == "" or cont, t  # every country named has a continent
    json.dumps(r)


def test_bundled_model_answers_are_coherent_on_generated_photos(predictor, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        arr = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        arr[: 40 + 8 * i] = (80 + 20 * i, 140, 230 - 20 * i)  # a "sky" of varying height and colour
        p = tmp_path / f"g{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    results = list(predictor.predict_paths(paths))
    assert len(results) == 6
    for r in results:
        check_coherent(r)


@pytest.mark.shared
def test_bundled_model_answers_are_coherent_on_real_photos(predictor, im2gps_dir):
    labels = pd.read_csv(im2gps_dir / "labels.csv")
    # British photos (the country that had no continent) and a spread of others
    gb = labels[(labels.lat.between(50, 58.7)) & (labels.lon.between(-6, 1.8))].head(8)
    rest = labels.sample(24, random_state=0)
    for r in predictor.predict_paths([im2gps_dir / name for name in pd.concat([gb, rest]).image]):
        assert "error" not in r, r
        check_coherent(r)
        if r["region"]["guess_in"] != "country":
            assert re.search(r"best guess (is in|lies outside)", r["summary"]), r["summary"]
