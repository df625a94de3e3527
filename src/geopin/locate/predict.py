"""Where was this photo taken? Best guess, top-k places and honest within-km confidences.

A bad file gets an error row naming it and the reason; the other photos go on. Photos that carry GPS
in their EXIF say so (`exif_gps`), and are still predicted from their pixels only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pyarrow as pa

from geopin.dataset.images import IMAGE_SUFFIXES, ImageError, find_photos
from geopin.features.backbones import DEFAULT_BACKBONE
from geopin.io import json_default, write_json, write_parquet
from geopin.locate.model import MODEL_JSON, GeoModel, ModelError, default_model_dir
from geopin.scale.engine import (
    PARTS_DIR,
    EngineConfig,
    EngineReport,
    map_partitions,
    partition,
    read_parts,
)

if TYPE_CHECKING:
    from geopin.evidence.base import Reading

log = logging.getLogger(__name__)

#: The photo shipped with geopin for the README's first command, with its true location.
EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "data" / "examples" / "rocket_cape_canaveral.jpg"
EXAMPLE_TRUTH = (28.5619, -80.5772)


#: When predict reads the text on photos: only when the model weighs a source (auto), always, or never.
TEXT_MODES = ("auto", "always", "never")
PRECISION_HELP = ("The backbone's forward pass: f32, or int8 (ONNX Runtime, ~2.5x faster; other features: on the shared "
                  "photos a model trained on f32 scored the same within noise at int8, yet 21% of its best guesses moved "
                  "by more than 1 km). Default: the precision the model was trained on.")
TEXT_HELP = ("Read the text on photos (OCR at their own resolution, ~0.4 s a photo) for evidence: auto (when the model "
             "weighs a text source, on the photos its text gate expects text on), always (every photo; also list what "
             "was read when nothing is weighed), never (pixels only).")


@dataclass
class PredictConfig:
    model_dir: Path | None = None  # None: the model bundled with geopin
    top_k: int = 5
    batch_size: int = 16
    # "auto": read text (OCR at the photo's own resolution) when the model gives any evidence source weight, on the
    # photos its text gate expects text on (geopin.locate.text_gate; all photos when the model has none);
    # "always": every photo, also when no source counts (the answer lists what was read, unweighed); "never": pixels only
    text: str = "auto"
    # the backbone's forward pass: None, the precision the model was trained on (its backbone_config); "int8" runs a
    # model trained on f32 features at int8 (ONNX Runtime, ~2.5x faster): on the shared folds that moved 21 % of
    # the best guesses by more than 1 km and changed GeoScore by +10.5 [-5.2, +26.7] (bench/bench_int8_accuracy.py)
    precision: str | None = None

    def __post_init__(self) -> None:
        from geopin.features.backbones.preprocess import PRECISIONS

        if self.text not in TEXT_MODES:
            raise ValueError(f"text must be one of {', '.join(TEXT_MODES)}, not {self.text!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for photos (IMAGE_SUFFIXES, as ingest does: symlinked
    folders followed, hidden entries skipped); a missing path or a dangling symlink is kept to report it."""
    return find_photos(list(paths))


