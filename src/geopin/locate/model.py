"""A trained geolocation model: heads, places, mixing parameters and calibration, saved as one folder.

Layout of a model folder (written to a temp folder beside it, then swapped in whole):
  model.json       config, the backbone config (how photos become the features the heads were fit on;
                   a finetuned: backbone's folder relative to the model folder when it lies inside or
                   beside it), mixing parameters, calibration, metadata, the classifier's shape, and the
                   size and sha256 of every other file (checked at load)
  cells.parquet    the geocells of every granularity (class id, token, count, lat, lon, country)
  places.npz       fine places: lat, lon, prior, ancestors per granularity
  classifier.pt    the multi-granularity classifier's weights
  gallery.npz      training photos' lat/lon, fine place and country; their embeddings (float16)
                   when the gallery is exact
  gallery.faiss    the trained IVF index, for galleries above Gallery's exact_max only
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import io
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from geopin.evidence.base import Clue
from geopin.features.backbones import BackboneConfig, absolute_name, relative_name
from geopin.io import sha256_file, write_json, write_parquet
from geopin.locate.heads import (
    CellClassifier,
    Gallery,
    classifier_logits,
    read_index,
    write_index,
)
from geopin.locate.clues import applied, apply_clues
from geopin.locate.scene import SceneProbe, information_keep, scene_words, widen
from geopin.locate.text_gate import TextGate
from geopin.locate.posterior import (
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

#: Photos per posterior in predict_embeddings: 10,000 photos x 10,486 places held 6 GiB at once.
_PREDICT_CHUNK = 512

# 3: size and sha256 of every file, the classifier's config, the IVF index saved; 4: the backbone config.
FORMAT_VERSION = 4
READABLE_FORMATS = (3, 4)  # a format 3 model records no backbone config: predict says what it assumes


class ModelError(ValueError):
    """A model folder that cannot be read or written; the message names the file or folder and why."""


def default_model_dir() -> Path:
    """The model bundled inside the package, trained on the Im2GPS3k photos."""
    return Path(__file__).resolve().parents[1] / "data" / "default_model"


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
    # How photos become the features the heads were fit on; None when trained on bare embeddings or read
    # from a format 3 folder (see format_version).
    backbone_config: BackboneConfig | None = None
    format_version: int = FORMAT_VERSION  # the format of the folder it was read from
    scene: SceneProbe | None = None  # indoor / natural / urban from the embedding, where the training data had scene labels
    text_gate: TextGate | None = None  # which photos are worth reading (fit on the training readings); None: read all

    # ---------------------------------------------------------------- prediction

    def decide(self, emb: np.ndarray, clues: Sequence[Sequence[Clue]] | None = None) -> tuple[Evidence, np.ndarray, np.ndarray, Decision, np.ndarray]:
        """Evidence, posterior (places, neighbours and named spots), decision and calibrated confidences."""
        return self.decide_all(emb, clues)[:5]

    def decide_all(self, emb: np.ndarray, clues: Sequence[Sequence[Clue]] | None = None, information=None):
        """As `decide`, plus each photo's clues as applied (geopin.locate.clues.ClueEffect) and how much of the
        photo's own posterior was kept (`information`: geopin.locate.scene.image_information of each photo;
        a blank or tiny image keeps none of it and answers with the prior, before any clue is weighed)."""
        ev = self.heads.evidence(emb)
        cell, nb = mixture(self.heads.places, ev, self.params)
        keep = np.ones(len(ev)) if information is None else information_keep(np.asarray(information, dtype=float))
        if (keep < 1).any():
            cell, nb = widen(cell, nb, self.heads.places.prior, keep)
        ev, cell, nb, effects = apply_clues(self.heads.places, ev, cell, nb, clues, self.params.clue_weights, self.params.clue_reach_km,
                                            self.params.clue_floor)
        # the prior's constant answer stands (the model's, or a photo that shows nothing) unless a clue moved the posterior
        prior_only = np.array([(self.params.prior_only or k == 0) and not applied(e) for k, e in zip(keep, effects)], dtype=bool)
        dec = decide(self.heads.places, ev, cell, nb, prior_only=prior_only)
        conf = self.calibration.apply(dec.raw_within)
        return ev, cell, nb, dec, conf, effects, keep

    def most_likely_points(self, ev: Evidence, cell: np.ndarray, nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most probable place of each posterior (B,): as predict's `most_likely`, a neighbour's mass counted
        in its fine place, a spot outside every place (or a town a clue named) as a place of its own."""
        places = self.heads.places
        mass = np.array(cell, dtype=np.float64, copy=True)
        inside = ev.nb_place >= 0
        rows = np.repeat(np.arange(len(mass))[:, None], ev.nb_place.shape[1], axis=1)
        np.add.at(mass, (rows[inside], ev.nb_place[inside]), nb[inside])
        j = mass.argmax(1)
        own = np.where(ev.nb_place == -1, nb, -1.0)
        jo = own.argmax(1)
        r = np.arange(len(mass))
        use_own = own[r, jo] > mass[r, j]
        lat = np.where(use_own, ev.nb_lat[r, jo], places.lat[j])
        lon = np.where(use_own, ev.nb_lon[r, jo], places.lon[j])
        return lat, lon

    def predict_embeddings(self, emb: np.ndarray, top_k: int = 5, region_mass: tuple[float, ...] = (0.5, 0.9),
                           clues: Sequence[Sequence[Clue]] | None = None, information=None) -> list[dict]:
        """Best guess, top-k places (the guess first), region, words, within-km confidences and the evidence
        weighed (`clues`: per photo, what geopin.evidence read off it) per photo.

        The posterior is read with arrays over all fine places; only the places the answer names (the
        top k and the ones that fill the confidence regions) become Python objects, because with
        10,000 places a per-place loop cost more than the whole posterior (7 photos/s at 1 M photos).
        """
        if len(emb) > _PREDICT_CHUNK:  # the posterior over every place is (photos x places) floats: bounded
            return [r for s in range(0, len(emb), _PREDICT_CHUNK)
                    for r in self.predict_embeddings(emb[s : s + _PREDICT_CHUNK], top_k, region_mass,
                                                     None if clues is None else clues[s : s + _PREDICT_CHUNK],
                                                     None if information is None else information[s : s + _PREDICT_CHUNK])]
        from geopin.countries import continent_of, country_name, country_of
        from geopin.locate import answer

        ev, cell, nb, dec, conf, effects, keep = self.decide_all(emb, clues, information)
        indoor = self.scene.indoor(emb) if self.scene is not None and self.scene.fits(emb) else None
        guess_cc = country_of(dec.lat, dec.lon)
        tokens, containing = self._fine_cells_of(dec.lat, dec.lon)
        need_mass = max(region_mass, default=0.0)
        out = []
        for i in range(len(ev)):
            places, by_cc, key = self._readout(
                cell[i], nb[i], ev, i, (float(dec.lat[i]), float(dec.lon[i])), int(containing[i]), top_k, need_mass
            )
            cc = str(guess_cc[i])
            guess = {
                "lat": float(dec.lat[i]),
                "lon": float(dec.lon[i]),
                "country": cc,
                "country_name": country_name(cc) if cc else "",
                "continent": str(continent_of([cc])[0]) if cc else "",
                "cell": str(tokens[i]),
            }
            region = answer.read_region_masses(by_cc, cc)
            by_mass = sorted(places.values(), key=lambda p: -p.mass)
            listed = answer.top_places(places, guess, key, top_k)
            most = answer.most_likely(by_mass[0]) if by_mass else None
            _name_towns(listed + ([most] if most else []))
            out.append(
                {
                    **guess,
                    "within_km": {f"{int(r)}": float(conf[i, r_i]) for r_i, r in enumerate(CONFIDENCE_KM)},
                    "region": region,
                    "summary": answer.summary(conf[i], region, cc, effects[i], most)
                    + scene_words(keep[i], None if indoor is None else float(indoor[i])),
                    "top_k": listed,
                    "regions": answer.confidence_regions(by_mass, region_mass),
                    "expected_geoscore": float(dec.expected_geoscore[i]),
                    "most_likely": most,
                    "evidence": [e.to_dict() for e in effects[i]],
                    "scene": {
                        "information": None if information is None else round(float(information[i]), 4),
                        "kept": round(float(keep[i]), 4),
                        "indoor": None if indoor is None else round(float(indoor[i]), 4),
                    },
                }
            )
        return out

    def _readout(self, cell_row, nb_row, ev: Evidence, i: int, guess: tuple[float, float], containing: int, top_k: int, need_mass: float):
        """One photo's places by mass (enough for top_k and need_mass), mass per country, and the guess's key.

        A fine place is a candidate when the classifier gives it mass or a neighbour lies in it; a
        neighbour outside every class is a place of its own (key -j-1). tests/test_answer.py holds the
        per-place reading this must equal.
        """
        from geopin.locate import answer

        mass = cell_row.astype(np.float64)  # a copy
        present = mass > 0
        own: list[answer.Place] = []
        for j, (m, p) in enumerate(zip(nb_row, ev.nb_place[i])):
            if p >= 0:
                mass[p] += float(m)
                present[p] = True
            elif p == -1:  # a neighbour whose cell was too small to be a class, or a spot a clue named: its own place
                name = str(ev.nb_name[i, j]) if ev.nb_name is not None else ""
                own.append(answer.Place(-j - 1, float(ev.nb_lat[i, j]), float(ev.nb_lon[i, j]), "", str(ev.nb_country[i, j]), float(m), name))
            # p == -2: padding of a batch whose photos named different numbers of spots
        idx = np.flatnonzero(present)
        m_idx = mass[idx]
        # mass per country: each fine place's split by where its training photos were taken (place_country_shares),
        # the own spots' added
        codes, shares = self.place_country_shares
        split = shares[idx]
        cc_mass = m_idx @ split
        by_cc = {str(codes[c]): float(cc_mass[c]) for c in np.flatnonzero(split.any(axis=0))}
        for p in own:
            by_cc[p.country] = by_cc.get(p.country, 0.0) + p.mass
        # the places the answer can name: the heaviest, until need_mass is covered and top_k is filled
        all_mass = np.concatenate([m_idx, [p.mass for p in own]])
        order = np.argsort(-all_mass, kind="stable")
        cum = np.cumsum(all_mass[order])
        n_take = min(len(order), max(top_k + 1, int(np.searchsorted(cum, need_mass - 1e-9)) + 1))
        key = self._guess_key(idx, present, own, guess, ev, i, containing)
        places: dict[int, answer.Place] = {}
        for o in order[:n_take]:
            place = self._place(int(idx[o]), float(all_mass[o])) if o < len(idx) else own[o - len(idx)]
            places[place.key] = place
        if key is not None and key not in places:
            places[key] = self._place(key, float(mass[key])) if key >= 0 else next(p for p in own if p.key == key)
        return places, by_cc, key

    def _place(self, j: int, mass: float):
        from geopin.locate import answer

        f = self._fine
        return answer.Place(j, float(f["lat"][j]), float(f["lon"][j]), str(f["token"][j]), str(f["country"][j]), mass)

    def _guess_key(self, idx, present, own, guess, ev: Evidence, i: int, containing: int) -> int | None:
        """Which candidate place the best guess is: a place's point, a neighbour's spot, or the fine
        cell holding it (None when that cell has no mass)."""
        f = self._fine
        hit = idx[(f["lat"][idx] == guess[0]) & (f["lon"][idx] == guess[1])]
        if len(hit):
            return int(hit[0])
        for p in own:
            if p.lat == guess[0] and p.lon == guess[1]:
                return p.key
        for j, (a, b) in enumerate(zip(ev.nb_lat[i], ev.nb_lon[i])):
            if a == guess[0] and b == guess[1]:
                return int(ev.nb_place[i, j]) if ev.nb_place[i, j] >= 0 else -j - 1
        return containing if containing >= 0 and present[containing] else None

    @functools.cached_property
    def fine_cells(self) -> pd.DataFrame:
        c = self.heads.cells
        return c[c.granularity == self.heads.granularities[-1]].sort_values("class_id").reset_index(drop=True)

    @functools.cached_property
    def place_country_shares(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, shares): ISO codes ('' for sea or unknown) and a (fine places x codes) matrix of the share of
        each place's training photos taken in each country; a place without a gallery photo counts wholly for
        the country of its point. A place near a border holds photos of several countries (the bundled model's
        Prague cell holds the three Polish photos, and no place's point is in Poland), so P(country) is the sum
        over places of P(place) x its share: predict's country and explain's country targets read it here."""
        fine = self._fine
        k = len(fine["country"])
        heads = self.heads
        place = np.asarray(heads.gallery_place, dtype=np.int64)
        country = np.asarray(heads.gallery_country).astype(str)
        ok = (place >= 0) & (place < k)
        codes, code_of = np.unique(np.concatenate([fine["country"], country[ok]]), return_inverse=True)
        point_code, photo_code = code_of[:k], code_of[k:]
        counts = np.zeros((k, len(codes)))
        np.add.at(counts, (place[ok], photo_code), 1.0)
        total = counts.sum(axis=1, keepdims=True)
        none = total[:, 0] == 0
        counts[none, point_code[none]] = 1.0
        return codes, counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)

    @functools.cached_property
    def _fine(self) -> dict[str, np.ndarray]:
        """The finest cells as arrays, for per-photo lookups without pandas."""
        from geopin.dataset.cells import cell_ranges

        f = self.fine_cells
        lo, hi = cell_ranges(f.cell_id.to_numpy(dtype=np.uint64))
        country = f.country.to_numpy(dtype=str)
        cc_codes, cc_idx = np.unique(country, return_inverse=True)
        by_lo = np.argsort(lo, kind="stable")
        return {
            "lat": f.lat.to_numpy(dtype=float),
            "lon": f.lon.to_numpy(dtype=float),
            "token": f.token.to_numpy(dtype=str),
            "country": country,
            "cc_codes": cc_codes,
            "cc_idx": cc_idx.ravel(),
            "lo": lo,
            "hi": hi,
            "by_lo": by_lo,
            # the finest cells of one granularity do not overlap: a point lies in at most one, found by bisection
            "disjoint": bool(len(lo) < 2 or (lo[by_lo][1:] > hi[by_lo][:-1]).all()),
        }

    def cell_token_of(self, lat: float, lon: float) -> str:
        """The finest class cell holding a point, or '' where no class covers it."""
        return self._fine_cell_of(lat, lon)[0]

    def _fine_cell_of(self, lat: float, lon: float) -> tuple[str, int]:
        """Token and index of the finest class cell holding a point ('', -1 where no class covers it)."""
        tokens, index = self._fine_cells_of(np.array([lat]), np.array([lon]))
        return str(tokens[0]), int(index[0])

    def _fine_cells_of(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and indices of the finest class cells holding points ('' and -1 where none does)."""
        from geopin.dataset.cells import leaf_cell_ids

        fine = self._fine
        leaf = leaf_cell_ids(np.asarray(lat, dtype=float), np.asarray(lon, dtype=float))
        index = np.full(len(leaf), -1, dtype=np.int64)
        if len(fine["lo"]) and fine["disjoint"]:
            order = fine["by_lo"]
            pos = np.searchsorted(fine["lo"][order], leaf, side="right") - 1
            ok = pos >= 0
            cand = order[np.clip(pos, 0, None)]
            ok &= fine["hi"][cand] >= leaf
            index[ok] = cand[ok]
        elif len(fine["lo"]):
            for n, x in enumerate(leaf):
                hit = np.flatnonzero((fine["lo"] <= x) & (x <= fine["hi"]))
                index[n] = hit[0] if len(hit) else -1
        tokens = np.array([str(fine["token"][j]) if j >= 0 else "" for j in index], dtype=object)
        return tokens, index

    # ---------------------------------------------------------------- persistence

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write to a sibling temp folder, then swap it in whole.

        A reader, or a run killed at any moment, finds the old complete model or the new complete
        one, never a mix: on Linux the two folders are exchanged in one step (renameat2), elsewhere
        an interrupted swap is undone by the next load or save. A folder that cannot be written
        (read-only, full) is a ModelError naming it, and the model already there stays as it was.
        """
        out_dir = check_output_dir(out_dir)
        tmp: Path | None = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir), dir=out_dir.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; a model is meant to be shared and packaged
            self._write_files(tmp, out_dir)
            _swap_in(tmp, out_dir)
        except OSError as exc:
            raise ModelError(f"{out_dir}: cannot write the model: {_os_reason(exc)}; the model there before, if any, is unchanged") from exc
        finally:
            if tmp is not None and tmp.exists():
                _remove_tree(tmp)
        return out_dir

    def _write_files(self, folder: Path, out_dir: Path) -> None:
        """Every file into `folder`, then model.json with the size and sha256 of each (all fsync'ed before the
        swap); the backbone config names a finetuned: folder relative to `out_dir`, where the model will be."""
        h = self.heads
        write_parquet(h.cells, folder / "cells.parquet")
        np.savez(
            folder / "places.npz",
            lat=h.places.lat,
            lon=h.places.lon,
            prior=h.places.prior,
            best_constant=np.array(h.places.best_constant),
            **{f"ancestors_{i}": a for i, a in enumerate(h.places.ancestors)},
        )
        buf = io.BytesIO()  # torch's own file writer turns a full disk into an unreadable RuntimeError
        torch.save({"state_dict": h.classifier.state_dict()}, buf)
        (folder / "classifier.pt").write_bytes(buf.getbuffer())
        gallery = {
            "mu": h.gallery.mu,
            "lat": h.gallery_lat,
            "lon": h.gallery_lon,
            "place": h.gallery_place,
            "country": h.gallery_country.astype("<U2"),
        }
        if h.gallery.exact:  # half the size of the float32 index; rebuilt at load by one copy
            gallery["vectors"] = h.gallery.vectors().astype(np.float16)
        else:  # an IVF index is saved as trained: its k-means took minutes
            write_index(h.gallery.index, folder / GALLERY_INDEX)
        np.savez(folder / "gallery.npz", **gallery)
        files = {p.name: _file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
        clf = h.classifier
        config = self.backbone_config
        doc = {
            "format_version": FORMAT_VERSION,
            "backbone_config": None if config is None else {**config.to_dict(), "name": relative_name(config.name, out_dir)},
            "granularities": h.granularities,
            "k": h.k,
            "params": self.params.to_dict(),
            "calibration": self.calibration.to_dict(),
            "classifier": {"dim": clf.dim, "n_classes": clf.n_classes, "hidden": clf.hidden, "dropout": clf.dropout},
            "gallery": {"index": h.gallery.kind, "n": len(h.gallery), "dim": h.gallery.dim, "nprobe": _nprobe(h.gallery.index)},
            "files": files,
            "meta": self.meta,
        }
        if self.scene is not None:
            doc["scene"] = self.scene.to_dict()
        if self.text_gate is not None:
            doc["text_gate"] = self.text_gate.to_dict()
        write_json(doc, folder / MODEL_JSON)
        _file_digest(folder / MODEL_JSON)  # fsync
        _fsync_dir(folder)

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None, *, verify: bool = True) -> "GeoModel":
        """Read a model folder; every file is checked against the size and sha256 in its model.json.

        Any problem (missing, truncated or changed file, bad JSON, another format) is a ModelError
        that names the file and the reason, so every command can say it in one line.
        """
        model_dir = _recover(Path(model_dir) if model_dir else default_model_dir())
        doc = read_model_json(model_dir)
        if verify:
            with _reading(model_dir / MODEL_JSON):  # a malformed entry; damaged files raise their own ModelError
                verify_files(model_dir, doc)
        granularities = list(doc["granularities"])
        with _reading(model_dir / MODEL_JSON):
            params = MixParams(**doc["params"])
            calibration = Calibration.from_dict(doc["calibration"])
            k = int(doc["k"])
            cc, gc = doc["classifier"], doc["gallery"]
            clf = CellClassifier(int(cc["dim"]), [int(n) for n in cc["n_classes"]], int(cc["hidden"]), float(cc["dropout"]))
            if len(clf.n_classes) != len(granularities):
                raise ValueError(f"{len(clf.n_classes)} classifier heads for {len(granularities)} granularities")
        with _reading(model_dir / "cells.parquet"):
            cells = pd.read_parquet(model_dir / "cells.parquet")
        with _reading(model_dir / "places.npz"), np.load(model_dir / "places.npz") as pz:
            places = Places(
                pz["lat"],
                pz["lon"],
                pz["prior"],
                [pz[f"ancestors_{i}"] for i in range(len(granularities))],
                tuple(float(v) for v in pz["best_constant"]),
            )
        with _reading(model_dir / "classifier.pt"):
            ck = torch.load(model_dir / "classifier.pt", map_location="cpu", weights_only=True)
            clf.load_state_dict(ck["state_dict"])
        clf.eval()
        gallery_npz = model_dir / "gallery.npz"
        with _reading(gallery_npz), np.load(gallery_npz) as gz:
            g = {name: gz[name] for name in ("mu", "lat", "lon", "place", "country")}
            if gc["index"] == "flat":
                vectors = gz["vectors"].astype(np.float32)
                gallery = Gallery(vectors=vectors, mu=g["mu"], exact_max=len(vectors))
        if gc["index"] == "ivf":
            try:
                index = read_index(model_dir / GALLERY_INDEX)
            except ValueError as exc:
                raise ModelError(str(exc)) from exc
            index.nprobe = int(gc["nprobe"])
            gallery = Gallery(index=index, mu=g["mu"])
        elif gc["index"] != "flat":
            raise ModelError(f"{model_dir / MODEL_JSON}: unknown gallery index {gc['index']!r}")
        if not (len(gallery) == int(gc["n"]) == len(g["lat"]) == len(g["place"])) or gallery.dim != clf.dim:
            raise ModelError(
                f"{gallery_npz}: {len(gallery)} gallery vectors of dim {gallery.dim} and {len(g['lat'])} locations, "
                f"model.json says {gc['n']} of dim {clf.dim}"
            )
        heads = Heads(
            cells=cells,
            granularities=granularities,
            places=places,
            classifier=clf,
            gallery=gallery,
            gallery_lat=g["lat"],
            gallery_lon=g["lon"],
            gallery_place=g["place"],
            gallery_country=g["country"],
            k=k,
        )
        scene = None
        if doc.get("scene") is not None:
            with _reading(model_dir / MODEL_JSON):
                scene = SceneProbe.from_dict(doc["scene"], f"{model_dir / MODEL_JSON}: scene")
        gate = None
        if doc.get("text_gate") is not None:
            with _reading(model_dir / MODEL_JSON):
                gate = TextGate.from_dict(doc["text_gate"], f"{model_dir / MODEL_JSON}: text_gate")
        return cls(heads, params, calibration, doc.get("meta", {}), _backbone_config(doc, model_dir), int(doc["format_version"]),
                   scene, gate)


def _name_towns(rows: list[dict]) -> None:
    """Each listed place's nearest town (`near`, '' where none within 50 km) and country name, for people."""
    from geopin.countries import country_name, nearest_town

    towns = nearest_town([r["lat"] for r in rows], [r["lon"] for r in rows])
    for r, town in zip(rows, towns):
        r["near"] = str(town)
        r["country_name"] = country_name(r["country"]) if r.get("country") else ""


# -------------------------------------------------------------------- model folders: checks and swaps

MODEL_JSON = "model.json"
GALLERY_INDEX = "gallery.faiss"  # only for IVF galleries
_REQUIRED_FILES = ("cells.parquet", "places.npz", "classifier.pt", "gallery.npz")
_REQUIRED_KEYS = ("granularities", "k", "params", "calibration", "classifier", "gallery", "files")
# what a damaged file makes the readers raise (numpy, pyarrow, torch's zip reader, pickle)
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError)


