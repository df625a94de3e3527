"""`geopin cells`: adaptive S2 geocells (the model's classes) from a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.cells import CellsConfig, Granularity, run_cells


def cells_cmd(
    manifest: Path = typer.Argument(..., help="Manifest (Parquet or CSV) with id, lat, lon columns."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder for cells.parquet, assignments.parquet, cells.json."
    ),
    granularity: Optional[List[str]] = typer.Option(
        None, "--granularity", "-g",
        help="NAME:MAX:MIN, repeatable (split cells above MAX photos, drop below MIN). "
             "Default: coarse/middle/fine scaled to the number of photos.",
    ),
    start_level: int = typer.Option(CellsConfig.start_level, help="S2 level to start splitting from (0 = the 6 cube faces)."),
    max_level: int = typer.Option(CellsConfig.max_level, help="Finest S2 level; a cell there is kept even above MAX."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the outputs match the manifest and options."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Partition the Earth into cells adapted to where the photos are, at several granularities."""
    with input_errors("cells"):
        grans = tuple(Granularity.parse(g) for g in granularity) if granularity else None
        cfg = CellsConfig(granularities=grans, start_level=start_level, max_level=max_level)
        summary = run_cells(manifest, out, cfg, force=force)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    header = (
        "granularity", "max", "min", "classes", "photos kept", "photos/class min-median-max", "S2 levels", "countries"
    )
    rows = [
        (
            g["name"], str(g["max_photos"]), str(g["min_photos"]), str(g["classes"]),
            f"{g['photos_kept']}/{summary.n_located}",
            f"{g['count_min']}-{g['count_median']:g}-{g['count_max']}",
            f"{g['level_min']}-{g['level_max']}", str(g["countries"]),
        )
        for g in summary.granularities
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    skipped = summary.n_photos - summary.n_located
    lines.append(f"photos: {summary.n_photos}" + (f" ({skipped} without valid lat/lon skipped)" if skipped else ""))
    lines.append(f"output: {summary.out_dir}" + (" (up to date, reused)" if summary.reused else ""))
    typer.echo("\n".join(lines))
