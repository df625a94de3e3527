"""`geopin serve`: the REST API (and the web page, when installed) on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from geopin.cli._common import input_errors
from geopin.locate.model import ModelError
from geopin.serve.app import ServeConfig, serve


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
) -> None:
    """Serve predictions over HTTP: POST /api/predict, POST /api/explain, GET /api/cells, GET /api/health, /docs.

    Loopback only by default. Exits 2 for a bad setting, a port already in use (checked before the model
    loads) or a missing or damaged model.
    """
    cfg = ServeConfig(model_dir=model, host=host, port=port, token=token, max_upload_mb=max_upload_mb,
                      timeout_s=timeout_s, batch_window_ms=batch_window_ms, max_batch=max_batch)
    with input_errors("serve", ValueError, FileNotFoundError, ModelError):
        cfg.check()
        serve(cfg)
