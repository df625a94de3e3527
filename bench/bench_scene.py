"""Scene type: does conditioning the posterior on indoor/outdoor help, and what do empty images get?

    python bench/bench_scene.py [--shared ../shared/data/im2gps3k] [--work /tmp/geopin-bench-scene]
                                [--folds 5] [--n-boot 1000] [--limit N]   # N: a seeded subset, quick check

On the shared Im2GPS3k photos (their labels.csv carries Places365 scene shares: prob_indoor,
prob_natural, prob_urban), at one CPU thread:
  1. the scene probe (geopin.locate.scene.SceneProbe) out of fold by photographer: R2 per share, AUC of
     the indoor share for "indoor > 0.5", beside ridge regression;
  2. image_information on every shared photo (min, 0.1 %, 1 %, median), against the thresholds;
  3. five folds by photographer, every variant on the same heads and the same held-out evidence:
       (a) today's model (also run through evaluate_cv, which must agree),
       (b) mixing weights fit separately on inner-fold photos predicted indoor / outdoor,
       (c) calibration fit separately for predicted indoor / outdoor,
       (d) indoor photos widened toward the prior by one keep factor fit on the inner folds,
     with GeoScore, <=25 km, <=750 km and ECE per radius, 95 % intervals over photographers and the
     paired difference (variant - baseline), overall and on indoor photos;
  4. what the bundled model answers for a blank PNG, a 4x4 PNG and a mid-grey JPEG, before and after widening.
Writes bench/results/scene.json (with --limit: WORK/results_limitN/scene.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch start their thread pools: 2 cores, shared

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.dataset.splits import group_codes
from geopin.evaluation.crossval import EvalConfig, evaluate_cv, plan_folds
from geopin.features.embed import (
    EmbedConfig,
    load_image,
)
from geopin.geo import haversine_km
from geopin.io import write_json
from geopin.locate.model import GeoModel
from geopin.locate.posterior import (
    CONFIDENCE_KM,
    Calibration,
    Decision,
    Evidence,
    decide,
    mixture,
    truth_masks,
)
from geopin.locate.scene import (
    INDOOR,
    INFO_EMPTY,
    INFO_ENOUGH,
    SCENE_LABELS,
    SceneProbe,
    fit_keep,
    image_information,
    information_keep,
    scene_keep,
    scene_shares,
    widen,
)
from geopin.locate.train import (
    OutOfFold,
    TrainConfig,
    fit_heads,
    fit_posterior,
    inner_folds,
    out_of_fold,
)
from geopin.log import setup_logging
from shared_photos import shared_embedded
from geopin.metrics import (
    BootstrapDraws,
    bootstrap_ece,
    bootstrap_mean,
    expected_calibration_error,
    geoscore,
)

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_scene")

VARIANTS = {
    "a_baseline": "today's model",
    "b_mix_by_scene": "mixing weights fit separately indoor / outdoor",
    "c_calib_by_scene": "calibration fit separately indoor / outdoor",
    "d_widen_indoor": "indoor photos widened toward the prior (one keep fit out of fold)",
}
N_BINS = 10


def set_one_thread() -> None:
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


# ------------------------------------------------------------------------------------------ data


def load_data(args) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The shared photos' manifest (with the scene shares joined by image name) and their embeddings."""
    labels = args.shared / "labels.csv"
    _, man, emb, meta = shared_embedded(args.shared, args.work, args.limit, args.seed, EmbedConfig(threads=1))
    # the manifest id is labels.csv's `image` column as written there ('images/NAME.jpg')
    scene = pd.read_csv(labels, usecols=["image", "prob_indoor", "prob_natural", "prob_urban"]).drop_duplicates("image")
    joined = man[["id"]].merge(scene, left_on="id", right_on="image", how="left")
    if joined.prob_indoor.isna().any():
        raise SystemExit(f"{int(joined.prob_indoor.isna().sum())} manifest ids have no scene shares in {labels}")
    for col in ("prob_indoor", "prob_natural", "prob_urban"):
        man[col] = joined[col].to_numpy()
    return man, emb, meta


# ------------------------------------------------------------------------------------------ the probe


