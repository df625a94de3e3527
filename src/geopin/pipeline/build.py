"""`geopin build`: one command from a table (or a photo folder) to a model, resumable stage by stage.

Each stage calls the existing stage function (ingest, cells, split, embed, train, evaluate); nothing is
re-implemented here. DIR/build.json records every finished stage with a fingerprint of its inputs (sha256
of the input files plus the stage's config), so a rerun skips finished stages whose inputs did not change
and redoes the rest. The stages also resume inside themselves (ingest parts, the embedding cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopin.dataset.cells import Granularity
from geopin.dataset.fetch import FetchConfig, remove_partial_downloads
from geopin.dataset.ingest import IngestConfig
from geopin.evaluation.crossval import EvalConfig
from geopin.features.embed import EmbedConfig
from geopin.io import read_table, sha256_file, write_json, write_text
from geopin.locate.heads import ClassifierConfig
from geopin.locate.train import TrainConfig
from geopin.scale.engine import EngineConfig

log = logging.getLogger(__name__)

BUILD_FILE = "build.json"
STAGES = ("ingest", "cells", "split", "embed", "read", "train", "evaluate")
DEFAULT_GROUP_COL = "author"
SPLIT_LABELS = {"group": "by photographer (new photographers)", "random": "random (archive completion)"}


class BuildStopped(RuntimeError):
    """A stage finished but left nothing to build on (e.g. ingest kept no photo): exit 1, not a bad input."""


@dataclass
class BuildConfig:
    """Every option of the build; the defaults suit a table with image, lat, lon (and author) columns."""

    # ingest
    # defaults are the stages' own, so the two cannot drift apart
    lat_col: str = IngestConfig.lat_col
    lon_col: str = IngestConfig.lon_col
    image_col: str = IngestConfig.image_col
    group_col: str | None = None  # None: "author" when the table has it, else no group
    group_from: str = IngestConfig.group_from  # folder input: "none" | "subfolder" | "artist"
    image_root: Path | None = IngestConfig.image_root
    workers: int | None = None  # ingest processes; None: IngestConfig's default (one per core)
    fetch: FetchConfig = field(default_factory=FetchConfig)  # URL rows: timeouts, retries, size cap
    # cells and train
    granularities: tuple[Granularity, ...] | None = None  # None: scaled to the number of photos
    # split and evaluate
    folds: int = EvalConfig.folds
    seed: int = EvalConfig.seed
    evaluate: bool = True
    # embed
    backbone: str = EmbedConfig.backbone
    long_side: int = EmbedConfig.long_side
    batch_size: int = EmbedConfig.batch_size
    cache_dir: Path | None = EmbedConfig.cache_dir
    shard_size: int = EmbedConfig.shard_size
    # read: the text on every photo (OCR), whose evidence sources train then weighs out of fold
    read_text: bool = True
    # train
    k: int = TrainConfig.k
    inner_folds: int = TrainConfig.inner_folds
    epochs: int = ClassifierConfig.epochs
    hidden: int = ClassifierConfig.hidden
    # ingest and embed: None/"local" on this machine, "ray" on a cluster (same results: not in any fingerprint)
    engine: EngineConfig | None = None

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        for name in ("k", "inner_folds", "epochs", "long_side", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be positive, got {self.workers}")
        self.fetch.validate()
        if self.hidden < 0:
            raise ValueError(f"hidden must be 0 (linear) or positive, got {self.hidden}")


def _folder_digest(root: Path) -> str:
    """A folder's listing with sizes and modification times: cheap, and changes when a photo does."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            try:
                st = p.stat()
            except OSError:  # vanished or unreadable: ingest will report it
                continue
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _fingerprint(inputs: dict[str, str], config: dict[str, Any]) -> str:
    doc = json.dumps({"inputs": inputs, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def resolve_group_col(source: Path, cfg: BuildConfig) -> str | None:
    """The group column: the one given, else "author" when the table has it, else none (folder: none)."""
    if cfg.group_col is not None or source.is_dir():
        return cfg.group_col
    columns = read_table(source).columns
    return DEFAULT_GROUP_COL if DEFAULT_GROUP_COL in columns else None


class _Ledger:
    """build.json: what finished with which fingerprint; rewritten atomically after every stage."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / BUILD_FILE
        self.doc: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if isinstance(doc.get("stages"), dict):
                    self.doc = doc
            except (OSError, ValueError) as exc:  # a damaged ledger only costs a rebuild
                log.warning("%s unreadable (%s): every stage will run", self.path, exc)

    def finished(self, stage: str, fingerprint: str) -> dict | None:
        rec = self.doc["stages"].get(stage)
        return rec if rec and rec.get("fingerprint") == fingerprint else None

    def record(self, stage: str, fingerprint: str, summary: dict, seconds: float) -> None:
        self.doc["stages"][stage] = {"fingerprint": fingerprint, "finished_at": time.time(),
                                     "seconds": round(seconds, 3), "summary": summary}
        write_json(self.doc, self.path)

    def forget(self, stage: str) -> None:
        if self.doc["stages"].pop(stage, None) is not None:
            write_json(self.doc, self.path)


def build(source: str | os.PathLike, out_dir: str | os.PathLike, cfg: BuildConfig | None = None) -> dict:
    """Run ingest, cells, split, embed, train and evaluate into out_dir; return a summary per stage."""
    from geopin.dataset.ingest import IngestInputError, ingest

    cfg = cfg or BuildConfig()
    source, out_dir = Path(os.path.abspath(source)), Path(os.path.abspath(out_dir))
    if not source.exists():
        raise IngestInputError(f"{source}: no such file or folder")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = _Ledger(out_dir)
    paths = {"dataset": out_dir / "dataset", "cells": out_dir / "cells", "split": out_dir / "split.parquet",
             "emb": out_dir / "emb", "readings": out_dir / "readings", "model": out_dir / "model", "eval": out_dir / "eval"}
    manifest = paths["dataset"] / "manifest.parquet"
    result: dict[str, Any] = {"source": str(source), "out": str(out_dir), "stages": {}}

    def stage(name: str, inputs: dict[str, str], config: dict, outputs: list[Path], run: Callable[[], dict]) -> dict:
        n = STAGES.index(name) + 1
        fp = _fingerprint(inputs, config)
        done = ledger.finished(name, fp)
        if done is not None and all(p.exists() for p in outputs):
            log.info("build %d/%d %s: up to date, skipped", n, len(STAGES), name)
            result["stages"][name] = {"status": "skipped", "seconds": 0.0, "summary": done["summary"]}
            return done["summary"]
        log.info("build %d/%d %s: running", n, len(STAGES), name)
        ledger.forget(name)  # an interrupted rerun must never look finished
        t0 = time.perf_counter()
        summary = run()
        seconds = time.perf_counter() - t0
        ledger.record(name, fp, summary, seconds)
        log.info("build %d/%d %s: done in %.1f s", n, len(STAGES), name, seconds)
        result["stages"][name] = {"status": "done", "seconds": round(seconds, 3), "summary": summary}
        return summary

    # 1. ingest
    group_col = resolve_group_col(source, cfg)
    ingest_cfg = IngestConfig(lat_col=cfg.lat_col, lon_col=cfg.lon_col, image_col=cfg.image_col,
                              group_col=group_col, image_root=cfg.image_root, group_from=cfg.group_from,
                              fetch=cfg.fetch, engine=cfg.engine,
                              **({} if cfg.workers is None else {"workers": cfg.workers}))
    source_digest = _folder_digest(source) if source.is_dir() else sha256_file(source)
    ingest_conf = {k: v for k, v in dataclasses.asdict(ingest_cfg).items() if k not in ("workers", "engine")}
    ing = stage("ingest", {"source": source_digest}, ingest_conf,
                [manifest], lambda: ingest(source, paths["dataset"], ingest_cfg).to_dict())
    if result["stages"]["ingest"]["status"] == "skipped":  # a killed download's parts, which ingest would clear
        remove_partial_downloads(ingest_cfg.store or paths["dataset"] / "photos", ingest_cfg.fetch)
    result["group_col"] = group_col
    if not ing["n_kept"]:
        reasons = ", ".join(f"{r} {c}" for r, c in ing["reasons"].items() if c)
        raise BuildStopped(f"ingest kept no photos of {ing['n_input']} ({reasons}); see {ing['rejects_csv_path']}")
    man_sha = sha256_file(manifest)

    # 2. cells (the partition on the whole data, for inspection; train builds its own on its photos)
    from geopin.dataset.cells import CellsConfig, run_cells

    cells_cfg = CellsConfig(granularities=cfg.granularities)
    stage("cells", {"manifest": man_sha}, dataclasses.asdict(cells_cfg), [paths["cells"]],
          lambda: run_cells(manifest, paths["cells"], cells_cfg).to_dict())

    # 3. split: by photographer when every photo has one and there are at least two, else random
    from geopin.dataset.manifest import read_manifest
    from geopin.dataset.splits import SplitConfig, run_split

    man = read_manifest(manifest)
    has_groups = bool(man["group"].notna().all() and man["group"].nunique() >= 2)
    by = "group" if has_groups else "random"
    split_cfg = SplitConfig(by=by, k=cfg.folds, seed=cfg.seed)
    if by == "random":
        log.info("build: no photographer for every photo: splitting at random (archive completion)")
    split = stage("split", {"manifest": man_sha}, dataclasses.asdict(split_cfg), [paths["split"]],
                  lambda: run_split(manifest, paths["split"], split_cfg).to_dict())
    result["split"] = {"by": by, "label": SPLIT_LABELS[by], "sizes": split["sizes"]}

    # 4. embed
    embed_cfg = EmbedConfig(backbone=cfg.backbone, long_side=cfg.long_side, batch_size=cfg.batch_size,
                            cache_dir=cfg.cache_dir, shard_size=cfg.shard_size)
    embed_conf = {k: embed_cfg.to_dict()[k] for k in ("backbone", "mode", "long_side", "tta", "device")}
    emb = stage("embed", {"manifest": man_sha}, embed_conf, [paths["emb"] / "embeddings.npy"],
                lambda: _run_embed(manifest, paths["emb"], embed_cfg, cfg.engine))
    emb_sha = sha256_file(paths["emb"] / "embeddings.npy")
    if emb["n_failed"] >= emb["n"]:
        raise BuildStopped(f"embed failed on every photo ({emb['n']}); see {paths['emb'] / 'embeddings.json'}")

    # 5. read: the text on every photo, once (OCR is the slow part; the sources that use it are cheap)
    readings = None
    if cfg.read_text:
        from geopin.evidence.ocr import OcrConfig
        from geopin.evidence.readings import READINGS_FILE, ocr_fingerprint

        ocr_cfg = OcrConfig()
        stage("read", {"manifest": man_sha}, ocr_fingerprint(ocr_cfg), [paths["readings"] / READINGS_FILE],
              lambda: _run_read(manifest, paths["readings"], ocr_cfg, cfg.engine))
        readings = paths["readings"]
        readings_sha = sha256_file(paths["readings"] / READINGS_FILE)
    else:
        result["stages"]["read"] = {"status": "off", "seconds": 0.0, "summary": {}}

    # 6. train: the final model learns from every photo; the posterior is fitted by the split's scenario
    train_cfg = TrainConfig(granularities=list(cfg.granularities) if cfg.granularities else None,
                            classifier=ClassifierConfig(epochs=cfg.epochs, hidden=cfg.hidden, seed=cfg.seed),
                            k=cfg.k, scenario=by, inner_folds=cfg.inner_folds, seed=cfg.seed)
    text_inputs = {"readings": readings_sha} if readings is not None else {}
    stage("train", {"manifest": man_sha, "embeddings": emb_sha, **text_inputs}, _train_conf(train_cfg),
          [paths["model"]], lambda: _run_train(manifest, paths["emb"], paths["model"], train_cfg, readings))
    result["model"] = str(paths["model"])

    # 7. evaluate: cross-validated, with the folds the data allows
    if cfg.evaluate:
        scenarios = ("group", "random") if has_groups else ("random",)
        ev = stage("evaluate", {"manifest": man_sha, "embeddings": emb_sha, **text_inputs},
                   {"scenarios": scenarios, "folds": cfg.folds, "seed": cfg.seed, "train": _train_conf(train_cfg)},
                   [paths["eval"] / "report.json", paths["eval"] / "summary.txt"],
                   lambda: _run_evaluate(manifest, paths["emb"], paths["eval"], scenarios, train_cfg, cfg, readings))
        result["evaluation"] = ev
        result["evaluation_text"] = (paths["eval"] / "summary.txt").read_text()
    result["seconds"] = round(time.perf_counter() - started, 3)
    log.info("build done in %.1f s: %s", result["seconds"],
             ", ".join(f"{s} {r['status']}" for s, r in result["stages"].items()))
    return result


def _run_embed(manifest: Path, emb_dir: Path, embed_cfg: EmbedConfig, engine: EngineConfig | None) -> dict:
    """embed_manifest, or its engine twin (same embeddings.npy/.json layout) when an engine is named."""
    from geopin.features.embed import embed_manifest, embed_manifest_engine

    if engine is None or engine.name == "local":
        return embed_manifest(manifest, emb_dir, embed_cfg).to_dict()
    return embed_manifest_engine(manifest, emb_dir, embed_cfg, engine).to_dict()


def _run_read(manifest: Path, readings_dir: Path, ocr_cfg, engine: EngineConfig | None) -> dict:
    from geopin.evidence.readings import read_manifest_engine

    return read_manifest_engine(manifest, readings_dir, ocr_cfg, engine=engine or EngineConfig("local")).to_dict()


def _train_conf(train_cfg) -> dict:
    from geopin.locate.train import config_dict

    return config_dict(train_cfg)


def _run_train(manifest: Path, emb_dir: Path, model_dir: Path, train_cfg, readings: Path | None = None) -> dict:
    from geopin.locate.train import train

    model = train(manifest, emb_dir, model_dir, train_cfg, readings=readings)
    return {"model": str(model_dir), "n_train": model.meta["n_train"],
            "classes": {g: int((model.heads.cells.granularity == g).sum()) for g in model.heads.granularities},
            "seconds": model.meta["seconds"]}


def _run_evaluate(manifest: Path, emb_dir: Path, eval_dir: Path, scenarios, train_cfg, cfg: BuildConfig,
                  readings: Path | None = None) -> dict:
    import numpy as np

    from geopin.dataset.manifest import read_manifest
    from geopin.evaluation.crossval import evaluate_cv
    from geopin.evaluation.report import write_evaluation
    from geopin.evaluation.similarity import similarity_by_distance
    from geopin.evaluation.tables import evaluation_text
    from geopin.features.embed import load_embeddings

    man = read_manifest(manifest)
    emb, _ = load_embeddings(emb_dir, man)
    ok = np.isfinite(emb).all(axis=1)
    man = man[ok].reset_index(drop=True)
    groups = man["group"].to_numpy() if man["group"].notna().all() else None
    ecfg = EvalConfig(scenarios=tuple(scenarios), folds=cfg.folds, seed=cfg.seed, train=train_cfg)
    clues = None
    if readings is not None:
        from geopin.locate.train import manifest_clues

        clues = manifest_clues(man["id"].astype(str).tolist(), readings)[0]
    report = evaluate_cv(emb[ok], man.lat.to_numpy(), man.lon.to_numpy(), groups, ecfg, clues=clues)
    # do photos near each other look alike to the model? (a property of the embeddings, once on all photos)
    report["similarity_km"] = similarity_by_distance(emb[ok], man.lat.to_numpy(), man.lon.to_numpy(), groups)
    _, plots, html = write_evaluation(report, man, eval_dir)
    write_text(evaluation_text(report), eval_dir / "summary.txt")  # reprinted when a rerun skips the stage
    return {"report": str(eval_dir / "report.json"), "html": str(html), "plots": [str(p) for p in plots],
            "scenarios": list(report["scenarios"]), "skipped": dict(report["skipped"])}
