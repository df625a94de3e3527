"""The answer reads the same in JSON and in words: continent, country inside it, then the guess."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geopin.countries import continent_of, country_name
from geopin.locate.answer import Place, read_region_masses, summary, top_places

LOW = np.array([0.03, 0.05, 0.2, 0.35])


def read_region(places: list[Place], guess_cc: str) -> dict:
    """The region read off a list of places: their masses summed per country, then read_region_masses."""
    by_cc: dict[str, float] = {}
    for p in places:
        by_cc[p.country] = by_cc.get(p.country, 0.0) + p.mass
    return read_region_masses(by_cc, guess_cc)


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
        assert t["country_name"] == (country_name(t["country"]) if t["country"] else "") and "near" in t
    # the most probable place leads the words, named as the JSON names it, and no listed place outweighs it
    most = r["most_likely"]
    assert most["probability"] >= max(t["probability"] for t in top) - 1e-9
    assert words.startswith("Most probable place: ")
    if most["near"]:
        assert words.startswith(f"Most probable place: near {most['near']}")
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


def place_masses(cell: np.ndarray, nb: np.ndarray, nb_place: np.ndarray) -> dict[int, float]:
    """Mass per fine place; a neighbour outside every class is a place of its own (key -j-1)."""
    masses: dict[int, float] = {int(p): float(cell[p]) for p in np.flatnonzero(cell > 0)}
    for j, (m, p) in enumerate(zip(nb, nb_place)):
        key = int(p) if p >= 0 else -j - 1
        masses[key] = masses.get(key, 0.0) + float(m)
    return masses


def guess_key(places: dict[int, Place], guess: tuple[float, float], nb_lat, nb_lon, nb_place, containing: int) -> int | None:
    """Which candidate place the best guess is: a place's point, a neighbour's spot, or the fine cell holding it."""
    for key, p in places.items():
        if p.lat == guess[0] and p.lon == guess[1]:
            return key
    for j, (a, b) in enumerate(zip(nb_lat, nb_lon)):
        if a == guess[0] and b == guess[1]:
            return int(nb_place[j]) if nb_place[j] >= 0 else -j - 1
    return containing if containing in places else None


def read_every_place(model, emb: np.ndarray, top_k: int = 5, region_mass=(0.5, 0.9)) -> list[dict]:
    """The answer as it was read before the array readout: a Place for every place of the posterior."""
    from geopin.countries import country_of
    from geopin.dataset.cells import leaf_cell_ids
    from geopin.locate import answer
    from geopin.locate.posterior import CONFIDENCE_KM

    ev, cell, nb, dec, conf = model.decide(emb)
    fine = model._fine
    out = []
    for i in range(len(ev)):
        places = {}
        for key, mass in place_masses(cell[i], nb[i], ev.nb_place[i]).items():
            if key >= 0:
                places[key] = Place(key, float(fine["lat"][key]), float(fine["lon"][key]), str(fine["token"][key]), str(fine["country"][key]), mass)
            else:
                j = -key - 1
                places[key] = Place(key, float(ev.nb_lat[i, j]), float(ev.nb_lon[i, j]), "", str(ev.nb_country[i, j]), mass)
        g_lat, g_lon = float(dec.lat[i]), float(dec.lon[i])
        leaf = leaf_cell_ids(np.array([g_lat]), np.array([g_lon]))[0]
        hit = np.flatnonzero((fine["lo"] <= leaf) & (leaf <= fine["hi"]))  # a scan, not the bisection
        containing = int(hit[0]) if len(hit) else -1
        cc = str(country_of(g_lat, g_lon))
        guess = {"lat": g_lat, "lon": g_lon, "country": cc, "cell": str(fine["token"][containing]) if containing >= 0 else ""}
        key = guess_key(places, (g_lat, g_lon), ev.nb_lat[i], ev.nb_lon[i], ev.nb_place[i], containing)
        by_mass = sorted(places.values(), key=lambda p: -p.mass)
        codes, shares = model.place_country_shares
        by_cc: dict[str, float] = {}
        for place_key, place in places.items():  # a fine place's mass split by where its training photos were taken
            split = ({str(codes[c]): float(shares[place_key, c]) for c in np.flatnonzero(shares[place_key])}
                     if place_key >= 0 else {place.country: 1.0})
            for code, share in split.items():
                by_cc[code] = by_cc.get(code, 0.0) + place.mass * share
        out.append({
            "region": read_region_masses(by_cc, cc),
            "top_k": top_places(places, guess, key, top_k),
            "regions": answer.confidence_regions(by_mass, region_mass),
            "within_km": {f"{int(r)}": float(conf[i, r_i]) for r_i, r in enumerate(CONFIDENCE_KM)},
        })
    return out


def test_the_array_readout_names_what_reading_every_place_names():
    """predict_embeddings reads the posterior with arrays (7 -> hundreds of photos/s at 10,000 places);
    its regions, top-k and confidence regions must be those of a Place for every place."""
    from geopin.locate.model import GeoModel, default_model_dir

    model = GeoModel.load(default_model_dir())
    rng = np.random.default_rng(3)
    dim = model.heads.classifier.dim
    emb = np.abs(rng.standard_normal((40, dim))).astype(np.float32)  # post-ReLU-like features
    fast = model.predict_embeddings(emb)
    slow = read_every_place(model, emb)
    for f, s in zip(fast, slow):
        assert f["cell"] == s["top_k"][0]["cell"] and f["top_k"][0]["is_guess"]
        assert f["regions"] == s["regions"]
        assert f["within_km"] == s["within_km"]
        assert [(t["lat"], t["lon"], t["cell"], t["country"], t["is_guess"]) for t in f["top_k"]] == [
            (t["lat"], t["lon"], t["cell"], t["country"], t["is_guess"]) for t in s["top_k"]
        ]
        assert np.allclose([t["probability"] for t in f["top_k"]], [t["probability"] for t in s["top_k"]], rtol=1e-9, atol=1e-15)
        assert {k: v for k, v in f["region"].items() if not k.endswith("probability")} == {
            k: v for k, v in s["region"].items() if not k.endswith("probability")
        }
        for k in ("continent_probability", "country_probability", "guess_country_probability", "guess_continent_probability"):
            assert f["region"][k] == pytest.approx(s["region"][k], rel=1e-9, abs=1e-15)


def test_a_country_without_a_place_of_its_own_still_gets_its_share():
    """The bundled model's Prague place holds the three Polish photos while no place's point lies in Poland:
    predict's country masses and explain's country targets read the same shares, and Poland is among them."""
    from geopin.explain.target import country_weights, countries_with_places
    from geopin.locate.model import GeoModel, default_model_dir

    model = GeoModel.load(default_model_dir())
    codes, shares = model.place_country_shares
    assert shares.shape == (len(model.fine_cells), len(codes))
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert "PL" not in set(model.fine_cells.country) and "PL" in countries_with_places(model)
    pl = country_weights(model, "PL")
    assert 0 < pl.max() < 1 and np.array_equal(pl, shares[:, list(codes).index("PL")])
    place = int(np.argmax(pl))  # a border place: its other photos are of its own point's country
    assert shares[place, list(codes).index(model.fine_cells.country[place])] > 0


def test_fine_cells_found_by_bisection_are_the_scanned_ones():
    from geopin.dataset.cells import leaf_cell_ids
    from geopin.locate.model import GeoModel, default_model_dir

    model = GeoModel.load(default_model_dir())
    fine = model._fine
    assert fine["disjoint"]
    rng = np.random.default_rng(5)
    lat = np.r_[rng.uniform(-90, 90, 300), fine["lat"][:50]]
    lon = np.r_[rng.uniform(-180, 180, 300), fine["lon"][:50]]
    tokens, index = model._fine_cells_of(lat, lon)
    leaf = leaf_cell_ids(lat, lon)
    for n, x in enumerate(leaf):
        hit = np.flatnonzero((fine["lo"] <= x) & (x <= fine["hi"]))
        assert index[n] == (hit[0] if len(hit) else -1)
        assert tokens[n] == (str(fine["token"][hit[0]]) if len(hit) else "")
    assert (index[300:] >= 0).all()  # each cell's own point lies in it
