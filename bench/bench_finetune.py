"""Frozen EfficientNet-Lite0 against test-time augmentation, Lite1/Lite2 and a backbone fine-tuned per fold.

    python bench/bench_finetune.py [--variants lite0,lite0+tta,lite1,lite2,finetuned] [--folds 5]
                                   [--limit N]            # whole photographers, seeded, until N photos: a quick check
                                   [--train-blocks B --epochs E --max-minutes M]   # passed to geopin.locate.finetune
                                   [--force]              # recompute variants already in the results
                                   (fine-tuned folds are kept per knob set in WORK/<photos>/finetune-<hash>/ and reused)

Every variant is evaluated on the shared Im2GPS3k photos with the same folds by photographer (seeded), the
same photos and the same heads (geopin.locate.train), so the rows differ only by their embeddings:

  lite0               frozen EfficientNet-Lite0, whole photo, long side 384 (the default, native 224)
  lite0+tta           the same plus 5 crops (3/4 side, corners and centre), features averaged
  lite0+flip+crops    the same plus a mirror (not in the default list: flips mirror text)
  lite1, lite2        frozen Lite1/Lite2 at their native sizes: 384 is Lite0's native 224 scaled by 384/224,
                      so Lite1 (native 240) gets long side 416 and Lite2 (native 260) gets 448 (rounded to 32)
  finetuned           Lite0 fine-tuned (geopin.locate.finetune) on each fold's TRAINING photographers only; all photos
                      embedded with that fold's backbone; the fold's held-out photographers are predicted with
                      heads trained on that fold's training photos (evaluate_cv's fold_embeddings hook)

Per row: GeoScore, shares within 25/200/750/2500 km, median km and country with 95 % intervals over
photographers (1000 draws), calibration (ECE per radius with its interval), the model-vs-prior paired line
and the paired GeoScore difference to lite0 (same draws); wall time of embedding (and of fine-tuning),
of the cross-validated heads, the peak RSS of the variant (VmHWM, reset before each variant), and the
p50 latency of one photo (decode + backbone + the bundled model's heads, which take any 1280-d features:
the heads' cost does not depend on which backbone made the features; the issue's adoption rule is p50 < 100 ms),
measured at the end for every variant in turn, photo by photo, so that a busy machine slows them alike: the
ratio to lite0 is the robust figure, the milliseconds hold only when the load average (recorded) is below 2.

Results go to bench/results/bench_finetune.json (with --limit: WORK/results_limitN/), one entry per variant
written as soon as it is done, so a rerun continues where an interrupted one stopped (--force recomputes).
Per-photo predictions stay in WORK (they name research photos); the paired comparisons read them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads must not spin

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.dataset.ingest import IngestConfig, ingest
from geopin.dataset.manifest import read_manifest
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.evaluation.tables import (
    format_calibration_table,
    format_methods_table,
    paired_lines,
)
from geopin.features.backbones import DEFAULT_LONG_SIDE
from geopin.features.embed import (
    EmbedConfig,
    embed_images,
    embed_manifest,
    ids_digest,
    load_embeddings,
)
from geopin.geo import haversine_km
from geopin.io import write_json, write_parquet
from geopin.log import setup_logging
from geopin.metrics import BootstrapDraws, bootstrap_mean, geoscore

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_finetune")

BASE_LONG_SIDE, BASE_NATIVE = DEFAULT_LONG_SIDE, 224  # Lite0's default whole-mode long side for its native 224
KM = (25, 200, 750, 2500)
DEFAULT_VARIANTS = "lite0,lite0+tta,lite1,lite2,finetuned"
REFERENCE = "lite0"  # the current default, which every other row is paired against
LATENCY_PHOTOS, LATENCY_WARMUP = 20, 3


def native_long_side(native: int) -> int:
    """Whole-mode long side for a backbone trained at `native`: 384 * native / 224, rounded to a multiple of 32."""
    return round(BASE_LONG_SIDE * native / BASE_NATIVE / 32) * 32


@dataclass(frozen=True)
class Variant:
    name: str
    backbone: str  # registry name; "finetuned" rows get finetuned:<fold dir> per fold
    native: int = 224
    tta: tuple[str, ...] = ()
    finetuned: bool = False

    @property
    def long_side(self) -> int:
        return native_long_side(self.native)

    def embed_config(self, backbone: str | None = None) -> EmbedConfig:
        return EmbedConfig(backbone=backbone or self.backbone, long_side=self.long_side, tta=self.tta)

    def label(self) -> str:
        tta = f" + TTA {'+'.join(self.tta)}" if self.tta else ""
        kind = "fine-tuned per fold" if self.finetuned else "frozen"
        return f"{self.backbone} {kind}, long side {self.long_side}{tta}"


VARIANTS = {
    v.name: v
    for v in (
        Variant("lite0", "efficientnet_lite0"),
        Variant("lite0+tta", "efficientnet_lite0", tta=("crops",)),
        Variant("lite0+flip+crops", "efficientnet_lite0", tta=("flip", "crops")),
        Variant("lite1", "efficientnet_lite1", native=240),
        Variant("lite2", "efficientnet_lite2", native=260),
        Variant("finetuned", "efficientnet_lite0", finetuned=True),
    )
}


# ---------------------------------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each variant reports its own peak; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError as exc:
        log.warning("cannot reset the peak RSS (%s): peaks are since the process started", exc)
        return False


def peak_rss_mb() -> float:
    """VmHWM of this process in MiB (ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------- data


def photographer_subset(man: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    """Whole photographers in a seeded order until at least `limit` photos: folds by photographer still mean something."""
    groups = man["group"].astype(str)
    order = np.random.default_rng(seed).permutation(np.sort(groups.unique()))
    sizes = groups.value_counts()
    keep, total = [], 0
    for g in order:
        if total >= limit:
            break
        keep.append(g)
        total += int(sizes[g])
    return man[groups.isin(set(keep))].reset_index(drop=True)


def prepare(args) -> tuple[Path, pd.DataFrame, Path]:
    """Ingest the shared photos (by photographer), take the --limit subset, drop photos Lite0 cannot decode.

    Returns (manifest path of the evaluated photos, that manifest, the folder for this photo set's outputs).
    """
    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"skipped: {labels} not found (the benchmark needs the shared Im2GPS3k photos)")
    summary = ingest(labels, args.work / "dataset", IngestConfig(group_col="author"))
    man = read_manifest(summary.manifest_path)
    tag = "all" if args.limit is None else f"limit{args.limit}-seed{args.seed}"
    base = args.work / tag
    if args.limit is not None:
        man = photographer_subset(man, args.limit, args.seed)
        log.warning("--limit %d: %d photos of %d photographers (a quick check, not the benchmark)",
                    args.limit, len(man), man.group.nunique())
    path = base / "manifest.parquet"
    write_parquet(man, path)
    # Photos a backbone cannot decode are dropped once, here, so that every variant sees the same photos.
    embed_manifest(path, base / "emb" / REFERENCE, VARIANTS[REFERENCE].embed_config())
    emb, _ = load_embeddings(base / "emb" / REFERENCE, man)
    ok = np.isfinite(emb).all(axis=1)
    if not ok.all():
        log.warning("%d photos cannot be embedded and are left out of every variant", int((~ok).sum()))
        man = man[ok].reset_index(drop=True)
        path = base / "manifest_ok.parquet"
        write_parquet(man, path)
    return path, man, base


# ---------------------------------------------------------------------------------------------------- finetune


def finetune_config(args):
    """FinetuneConfig from the knobs given on the command line (the module's defaults for the rest)."""
    from geopin.locate.finetune import FinetuneConfig

    knobs = {k: v for k, v in (("train_blocks", args.train_blocks), ("epochs", args.epochs),
                                ("max_minutes", args.max_minutes)) if v is not None}
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(knobs) - known)
    if unknown:
        raise SystemExit(f"FinetuneConfig has no field {', '.join(unknown)} (it has: {', '.join(sorted(known))})")
    return FinetuneConfig(**knobs)