def read_model_json(model_dir: Path) -> dict:
    """model.json, checked for format and keys; a ModelError names the file, the line and the reason."""
    path = model_dir / MODEL_JSON
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a geopin model folder (no model.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    version = doc.get("format_version")
    if version not in READABLE_FORMATS:
        raise ModelError(
            f"{path}: model format {version} is not one this geopin reads ({', '.join(map(str, READABLE_FORMATS))}); "
            f"retrain it (`geopin train`), or for the bundled model run scripts/build_default_model.py"
        )
    missing = [key for key in _REQUIRED_KEYS + (("backbone_config",) if version >= 4 else ()) if key not in doc]
    if missing:
        raise ModelError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
    return doc


def _backbone_config(doc: dict, model_dir: Path) -> BackboneConfig | None:
    """model.json's backbone config, its finetuned: folder read from model_dir; a ModelError names the field."""
    stored = doc.get("backbone_config")
    if stored is None:
        return None
    try:
        config = BackboneConfig.from_dict(stored, f"{model_dir / MODEL_JSON}: backbone_config")
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return replace(config, name=absolute_name(config.name, model_dir))


def verify_files(model_dir: Path, doc: dict) -> None:
    """Every file model.json lists has its recorded size, then its sha256; a torn or changed file is named."""
    files = doc["files"] if isinstance(doc["files"], dict) else {}
    needed = _REQUIRED_FILES + ((GALLERY_INDEX,) if doc["gallery"].get("index") == "ivf" else ())
    unlisted = [name for name in needed if name not in files]
    if unlisted:
        raise ModelError(f"{model_dir / MODEL_JSON}: no checksum for {', '.join(unlisted) or 'any file'}")
    for name, info in files.items():
        path = model_dir / name
        if Path(name).name != name:
            raise ModelError(f"{model_dir / MODEL_JSON}: file name {name!r} is not a plain name")
        if not path.is_file():
            raise ModelError(f"{path}: missing (model.json lists it)")
        size = path.stat().st_size
        if size != info["size"]:
            hint = "truncated?" if size < info["size"] else "longer than written"
            raise ModelError(f"{path}: size {size} bytes, expected {info['size']} ({hint})")
    for name, info in files.items():
        digest = sha256_file(model_dir / name)
        if digest != info["sha256"]:
            raise ModelError(
                f"{model_dir / name}: sha256 {digest[:16]}... does not match model.json ({info['sha256'][:16]}...): "
                "the file was changed or is corrupt"
            )


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Fail fast where a model could not be saved (before training, not after); tidy killed runs' leftovers.

    Refuses to replace a folder that holds files but no model.json: swapping it out would delete them.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: is a file, not a model folder")
    if out_dir.is_dir() and not (out_dir / MODEL_JSON).is_file() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir}: not a geopin model folder (no model.json) and not empty; refusing to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _recover(out_dir)
        _remove_stale(out_dir)
        Path(tempfile.mkdtemp(prefix=_temp_prefix(out_dir), dir=out_dir.parent)).rmdir()  # can we write here?
    except OSError as exc:
        raise ModelError(f"{out_dir}: cannot write the model: {_os_reason(exc)}; the model there before, if any, is unchanged") from exc
    return out_dir


