"""`geopin characterize`: per country, the crops of its photos that the classifier finds most typical of it.

Five crops per photo (corners and centre), scored by the classifier's probability of the country,
the best kept and clustered (agglomerative, cosine) so a contact sheet shows distinct kinds of
evidence, one row per cluster. Work is bounded per country, and a country already done with the same
model, settings and photos is not redone.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from geopin.explain.render import default_font, save_png
from geopin.explain.target import country_weights, countries_with_places
from geopin.io import write_json, write_text
from geopin.locate.posterior import classifier_probs
from geopin.log import progress

log = logging.getLogger(__name__)


@dataclass
class CharacterizeConfig:
    """Bounded work per country: at most max_photos photos, five crops each (corners and centre)."""

    min_photos: int = 10
    crops_per_country: int = 12  # top crops kept per country, then clustered
    clusters: int = 4  # rows of the contact sheet: distinct kinds of evidence
    max_photos: int = 40
    crop_scale: float = 0.5
    # among the kept crops, so one photo cannot fill the sheet. 1: two crops of one photo look alike, cluster
    # together and sat side by side (the same photo twice in a row); above 1, a row still shows a photo once.
    max_crops_per_photo: int = 1
    max_countries: int | None = None
    tile: int = 160  # contact-sheet tile side, px
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_photos", "crops_per_country", "clusters", "max_photos", "max_crops_per_photo", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")


def crop_boxes(width: int, height: int, scale: float) -> list[tuple[int, int, int, int]]:
    """Four corners and the centre, each `scale` of the photo's width and height."""
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    xs, ys = (0, width - cw), (0, height - ch)
    boxes = [(x, y, x + cw, y + ch) for y in ys for x in xs]
    cx, cy = (width - cw) // 2, (height - ch) // 2
    boxes.append((cx, cy, cx + cw, cy + ch))
    return list(dict.fromkeys(boxes))


