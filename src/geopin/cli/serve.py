"""`geopin serve`: the REST API (and the web page, when installed) on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors
from geopin.locate.model import ModelError
from geopin.serve.app import ServeConfig, serve


def serve_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    host: str = typer.Option(ServeConfig.host, "--host", help="Address to listen on; anything but loopback needs a token."),
    port: int = typer.Option(ServeConfig.port, "--port", help="Port to listen on."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="GEOPIN_TOKEN", show_envvar=True,
        help="Clients must send 'Authorization: Bearer T' (or X-Geopin-Token); required off loopback."),
    max_upload_mb: float = typer.Option(ServeConfig.max_upload_mb, "--max-upload-mb", help="Largest photo accepted (413 beyond)."),
    timeout_s: float = typer.Option(ServeConfig.timeout_s, "--timeout-s", help="Per-request time limit, queueing included (504 beyond)."),
) -> None:
    """Serve predictions over HTTP: POST /api/predict, POST /api/explain, GET /api/cells, GET /api/health, /docs.

    Loopback only by default. Exits 2 for a bad setting or a missing or damaged model.
    """
    cfg = ServeConfig(model_dir=model, host=host, port=port, token=token, max_upload_mb=max_upload_mb,
                      timeout_s=timeout_s)
    with input_errors("serve", ValueError, FileNotFoundError, ModelError):
        cfg.check()
        serve(cfg)
