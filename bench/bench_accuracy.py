"""Accuracy of the full model beside the classifier, nearest neighbour, prior constant and oracle.

    python bench/bench_accuracy.py [--shared ../shared/data/im2gps3k] [--folds 5] [--work /tmp/geopin-bench]

Five folds by photographer (new photographers) and five random folds (archive completion) over the
shared Im2GPS3k photos, all methods on the same EfficientNet-Lite0 embeddings in one run. Prints the
tables and writes bench/results/accuracy.json with plots in bench/results/accuracy/.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.embed import EmbedConfig, embed_manifest, load_embeddings
from geopin.evaluate import EvalConfig, calibration_table, evaluate_cv, methods_table, report_for_json, write_plots
from geopin.ingest import IngestConfig, ingest, read_manifest
from geopin.io import write_json
from geopin.log import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    setup_logging()
    logging.getLogger("geopin.cells").setLevel(logging.WARNING)
    labels = args.shared / "labels.csv"
    if not labels.exists():
        raise SystemExit(f"skipped: {labels} not found (the benchmark needs the shared Im2GPS3k photos)")
    summary = ingest(labels, args.work / "dataset", IngestConfig(group_col="author"))
    embed_manifest(summary.manifest_path, args.work / "emb", EmbedConfig())
    man = read_manifest(summary.manifest_path)
    emb, meta = load_embeddings(args.work / "emb", man)
    ok = np.isfinite(emb).all(axis=1)
    man = man[ok].reset_index(drop=True)
    report = evaluate_cv(
        emb[ok], man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy(), EvalConfig(folds=args.folds, seed=args.seed)
    )
    plots = write_plots(report, args.out / "accuracy")
    doc = report_for_json(report)
    doc["backbone"] = meta.get("version")
    doc["plots"] = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in plots]
    write_json(doc, args.out / "accuracy.json")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        for sc, rep in report["scenarios"].items():
            print(f"\n== {rep['label']}  (n={report['n']}, {args.folds} folds, {rep['seconds']} s)")
            print(methods_table(report, sc).to_string(index=False))
            print("mixing weights (mean over folds):", {k: round(v, 3) for k, v in rep["mix_weights"].items()})
            print(calibration_table(report, sc).to_string(index=False))
            for key, c in rep["calibration"].items():
                tab = pd.DataFrame(c["reliability"])
                print(f"reliability within {key} km:")
                print(tab[tab.n > 0].to_string(index=False))
    print(f"\nwrote {args.out / 'accuracy.json'}")


if __name__ == "__main__":
    main()