def _country_logprob(model, emb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """log P(country | crop): the classifier's places weighted by their share of the country (`country_weights`)."""
    from geopin.locate.heads import classifier_logits

    probs = classifier_probs(model.heads.places, classifier_logits(model.heads.classifier, emb), model.params.t_clf)
    return np.log(np.maximum(probs @ np.asarray(weight, dtype=np.float64), 1e-300))


def _embed_crops(predictor, img: Image.Image, boxes) -> np.ndarray:
    import torch

    cfg, bb = predictor.embed_cfg, predictor.backbone
    views = [bb.preprocess(img.crop(b), cfg.mode, cfg.long_side) for b in boxes]
    by_shape: dict[tuple, list[int]] = {}
    for i, v in enumerate(views):
        by_shape.setdefault(tuple(v.shape), []).append(i)
    out = np.empty((len(views), bb.dim), dtype=np.float32)
    with torch.inference_mode():
        for idx in by_shape.values():
            out[idx] = bb.model(torch.stack([views[i] for i in idx])).float().numpy()
    return out


def _run_key(predictor, cfg: CharacterizeConfig, ids: list[str]) -> str:
    """What a country's saved result depends on: model files, crop settings and the photos chosen."""
    doc = {
        "model": predictor.model.params.to_dict(),
        "classifier": hashlib.sha256(
            b"".join(p.detach().numpy().tobytes() for p in predictor.model.heads.classifier.parameters())
        ).hexdigest(),
        "embed": {"backbone": predictor.backbone.version, "mode": predictor.embed_cfg.mode, "long_side": predictor.embed_cfg.long_side},
        "cfg": {k: v for k, v in asdict(cfg).items() if k != "max_countries"},
        "ids": ids,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def characterize(
    manifest,
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    embeddings: str | Path | None = None,
    cfg: CharacterizeConfig | None = None,
    predictor=None,
) -> dict:
    """Per country with enough photos: the crops the classifier finds most typical of it, clustered.

    Writes `<out>/<CC>.png` (a contact sheet: one row per cluster of similar crops, best first),
    `<out>/<CC>.json` (the crops, their photo, box and probability) and `<out>/index.html`. A country
    whose JSON and PNG exist from a run with the same model, settings and photos is not redone; a
    photo that cannot be read is logged, counted and skipped. `cfg` None: CharacterizeConfig's defaults.
    """
    from geopin.features.embed import load_embeddings
    from geopin.locate.predict import PredictConfig, Predictor

    cfg = CharacterizeConfig() if cfg is None else cfg
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    df, name = _read_photos(manifest)
    if predictor is None:
        predictor = Predictor(PredictConfig(model_dir=Path(model_dir) if model_dir else None))
    emb_all = load_embeddings(embeddings, df)[0] if embeddings is not None else None
    df = df.reset_index(drop=True)
    df["_cc"] = _countries_of(df, name)
    counts = df.loc[df["_cc"] != "", "_cc"].value_counts()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "countries": [], "skipped": [], "failed": [], "config": asdict(cfg)}
    chosen = _choose_countries(counts, countries_with_places(predictor.model), cfg, summary["skipped"])
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {cc: country_weights(predictor.model, cc) for cc in chosen}
    plans = {cc: _photos_of(cc, df, predictor.model, weights[cc], emb_all, cfg) for cc in chosen}
    n_crops = 0
    work_seconds = 0.0
    bar = progress(total=sum(len(r) for r in plans.values()), desc="characterize", unit="photo")
    try:
        for cc, rows in plans.items():
            key = _run_key(predictor, cfg, df["id"].iloc[rows].astype(str).tolist())
            json_path, png_path = out_dir / f"{cc}.json", out_dir / f"{cc}.png"
            done = _read_done(json_path, png_path, key)
            if done is not None:
                summary["countries"].append(done["summary"])
                bar.update(len(rows))
                continue
            t = time.perf_counter()
            crops, emb, failed = _embed_country(predictor, df, rows, cc, cfg, bar)
            summary["failed"] += [{**f, "country": cc} for f in failed]
            if not crops:
                summary["skipped"].append({"country": cc, "n_photos": int(counts[cc]), "reason": "no readable photo"})
                continue
            n_crops += len(emb)
            rows_out = _typical_crops(predictor.model, crops, emb, weights[cc], cfg)
            info = _write_country(cc, rows_out, int(counts[cc]), len(rows), len(failed), len(emb), cfg, key, failed,
                                  json_path, png_path)
            summary["countries"].append(info)
            work_seconds += time.perf_counter() - t
    finally:
        bar.close()
    write_text(_index_html(summary), out_dir / "index.html")
    summary["index"] = str(out_dir / "index.html")
    summary["seconds"] = time.perf_counter() - t0
    summary["crops_embedded"] = n_crops
    summary["crops_per_s"] = n_crops / work_seconds if work_seconds > 0 else None
    log.info("characterize: %d countries, %d crops embedded in %.1f s", len(summary["countries"]), n_crops, summary["seconds"])
    return summary


def _read_photos(manifest):
    """The manifest's photos and the name to report it by; a ValueError when positions are missing."""
    from geopin.dataset.manifest import FOR_EMBED, read_manifest

    df = read_manifest(manifest, FOR_EMBED, unique_ids=False)
    name = str(manifest) if not hasattr(manifest, "columns") else "manifest"
    missing = [c for c in ("lat", "lon") if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}: characterize needs each photo's position")
    return df, name


def _countries_of(df, name: str) -> np.ndarray:
    """Each photo's country code ('' at sea); a bad position is a ValueError naming the manifest."""
    import pandas as pd

    from geopin.countries import country_of

    try:
        return country_of(pd.to_numeric(df["lat"], errors="coerce").to_numpy(float),
                          pd.to_numeric(df["lon"], errors="coerce").to_numpy(float))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _choose_countries(counts, known: set[str], cfg: CharacterizeConfig, skipped: list[dict]) -> list[str]:
    """Countries with enough photos and a place in the model (`countries_with_places`), most photos first; the
    others go to `skipped`."""
    chosen = []
    for cc, n in counts.items():
        if n < cfg.min_photos:
            skipped.append({"country": cc, "n_photos": int(n), "reason": f"fewer than {cfg.min_photos} photos"})
        elif cc not in known:
            skipped.append({"country": cc, "n_photos": int(n), "reason": "the model has no place in this country"})
        else:
            chosen.append(cc)
    if cfg.max_countries is not None:
        for cc in chosen[cfg.max_countries:]:
            skipped.append({"country": cc, "n_photos": int(counts[cc]), "reason": f"beyond max_countries={cfg.max_countries}"})
        chosen = chosen[: cfg.max_countries]
    return chosen


def _photos_of(cc: str, df, model, weight: np.ndarray, emb_all, cfg: CharacterizeConfig) -> np.ndarray:
    """A country's rows, at most max_photos: the most typical by their embeddings when given, else a seeded sample."""
    rows = np.flatnonzero(df["_cc"].to_numpy() == cc)
    if len(rows) > cfg.max_photos:
        if emb_all is not None:  # the photos the model already finds most typical of the country
            score = _country_logprob(model, np.asarray(emb_all[rows], dtype=np.float32), weight)
            rows = rows[np.argsort(-score, kind="stable")[: cfg.max_photos]]
        else:
            rng = np.random.default_rng([cfg.seed, *map(ord, cc)])
            rows = np.sort(rng.choice(rows, cfg.max_photos, replace=False))
    return rows


def _embed_country(predictor, df, rows: np.ndarray, cc: str, cfg: CharacterizeConfig, bar):
    """(crops, their embeddings (n, dim) or None, failed photos): five crops of every readable photo."""
    from geopin.features.embed import load_image
    from geopin.runtime import torch_threads

    crops, embs, failed = [], [], []
    # decoded large enough that each crop reaches the network at full input size
    long_side = int(math.ceil(predictor.embed_cfg.long_side / cfg.crop_scale))
    with torch_threads(predictor.embed_cfg.threads):
        for r in rows:
            path, pid = str(df["path"].iloc[r]), str(df["id"].iloc[r])
            try:
                img = load_image(path, predictor.embed_cfg.mode, long_side, predictor.backbone.native_size)
                boxes = crop_boxes(img.width, img.height, cfg.crop_scale)
                e = _embed_crops(predictor, img, boxes)
            except (OSError, ValueError) as exc:  # ImageError is a ValueError
                log.warning("characterize %s: skipping %s: %s", cc, path, exc)
                failed.append({"id": pid, "path": path, "error": str(exc)})
                bar.update(1)
                continue
            for b in boxes:
                crops.append({"id": pid, "path": path, "box": list(b), "size": [img.width, img.height]})
            embs.append(e)
            bar.update(1)
    return crops, (np.concatenate(embs) if embs else None), failed


def _typical_crops(model, crops: list[dict], emb: np.ndarray, weight: np.ndarray, cfg: CharacterizeConfig) -> list[dict]:
    """The best-scoring crops with their probability and cluster, clusters and crops best first; a photo at most
    once in a row (cluster)."""
    logp = _country_logprob(model, emb, weight)
    kept = _keep_top(crops, logp, cfg)
    labels = _cluster(emb[kept], cfg.clusters)
    rows_out = [{**crops[i], "log_prob": float(logp[i]), "probability": float(np.exp(logp[i])), "cluster": int(lab)}
                for i, lab in zip(kept, labels)]
    return _once_per_row(_order_clusters(rows_out))


def _once_per_row(rows: list[dict]) -> list[dict]:
    """Rows ordered by cluster then score, with a photo's weaker crops in a cluster it already shows dropped."""
    seen: set[tuple[int, str]] = set()
    out = []
    for r in rows:
        key = (r["cluster"], r["path"])  # the file, not the id: a manifest may list one photo under two ids
        if key in seen:
            log.debug("contact sheet: %s already in row %d; its weaker crop %s left out", r["id"], r["cluster"] + 1, r["box"])
            continue
        seen.add(key)
        out.append(r)
    return out


def _write_country(cc: str, rows_out: list[dict], n_photos: int, n_chosen: int, n_failed: int, n_crops: int,
                   cfg: CharacterizeConfig, key: str, failed: list[dict], json_path: Path, png_path: Path) -> dict:
    """The contact sheet, then the JSON that marks the country done (its key); the country's summary."""
    from geopin.countries import country_name

    save_png(contact_sheet(cc, country_name(cc), rows_out, n_chosen, cfg.tile), png_path)
    info = {
        "country": cc,
        "name": country_name(cc),
        "n_photos": n_photos,
        "n_used": n_chosen - n_failed,
        "n_crops": n_crops,
        "best_probability": max(r["probability"] for r in rows_out),
        "png": png_path.name,
    }
    write_json({"key": key, "summary": info, "crops": rows_out, "failed": failed}, json_path)
    return info


def _read_done(json_path: Path, png_path: Path, key: str) -> dict | None:
    if not (json_path.is_file() and png_path.is_file()):
        return None
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); redoing the country", json_path, exc)
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == key and "summary" in doc else None