def probe_quality(emb, y, folds) -> dict:
    """Out of fold by photographer: R2 per share and AUC of the indoor share, the logistic probe beside ridge."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score, roc_auc_score

    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = {}
    for name in ("logistic", "ridge"):
        p = np.zeros_like(y)
        for f in np.unique(folds):
            tr, te = folds != f, folds == f
            if name == "logistic":
                p[te] = SceneProbe().fit(emb[tr], y[tr]).predict(emb[te])
            else:
                mu = x[tr].mean(0)
                p[te] = Ridge(alpha=1.0).fit(x[tr] - mu, y[tr]).predict(x[te] - mu)
        truth = y[:, 0] > INDOOR
        out[name] = {
            "r2": {s: round(float(r2_score(y[:, j], p[:, j])), 3) for j, s in enumerate(SCENE_LABELS)},
            "auc_indoor": round(float(roc_auc_score(truth, p[:, 0])), 4),
            "accuracy_indoor": round(float(((p[:, 0] > INDOOR) == truth).mean()), 4),
            "predicted_indoor_share": round(float((p[:, 0] > INDOOR).mean()), 4),
        }
        if name == "logistic":
            oof_pred = p
    out["true_indoor_share"] = round(float((y[:, 0] > INDOOR).mean()), 4)
    return out, oof_pred


def information_stats(man: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """image_information of every shared photo, decoded as predict decodes it (reduced-scale JPEG)."""
    info = np.array([image_information(load_image(p)) for p in man.path])
    q = np.percentile(info, [0.1, 1, 50])
    worst = np.argsort(info)[:3]
    return {
        "n": len(info),
        "min": round(float(info.min()), 4),
        "p0.1": round(float(q[0]), 4),
        "p1": round(float(q[1]), 4),
        "median": round(float(q[2]), 4),
        "below_info_enough": int((info < INFO_ENOUGH).sum()),
        "widened": int((information_keep(info) < 1).sum()),
        "lowest": [{"id": str(man.id[i]), "information": round(float(info[i]), 4)} for i in worst],
        "thresholds": {"empty": INFO_EMPTY, "enough": INFO_ENOUGH},
    }, info


# ------------------------------------------------------------------------------------------ variants


def take_oof(oof: OutOfFold, masks: list[np.ndarray]) -> OutOfFold:
    """The held-out photos where masks[fold] is true (folds left with no photo are dropped)."""
    out = OutOfFold([], [], [], [])
    for k, m in enumerate(masks):
        idx = np.flatnonzero(m)
        if len(idx) == 0:
            continue
        out.places.append(oof.places[k])
        out.evidence.append(oof.evidence[k].rows(idx))
        out.truth.append((oof.truth[k][0][idx], oof.truth[k][1][idx]))
        out.rows.append(oof.rows[k][idx])
        if oof.groups:
            out.groups.append(oof.groups[k][idx])
    return out


@dataclass
class Answer:
    """One variant's answers for a set of photos."""

    lat: np.ndarray
    lon: np.ndarray
    raw: np.ndarray  # (n, R) raw within-km mass
    conf: np.ndarray | None = None  # (n, R) calibrated


def decide_split(places, ev: Evidence, params_of: dict, is_in: np.ndarray, keep: np.ndarray | None = None) -> Answer:
    """Decisions where indoor photos use params_of[True] and the others params_of[False]; `keep` widens."""
    n = len(ev)
    lat, lon, raw = np.empty(n), np.empty(n), np.empty((n, len(CONFIDENCE_KM)))
    for flag in (True, False):
        idx = np.flatnonzero(is_in == flag)
        if len(idx) == 0:
            continue
        params = params_of[flag]
        sub = ev.rows(idx)
        cell, nb = mixture(places, sub, params)
        prior_only = np.full(len(idx), params.prior_only)
        if keep is not None:
            cell, nb = widen(cell, nb, places.prior, keep[idx])
            prior_only |= keep[idx] == 0
        dec: Decision = decide(places, sub, cell, nb, prior_only=prior_only)
        lat[idx], lon[idx], raw[idx] = dec.lat, dec.lon, dec.raw_within
    return Answer(lat, lon, raw)


def hits(ans: Answer, t_lat, t_lon) -> np.ndarray:
    km = haversine_km(ans.lat, ans.lon, t_lat, t_lon)
    return km[:, None] <= np.asarray(CONFIDENCE_KM)[None, :]