class Predictor:
    """A loaded model and its backbone, reused across calls (the API and the CLI keep one)."""

    def __init__(self, cfg: PredictConfig | None = None):
        from geopin.features.backbones import check_backbone_config, create_backbone
        from geopin.features.embed import EmbedConfig, embedded_config

        self.cfg = cfg = cfg or PredictConfig()
        self.model = GeoModel.load(cfg.model_dir)
        model_json = Path(cfg.model_dir or default_model_dir()) / MODEL_JSON
        stored = self.model.backbone_config
        emb_meta = self.model.meta.get("embedding") or {}
        saved = emb_meta.get("config") or {}
        # the same preprocessing the model was trained on; where and how fast to compute are ours
        if stored is not None:
            chosen = {"backbone": stored.name, "mode": stored.mode, "long_side": stored.long_side, "precision": stored.precision}
        else:
            chosen = {"backbone": _legacy_backbone(self.model, model_json),
                      **{k: v for k, v in saved.items() if k in ("mode", "long_side")}}
        if cfg.precision is not None:
            chosen["precision"] = cfg.precision
        self.embed_cfg = EmbedConfig(**chosen, tta=tuple(saved.get("tta") or ()), use_cache=False)
        self.backbone = create_backbone(self.embed_cfg.backbone)
        if stored is not None:
            if stored.precision != self.embed_cfg.precision:  # asked for: the check below is for everything else
                log.info("the model was trained on %s features; predicting at %s as asked (f32 model, int8 features, on "
                         "the shared photos: GeoScore the same within noise, 21%% of best guesses moved by over 1 km)",
                         stored.precision, self.embed_cfg.precision)
                stored = replace(stored, precision=self.embed_cfg.precision)
            check_backbone_config(stored, embedded_config(self.backbone, self.embed_cfg), f"{model_json}: backbone_config")
        elif emb_meta.get("version") and emb_meta["version"] != self.backbone.version:
            log.warning("model was trained on %s features, this backbone is %s", emb_meta["version"], self.backbone.version)

    @property
    def reads_text(self) -> bool:
        """Whether photos are read for evidence (PredictConfig.text against the model's source weights)."""
        if self.cfg.text == "never":
            return False
        return self.cfg.text == "always" or any(w > 0 for w in self.model.params.clue_weights.values())

    @functools.cached_property
    def _text(self):
        """The OCR reader and the evidence sources, made on first use and kept (the OCR models load once)."""
        from geopin.evidence.ocr import TextReader
        from geopin.evidence.registry import create_sources

        return TextReader(), create_sources()

    def prepare_text(self) -> None:
        """Load what reading costs on first use (the OCR models, the town index, the language models), so that
        a server's first photo with text does not wait for them."""
        from PIL import Image, ImageDraw

        from geopin.evidence.base import Reading, TextLine

        reader, _ = self._text
        page = Image.new("RGB", (240, 64), (255, 255, 255))
        ImageDraw.Draw(page).text((10, 20), "PRAIANO 40 MPH", fill=(0, 0, 0))
        reader.read(page)  # loads the detector, the recogniser and (where installed) tesseract
        sample = Reading((TextLine("Benvenuti a Praiano, la perla della costiera", 1.0, (0, 0, 1, 1)),), 1, 1)
        self.clues_of([sample])

    def read_text(self, source) -> "Reading":
        """What the photo says, read at its own full resolution (a path, bytes, or a decoded image)."""
        from geopin.dataset.images import decode_rgb

        reader, _ = self._text
        image = source if not isinstance(source, (str, Path, bytes, bytearray)) else decode_rgb(source)
        return reader.read(image)

    def reading_or_none(self, source, row: dict):
        """read_text, or None with the reason in row['evidence_error']: the photo still gets its answer."""
        try:
            return self.read_text(source)
        except (ImageError, OSError, RuntimeError, ValueError) as exc:
            log.warning("%s: text not read: %s", row.get("path"), exc)
            row["evidence_error"] = f"text not read: {exc}"
            return None

    def clues_of(self, readings: list) -> list[list]:
        from geopin.evidence.registry import clues_of

        _, sources = self._text
        return [[] if r is None else clues_of(r, sources) for r in readings]

    def text_wanted(self, emb: np.ndarray) -> np.ndarray:
        """Which photos to read, (photos,) bool: none when text is not read; under "auto" those the model's text
        gate expects text on (every photo when the model has no gate); under "always" every photo."""
        n = len(emb)
        if not self.reads_text:
            return np.zeros(n, dtype=bool)
        gate = self.model.text_gate
        if self.cfg.text == "always" or gate is None or not gate.fits(emb):
            return np.ones(n, dtype=bool)
        return gate.wants(emb)

    def embed(self, images: list) -> np.ndarray:
        """The backbone's features of decoded photos, as the model was trained on them."""
        from geopin.features.embed import embed_images

        return embed_images(images, self.backbone, self.embed_cfg)

    def answer(self, emb: np.ndarray, images: list, names: list[str], top_k: int | None = None,
               readings: list | None = None, wanted: np.ndarray | None = None) -> list[dict]:
        """The answers from the features (`images` for how much each photo shows; `readings`: what was read off
        each photo, None where nothing was; `wanted`: which photos the text gate sent to be read)."""
        from geopin.locate.scene import image_information

        clues = self.clues_of(readings) if readings is not None else None
        information = [image_information(img) for img in images]  # a blank or tiny image answers with the prior
        results = self.model.predict_embeddings(emb, top_k=self.cfg.top_k if top_k is None else top_k, clues=clues,
                                                information=information)
        for i, (name, r) in enumerate(zip(names, results)):
            r["path"] = name
            if self.reads_text:
                r["text_read"] = bool(readings is not None and readings[i] is not None) if wanted is None else bool(wanted[i])
        return results

    def predict_images(self, images: list, names: list[str], top_k: int | None = None, readings: list | None = None,
                       read: Callable[[int], Reading | None] | None = None) -> list[dict]:
        """`top_k` overrides the configured number per call (the API takes it per request). What was read off the
        photos becomes the answer's evidence: either `readings` (one per photo, None where nothing was read), or
        `read(i)`, called after the embedding for each photo the text gate sends to be read."""
        emb = self.embed(images)
        wanted = None
        if read is not None and readings is None and self.reads_text:
            wanted = self.text_wanted(emb)
            readings = [read(i) if wanted[i] else None for i in range(len(images))]
        return self.answer(emb, images, names, top_k, readings, wanted)

    def predict_paths(self, paths: Iterable[str | Path]) -> Iterator[dict]:
        """Yield one result per file, in input order; errors are results too (with an `error` key)."""
        from geopin.features.embed import load_image

        pending: list[dict] = []  # rows in input order; good ones carry their decoded image
        n_images = 0
        for path in expand_paths(paths):
            row: dict = {"path": str(path)}
            try:
                # decoded exactly as for training (reduced-scale JPEG decoding, EXIF orientation)
                row["_img"] = load_image(path, self.embed_cfg.mode, self.embed_cfg.long_side, self.backbone.native_size)
                row.update(exif_info(path))
                n_images += 1
            except FileNotFoundError:
                row["error"] = f"{path}: no such file"
            except IsADirectoryError:
                row["error"] = f"{path}: is a folder with no images"
            except ImageError as exc:  # the same reasons ingest rejects a photo for
                row["error"] = f"{path}: not a usable image ({exc.reason}: {exc.detail})"
            except OSError as exc:
                row["error"] = f"{path}: cannot read ({exc.strerror or exc})"
            pending.append(row)
            if n_images >= self.cfg.batch_size:
                yield from self._flush(pending)
                pending, n_images = [], 0
        yield from self._flush(pending)

    def _flush(self, rows: list[dict]) -> Iterator[dict]:
        good = [r for r in rows if "_img" in r]
        if good:
            # the photo is read (OCR, at its own full resolution) only when the text gate expects text on it
            read = lambda i: self.reading_or_none(good[i]["path"], good[i])  # noqa: E731
            results = self.predict_images([r.pop("_img") for r in good], [r["path"] for r in good], read=read)
            for row, res in zip(good, results):
                row.update(res)
        for row in rows:
            yield ordered_result(row)


