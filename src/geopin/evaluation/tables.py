"""An evaluation report as text: the methods with their intervals, the paired differences, calibration.

The same tables are printed by `geopin evaluate`, written to summary.txt and set in report.html.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geopin.evaluation.similarity import similarity_lines


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _with_interval(est: str, iv: dict | None, fmt) -> str:
    return est if not iv else f"{est} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def scenario_header(report: dict, scenario: str) -> str:
    """What a reader must know before the numbers: how many folds (and why fewer), and what the intervals resample."""
    sc = report["scenarios"][scenario]
    used, asked = sc.get("folds_used", report["folds"]), sc.get("folds_requested", report["folds"])
    folds = f"{used} folds" if used == asked else f"{used} of {asked} folds requested"
    n = sc["methods"]["model"]["n"] if "model" in sc["methods"] else report["n"]
    line = f"== {sc['label']}: {n} photos, {folds}"
    ci = sc.get("intervals")
    if ci:
        over = f"{ci['n_units']} photographers" if ci["unit"] == "photographer" else "photos (photographers unknown)"
        line += f"; [{100 * ci['level']:.0f} % intervals over {over}, {ci['n_boot']} draws]"
    for note in (sc.get("note"), (ci or {}).get("note")):
        if note:
            line += f"\n   note: {note}"
    guard = sc.get("prior_guard") or {}
    if guard.get("folds_reported"):
        line += f"\n   prior guard applied in {guard['folds_applied']} of {guard['folds']} folds"
    return line


def format_methods_table(report: dict, scenario: str) -> tuple[str, pd.DataFrame]:
    """(header, table of text) for people: every method with its interval, e.g. "GeoScore 1036 [998, 1071]"."""
    sc = report["scenarios"][scenario]
    ivs = (sc.get("intervals") or {}).get("methods", {})
    rows = []
    for m, s in sc["methods"].items():
        iv = ivs.get(m, {})
        row = {"method": m}
        for key in s:
            if key.startswith("acc_"):
                row[f"<={key[4:-2]} km"] = _with_interval(_pct(s[key]), iv.get(key), lambda v: f"{100 * v:.1f}")
        row["median km"] = f"{s['median_km']:,.0f}" if s["median_km"] >= 10 else f"{s['median_km']:.2f}"
        row["GeoScore"] = _with_interval(f"{s['geoscore']:.0f}", iv.get("geoscore"), lambda v: f"{v:.0f}")
        row["country"] = _pct(s["country_acc"]) if np.isfinite(s["country_acc"]) else "-"
        rows.append(row)
    return scenario_header(report, scenario), pd.DataFrame(rows)


def paired_lines(report: dict, scenario: str) -> list[str]:
    """The model's GeoScore gain over the prior and over the best baseline, paired over the same draws."""
    sc = report["scenarios"][scenario]
    paired = (sc.get("intervals") or {}).get("paired", {})
    out = []
    for key, p in paired.items():
        if key == "model_minus_best_baseline" and p["baseline"] == paired.get("model_minus_prior_constant", {}).get("baseline"):
            continue  # the prior is the best baseline: said once, on the line above
        best = " (the best baseline)" if p["baseline"] == paired.get("model_minus_best_baseline", {}).get("baseline") else ""
        sure = "" if p["lo"] > 0 or p["hi"] < 0 else "; the interval holds 0: no clear difference"
        out.append(f"model - {p['baseline']}{best}: GeoScore {p['estimate']:+.0f} [{p['lo']:+.0f}, {p['hi']:+.0f}]{sure}")
    return out


def format_calibration_table(report: dict, scenario: str) -> pd.DataFrame:
    """Stated confidence against hit rate per radius, ECE in points with its interval."""
    rows = []
    for key, c in report["scenarios"][scenario]["calibration"].items():
        rows.append({
            "within": f"{key} km",
            "mean conf": _pct(c["mean_confidence"]),
            "hit rate": _pct(c["hit_rate"]),
            "ECE (pts)": _with_interval(f"{100 * c['ece']:.1f}", c.get("ece_interval"), lambda v: f"{100 * v:.1f}"),
            "ECE raw (pts)": f"{100 * c['ece_raw']:.1f}",
            "GAP": f"{c['gap']:.3f}",
        })
    return pd.DataFrame(rows)


def report_for_json(report: dict) -> dict:
    """The report without its per-photo frames (those go to predictions_*.parquet)."""
    return {k: v for k, v in report.items() if k != "per_photo"}


def evaluation_text(report: dict) -> str:
    """The methods, paired-difference and calibration tables of every scenario, as printed."""
    lines = []
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        for sc in report["scenarios"]:
            header, table = format_methods_table(report, sc)
            lines += [f"\n{header}", table.to_string(index=False), *paired_lines(report, sc),
                      format_calibration_table(report, sc).to_string(index=False)]
        for sc, why in report["skipped"].items():
            lines.append(f"\n== {sc}: skipped: {why}")
        if report.get("similarity_km"):
            lines += ["", *similarity_lines(report["similarity_km"])]
    return "\n".join(lines)
