"""Confidence regions drawn at one S2 level: a level-1 class (all of Siberia) is not drawn as one block beside
level-11 towns. Each region keeps its places and at least its mass; where no cell had to be coarsened it is
exactly the same area.

Checked with s2sphere (the reference S2 library), not with geopin's own cell arithmetic.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import s2sphere
from PIL import Image
from test_answer import place_masses

from geopin.locate.answer import (
    REGION_MAX_CELLS,
    SPOT_LEVEL,
    Place,
    confidence_regions,
    one_level_tokens,
    region_places,
)

log = logging.getLogger(__name__)
TARGETS = (0.5, 0.9)


def cid(token: str) -> s2sphere.CellId:
    return s2sphere.CellId.from_token(token)


def at(lat: float, lon: float, level: int) -> str:
    return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(lat, lon)).parent(level).to_token()


def leaf(p: Place) -> s2sphere.CellId:
    return s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(p.lat, p.lon))


def union(tokens) -> s2sphere.CellUnion:
    u = s2sphere.CellUnion([cid(t) for t in tokens])
    u.normalize()
    return u


def holds(u: s2sphere.CellUnion, p: Place) -> bool:
    """Whether the whole place (its cell, or its spot) lies in the union."""
    return u.contains(cid(p.cell) if p.cell else leaf(p))


def area_km2(tokens) -> float:
    return sum(s2sphere.Cell(cid(t)).exact_area() for t in tokens) * 6371.0088**2


def check_region(new: list[str], places: list[Place], every: list[Place], max_cells: int = REGION_MAX_CELLS) -> dict:
    """One level; at most max_cells; every place of the region inside it; at least its mass; the same area
    where the level is the finest of its cells. Returns the figures for the log."""
    levels = {cid(t).level() for t in new}
    assert len(levels) == 1, f"levels {sorted(levels)} in one region"
    assert len(new) == len(set(new)) and 0 < len(new) <= max_cells
    level = levels.pop()
    u = union(new)
    assert all(holds(u, p) for p in places), "a place of the region left out"
    before = sum(p.mass for p in places)
    held = sum(p.mass for p in every if holds(u, p))
    assert held >= before - 1e-9
    finest = max(cid(p.cell).level() if p.cell else SPOT_LEVEL for p in places)
    cells = [p.cell for p in places if p.cell]
    if level >= finest and len(cells) == len(places):  # nothing coarsened: the very same area and mass
        old = union(cells)
        assert [c.id() for c in u.cell_ids()] == [c.id() for c in old.cell_ids()]
        assert held == pytest.approx(before, abs=1e-9)
    else:  # each new cell holds or lies in one of the region's places: nothing unrelated is added
        for t in new:
            c = cid(t)
            assert any((cid(p.cell).contains(c) or c.contains(cid(p.cell))) if p.cell else c.contains(leaf(p)) for p in places), t
    return {"before": len(places), "after": len(new), "level": level, "finest": finest,
            "area_ratio": area_km2(new) / max(area_km2(cells), 1e-12) if cells else float("nan"), "mass": (before, held)}


# ------------------------------------------------------------------ crafted regions


def test_a_level_1_cell_beside_town_cells_is_split_and_the_towns_coarsened():
    """Siberia as a level-1 class beside level-11 towns: all become cells of one level that fits the cap."""
    siberia = Place(0, 62.0, 100.0, at(62.0, 100.0, 1), "RU", 0.30)
    towns = [Place(i, lat, lon, at(lat, lon, 11), "FR", 0.05) for i, (lat, lon) in
             enumerate([(48.86, 2.35), (43.30, 5.37), (45.76, 4.84), (35.68, 139.69), (40.71, -74.0)], 1)]
    spot = Place(-1, -33.87, 151.21, "", "AU", 0.05)
    places = [siberia, *towns, spot]
    new = one_level_tokens(places, max_cells=300)
    fig = check_region(new, places, places, max_cells=300)
    # 4^(L-1) children of the level-1 cell fit 300 up to level 5 (256), with the six others beside them
    assert fig["level"] == 5 and len(new) == 256 + 6
    children = {c.id() for c in s2sphere.CellId.from_token(siberia.cell).children(5)}
    assert children <= {cid(t).id() for t in new}
    # the order follows the places' mass: the heaviest place's cells come first
    assert {cid(t).id() for t in new[:256]} == children


def test_a_region_that_fits_at_its_finest_level_keeps_its_exact_area():
    places = [Place(0, 0, 0, at(48.0, 2.0, 3), "FR", 0.4), Place(1, 0, 0, at(35.7, 139.7, 6), "JP", 0.2),
              Place(2, 0, 0, at(40.7, -74.0, 5), "US", 0.1)]
    new = one_level_tokens(places)
    fig = check_region(new, places, places)
    assert fig["level"] == 6 and len(new) == 4 ** 3 + 1 + 4
    assert fig["area_ratio"] == pytest.approx(1.0, rel=1e-9)


def test_a_cell_inside_another_and_a_spot_inside_a_cell_add_nothing():
    big = at(35.0, 135.0, 4)
    inner = s2sphere.CellId.from_token(big).child_begin(9).to_token()
    places = [Place(0, 0, 0, big, "JP", 0.5), Place(1, 0, 0, inner, "JP", 0.2), Place(-1, 35.0, 135.0, "", "JP", 0.1)]
    new = one_level_tokens(places)
    check_region(new, places, places)
    assert new == [big]  # the level-9 cell and the spot lie inside the level-4 one: they neither add cells nor refine it
    only_spots = one_level_tokens([Place(-1, 35.0, 135.0, "", "JP", 0.6), Place(-2, -1.29, 36.82, "", "KE", 0.3)])
    assert [cid(t).level() for t in only_spots] == [SPOT_LEVEL, SPOT_LEVEL]


# ------------------------------------------------------------------ the model's own regions


def every_place(model, emb: np.ndarray) -> list[list[Place]]:
    """Every place of each photo's posterior, as the readout names them (tests/test_answer.py's reading)."""
    ev, cell, nb, _, _ = model.decide(emb)
    fine = model._fine
    out = []
    for i in range(len(ev)):
        ps = []
        for key, mass in place_masses(cell[i], nb[i], ev.nb_place[i]).items():
            if key >= 0:
                ps.append(Place(key, float(fine["lat"][key]), float(fine["lon"][key]), str(fine["token"][key]), "", mass))
            else:
                j = -key - 1
                ps.append(Place(key, float(ev.nb_lat[i, j]), float(ev.nb_lon[i, j]), "", "", mass))
        out.append(sorted(ps, key=lambda p: -p.mass))
    return out


def check_photos(predictor, images: list[Image.Image], names: list[str]) -> list[dict]:
    from geopin.features.embed import embed_images

    model = predictor.model
    emb = embed_images(images, predictor.backbone, predictor.embed_cfg)
    answers = model.predict_embeddings(emb)
    figures = []
    for name, res, every in zip(names, answers, every_place(model, emb)):
        regions = res["regions"]
        assert set(regions) == {"50%", "90%"}
        assert regions == confidence_regions(every, TARGETS)  # the array readout names the same regions
        before = region_places(every, TARGETS)
        row = {k: check_region(regions[k], before[k], every) for k in regions}
        # the 90 % region holds the 50 % one
        u90 = union(regions["90%"])
        assert all(u90.contains(cid(t)) for t in regions["50%"])
        log.info("%s: %s", name, {k: (f["before"], f["after"], f"level {f['level']} (finest {f['finest']})",
                                      f"area x{f['area_ratio']:.3f}") for k, f in row.items()})
        figures.append(row)
    return figures


def test_regions_of_generated_photos_have_one_level_and_their_mass(predictor):
    rng = np.random.default_rng(7)
    images = []
    for i in range(4):
        arr = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
        arr[: 60 + 30 * i] = (90 + 30 * i, 150, 220 - 25 * i)  # a sky over noise
        images.append(Image.fromarray(arr))
    check_photos(predictor, images, [f"generated{i}" for i in range(4)])


@pytest.mark.shared
def test_regions_of_shared_photos_have_one_level_and_their_mass(predictor, im2gps_dir):
    from geopin.features.embed import load_image

    labels = pd.read_csv(im2gps_dir / "labels.csv").sample(8, random_state=5)
    cfg = predictor.embed_cfg
    images = [load_image(im2gps_dir / n, cfg.mode, cfg.long_side, predictor.backbone.native_size) for n in labels.image]
    figures = check_photos(predictor, images, list(labels.image))
    # the point of it: regions spanning levels 1 to 20 are drawn at one level, within the cap
    assert any(f["90%"]["finest"] > f["90%"]["level"] for f in figures)