def _legacy_backbone(model: GeoModel, model_json: Path) -> str:
    """The backbone of a model that records no backbone config: the one its metadata names, else (format 3
    only) the default one; said in a warning, since how that backbone prepares photos is assumed, not checked."""
    name = model.meta.get("backbone") or (model.meta.get("embedding") or {}).get("backbone")
    if not name and model.format_version >= 4:
        raise ModelError(
            f"{model_json}: no backbone_config and no backbone named: the heads were trained on embeddings that do "
            f"not say which backbone made them, so photos cannot be predicted with this model"
        )
    name = name or DEFAULT_BACKBONE
    log.warning("%s (model format %d) records no backbone config: assuming %s, preprocessing photos as it does today",
                model_json, model.format_version, name)
    return name


def exif_info(path: Path) -> dict:
    from geopin.dataset.exif import ExifGpsError, read_exif_gps

    try:
        gps = read_exif_gps(path)
    except ExifGpsError as exc:
        return {"exif_gps": None, "exif_gps_error": str(exc)}
    except (OSError, ValueError) as exc:
        return {"exif_gps": None, "exif_gps_error": f"unreadable EXIF: {exc}"}
    return {"exif_gps": None if gps is None else {"lat": gps[0], "lon": gps[1]}}


_KEY_ORDER = ["path", "lat", "lon", "country", "country_name", "continent", "cell", "within_km", "summary", "most_likely", "evidence", "text_read", "top_k",
              "regions", "exif_gps"]