def within_truth(places, ev: Evidence, cell, nb, t_lat, t_lon) -> tuple[np.ndarray, np.ndarray]:
    """Mass of the posterior and of the prior within each radius of the truth, (n, R) each."""
    mc, mn = truth_masks(places, ev, t_lat, t_lon)
    post = (mc * cell[None]).sum(-1) + (mn * nb[None]).sum(-1)
    prior = (mc * places.prior[None, None, :]).sum(-1)
    return post.T, prior.T


def oof_raw_hits(oof, by_scene: dict, in_oof: list) -> tuple[np.ndarray, np.ndarray]:
    """Raw within-km masses and hits of every held-out photo, each decided with its scene's parameters."""
    raw, hit = [], []
    for k in range(len(oof.places)):
        ans = decide_split(oof.places[k], oof.evidence[k], by_scene, in_oof[k])
        raw.append(ans.raw)
        hit.append(hits(ans, *oof.truth[k]))
    return np.concatenate(raw), np.concatenate(hit)


def run_fold(emb, lat, lon, groups, y, tr, te, tcfg: TrainConfig) -> tuple[dict[str, Answer], dict]:
    """All variants for one outer fold, on the same inner-fold evidence and the same final heads."""
    e_tr = emb[tr]
    oof = out_of_fold(e_tr, lat[tr], lon[tr], groups[tr], tcfg)
    heads = fit_heads(e_tr, lat[tr], lon[tr], tcfg)
    # indoor share of the held-out inner photos from probes fit without them (same inner folds as out_of_fold)
    inner = inner_folds(len(tr), groups[tr], tcfg)
    p_oof = np.zeros(len(tr))
    for f in np.unique(inner):
        p_oof[inner == f] = SceneProbe().fit(e_tr[inner != f], y[tr][inner != f]).indoor(e_tr[inner == f])
    in_oof = [p_oof[rows] > INDOOR for rows in oof.rows]
    p_te = SceneProbe().fit(e_tr, y[tr]).indoor(emb[te])
    in_te = p_te > INDOOR

    info: dict = {"n_train": len(tr), "n_test": len(te), "oof_indoor": int(sum(m.sum() for m in in_oof)),
                  "test_indoor": int(in_te.sum())}
    params, calib, _ = fit_posterior(oof, tcfg)
    info["params"] = {k: v for k, v in params.to_dict().items() if k.startswith(("w_", "t_"))}
    ev_te = heads.evidence(emb[te])
    out: dict[str, Answer] = {}

    # (a) today's model: train_model's steps, unrolled so every variant shares these heads
    model = GeoModel(heads, params, calib)
    _, _, _, dec, conf = model.decide(emb[te])
    out["a_baseline"] = Answer(dec.lat, dec.lon, dec.raw_within, conf)

    # (b) mixing weights fit per scene; one calibration over all held-out photos with their scene's weights
    p_in, _, rep_in = fit_posterior(take_oof(oof, in_oof), tcfg)
    p_out, _, rep_out = fit_posterior(take_oof(oof, [~m for m in in_oof]), tcfg)
    by_scene = {True: p_in, False: p_out}
    raw, hit = oof_raw_hits(oof, by_scene, in_oof)
    calib_b = Calibration.fit(raw, hit)
    ans = decide_split(heads.places, ev_te, by_scene, in_te)
    ans.conf = calib_b.apply(ans.raw)
    out["b_mix_by_scene"] = ans
    info["params_indoor"] = {k: v for k, v in p_in.to_dict().items() if k.startswith(("w_", "t_"))}
    info["params_outdoor"] = {k: v for k, v in p_out.to_dict().items() if k.startswith(("w_", "t_"))}
    info["guard_indoor"] = rep_in.get("prior_guard", {}).get("applied")
    info["guard_outdoor"] = rep_out.get("prior_guard", {}).get("applied")

    # (c) today's posterior, calibration fit per scene
    same = {True: params, False: params}
    raw, hit = oof_raw_hits(oof, same, in_oof)
    in_all = np.concatenate(in_oof)
    calib_in, calib_out = Calibration.fit(raw[in_all], hit[in_all]), Calibration.fit(raw[~in_all], hit[~in_all])
    base = out["a_baseline"]
    conf_c = np.where(in_te[:, None], calib_in.apply(base.raw), calib_out.apply(base.raw))
    out["c_calib_by_scene"] = Answer(base.lat, base.lon, base.raw, conf_c)

    # (d) indoor photos widened by one keep, fit on the held-out indoor photos; calibration refit after widening
    post_w, prior_w = [], []
    for k in range(len(oof.places)):
        idx = np.flatnonzero(in_oof[k])
        if len(idx) == 0:
            continue
        sub = oof.evidence[k].rows(idx)
        cell, nb = mixture(oof.places[k], sub, params)
        pw, rw = within_truth(oof.places[k], sub, cell, nb, oof.truth[k][0][idx], oof.truth[k][1][idx])
        post_w.append(pw)
        prior_w.append(rw)
    keep_in, keep_rep = fit_keep(np.concatenate(post_w), np.concatenate(prior_w), tcfg.fit.floor)
    info["keep_indoor"] = keep_rep
    raw, hit = [], []
    for k in range(len(oof.places)):
        keep = np.where(in_oof[k], keep_in, 1.0)
        ans = decide_split(oof.places[k], oof.evidence[k], same, in_oof[k], keep)
        raw.append(ans.raw)
        hit.append(hits(ans, *oof.truth[k]))
    calib_d = Calibration.fit(np.concatenate(raw), np.concatenate(hit))
    ans = decide_split(heads.places, ev_te, same, in_te, np.where(in_te, keep_in, 1.0))
    ans.conf = calib_d.apply(ans.raw)
    out["d_widen_indoor"] = ans
    info["p_indoor_test"] = p_te
    return out, info


