"""A trained geolocation model: heads, places, mixing parameters and calibration, saved as one folder.

Layout of a model folder (every file written atomically, the folder swapped in whole):
  model.json       config, backbone name and version, mixing parameters, calibration, metadata
  cells.parquet    the geocells of every granularity (class id, token, count, lat, lon, country)
  places.npz       fine places: lat, lon, prior, ancestors per granularity
  classifier.pt    the multi-granularity classifier's weights
  gallery.npz      training embeddings (float16), their lat/lon and fine place index
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geopin.io import json_default
from geopin.heads import CellClassifier, Gallery, classifier_logits
from geopin.posterior import (
    CONFIDENCE_KM,
    Calibration,
    Decision,
    Evidence,
    MixParams,
    Places,
    decide,
    mixture,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2


def default_model_dir() -> Path:
    """The model bundled inside the package, trained on the Im2GPS3k photos."""
    return Path(__file__).resolve().parent / "data" / "default_model"


@dataclass
class Heads:
    """Everything fit on one set of training photos; enough to produce Evidence for new ones."""

    cells: pd.DataFrame  # all granularities stacked
    granularities: list[str]  # coarse to fine
    places: Places
    classifier: CellClassifier
    gallery: Gallery
    gallery_lat: np.ndarray
    gallery_lon: np.ndarray
    gallery_place: np.ndarray
    gallery_country: np.ndarray  # ISO code of each training photo's location
    k: int = 32

    def evidence(self, emb: np.ndarray) -> Evidence:
        logits = classifier_logits(self.classifier, emb)
        sim, idx = self.gallery.search(emb, self.k)
        return Evidence(
            logits, sim, self.gallery_lat[idx], self.gallery_lon[idx], self.gallery_place[idx], self.gallery_country[idx]
        )


@dataclass
class GeoModel:
    heads: Heads
    params: MixParams
    calibration: Calibration
    meta: dict = field(default_factory=dict)  # backbone, embed config, training data summary, fit reports

    # ---------------------------------------------------------------- prediction

    def decide(self, emb: np.ndarray) -> tuple[Evidence, np.ndarray, np.ndarray, Decision, np.ndarray]:
        ev = self.heads.evidence(emb)
        cell, nb = mixture(self.heads.places, ev, self.params)
        dec = decide(self.heads.places, ev, cell, nb)
        conf = self.calibration.apply(dec.raw_within)
        return ev, cell, nb, dec, conf

    def predict_embeddings(self, emb: np.ndarray, top_k: int = 5, region_mass: tuple[float, ...] = (0.5, 0.9)) -> list[dict]:
        """Best guess, top-k places, within-km confidences and confidence regions for each photo."""
        from geopin.countries import country_of

        ev, cell, nb, dec, conf = self.decide(emb)
        fine = self._fine
        out = []
        guess_cc = country_of(dec.lat, dec.lon)
        place_cc = fine["country"]
        for i in range(len(ev)):
            places = _place_masses(cell[i], nb[i], ev.nb_place[i])
            order = sorted(places.items(), key=lambda kv: -kv[1])
            top = []
            for place, mass in order[:top_k]:
                if place >= 0:
                    lat, lon = float(fine["lat"][place]), float(fine["lon"][place])
                    token, cc = str(fine["token"][place]), str(fine["country"][place])
                else:  # a neighbour whose cell was too small to be a class: its own location
                    j = -place - 1
                    lat, lon, token, cc = float(ev.nb_lat[i, j]), float(ev.nb_lon[i, j]), "", None
                top.append({"lat": lat, "lon": lon, "cell": token, "country": cc, "probability": float(mass)})
            missing_cc = [t for t in top if t["country"] is None]
            if missing_cc:
                ccs = country_of(np.array([t["lat"] for t in missing_cc]), np.array([t["lon"] for t in missing_cc]))
                for t, cc in zip(missing_cc, ccs):
                    t["country"] = str(cc)
            regions = {}
            cum = 0.0
            tokens: list[str] = []
            targets = list(region_mass)
            for place, mass in order:
                cum += mass
                tokens.append(str(fine["token"][place]) if place >= 0 else f"near:{ev.nb_lat[i, -place - 1]:.4f},{ev.nb_lon[i, -place - 1]:.4f}")
                while targets and cum >= targets[0] - 1e-9:
                    regions[f"{int(round(targets.pop(0) * 100))}%"] = list(tokens)
                if not targets:
                    break
            region = _region(cell[i], nb[i], place_cc, ev.nb_country[i])
            out.append(
                {
                    "lat": float(dec.lat[i]),
                    "lon": float(dec.lon[i]),
                    "country": str(guess_cc[i]),
                    "cell": self.cell_token_of(float(dec.lat[i]), float(dec.lon[i])),
                    "within_km": {f"{int(r)}": float(conf[i, r_i]) for r_i, r in enumerate(CONFIDENCE_KM)},
                    "region": region,
                    "summary": confidence_summary(conf[i], region),
                    "top_k": top,
                    "regions": regions,
                    "expected_geoscore": float(dec.expected_geoscore[i]),
                }
            )
        return out

    @functools.cached_property
    def fine_cells(self) -> pd.DataFrame:
        c = self.heads.cells
        return c[c.granularity == self.heads.granularities[-1]].sort_values("class_id").reset_index(drop=True)

    @functools.cached_property
    def _fine(self) -> dict[str, np.ndarray]:
        """The finest cells as arrays, for per-photo lookups without pandas."""
        from geopin.cells import cell_ranges

        f = self.fine_cells
        lo, hi = cell_ranges(f.cell_id.to_numpy(dtype=np.uint64))
        return {
            "lat": f.lat.to_numpy(dtype=float),
            "lon": f.lon.to_numpy(dtype=float),
            "token": f.token.to_numpy(dtype=str),
            "country": f.country.to_numpy(dtype=str),
            "lo": lo,
            "hi": hi,
        }

    def cell_token_of(self, lat: float, lon: float) -> str:
        """The finest class cell holding a point, or '' where no class covers it."""
        from geopin.cells import leaf_cell_ids

        fine = self._fine
        leaf = leaf_cell_ids(np.array([lat]), np.array([lon]))[0]
        hit = np.flatnonzero((fine["lo"] <= leaf) & (leaf <= fine["hi"]))
        return str(fine["token"][hit[0]]) if len(hit) else ""

    # ---------------------------------------------------------------- persistence

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write to a sibling temp folder, then swap it in: a crash never leaves a torn model."""
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model is meant to be shared and packaged
        try:
            h = self.heads
            h.cells.to_parquet(tmp / "cells.parquet", index=False)
            np.savez(
                tmp / "places.npz",
                lat=h.places.lat,
                lon=h.places.lon,
                prior=h.places.prior,
                best_constant=np.array(h.places.best_constant),
                **{f"ancestors_{i}": a for i, a in enumerate(h.places.ancestors)},
            )
            torch.save(
                {"state_dict": h.classifier.state_dict(), "n_classes": [hd.out_features for hd in h.classifier.heads]},
                tmp / "classifier.pt",
            )
            np.savez(
                tmp / "gallery.npz",
                vectors=h.gallery.vectors().astype(np.float16),
                mu=h.gallery.mu,
                lat=h.gallery_lat,
                lon=h.gallery_lon,
                place=h.gallery_place,
                country=h.gallery_country.astype("<U2"),
            )
            doc = {
                "format_version": FORMAT_VERSION,
                "granularities": h.granularities,
                "k": h.k,
                "params": self.params.to_dict(),
                "calibration": self.calibration.to_dict(),
                "meta": self.meta,
            }
            (tmp / "model.json").write_text(json.dumps(doc, indent=2, default=json_default) + "\n")
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old)
            else:
                os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return out_dir

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None) -> "GeoModel":
        model_dir = Path(model_dir) if model_dir else default_model_dir()
        doc_path = model_dir / "model.json"
        if not doc_path.exists():
            raise FileNotFoundError(f"{model_dir}: not a geopin model folder (no model.json)")
        doc = json.loads(doc_path.read_text())
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{model_dir}: model format {doc.get('format_version')} is not {FORMAT_VERSION}")
        cells = pd.read_parquet(model_dir / "cells.parquet")
        pz = np.load(model_dir / "places.npz")
        n_levels = len(doc["granularities"])
        places = Places(
            pz["lat"],
            pz["lon"],
            pz["prior"],
            [pz[f"ancestors_{i}"] for i in range(n_levels)],
            tuple(float(v) for v in pz["best_constant"]),
        )
        ck = torch.load(model_dir / "classifier.pt", map_location="cpu", weights_only=True)
        state = ck["state_dict"]
        hidden = 0
        if "trunk.1.weight" in state:
            hidden = state["trunk.1.weight"].shape[0]
        dim = state["mu"].shape[0]
        clf = CellClassifier(dim, ck["n_classes"], hidden=hidden)
        clf.load_state_dict(state)
        clf.eval()
        gz = np.load(model_dir / "gallery.npz")
        heads = Heads(
            cells=cells,
            granularities=list(doc["granularities"]),
            places=places,
            classifier=clf,
            gallery=Gallery(vectors=gz["vectors"].astype(np.float32), mu=gz["mu"]),
            gallery_lat=gz["lat"],
            gallery_lon=gz["lon"],
            gallery_place=gz["place"],
            gallery_country=gz["country"],
            k=int(doc["k"]),
        )
        return cls(heads, MixParams(**doc["params"]), Calibration.from_dict(doc["calibration"]), doc.get("meta", {}))