def ordered_result(res: dict) -> dict:
    out = {k: res[k] for k in _KEY_ORDER if k in res}
    out.update({k: v for k, v in res.items() if k not in out})
    return out


def predict(paths: Iterable[str | Path], cfg: PredictConfig | None = None) -> list[dict]:
    return list(Predictor(cfg).predict_paths(paths))


def distance_to_truth_km(result: dict, truth: tuple[float, float]) -> float:
    from geopin.geo import haversine_km

    return float(haversine_km(result["lat"], result["lon"], truth[0], truth[1]))


__all__ = ["IMAGE_SUFFIXES", "PredictConfig", "Predictor", "predict", "expand_paths", "EXAMPLE_PHOTO", "EXAMPLE_TRUTH", "distance_to_truth_km"]


# ----------------------------------------------------------------------------------------------------------
# predict on the engine

PREDICT_FLAT = ("path", "lat", "lon", "country", "country_name", "continent", "cell", "summary", "error")
PREDICTIONS_PARQUET = "predictions.parquet"
PREDICTIONS_JSON = "predictions.json"


def predict_schema() -> pa.Schema:
    """The flat fields of `geopin predict --json` as columns, and the whole result as its JSON in `result`."""
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
                      ("country", pa.string()), ("country_name", pa.string()), ("continent", pa.string()),
                      ("cell", pa.string()), ("summary", pa.string()), ("error", pa.string()), ("result", pa.string())])


def _predict_setup(cfg, threads: int):
    predictor = Predictor(cfg)
    predictor.embed_cfg.threads = threads  # the worker's share of the cores, not all of them
    return predictor


def _predict_row(index: int, result: dict) -> dict:
    row = {k: result.get(k) for k in PREDICT_FLAT}
    row["index"] = index
    row["result"] = json.dumps(result, default=json_default)
    return row


def _predict_partition(predictor, items: list[dict]) -> list[dict]:
    results = list(predictor.predict_paths([it["path"] for it in items]))
    if len(results) != len(items):
        raise RuntimeError(f"{len(items)} photos gave {len(results)} results")
    return [_predict_row(it["index"], r) for it, r in zip(items, results)]


def _predict_error_row(item: dict, message: str) -> dict:
    return _predict_row(item["index"], {"path": item["path"], "error": f"{item['path']}: {message}"})


def predict_engine(paths: Iterable[str | Path], out_dir: Path | str, cfg=None,
                   engine: EngineConfig | None = None) -> tuple[list[dict], EngineReport]:
    """Predictor.predict_paths on the engine (one Predictor per worker): the same result dicts, in input order.

    Writes `<out>/parts/`, then `<out>/predictions.parquet` (flat fields + `result`, the full JSON) and
    `<out>/predictions.json` (the list `geopin predict --json` prints).
    """
    cfg = cfg or PredictConfig()
    engine = engine or EngineConfig("ray")
    out_dir = Path(out_dir)
    photos = expand_paths(paths)
    items = [{"index": i, "path": str(p)} for i, p in enumerate(photos)]
    model_json = Path(cfg.model_dir or default_model_dir()) / MODEL_JSON
    model_digest = hashlib.sha256(model_json.read_bytes()).hexdigest() if model_json.exists() else None
    report = map_partitions(
        _predict_partition, partition(items, engine.partition_size), out_dir / PARTS_DIR, engine,
        setup=functools.partial(_predict_setup, cfg, engine.cpus_per_worker),
        fingerprint={"kind": "predict", "model": model_digest, "top_k": cfg.top_k, "text": cfg.text,
                     **({"precision": cfg.precision} if cfg.precision else {})},
        on_error=_predict_error_row, schema=predict_schema(),
    )
    table = read_parts(out_dir / PARTS_DIR, report.n_partitions)
    results = [json.loads(s) for s in table.column("result").to_pylist()]
    write_parquet(table.to_pandas(), out_dir / PREDICTIONS_PARQUET)
    write_json(results, out_dir / PREDICTIONS_JSON)
    return results, report
