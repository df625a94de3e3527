"""`geopin tag`: place the photos of a library that have no GPS, and write it where photo tools read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.library.tag import TagConfig, apply_plan, plan_entries, plan_library, undo_last, write_reports


def _table(entries: list[dict]) -> str:
    """The dry run in words: one line per photo, the same fields as the JSON."""
    lines = []
    for e in entries:
        if "lat" in e:
            mark = "write" if e["write"] else "hold "
            why = f"  ({e['why_not']})" if e.get("why_not") else ""
            lines.append(f"{mark} {e['rel']}: {e['lat']:.5f} {e['lon']:.5f} within {e['radius_km']:g} km, "
                         f"{e['confidence']:.0%} sure, from {e['source']}{why}")
        else:
            lines.append(f"none  {e['rel']}: {e['reason']}")
    return "\n".join(lines)


def tag_cmd(
    library: Path = typer.Argument(..., help="The library's folder (searched recursively; hidden folders skipped)."),
    gpx: list[Path] = typer.Option([], "--gpx", help="A GPX track (repeat for several)."),
    min_confidence: float = typer.Option(TagConfig.min_confidence, "--min-confidence", help="Write only answers at least this likely to hold the truth within their radius."),
    max_radius_km: float = typer.Option(TagConfig.max_radius_km, "--max-radius-km", help="Write only answers whose radius is at most this many km."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Propose, report (plan.json, tag.csv, tag.geojson in the state folder), write nothing to the photos."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: with --dry-run one entry per photo without GPS ({path, lat, lon, radius_km, confidence, source} or {path, reason}); else the write or undo report."),
    write: str = typer.Option(TagConfig.write, "--write", help="xmp: a sidecar NAME.EXT.xmp beside each photo (darktable, digiKam), merged into an existing one; exif: into the photo itself, after a byte-for-byte backup."),
    undo: bool = typer.Option(False, "--undo", help="Undo the latest write run of this library: every file back to its bytes before it."),
    clock_offset: list[str] = typer.Option([], "--clock-offset", help="CAMERA=±HH:MM:SS: that camera's clock minus local time (repeatable; camera as 'Make Model')."),
    state_dir: Optional[Path] = typer.Option(TagConfig.state_dir, "--state-dir", help="Journal, backups and reports; default LIBRARY/.geopin."),
    visual: bool = typer.Option(TagConfig.visual, "--visual/--no-visual", help="Ask the visual model too (embeds every photo, cached)."),
    model: Optional[Path] = typer.Option(TagConfig.model_dir, "--model", "-m", help="Model folder; default: the bundled model."),
    max_int_secs: float = typer.Option(TagConfig.max_int_s, "--max-int-secs", help="Interpolate between two fixes at most this many seconds apart (exiftool's GeoMaxIntSecs)."),
    max_ext_secs: float = typer.Option(TagConfig.max_ext_s, "--max-ext-secs", help="Else take the nearest fix when at most this many seconds away (exiftool's GeoMaxExtSecs)."),
) -> None:
    """Place every photo of LIBRARY that has no GPS from time, GPX tracks, the library's own geotagged photos
    and the visual model; write the sure answers as XMP sidecars (or into the files), journalled for --undo.

    Never touches a photo that has GPS. Exit 2 on bad input.
    """
    with input_errors("tag", ValueError, FileNotFoundError):
        cfg = TagConfig(gpx=tuple(gpx), min_confidence=min_confidence, max_radius_km=max_radius_km, write=write,
                        clock_offsets=tuple(clock_offset), state_dir=state_dir, visual=visual, model_dir=model,
                        max_int_s=max_int_secs, max_ext_s=max_ext_secs)
        if undo:
            report = undo_last(library, cfg)
            if as_json:
                typer.echo(json.dumps(report, indent=1))
            else:
                typer.echo(report["note"] if report.get("run_id") is None else
                           f"undid run {report['run_id']}: {len(report['restored'])} files restored, "
                           f"{len(report['already'])} already as before, {len(report['refused'])} refused")
                for target, why in report["refused"]:
                    typer.echo(f"  refused {target}: {why}")
            if report["refused"]:
                raise typer.Exit(1)
            return
        plan = plan_library(library, cfg)
        reports = write_reports(plan, cfg)
    entries = plan_entries(plan, cfg)
    if dry_run:
        if as_json:
            typer.echo(json.dumps(entries, indent=1, default=str))
        else:
            typer.echo(_table(entries))
            for c in plan.cameras:
                typer.echo(f"clock {c.get('describe') or c}")
            typer.echo("write: sure enough to be written; hold: proposed, not written (why in brackets); none: no position")
            typer.echo(f"{plan.summary['writable']} of {len(entries)} photos would be written; "
                       f"reports: {', '.join(str(p) for p in reports.values())}")
        return
    report = apply_plan(plan, cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    elif report["run"] is None:
        typer.echo(f"nothing to write: {len(report['not_written'])} photos unplaced or not sure enough "
                   f"(see {reports['csv']})")
    else:
        typer.echo(f"run {report['run']}: {report.get('written', 0)} written, {report.get('unchanged', 0)} unchanged, "
                   f"{len(report['skipped'])} skipped, {len(report['not_written'])} unplaced or not sure enough; "
                   f"undo with: geopin tag {library} --undo")
        for s in report["skipped"]:
            typer.echo(f"  skipped {s['rel']}: {s['reason']}")
