"""`geopin split`: folds or a train/validation split, by photographer or at random."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.splits import SplitConfig, run_split


def split_cmd(
    manifest: Path = typer.Argument(..., help="Manifest (Parquet or CSV) with id and, for --by group, group."),
    out: Path = typer.Option(..., "--out", "-o", help="Output Parquet: id plus fold (with --k) or split (train/val)."),
    by: str = typer.Option(SplitConfig.by, "--by", help="'group': no photographer on both sides (new photographers); "
                                                  "'random': archive completion."),
    k: Optional[int] = typer.Option(None, "--k", help=f"Number of folds (default {SplitConfig.k} unless --val-fraction is given)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="One train/val split with about this "
                                                                              "share of photos in validation."),
    seed: int = typer.Option(SplitConfig.seed, "--seed", help="Seed; the same seed and manifest give the same split."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Assign every photo to a fold or to train/val, deterministically by seed."""
    with input_errors("split"):
        if k is not None and val_fraction is not None:
            raise ValueError("give --k or --val-fraction, not both")
        cfg = SplitConfig(by=by, k=None if val_fraction is not None else (k or SplitConfig.k), val_fraction=val_fraction, seed=seed)
        summary = run_split(manifest, out, cfg)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    sizes = ", ".join(f"{name}: {n}" for name, n in summary.sizes.items())
    typer.echo(
        f"{summary.n_photos} photos, {summary.n_groups} {'groups' if summary.by == 'group' else 'photos as groups'}, "
        f"by {summary.by}, seed {summary.seed}\n{summary.column} sizes: {sizes}\noutput: {summary.out}"
    )