def _place_masses(cell: np.ndarray, nb: np.ndarray, nb_place: np.ndarray) -> dict[int, float]:
    """Mass per fine place; a neighbour outside every class is a place of its own (key -j-1)."""
    masses: dict[int, float] = {}
    nz = np.flatnonzero(cell > 0)
    for p in nz:
        masses[int(p)] = float(cell[p])
    for j, (m, p) in enumerate(zip(nb, nb_place)):
        key = int(p) if p >= 0 else -j - 1
        masses[key] = masses.get(key, 0.0) + float(m)
    return masses


def _region(cell: np.ndarray, nb: np.ndarray, place_cc: np.ndarray, nb_cc: np.ndarray) -> dict:
    """The most probable continent and country, from the posterior mass of every place."""
    from geopin.countries import continent_of, country_name

    by_cc: dict[str, float] = {}
    for cc, m in zip(place_cc, cell):
        by_cc[cc] = by_cc.get(cc, 0.0) + float(m)
    for cc, m in zip(nb_cc, nb):
        by_cc[str(cc)] = by_cc.get(str(cc), 0.0) + float(m)
    codes = [c for c in by_cc if c]
    by_continent: dict[str, float] = {}
    for cc, cont in zip(codes, continent_of(codes) if codes else []):
        by_continent[cont or ""] = by_continent.get(cont or "", 0.0) + by_cc[cc]
    best_cc = max(codes, key=by_cc.get) if codes else ""
    named = {k: v for k, v in by_continent.items() if k}
    best_cont = max(named, key=named.get) if named else ""
    return {
        "continent": best_cont,
        "continent_probability": float(named.get(best_cont, 0.0)),
        "country": best_cc,
        "country_name": country_name(best_cc) if best_cc else "",
        "country_probability": float(by_cc.get(best_cc, 0.0)),
    }


def confidence_summary(conf_row: np.ndarray, region: dict) -> str:
    """Plain words for what the photo says, e.g. 'Europe (64%), perhaps France (22%); 3% within 25 km'."""
    for r_i, r in enumerate(CONFIDENCE_KM[:2]):
        if conf_row[r_i] >= 0.5:
            where = f" ({region['country_name']})" if region.get("country_name") else ""
            return f"within {int(r)} km of the guess{where} with {conf_row[r_i]:.0%} probability"
    words = []
    if region.get("continent"):
        words.append(f"{region['continent']} ({region['continent_probability']:.0%})")
    if region.get("country_name"):
        words.append(f"perhaps {region['country_name']} ({region['country_probability']:.0%})")
    level = "low confidence" if conf_row[2] < 0.5 else "moderate confidence"
    return f"{', '.join(words) or 'anywhere'}; {level}: {conf_row[0]:.0%} within 25 km, {conf_row[2]:.0%} within 750 km"