def _temp_prefix(out_dir: Path) -> str:
    """`.NAME.tmp-PID-`: the pid tells a later save whether the run that made it is still going."""
    return f".{out_dir.name}.tmp-{os.getpid()}-"


def _old_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the complete folder `tmp` at `out_dir` in one step where the OS allows it."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    elif _exchange(tmp, out_dir):
        _fsync_dir(out_dir.parent)
        _remove_tree(tmp)  # now the old model
    else:  # two renames; a kill between them leaves only .NAME.old, which _recover puts back
        old = _old_path(out_dir)
        if old.exists():
            _remove_tree(old)
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        _fsync_dir(out_dir.parent)
        _remove_tree(old)


def _recover(out_dir: Path) -> Path:
    """Where a save without renameat2 was killed between its two renames, put the old model back."""
    old = _old_path(out_dir)
    if out_dir.exists() or not (old / MODEL_JSON).is_file():
        return out_dir
    try:
        os.rename(old, out_dir)
    except OSError as exc:
        if out_dir.exists():  # another process finished its swap meanwhile
            return out_dir
        log.warning("%s: missing; reading the previous model at %s (cannot move it back: %s)", out_dir, old, exc)
        return old
    log.warning("%s: a save was interrupted; the previous model was put back from %s", out_dir, old)
    return out_dir


