"""`geopin serve`: the REST API (and the web page, when installed) on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from geopin.cli._common import input_errors
from geopin.library.tag import TagConfig
from geopin.locate.model import ModelError
from geopin.locate.predict import PRECISION_HELP, TEXT_HELP
from geopin.serve.app import ServeConfig, serve
from geopin.serve.library import LibraryOptions


def serve_cmd(
    model: Path | None = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    host: str = typer.Option(ServeConfig.host, "--host", help="Address to listen on; anything but loopback needs a token."),
    port: int = typer.Option(ServeConfig.port, "--port", help="Port to listen on."),
    token: str | None = typer.Option(
        None, "--token", envvar="GEOPIN_TOKEN", show_envvar=True,
        help="Clients must send 'Authorization: Bearer T' (or X-Geopin-Token); required off loopback."),
    max_upload_mb: float = typer.Option(ServeConfig.max_upload_mb, "--max-upload-mb", help="Largest photo accepted (413 beyond)."),
    timeout_s: float = typer.Option(
        ServeConfig.timeout_s, "--timeout-s",
        help="Per-request time limit from arrival: reading the upload (408 beyond) and the work, queueing included (504 beyond)."),
    batch_window_ms: float = typer.Option(
        ServeConfig.batch_window_ms, "--batch-window-ms",
        help="How long a prediction waits for concurrent ones to share its forward pass (0: no waiting)."),
    max_batch: int = typer.Option(ServeConfig.max_batch, "--max-batch", help="Most photos predicted in one batch."),
    text: str = typer.Option(ServeConfig.text, "--text", help=TEXT_HELP),
    precision: str | None = typer.Option(ServeConfig.precision, "--precision", help=PRECISION_HELP),
    max_read_pending: int | None = typer.Option(
        ServeConfig.max_read_pending, "--max-read-pending",
        help="Photos waiting to be read (OCR) at which the next one is answered from its pixels, its answer saying so; "
             "0: no bound (every answer waits for its reading)."),
    library: Path | None = typer.Option(
        None, "--library", help="Review `geopin tag`'s proposals for this photo library on the map at /library: "
                                "accept, reject or drag photos and groups, then write (journalled; undo on the page "
                                "or with geopin tag --undo). Uses LIBRARY/.geopin/plan.json when there, else plans now."),
    replan: bool = typer.Option(LibraryOptions.replan, "--replan",
                                help="With --library: plan again even when the library has a plan.json."),
    write: str = typer.Option(TagConfig.write, "--write",
                              help="With --library: xmp (a sidecar NAME.EXT.xmp per photo) or exif (into the photo, after a backup)."),
    min_confidence: float = typer.Option(TagConfig.min_confidence, "--min-confidence",
                                         help="With --library: which unreviewed proposals count as sure enough."),
    max_radius_km: float = typer.Option(TagConfig.max_radius_km, "--max-radius-km",
                                        help="With --library: the largest radius a sure proposal may have."),
    gpx: list[Path] = typer.Option([], "--gpx", help="With --library: a GPX track for planning (repeat for several)."),
    clock_offset: list[str] = typer.Option([], "--clock-offset",
                                           help="With --library: CAMERA=±HH:MM:SS, that camera's clock minus local time."),
    state_dir: Path | None = typer.Option(TagConfig.state_dir, "--state-dir",
                                          help="With --library: journal, backups, plan and decisions; default LIBRARY/.geopin."),
) -> None:
    """Serve predictions over HTTP: POST /api/predict, POST /api/explain, GET /api/cells, GET /api/health, /docs;
    with --library, the review page of `geopin tag` at /library and its API under /api/library.

    Loopback only by default. Exits 2 for a bad setting, a port already in use (checked before the model
    loads) or a missing or damaged model.
    """
    with input_errors("serve", ValueError, FileNotFoundError, ModelError):
        options = None
        if library is not None:
            if not library.is_dir():  # before the model loads
                raise FileNotFoundError(f"--library {library}: no such folder (give the photo library's folder)")
            tag = TagConfig(gpx=tuple(gpx), min_confidence=min_confidence, max_radius_km=max_radius_km, write=write,
                            clock_offsets=tuple(clock_offset), state_dir=state_dir, model_dir=model)
            options = LibraryOptions(tag=tag, replan=replan)
        cfg = ServeConfig(model_dir=model, host=host, port=port, token=token, max_upload_mb=max_upload_mb,
                          timeout_s=timeout_s, batch_window_ms=batch_window_ms, max_batch=max_batch,
                          library=library, library_options=options, text=text, precision=precision,
                          max_read_pending=None if max_read_pending == 0 else max_read_pending)
        cfg.check()
        serve(cfg)
