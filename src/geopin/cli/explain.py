"""`geopin explain` and `geopin characterize`: what in a photo, and in a country's photos, gives the place away."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.dataset.images import ImageError
from geopin.explain.characterize import CharacterizeConfig, characterize
from geopin.explain.maps import explain_with_maps, write_explanation
from geopin.features.embed import load_image
from geopin.locate.predict import PredictConfig, Predictor


def explain_cmd(
    photo: Path = typer.Argument(..., help="The photo to explain."),
    target: str = typer.Option("guess", "--target", "-t", help="guess, a country code (e.g. FR) or a fine cell's S2 token."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for gradcam.png, occlusion.png and explain.json."),
    no_occlusion: bool = typer.Option(False, "--no-occlusion", help="Grad-CAM only (one forward pass instead of ~100)."),
    as_json: bool = typer.Option(False, "--json", help="Print explain.json on stdout."),
) -> None:
    """Grad-CAM and occlusion maps for one photo: which parts point to the guess (or to --target).

    Exits 2 for a photo that cannot be read, a bad target or a damaged model folder.
    """
    with input_errors("explain"):
        predictor = Predictor(PredictConfig(model_dir=model))
        cfg = predictor.embed_cfg
        try:
            img = load_image(photo, cfg.mode, cfg.long_side, predictor.backbone.native_size)
        except ImageError as exc:
            raise ValueError(f"{photo}: not a usable image ({exc.reason}: {exc.detail})") from None
        except IsADirectoryError:
            raise ValueError(f"{photo}: is a folder; explain takes one photo") from None
        except FileNotFoundError:
            raise ValueError(f"{photo}: no such file") from None
        except OSError as exc:
            raise ValueError(f"{photo}: cannot read ({exc.strerror or exc})") from None
        result, maps = explain_with_maps(predictor, img, target, occlusion=not no_occlusion, name=str(photo))
    files = write_explanation(result, maps, out)
    if as_json:
        typer.echo(files["json"].read_text())
        return
    p, t = result["prediction"], result["target"]
    typer.echo(f"{photo}")
    typer.echo(f"  in words     {p['summary']}")
    typer.echo(f"  target       {t['kind']} {t['value']} ({t['lat']:.4f}, {t['lon']:.4f}); "
               f"classifier P = {result['gradcam']['probability']:.1%}")
    for e in p.get("evidence") or []:
        weighed = f"weight {e['weight']:g}" if e["weight"] > 0 else "not weighed"
        typer.echo(f"  evidence     {e['source']}: read \"{e['read']}\" -> {e['points_to']} ({weighed})")
    if result.get("text"):
        typer.echo("  text read    " + "; ".join(f"{i}. {line['text']}" for i, line in enumerate(result["text"]["lines"], 1))
                   + "  (numbered boxes in text.png)")
    occ = result.get("occlusion")
    if occ:
        noise = occ["noise"]["threshold"] * 100
        if occ["crops"]:
            typer.echo(f"  occlusion    {occ['quantity']} = {occ['base']:.1%} (raw posterior mass); hiding these drops it most "
                       f"(drops up to {noise:.2g} points are noise):")
        else:
            typer.echo(f"  occlusion    {occ['quantity']} = {occ['base']:.1%} (raw posterior mass); no region's drop exceeds "
                       f"the noise ({noise:.2g} points)")
        for i, c in enumerate(occ["crops"], 1):
            typer.echo(f"    {i}. box {c['box']}  -{c['drop'] * 100:.1f} points")
    secs = "  ".join(f"{k} {v:.2f}s" for k, v in result["seconds"].items())
    typer.echo(f"  seconds      {secs}")
    typer.echo(f"  wrote        {', '.join(str(f) for f in files.values())}")


def characterize_cmd(
    dataset: Path = typer.Argument(..., help="manifest.parquet (or CSV) with id, path, lat, lon."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <CC>.png contact sheets and index.html."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="`geopin embed` output: picks each country's most typical photos when there are more than --max-photos."),
    min_photos: int = typer.Option(CharacterizeConfig.min_photos, "--min-photos", help="Countries with fewer photos are skipped."),
    crops_per_country: int = typer.Option(CharacterizeConfig.crops_per_country, "--crops-per-country", help="Top crops kept per country."),
    clusters: int = typer.Option(CharacterizeConfig.clusters, "--clusters", help="Kinds of evidence (rows) per contact sheet."),
    max_photos: int = typer.Option(CharacterizeConfig.max_photos, "--max-photos", help="Photos looked at per country (bounds the work)."),
    max_countries: Optional[int] = typer.Option(CharacterizeConfig.max_countries, "--max-countries", help="Only the countries with the most photos."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """For each country with enough photos: the crops that most strongly predict it, clustered, as contact sheets."""
    with input_errors("characterize"):
        cfg = CharacterizeConfig(min_photos=min_photos, crops_per_country=crops_per_country, clusters=clusters,
                                 max_photos=max_photos, max_countries=max_countries)
        summary = characterize(dataset, model, out, embeddings=embeddings, cfg=cfg)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        for c in summary["countries"]:
            typer.echo(f"  {c['country']}  {c['name']:<28} {c['n_used']:>4} photos  best p {c['best_probability']:.0%}  {out / c['png']}")
        for s in summary["skipped"]:
            typer.echo(f"  {s['country']}  skipped: {s['reason']} ({s['n_photos']} photos)")
        typer.echo(f"wrote {summary['index']}")
    if not summary["countries"]:
        typer.echo("geopin characterize: no country had enough readable photos", err=True)
        raise typer.Exit(1)