def _keep_top(crops: list[dict], logp: np.ndarray, cfg: CharacterizeConfig) -> list[int]:
    """The best-scoring crops, at most max_crops_per_photo from any one photo (file)."""
    per_photo: dict[str, int] = {}
    kept = []
    for i in np.argsort(-logp, kind="stable"):
        pid = crops[i]["path"]
        if per_photo.get(pid, 0) >= cfg.max_crops_per_photo:
            continue
        per_photo[pid] = per_photo.get(pid, 0) + 1
        kept.append(int(i))
        if len(kept) >= cfg.crops_per_country:
            break
    return kept


def _cluster(emb: np.ndarray, n_clusters: int) -> np.ndarray:
    """Agglomerative clusters (cosine, average linkage) of the kept crops' embeddings."""
    from sklearn.cluster import AgglomerativeClustering

    from geopin.locate.heads import l2_normalize

    k = min(n_clusters, len(emb))
    if k <= 1:
        return np.zeros(len(emb), dtype=int)
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(l2_normalize(emb))


def _order_clusters(rows: list[dict]) -> list[dict]:
    """Clusters renumbered by their best crop (0 = the strongest kind of evidence), crops best first."""
    best: dict[int, float] = {}
    for r in rows:
        best[r["cluster"]] = max(best.get(r["cluster"], -np.inf), r["log_prob"])
    rank = {c: i for i, c in enumerate(sorted(best, key=lambda c: -best[c]))}
    for r in rows:
        r["cluster"] = rank[r["cluster"]]
    return sorted(rows, key=lambda r: (r["cluster"], -r["log_prob"]))