# ------------------------------------------------------------------------------------------ metrics


def variant_metrics(answers: dict[str, np.ndarray], t_lat, t_lon, groups, sel: np.ndarray, n_boot: int, seed: int) -> dict:
    """GeoScore, <=25/<=750 km, ECE per radius with intervals over photographers; paired differences vs a_baseline."""
    draws = BootstrapDraws.of(groups[sel], n_boot=n_boot, seed=seed)
    base = answers["a_baseline"]
    km = {v: haversine_km(a["lat"][sel], a["lon"][sel], t_lat[sel], t_lon[sel]) for v, a in answers.items()}
    out = {"n": int(sel.sum()), "n_photographers": draws.n_units, "variants": {}}
    for v, a in answers.items():
        cols = [geoscore(km[v]), (km[v] <= 25).astype(float), (km[v] <= 750).astype(float)]
        names = ["geoscore", "acc_25km", "acc_750km"]
        if v != "a_baseline":
            kb = km["a_baseline"]
            cols += [geoscore(km[v]) - geoscore(kb), (km[v] <= 25).astype(float) - (kb <= 25), (km[v] <= 750).astype(float) - (kb <= 750)]
            names += ["diff_geoscore", "diff_acc_25km", "diff_acc_750km"]
        ivs = bootstrap_mean(np.stack(cols, axis=1), draws)
        m = {n: iv.to_dict() for n, iv in zip(names, ivs)}
        for r_i, r in enumerate(CONFIDENCE_KM):
            hit = km[v] <= r
            prob = a["conf"][sel, r_i]
            m[f"ece_{int(r)}"] = bootstrap_ece(prob, hit, draws, N_BINS).to_dict()
            m[f"mean_conf_{int(r)}"] = float(prob.mean())
            m[f"hit_rate_{int(r)}"] = float(hit.mean())
            if v != "a_baseline":
                # paired: the same photos' hits differ only where the guess moved (b, d); ECE of each against its own hits
                hb = km["a_baseline"] <= r
                m[f"diff_ece_{int(r)}"] = paired_ece_hits(base["conf"][sel, r_i], hb, prob, hit, draws)
        out["variants"][v] = m
    return out


def paired_ece_hits(prob_a, hit_a, prob_b, hit_b, draws: BootstrapDraws, n_bins: int = N_BINS) -> dict:
    """ECE(b against its hits) - ECE(a against its hits), paired over the same draws of photographers."""
    def gaps(prob, hit):
        idx = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
        g = np.zeros((prob.size, n_bins))
        g[np.arange(prob.size), idx] = prob - hit
        return draws.unit_sums(g)

    sa, sb = gaps(prob_a, hit_a), gaps(prob_b, hit_b)
    counts = draws.unit_sums(np.ones((prob_a.size, 1)))[:, 0]
    stats = np.concatenate([(np.abs(w @ sb).sum(1) - np.abs(w @ sa).sum(1)) / (w @ counts) for w in draws.chunks()])
    lo, hi = draws.percentiles(stats)
    est = expected_calibration_error(prob_b, hit_b, n_bins) - expected_calibration_error(prob_a, hit_a, n_bins)
    return {"estimate": float(est), "lo": float(lo), "hi": float(hi)}


