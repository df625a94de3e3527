"""Accuracy of the full model beside the classifier, nearest neighbour, prior constant and oracle.

    python bench/bench_accuracy.py [--shared ../shared/data/im2gps3k] [--folds 5] [--work /tmp/geopin-bench]
                                   [--limit N]   # a seeded subset of N photos, for a quick check

Five folds by photographer (new photographers) and five random folds (archive completion) over the
shared Im2GPS3k photos, all methods on the same EfficientNet-Lite0 embeddings in one run. Every
number comes with a 95 % interval over photographers (1000 bootstrap draws of photographers), and
the model's GeoScore gain over the prior and over the best baseline with a paired interval, so that
a small difference is not read as a gain. Prints the tables (and the README's markdown rows) and
writes bench/results/accuracy.json with plots in bench/results/accuracy/.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from geopin.evaluation.crossval import EvalConfig, evaluate_cv
from geopin.evaluation.plots import write_plots
from geopin.evaluation.tables import (
    format_calibration_table,
    format_methods_table,
    paired_lines,
    report_for_json,
)
from geopin.io import write_json
from geopin.log import setup_logging
from shared_photos import shared_embedded

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_accuracy")


def markdown_rows(report: dict, scenario: str) -> list[str]:
    """The README's table for a scenario, intervals over photographers in brackets."""
    header, table = format_methods_table(report, scenario)
    lines = [f"<!-- {header.splitlines()[0].lstrip('= ')} -->", "| " + " | ".join(table.columns) + " |"]
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return lines


def calibration_markdown(report: dict) -> list[str]:
    """ECE in points per scenario and radius, with its interval over photographers."""
    lines = ["| scenario | " + " | ".join(f"{k} km" for k in CALIB_KM) + " |", "|---|" + "---|" * len(CALIB_KM)]
    for sc, rep in report["scenarios"].items():
        cells = []
        for k in CALIB_KM:
            c = rep["calibration"][k]
            iv = c.get("ece_interval")
            cells.append(f"{100 * c['ece']:.1f} pts" + (f" [{100 * iv['lo']:.1f}, {100 * iv['hi']:.1f}]" if iv else ""))
        lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    return lines


CALIB_KM = ("25", "200", "750", "2500")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "im2gps3k")
    ap.add_argument("--work", type=Path, default=Path("/tmp/geopin-bench"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results (with --limit: WORK/results_limitN)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of N photos (default: all)")
    args = ap.parse_args()
    if args.limit is not None and args.limit < 2:
        raise SystemExit(f"--limit {args.limit}: need at least 2 photos")
    if args.out is None:
        # a quick check on a subset must never overwrite the benchmark's results
        args.out = ROOT / "bench" / "results" if args.limit is None else args.work / f"results_limit{args.limit}"
    setup_logging()
    logging.getLogger("geopin.dataset.cells").setLevel(logging.WARNING)
    _, man, emb, meta = shared_embedded(args.shared, args.work, args.limit, args.seed)
    report = evaluate_cv(
        emb, man.lat.to_numpy(), man.lon.to_numpy(), man.group.to_numpy(), EvalConfig(folds=args.folds, seed=args.seed)
    )
    plots = write_plots(report, args.out / "accuracy")
    doc = report_for_json(report)
    doc["backbone"] = meta.get("version")
    doc["limit"] = args.limit
    doc["plots"] = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in plots]
    write_json(doc, args.out / "accuracy.json")
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        for sc, rep in report["scenarios"].items():
            header, table = format_methods_table(report, sc)
            print(f"\n{header}\n   {rep['seconds']} s")
            print(table.to_string(index=False))
            for line in paired_lines(report, sc):
                print(line)
            print("mixing weights (mean over folds):", {k: round(v, 3) for k, v in rep["mix_weights"].items()})
            print(format_calibration_table(report, sc).to_string(index=False))
            for key, c in rep["calibration"].items():
                tab = pd.DataFrame(c["reliability"])
                print(f"reliability within {key} km:")
                print(tab[tab.n > 0].to_string(index=False, float_format="{:.3f}".format))
        for sc, why in report["skipped"].items():
            print(f"\n== {sc}: skipped: {why}")
        print("\nREADME tables (markdown):")
        for sc in report["scenarios"]:
            print("\n".join(markdown_rows(report, sc)) + "\n")
        print("\n".join(calibration_markdown(report)))
    print(f"\nwrote {args.out / 'accuracy.json'}")


if __name__ == "__main__":
    main()