def _remove_stale(out_dir: Path) -> None:
    """Temp folders of runs that were killed (their pid is gone), and an old model left after a swap."""
    old = _old_path(out_dir)
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.tmp-(\d+)-\w+")
    for path in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*"):
        match = pattern.fullmatch(path.name)
        if (match and not _pid_alive(int(match.group(1)))) or (path == old and out_dir.exists()):
            log.info("removing %s, left by an interrupted save", path)
            _remove_tree(path)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere there is no harmless liveness probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.lru_cache(maxsize=1)
def _renameat2():
    """libc's renameat2, or None where there is none (not Linux, or glibc older than 2.28)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        log.debug("renameat2 RENAME_EXCHANGE unsupported here (%s): two renames instead", os.strerror(err))
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _file_digest(path: Path) -> dict:
    """Size and sha256 of a file just written, flushed to disk first so the swap never exposes an empty file."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:  # left for the next save to remove
        log.warning("could not remove %s: %s", path, exc)


def _nprobe(index) -> int | None:
    return None if not hasattr(index, "nprobe") else int(index.nprobe)


def _os_reason(exc: OSError) -> str:
    """'No space left on device', also where pyarrow buries it as '... Detail: [errno 28] ...'."""
    if exc.errno:
        return os.strerror(exc.errno)
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return os.strerror(int(found.group(1))) if found else str(exc)


@contextlib.contextmanager
def _reading(path: Path):
    """Whatever a damaged file makes its reader raise becomes a ModelError naming the file."""
    try:
        yield
    except ModelError:
        raise
    except _READ_ERRORS as exc:
        raise ModelError(f"{path}: cannot be read ({type(exc).__name__}: {str(exc).strip()[:300]})") from exc
