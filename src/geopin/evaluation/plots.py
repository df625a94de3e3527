"""The evaluation's figures: error CDF, true-vs-predicted map and reliability per scenario, and the
embedding similarity against distance. PNGs, each written whole (atomic), for report.html to embed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopin.evaluation.crossval import SCENARIO_LABELS, method_names
from geopin.geo import haversine_km


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Every figure of an `evaluate_cv` report into out_dir (the similarity plot when the report has it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scenario, df in report["per_photo"].items():
        t_lat, t_lon = df.true_lat.to_numpy(), df.true_lon.to_numpy()
        # error CDF of every method
        fig, ax = plt.subplots(figsize=(8, 5))
        for m in method_names(df):
            km = np.sort(haversine_km(df[f"{m}_lat"], df[f"{m}_lon"], t_lat, t_lon))
            ax.plot(np.maximum(km, 0.1), np.arange(1, len(km) + 1) / len(km), label=m, lw=2.2 if m == "model" else 1.1)
        for r in (1, 25, 200, 750, 2500):
            ax.axvline(r, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("error (km, log scale)")
        ax.set_ylabel("share of photos within")
        ax.set_title(f"Error CDF: {SCENARIO_LABELS[scenario]}")
        ax.legend(fontsize=7, loc="upper left")
        paths.append(_save(fig, out_dir / f"error_cdf_{scenario}.png"))
        # world map of true vs predicted, over populated places as the backdrop
        fig, ax = plt.subplots(figsize=(11, 5.5))
        _world_backdrop(ax)
        ax.plot(
            np.stack([t_lon, df.model_lon]), np.stack([t_lat, df.model_lat]), color="tab:red", lw=0.3, alpha=0.25
        )
        ax.scatter(t_lon, t_lat, s=4, c="tab:blue", label="true")
        ax.scatter(df.model_lon, df.model_lat, s=10, c="tab:red", marker="x", label="predicted")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_title(f"True vs predicted: {SCENARIO_LABELS[scenario]}")
        ax.legend(loc="lower left")
        paths.append(_save(fig, out_dir / f"map_{scenario}.png"))
        # reliability diagram of the stated confidences
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        cal = report["scenarios"][scenario]["calibration"]
        for key, c in cal.items():
            tab = pd.DataFrame(c["reliability"])
            tab = tab[tab.n > 0]
            line = ax.plot(tab.mean_prob, tab.hit_rate, lw=1, label=f"within {key} km (ECE {100 * c['ece']:.1f} pts)")
            # marker area shows how many photos stand behind each point: sparse bins are noise
            ax.scatter(tab.mean_prob, tab.hit_rate, s=8 + 400 * tab.n / tab.n.sum(), color=line[0].get_color())
        ax.set_xlabel("stated probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"Reliability: {scenario} (marker area = photos in the bin)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"reliability_{scenario}.png"))
    if report.get("similarity_km"):  # a property of the embeddings, once for all photos
        paths.append(plot_similarity_km(report["similarity_km"], out_dir / "similarity_km.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from geopin.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _world_backdrop(ax) -> None:
    """Populated places from the offline geocoder's data trace the continents without map files."""
    from geopin.countries import populated_places

    p_lat, p_lon = populated_places()
    ax.scatter(p_lon, p_lat, s=0.05, c="lightgrey", rasterized=True)
    ax.set_aspect("equal")


def plot_similarity_km(sim: dict, path: Path) -> Path:
    """Mean similarity with its interval against distance (log km), per series and per embedding set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    runs = [sim] + ([sim["reference"]] if "reference" in sim else [])
    styles = {"different_photographers": ("-", "o"), "all_pairs": ("-", "o"), "same_photographer": ("--", "s")}
    for r_i, r in enumerate(runs):
        color = ("tab:blue", "tab:orange")[r_i]
        for key, s in r["series"].items():
            bins = [b for b in s["bins"] if b["mean"] is not None]
            if not bins:
                continue
            # a bin sits at its geometric middle; the first (from 0 km) at half its upper edge
            x = np.array([np.sqrt(b["lo_km"] * b["hi_km"]) if b["lo_km"] > 0 else b["hi_km"] / 2 for b in bins])
            y = np.array([b["mean"] for b in bins])
            lo = np.array([b["lo"] if b["lo"] is not None else b["mean"] for b in bins])
            hi = np.array([b["hi"] if b["hi"] is not None else b["mean"] for b in bins])
            ls, marker = styles[key]
            name = s["label"] if len(runs) == 1 else f"{r['label']}: {s['label']}"
            ax.errorbar(x, y, yerr=[y - lo, hi - y], color=color, ls=ls, marker=marker, capsize=3, label=name,
                        alpha=1.0 if key != "same_photographer" else 0.7)
    for e in sim["bins_km"][1:-1]:
        ax.axvline(e, color="grey", lw=0.5, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distance between the two photos (km, log scale; points at bin middles)")
    ax.set_ylabel("mean cosine similarity (centred embeddings)")
    unit = "photographers" if sim["unit"] == "photographer" else "photos"
    ax.set_title(f"Do photos near each other look alike? ({100 * sim['level']:.0f} % intervals over {unit})")
    ax.legend(fontsize=8)
    return _save(fig, path)