def contact_sheet(cc: str, name: str, rows: list[dict], n_photos: int, tile: int = 160, max_cols: int = 6) -> Image.Image:
    """One row per cluster: its crops (best first), each labelled with the probability and the photo id."""
    clusters: dict[int, list[dict]] = {}
    for r in rows:
        clusters.setdefault(r["cluster"], []).append(r)
    label_w, pad, caption = 120, 6, 30
    cols = min(max_cols, max(len(v) for v in clusters.values()))
    title_h = 44
    width = label_w + cols * (tile + pad) + pad
    height = title_h + len(clusters) * (tile + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    big, small = default_font(18), default_font(11)
    draw.text((pad, 8), f"{cc} {name}: crops the classifier finds most typical", fill=(20, 20, 20), font=big)
    draw.text((pad, 28), f"from {n_photos} photos; one row per cluster of similar crops; p = classifier P(country | crop)",
              fill=(90, 90, 90), font=small)
    cache: dict[str, Image.Image] = {}
    for row_i, (c, items) in enumerate(sorted(clusters.items())):
        y = title_h + row_i * (tile + caption + pad)
        draw.text((pad, y + tile // 2 - 14), f"kind {c + 1}", fill=(20, 20, 20), font=default_font(14))
        draw.text((pad, y + tile // 2 + 4), f"{len(items)} crop{'s' if len(items) != 1 else ''}", fill=(90, 90, 90), font=small)
        for col, r in enumerate(items[:cols]):
            x = label_w + col * (tile + pad)
            thumb = _crop_thumb(r, tile, cache)
            if thumb is not None:
                sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
            else:
                draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=(200, 0, 0))
            draw.text((x, y + tile + 2), f"p={r['probability']:.0%}", fill=(20, 20, 20), font=small)
            draw.text((x, y + tile + 15), _short(r["id"], 24), fill=(90, 90, 90), font=small)
    return sheet


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _crop_thumb(r: dict, tile: int, cache: dict) -> Image.Image | None:
    from geopin.features.embed import load_image

    path = r["path"]
    try:
        if path not in cache:
            cache.clear()  # rows of one photo come together often enough; keep one decoded photo
            w, h = r["size"]
            cache[path] = load_image(path, "whole", max(w, h))
        img = cache[path]
    except (OSError, ValueError) as exc:
        log.warning("contact sheet: cannot redraw %s: %s", path, exc)
        return None
    if list(img.size) != list(r["size"]):  # decoded at another size: scale the box
        sx, sy = img.width / r["size"][0], img.height / r["size"][1]
        box = tuple(round(v * s) for v, s in zip(r["box"], (sx, sy, sx, sy)))
    else:
        box = tuple(r["box"])
    thumb = img.crop(box)
    thumb.thumbnail((tile, tile), Image.BICUBIC)
    return thumb


def _index_html(summary: dict) -> str:
    rows = []
    for c in sorted(summary["countries"], key=lambda c: -c["n_photos"]):
        rows.append(
            f"<tr><td><a href=\"{html.escape(c['png'])}\">{html.escape(c['country'])}</a></td><td>{html.escape(c['name'])}</td>"
            f"<td>{c['n_photos']}</td><td>{c['n_used']}</td><td>{c['best_probability']:.0%}</td></tr>"
        )
    sheets = "\n".join(
        f"<h2 id=\"{html.escape(c['country'])}\">{html.escape(c['country'])} {html.escape(c['name'])}</h2>"
        f"<img src=\"{html.escape(c['png'])}\" alt=\"contact sheet for {html.escape(c['name'])}\">"
        for c in sorted(summary["countries"], key=lambda c: -c["n_photos"])
    )
    skipped = "".join(
        f"<li>{html.escape(s['country'])}: {s['n_photos']} photos, {html.escape(s['reason'])}</li>" for s in summary["skipped"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geopin: what each country looks like to the model</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}img{{max-width:100%;border:1px solid #ccc}}</style>
</head><body>
<h1>What each country looks like to the model</h1>
<p>For each country with enough photos: crops (corners and centre, half the photo's size) that the classifier finds
most typical of it, grouped by similarity (agglomerative clustering of their embeddings) so each row is a different
kind of evidence. p is the classifier's probability of the country given the crop alone.</p>
<table><tr><th>country</th><th>name</th><th>photos</th><th>used</th><th>best p</th></tr>
{''.join(rows)}
</table>
{sheets}
<h2>Not shown</h2><ul>{skipped or '<li>none</li>'}</ul>
</body></html>
"""


__all__ = ["CharacterizeConfig", "characterize", "crop_boxes", "contact_sheet"]