def finetune_config_doc(cfg) -> dict:
    """The knobs as JSON: they name the fold folders and decide whether a stored row still applies."""
    return _jsonable(dataclasses.asdict(cfg))


def _jsonable(obj):
    """A finetune summary as JSON (paths and numpy scalars as plain values)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def finetune_outcome(summary: dict) -> dict:
    """What a fold's fine-tuning kept: the epoch, whether that was the linear probe (pretrained blocks unchanged)."""
    history = summary.get("history") or []
    best = summary.get("best_epoch")
    phase = next((h.get("phase") for h in history if h.get("epoch") == best), None)
    return {"best_epoch": best, "epochs_run": summary.get("epochs_run"), "stopped_on_time": summary.get("stopped_on_time"),
            "kept_pretrained_blocks": phase == "linear probe",
            "val_geoscore": [h.get("val_geoscore") for h in history],
            "prefix_seconds": (summary.get("prefix") or {}).get("seconds")}


class FoldFinetuner:
    """evaluate_cv's fold_embeddings hook: fine-tune on the fold's training photos, embed every photo with it.

    A fold whose fine-tuned backbone and embeddings exist (same training ids, same knobs) is reused, so an
    interrupted run continues with the next fold.
    """

    def __init__(self, manifest_path: Path, man: pd.DataFrame, base: Path, cfg, cfg_doc: dict):
        self.manifest_path, self.man, self.cfg, self.cfg_doc = manifest_path, man, cfg, cfg_doc
        knob_tag = hashlib.sha256(json.dumps(cfg_doc, sort_keys=True).encode()).hexdigest()[:8]
        self.root = base / f"finetune-{knob_tag}"
        self.folds: list[dict] = []
        self.last_dir: Path | None = None
        self.seconds_spent = 0.0  # fine-tuning done in this run (reused folds cost nothing now)

    def __call__(self, scenario: str, fold: int, train_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        from geopin.locate.finetune import finetune

        train_ids = self.man["id"].to_numpy()[train_rows].tolist()
        test_groups = set(self.man["group"].to_numpy()[test_rows])
        leak = test_groups & set(self.man["group"].to_numpy()[train_rows])
        if leak:  # evaluate_cv's folds never do this; a changed split must not pass silently
            raise RuntimeError(f"fold {fold}: photographers on both sides: {sorted(leak)[:5]}")
        digest = ids_digest(train_ids)
        out = self.root / f"{scenario}-fold{fold}-{digest[:12]}"
        done = out.parent / f"{out.name}.done.json"
        record = json.loads(done.read_text()) if done.exists() else None
        if record is None:
            log.info("fold %d: fine-tuning on %d training photos (%d photographers) -> %s",
                     fold, len(train_ids), len(set(self.man["group"].to_numpy()[train_rows])), out)
            reset_peak_rss()
            t0 = time.perf_counter()
            summary = finetune(self.manifest_path, out, cfg=self.cfg, train_ids=train_ids)
            self.seconds_spent += time.perf_counter() - t0
            record = {"fold": fold, "dir": str(out), "train_ids_sha256": digest, "n_train": len(train_ids),
                      "finetune_seconds": round(time.perf_counter() - t0, 1), "finetune_peak_rss_mb": round(peak_rss_mb()),
                      "config": self.cfg_doc, "summary": _jsonable(summary)}
            write_json(record, done)
        else:
            log.info("fold %d: reusing the fine-tuned backbone in %s", fold, out)
            record = {**record, "reused": True}
        variant = VARIANTS["finetuned"]
        ecfg = variant.embed_config(f"finetuned:{out}")
        t0 = time.perf_counter()
        emb_dir = self.root / f"emb-{out.name}"
        s = embed_manifest(self.manifest_path, emb_dir, ecfg)
        emb, _ = load_embeddings(emb_dir, self.man)
        bad = int((~np.isfinite(emb).all(axis=1)).sum())
        if bad:
            raise RuntimeError(f"fold {fold}: {bad} photos have no features from finetuned:{out}")
        self.folds.append({**record, "outcome": finetune_outcome(record["summary"]),
                           "embed_wall_seconds": round(time.perf_counter() - t0, 1),
                           "embed_seconds": round(s.embed_seconds, 1), "n_embedded": s.n_embedded,
                           "n_cached": s.n_cached, "photos_per_s": round(s.photos_per_s, 2)})
        self.last_dir = out
        return np.asarray(emb, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- measures


def predict_latency(entries: dict[str, dict], paths: list[Path]) -> dict:
    """Per-photo time of decode + backbone (+ TTA views) + the bundled model's heads, every model loaded once.

    The variants take turns photo by photo, so a busy machine slows them alike and the ratios to lite0 hold
    even when the milliseconds do not (the load average is recorded beside them).
    """
    from geopin.features.backbones import create_backbone
    from geopin.locate.model import GeoModel, default_model_dir

    model = GeoModel.load(default_model_dir())
    loaded = {}
    for name, e in entries.items():
        cfg = EmbedConfig(backbone=e.get("latency_backbone") or e["backbone"], long_side=e["long_side"], tta=tuple(e["tta"]), use_cache=False)
        loaded[name] = (create_backbone(cfg.backbone), cfg)
    load_before = os.getloadavg()[0]
    ms: dict[str, list[float]] = {name: [] for name in loaded}
    for i, p in enumerate(paths):
        for name, (backbone, cfg) in loaded.items():
            t0 = time.perf_counter()
            model.predict_embeddings(embed_images([p], backbone, cfg))
            if i >= LATENCY_WARMUP:
                ms[name].append(1000 * (time.perf_counter() - t0))
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out = {}
    for name, values in ms.items():
        a = np.asarray(values)
        out[name] = {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
                     "p95_ms": round(float(np.percentile(a, 95)), 1), "loadavg_1min": load}
    if REFERENCE in out:
        for v in out.values():
            v["p50_vs_lite0"] = round(v["p50_ms"] / out[REFERENCE]["p50_ms"], 2)
    return out


def per_photo_km(df: pd.DataFrame, method: str = "model") -> np.ndarray:
    return haversine_km(df[f"{method}_lat"].to_numpy(), df[f"{method}_lon"].to_numpy(),
                        df.true_lat.to_numpy(), df.true_lon.to_numpy())


def stat_columns(km: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = ["geoscore"] + [f"acc_{r}km" for r in KM]
    return names, np.column_stack([geoscore(km)] + [(km <= r).astype(np.float64) for r in KM])


def intervals_over_photographers(df: pd.DataFrame, groups: np.ndarray, seed: int) -> dict:
    """GeoScore and every share with its 95 % interval over photographers (the draws evaluate_cv uses)."""
    draws = BootstrapDraws.of(groups[df.row.to_numpy()], seed=seed)
    names, cols = stat_columns(per_photo_km(df))
    return {n: iv.to_dict() for n, iv in zip(names, bootstrap_mean(cols, draws))}


def paired_against(df: pd.DataFrame, ref: pd.DataFrame, groups: np.ndarray, seed: int) -> dict:
    """This variant minus the reference, photo by photo, resampling photographers: the adoption test."""
    if not np.array_equal(df.row.to_numpy(), ref.row.to_numpy()) or not np.array_equal(df.fold.to_numpy(), ref.fold.to_numpy()):
        raise ValueError("paired comparison: the variants were not evaluated on the same photos and folds")
    draws = BootstrapDraws.of(groups[df.row.to_numpy()], seed=seed)
    names, a = stat_columns(per_photo_km(df))
    _, b = stat_columns(per_photo_km(ref))
    return {n: iv.to_dict() for n, iv in zip(names, bootstrap_mean(a - b, draws))}


def run_variant(variant: Variant, args, manifest_path: Path, man: pd.DataFrame, base: Path) -> tuple[dict, pd.DataFrame]:
    """Embed (or fine-tune per fold and embed), evaluate by photographer, time and measure one variant."""
    reset_peak_rss()
    t_start = time.perf_counter()
    entry: dict = {"variant": variant.name, "label": variant.label(), "backbone": variant.backbone,
                   "long_side": variant.long_side, "tta": list(variant.tta)}
    lat, lon, groups = man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy()
    ecfg = EvalConfig(scenarios=("group",), folds=args.folds, seed=args.seed)
    if variant.finetuned:
        cfg = finetune_config(args)
        cfg_doc = finetune_config_doc(cfg)
        hook = FoldFinetuner(manifest_path, man, base, cfg, cfg_doc)
        t0 = time.perf_counter()
        report = evaluate_cv(np.zeros((len(man), 0), np.float32), lat, lon, groups, ecfg, fold_embeddings=hook)
        total = time.perf_counter() - t0
        ft = sum(f["finetune_seconds"] for f in hook.folds)  # as measured when each fold was fine-tuned
        emb_s = sum(f["embed_wall_seconds"] for f in hook.folds)
        new = sum(f["n_embedded"] for f in hook.folds)
        new_s = sum(f["embed_seconds"] for f in hook.folds)
        entry.update(finetune_config=cfg_doc, folds_detail=hook.folds, finetune_seconds=round(ft, 1),
                     finetune_reused_folds=sum(f.get("reused", False) for f in hook.folds),
                     embed_seconds=round(emb_s, 1), embed_new_photos=new,
                     photos_per_s=round(new / new_s, 2) if new and new_s > 0 else None,
                     heads_seconds=round(total - hook.seconds_spent - emb_s, 1),
                     finetune_peak_rss_mb=max((f["finetune_peak_rss_mb"] for f in hook.folds), default=None))
        entry["latency_backbone"] = f"finetuned:{hook.last_dir}"  # the last fold's: all folds cost the same
    else:
        emb_dir = base / "emb" / variant.name
        t0 = time.perf_counter()
        s = embed_manifest(manifest_path, emb_dir, variant.embed_config())
        emb_wall = time.perf_counter() - t0
        emb, meta = load_embeddings(emb_dir, man)
        bad = int((~np.isfinite(emb).all(axis=1)).sum())
        if bad:
            raise RuntimeError(f"{variant.name}: {bad} photos have no features (Lite0 embedded them)")
        entry.update(backbone_version=meta.get("version"), embed_seconds=round(emb_wall, 1),
                     embed_new_photos=s.n_embedded, embed_cached_photos=s.n_cached,
                     photos_per_s=round(s.photos_per_s, 2) if s.n_embedded else None)
        t0 = time.perf_counter()
        report = evaluate_cv(np.asarray(emb), lat, lon, groups, ecfg)
        entry["heads_seconds"] = round(time.perf_counter() - t0, 1)
        entry["latency_backbone"] = variant.backbone
    entry["peak_rss_mb"] = round(peak_rss_mb())
    entry["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    sc = report["scenarios"]["group"]
    df = report["per_photo"]["group"]
    header, table = format_methods_table(report, "group")
    entry.update(
        header=header,
        n=len(df),
        folds_used=sc["folds_used"],
        methods=sc["methods"],
        model=sc["methods"]["model"],
        intervals=intervals_over_photographers(df, groups, args.seed),
        evaluate_intervals=sc["intervals"],
        paired_prior=sc["intervals"]["paired"].get("model_minus_prior_constant"),
        paired_lines=paired_lines(report, "group"),
        calibration={k: {kk: vv for kk, vv in c.items() if kk != "reliability"} for k, c in sc["calibration"].items()},
        calibration_table=format_calibration_table(report, "group").to_dict(orient="records"),
        methods_table=table.to_dict(orient="records"),
        mix_weights=sc["mix_weights"],
        prior_guard=sc["prior_guard"],
    )
    return entry, df


# ---------------------------------------------------------------------------------------------------- tables


def _iv(iv: dict | None, scale: float, fmt: str) -> str:
    return "" if not iv else f" [{format(scale * iv['lo'], fmt)}, {format(scale * iv['hi'], fmt)}]"


def accuracy_markdown(doc: dict) -> list[str]:
    """One row per variant: GeoScore and shares with intervals over photographers, and the paired gain over lite0."""
    lines = [("| variant | GeoScore | ≤25 km | ≤200 km | ≤750 km | ≤2500 km | median km | country | "
             f"GeoScore − {REFERENCE} (paired) | model − prior (paired) |"),
             "|---|" + "---|" * 9]
    for name, e in doc["variants"].items():
        m, iv = e["model"], e["intervals"]
        cells = [f"**{name}**" if name == REFERENCE else name,
                 f"{m['geoscore']:.0f}{_iv(iv['geoscore'], 1, '.0f')}"]
        cells += [f"{100 * m[f'acc_{r}km']:.1f} %{_iv(iv[f'acc_{r}km'], 100, '.1f')}" for r in KM]
        cells.append(f"{m['median_km']:,.0f}")
        cells.append(f"{100 * m['country_acc']:.1f} %" if m.get("country_acc") is not None and math.isfinite(m["country_acc"]) else "-")
        p = (doc.get("paired_vs_reference") or {}).get(name, {}).get("geoscore")
        cells.append("—" if name == REFERENCE else (f"{p['estimate']:+.0f} [{p['lo']:+.0f}, {p['hi']:+.0f}]" if p else "n/a"))
        q = e.get("paired_prior")
        cells.append(f"{q['estimate']:+.0f} [{q['lo']:+.0f}, {q['hi']:+.0f}]" if q else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def calibration_markdown(doc: dict) -> list[str]:
    lines = ["| variant | " + " | ".join(f"ECE {r} km" for r in KM) + " |", "|---|" + "---|" * len(KM)]
    for name, e in doc["variants"].items():
        cells = []
        for r in KM:
            c = e["calibration"][str(r)]
            cells.append(f"{100 * c['ece']:.1f} pts{_iv(c.get('ece_interval'), 100, '.1f')}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cost_markdown(doc: dict) -> list[str]:
    lat = doc.get("latency") or {}
    load = next(iter(lat.values()), {}).get("loadavg_1min")
    lines = [("| variant | input | embed (s) | fine-tune (s) | heads, all folds (s) | peak RSS (MiB) | "
             f"predict p50 (ms; load {load}) | p50 / lite0 |"), "|---|---|---|---|---|---|---|---|"]
    for name, e in doc["variants"].items():
        new = e.get("embed_new_photos")
        emb = f"{e['embed_seconds']:.0f}" + (f" ({new} new, {e['photos_per_s']} photos/s)" if new else " (cached)" if new == 0 else "")
        ft = "—"
        if "finetune_seconds" in e:
            kept = sum(bool((f.get("outcome") or {}).get("kept_pretrained_blocks")) for f in e.get("folds_detail", []))
            ft = f"{e['finetune_seconds']:.0f}" + (f" ({kept} of {len(e['folds_detail'])} folds kept the pretrained blocks)" if kept else "")
        p = lat.get(name, {})
        lines.append(f"| {name} | {e['label']} | {emb} | {ft} | {e['heads_seconds']:.0f} | {e['peak_rss_mb']:,} | "
                     f"{p.get('p50_ms', float('nan')):.0f} | {p.get('p50_vs_lite0', float('nan')):.2f} |")
    return lines


def save(doc: dict, path: Path) -> None:
    """Write atomically, keeping rows another run (on the same photos and folds) wrote meanwhile."""
    if path.exists():
        try:
            disk = json.loads(path.read_text())
        except ValueError:
            disk = {}
        if disk.get("setup") == doc["setup"]:
            for name, entry in disk.get("variants", {}).items():
                doc["variants"].setdefault(name, entry)
    write_json(doc, path)


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
            "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench-finetune"))
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="whole photographers (seeded) until N photos: a quick check")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results (with --limit: WORK/results_limitN)")
    ap.add_argument("--force", action="store_true", help="recompute variants already in the results")
    ap.add_argument("--train-blocks", type=int, default=None, help="fine-tune: last blocks trained (module default)")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune: epochs (module default)")
    ap.add_argument("--max-minutes", type=float, default=None, help="fine-tune: time bound per fold (module default)")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        ap.error(f"--variants: unknown {', '.join(map(repr, unknown)) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.limit is not None and args.limit < 2:
        ap.error(f"--limit {args.limit}: need at least 2 photos")
    if args.folds < 2:
        ap.error(f"--folds {args.folds}: need at least 2")
    if args.out is None:
        # a quick check on a subset must never overwrite the benchmark's results
        args.out = ROOT / "bench" / "results" if args.limit is None else args.work / f"results_limit{args.limit}"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    logging.getLogger("geopin.dataset.cells").setLevel(logging.WARNING)
    manifest_path, man, base = prepare(args)
    setup = {"n": len(man), "photographers": int(man.group.nunique()), "ids_sha256": ids_digest(man["id"]),
             "folds": args.folds, "seed": args.seed, "limit": args.limit}
    out_json = args.out / "bench_finetune.json"
    doc = json.loads(out_json.read_text()) if out_json.exists() else {}
    if doc.get("setup") != setup:
        if doc:
            log.warning("%s was computed on other photos or folds: starting it afresh", out_json)
        doc = {"setup": setup, "variants": {}}
    per_photo_dir = base / "per_photo"
    order = [REFERENCE] + [v for v in args.variants if v != REFERENCE]  # the reference first: every row pairs with it
    ft_doc = finetune_config_doc(finetune_config(args)) if "finetuned" in order else None
    for name in order:
        old = doc["variants"].get(name)
        forced = args.force and name in args.variants  # the reference is only added for pairing: --force spares it
        if old is not None and not forced and (per_photo_dir / f"{name}.parquet").exists():
            if old.get("label") != VARIANTS[name].label():
                log.warning("%s: the stored row was made with %r: recomputing", name, old.get("label"))
            elif name == "finetuned" and old.get("finetune_config") != ft_doc:
                log.warning("finetuned: the stored row was fine-tuned with other knobs (%s): recomputing",
                            {k: v for k, v in (old.get("finetune_config") or {}).items() if ft_doc.get(k) != v})
            else:
                log.info("%s: already in %s (--force recomputes)", name, out_json)
                continue
        log.info("variant %s: %s", name, VARIANTS[name].label())
        entry, df = run_variant(VARIANTS[name], args, manifest_path, man, base)
        write_parquet(df, per_photo_dir / f"{name}.parquet")
        doc["variants"][name] = entry
        doc["machine"] = machine()
        save(doc, out_json)  # after every variant: an interruption loses at most the one running
    groups = man.group.to_numpy()
    ref = pd.read_parquet(per_photo_dir / f"{REFERENCE}.parquet")
    doc["paired_vs_reference"] = {
        name: paired_against(pd.read_parquet(per_photo_dir / f"{name}.parquet"), ref, groups, args.seed)
        for name in doc["variants"] if name != REFERENCE and (per_photo_dir / f"{name}.parquet").exists()
    }
    doc["variants"] = {k: doc["variants"][k] for k in [REFERENCE] + [v for v in doc["variants"] if v != REFERENCE]}
    sample = man.sample(min(len(man), LATENCY_PHOTOS + LATENCY_WARMUP), random_state=args.seed).path.tolist()
    doc["latency"] = predict_latency(doc["variants"], [Path(p) for p in sample])
    doc["latency_note"] = ("decode + backbone (+ TTA views) + the bundled model's heads, one photo per call, "
                           f"{LATENCY_PHOTOS} photos after {LATENCY_WARMUP} untimed, variants interleaved photo by photo")
    doc["tables"] = {"accuracy": accuracy_markdown(doc), "calibration": calibration_markdown(doc), "cost": cost_markdown(doc)}
    save(doc, out_json)
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        for name, e in doc["variants"].items():
            print(f"\n#### {name}: {e['label']}\n{e['header']}")
            print(pd.DataFrame(e["methods_table"]).to_string(index=False))
            for line in e["paired_lines"]:
                print(line)
            print(pd.DataFrame(e["calibration_table"]).to_string(index=False))
    print(f"\nREADME tables (markdown; {setup['n']} photos, {setup['photographers']} photographers, "
          f"{args.folds} folds by photographer, seed {args.seed}; brackets: 95 % interval over photographers):\n")
    for key in ("accuracy", "calibration", "cost"):
        print("\n".join(doc["tables"][key]) + "\n")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