def fmt_interval(d: dict, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    """'12.3 [10.1, 14.0]' from an Interval's dict."""
    return f"{fmt.format(scale * d['estimate'])} [{fmt.format(scale * d['lo'])}, {fmt.format(scale * d['hi'])}]"


def print_table(title: str, rep: dict) -> None:
    print(f"\n== {title}: {rep['n']} photos, {rep['n_photographers']} photographers (95 % intervals over photographers)")
    rows, diffs = [], []
    for v, m in rep["variants"].items():
        row = {"variant": v, "GeoScore": fmt_interval(m["geoscore"], fmt="{:.0f}"),
               "<=25km %": fmt_interval(m["acc_25km"], 100), "<=750km %": fmt_interval(m["acc_750km"], 100)}
        for r in CONFIDENCE_KM:
            row[f"ECE{int(r)} pts"] = fmt_interval(m[f"ece_{int(r)}"], 100)
        rows.append(row)
        if v == "a_baseline":
            continue
        diff = {"variant - baseline": v, "GeoScore": fmt_interval(m["diff_geoscore"], fmt="{:+.0f}"),
                "<=25km pts": fmt_interval(m["diff_acc_25km"], 100, "{:+.1f}"),
                "<=750km pts": fmt_interval(m["diff_acc_750km"], 100, "{:+.1f}")}
        for r in CONFIDENCE_KM:
            diff[f"ECE{int(r)} pts"] = fmt_interval(m[f"diff_ece_{int(r)}"], 100, "{:+.1f}")
        diffs.append(diff)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(pd.DataFrame(rows).to_string(index=False))
        print(pd.DataFrame(diffs).to_string(index=False))


# ------------------------------------------------------------------------------------------ empty images


def bundled_answers(work: Path) -> list[dict]:
    """What the bundled model answers today for a blank PNG, a 4x4 PNG and a mid-grey JPEG, and after widening."""
    from PIL import Image

    from geopin.features.embed import embed_images
    from geopin.locate.predict import PredictConfig, Predictor

    folder = work / "empty_images"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (640, 480), (255, 255, 255)).save(folder / "blank_640x480.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / "noise_4x4.png")
    Image.new("RGB", (640, 480), (128, 128, 128)).save(folder / "grey_640x480.jpg", quality=90)
    paths = sorted(folder.iterdir())
    predictor = Predictor(PredictConfig(text="never"))
    predictor.embed_cfg.threads = 1
    today = list(predictor.predict_paths(paths))  # predict widens them itself now
    m = predictor.model
    cfg = predictor.embed_cfg
    imgs = [load_image(p, cfg.mode, cfg.long_side, predictor.backbone.native_size) for p in paths]
    info = np.array([image_information(img) for img in imgs])
    keep, reasons = scene_keep(info)
    emb = embed_images(imgs, predictor.backbone, cfg)
    before = m.predict_embeddings(emb)  # without the photos' information: the answer before widening
    out = []
    for p, i, k, res, old in zip(paths, info, keep, today, before):
        out.append({"image": p.name, "information": round(float(i), 4), "keep": float(k),
                    "before": {"summary": old.get("summary"), "lat": old.get("lat"), "lon": old.get("lon")},
                    "widened": {"summary": res["summary"], "lat": res["lat"], "lon": res["lon"]}})
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench-scene"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of N photos (a quick check)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results (with --limit: WORK/results_limitN)")
    args = ap.parse_args()
    if args.out is None:
        args.out = ROOT / "bench" / "results" if args.limit is None else args.work / f"results_limit{args.limit}"
    setup_logging()
    logging.getLogger("geopin.dataset.cells").setLevel(logging.WARNING)
    set_one_thread()
    t0 = time.perf_counter()
    man, emb, meta = load_data(args)
    y = scene_shares(man)
    lat, lon = man.lat.to_numpy(), man.lon.to_numpy()
    groups = man.group.astype(str).to_numpy()
    codes = group_codes(groups)
    ecfg = EvalConfig(scenarios=("group",), folds=args.folds, seed=args.seed, n_boot=args.n_boot)
    plan = plan_folds("group", len(lat), codes, ecfg)  # the folds evaluate_cv uses
    doc: dict = {"n": len(lat), "backbone": meta.get("version"), "folds": plan.used, "limit": args.limit,
                 "threads": 1, "variants": VARIANTS, "indoor_threshold": INDOOR}

    quality, _ = probe_quality(emb, y, plan.folds)
    doc["probe"] = quality
    print("\n== scene probe, out of fold by photographer:")
    for name in ("logistic", "ridge"):
        print(f"   {name}: {quality[name]}")
    info_stats, info = information_stats(man)
    doc["image_information"] = info_stats
    print(f"\n== image_information on {len(info)} shared photos: {info_stats}")

    # (a) through evaluate_cv, as bench_accuracy runs it
    t = time.perf_counter()
    cv = evaluate_cv(emb, lat, lon, groups, ecfg)
    cv_df = cv["per_photo"]["group"]
    doc["evaluate_cv"] = {"geoscore": cv["scenarios"]["group"]["methods"]["model"]["geoscore"],
                          "seconds": round(time.perf_counter() - t, 1)}

    tcfg = TrainConfig(scenario="group", seed=args.seed)
    answers = {v: {"lat": np.empty(len(lat)), "lon": np.empty(len(lat)), "conf": np.empty((len(lat), len(CONFIDENCE_KM)))}
               for v in VARIANTS}
    p_indoor = np.empty(len(lat))
    doc["per_fold"] = []
    t = time.perf_counter()
    for f in range(plan.used):
        tr, te = np.flatnonzero(plan.folds != f), np.flatnonzero(plan.folds == f)
        fold_answers, finfo = run_fold(emb, lat, lon, groups, y, tr, te, tcfg)
        p_indoor[te] = finfo.pop("p_indoor_test")
        for v, a in fold_answers.items():
            answers[v]["lat"][te], answers[v]["lon"][te], answers[v]["conf"][te] = a.lat, a.lon, a.conf
        doc["per_fold"].append({"fold": f, **finfo})
        log.info("fold %d/%d: %s", f + 1, plan.used, finfo)
    doc["variants_seconds"] = round(time.perf_counter() - t, 1)

    # today's model through evaluate_cv and through the unrolled loop must give the same guesses
    cv_df = cv_df.sort_values("row")
    d_km = haversine_km(cv_df.model_lat.to_numpy(), cv_df.model_lon.to_numpy(),
                        answers["a_baseline"]["lat"][cv_df.row], answers["a_baseline"]["lon"][cv_df.row])
    d_conf = np.abs(cv_df[[f"conf_{int(r)}" for r in CONFIDENCE_KM]].to_numpy() - answers["a_baseline"]["conf"][cv_df.row])
    doc["evaluate_cv"]["max_km_from_unrolled_baseline"] = float(d_km.max())
    doc["evaluate_cv"]["max_conf_diff"] = float(d_conf.max())
    print(f"\nevaluate_cv vs the unrolled baseline: guesses differ by at most {d_km.max():.3g} km, "
          f"confidences by {d_conf.max():.3g}")

    true_in = y[:, 0] > INDOOR
    pred_in = p_indoor > INDOOR
    subsets = {"all": np.ones(len(lat), dtype=bool), "predicted_indoor": pred_in, "predicted_outdoor": ~pred_in,
               "true_indoor": true_in}
    doc["results"] = {}
    for name, sel in subsets.items():
        rep = variant_metrics(answers, lat, lon, groups, sel, args.n_boot, args.seed)
        doc["results"][name] = rep
        print_table(name, rep)
    doc["keep_indoor_per_fold"] = [pf["keep_indoor"]["keep"] for pf in doc["per_fold"]]
    print("\nkeep fit for indoor photos per fold:", doc["keep_indoor_per_fold"])

    doc["empty_images"] = bundled_answers(args.work)
    print("\n== the bundled model on empty images")
    for e in doc["empty_images"]:
        print(f"  {e['image']} (information {e['information']}, keep {e['keep']}):\n"
              f"     before:   {e['before']['summary']}\n     widened:  {e['widened']['summary']}")
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(doc, args.out / "scene.json")
    print(f"\nwrote {args.out / 'scene.json'} ({doc['seconds']} s)")


if __name__ == "__main__":
    main()
