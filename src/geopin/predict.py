"""Where was this photo taken? Best guess, top-k places and honest within-km confidences.

A bad file gets an error row naming it and the reason; the other photos go on. Photos that carry GPS
in their EXIF say so (`exif_gps`), and are still predicted from their pixels only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator


from geopin.images import IMAGE_SUFFIXES, ImageError, find_photos
from geopin.model import GeoModel

log = logging.getLogger(__name__)

#: The photo shipped with geopin for the README's first command, with its true location.
EXAMPLE_PHOTO = Path(__file__).resolve().parent / "data" / "examples" / "rocket_cape_canaveral.jpg"
EXAMPLE_TRUTH = (28.5619, -80.5772)


@dataclass
class PredictConfig:
    model_dir: Path | None = None  # None: the model bundled with geopin
    top_k: int = 5
    batch_size: int = 16


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for photos (IMAGE_SUFFIXES, as ingest does: symlinked
    folders followed, hidden entries skipped); a missing path or a dangling symlink is kept to report it."""
    return find_photos(list(paths))


class Predictor:
    """A loaded model and its backbone, reused across calls (the API and the CLI keep one)."""

    def __init__(self, cfg: PredictConfig = PredictConfig()):
        from geopin.backbones import create_backbone
        from geopin.embed import EmbedConfig

        self.cfg = cfg
        self.model = GeoModel.load(cfg.model_dir)
        emb_meta = self.model.meta.get("embedding", {}) or {}
        name = self.model.meta.get("backbone") or emb_meta.get("backbone") or "efficientnet_lite0"
        # the same preprocessing the model was trained on; where and how fast to compute are ours
        saved = {k: v for k, v in (emb_meta.get("config") or {}).items() if k in ("backbone", "mode", "long_side", "tta")}
        self.embed_cfg = EmbedConfig(**{"backbone": name, **saved, "use_cache": False})
        self.backbone = create_backbone(self.embed_cfg.backbone)
        want = self.model.meta.get("embedding", {}).get("version")
        if want and want != self.backbone.version:
            log.warning("model was trained on %s features, this backbone is %s", want, self.backbone.version)

    def predict_images(self, images: list, names: list[str], top_k: int | None = None) -> list[dict]:
        """`top_k` overrides the configured number per call (the API takes it per request)."""
        from geopin.embed import embed_images

        emb = embed_images(images, self.backbone, self.embed_cfg)
        results = self.model.predict_embeddings(emb, top_k=self.cfg.top_k if top_k is None else top_k)
        for name, r in zip(names, results):
            r["path"] = name
        return results

    def predict_paths(self, paths: Iterable[str | Path]) -> Iterator[dict]:
        """Yield one result per file, in input order; errors are results too (with an `error` key)."""
        from geopin.embed import load_image

        pending: list[dict] = []  # rows in input order; good ones carry their decoded image
        n_images = 0
        for path in expand_paths(paths):
            row: dict = {"path": str(path)}
            try:
                # decoded exactly as for training (reduced-scale JPEG decoding, EXIF orientation)
                row["_img"] = load_image(path, self.embed_cfg.mode, self.embed_cfg.long_side, self.backbone.native_size)
                row.update(_exif_info(path))
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
            results = self.predict_images([r.pop("_img") for r in good], [r["path"] for r in good])
            for row, res in zip(good, results):
                row.update(res)
        for row in rows:
            yield _ordered(row)


def _exif_info(path: Path) -> dict:
    from geopin.exif import ExifGpsError, read_exif_gps

    try:
        gps = read_exif_gps(path)
    except ExifGpsError as exc:
        return {"exif_gps": None, "exif_gps_error": str(exc)}
    except (OSError, ValueError) as exc:
        return {"exif_gps": None, "exif_gps_error": f"unreadable EXIF: {exc}"}
    return {"exif_gps": None if gps is None else {"lat": gps[0], "lon": gps[1]}}


_KEY_ORDER = ["path", "lat", "lon", "country", "country_name", "continent", "cell", "within_km", "summary", "top_k", "regions", "exif_gps"]


def _ordered(res: dict) -> dict:
    out = {k: res[k] for k in _KEY_ORDER if k in res}
    out.update({k: v for k, v in res.items() if k not in out})
    return out


def predict(paths: Iterable[str | Path], cfg: PredictConfig = PredictConfig()) -> list[dict]:
    return list(Predictor(cfg).predict_paths(paths))


def distance_to_truth_km(result: dict, truth: tuple[float, float]) -> float:
    from geopin.geo import haversine_km

    return float(haversine_km(result["lat"], result["lon"], truth[0], truth[1]))


__all__ = ["IMAGE_SUFFIXES", "PredictConfig", "Predictor", "predict", "expand_paths", "EXAMPLE_PHOTO", "EXAMPLE_TRUTH", "distance_to_truth_km"]
