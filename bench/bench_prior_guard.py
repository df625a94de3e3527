"""Does the model lose to the prior on small collections, with and without the prior guard?

    python bench/bench_prior_guard.py [--sizes 300,600] [--seeds 0,1,2,3] [--shared ../shared/data/im2gps3k]

Random subsets of the shared Im2GPS3k photos, 5 folds by photographer (new photographers), the same
folds and embeddings for three answers: the model without the guard, with it, and the prior's constant.
Prints a table and writes bench/results/prior_guard.json.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.dataset.ingest import IngestConfig, ingest
from geopin.dataset.manifest import read_manifest
from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.features.embed import EmbedConfig, embed_manifest, load_embeddings
from geopin.io import write_json
from geopin.locate.train import TrainConfig
from geopin.log import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench"))
    ap.add_argument("--sizes", default="300,600")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prior_guard.json")
    args = ap.parse_args()
    setup_logging(quiet=True)
    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"skipped: {labels} not found (the benchmark needs the shared Im2GPS3k photos)")
    summary = ingest(labels, args.work / "dataset", IngestConfig(group_col="author"))
    embed_manifest(summary.manifest_path, args.work / "emb", EmbedConfig())
    man = read_manifest(summary.manifest_path)
    emb = np.asarray(load_embeddings(args.work / "emb", man)[0])
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            idx = np.sort(np.random.default_rng(seed).choice(len(man), min(size, len(man)), replace=False))
            m = man.iloc[idx]
            data = (emb[idx], m.lat.to_numpy(), m.lon.to_numpy(), m.group.to_numpy())
            row = {"photos": len(idx), "seed": seed, "photographers": int(m.group.nunique())}
            for guard in (False, True):
                cfg = EvalConfig(scenarios=("group",), train=replace(TrainConfig(), prior_guard=guard))
                rep = evaluate_cv(*data, cfg)["scenarios"]["group"]
                row["model_guarded" if guard else "model_unguarded"] = round(rep["methods"]["model"]["geoscore"], 1)
                row["prior_constant"] = round(rep["methods"]["prior_constant"]["geoscore"], 1)
                if guard:
                    row["guard_folds_applied"] = rep["prior_guard"]["folds_applied"]
            rows.append(row)
            print(pd.DataFrame([row]).to_string(index=False, header=len(rows) == 1), flush=True)
    write_json({"scenario": "new photographers, 5 folds by photographer", "rows": rows}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    logging.captureWarnings(True)
    main()
