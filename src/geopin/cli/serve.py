"""`geopin serve`: the REST API (and the web page, when installed) on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geopin.cli._common import input_errors


def serve_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model folder; default: the bundled model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs a token."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="GEOPIN_TOKEN", show_envvar=True,
        help="Clients must send 'Authorization: Bearer T' (or X-Geopin-Token); required off loopback."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest photo accepted (413 beyond)."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="Per-request time limit, queueing included (504 beyond)."),
) -> None:
    """Serve predictions over HTTP: POST /api/predict, POST /api/explain, GET /api/health, docs at /docs.

    Loopback only by default. Exits 2 for a bad setting or a missing or damaged model.
    """
    from geopin.locate.model import ModelError
    from geopin.serve.app import ServeConfig, serve

    cfg = ServeConfig(model_dir=model, host=host, port=port, token=token, max_upload_mb=max_upload_mb,
                      timeout_s=timeout_s)
    with input_errors("serve", ValueError, FileNotFoundError, ModelError, ImportError):
        cfg.check()
        _need_server_packages()
        serve(cfg)


def _need_server_packages() -> None:
    """Say which optional packages are missing, with the install line, before loading a model."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(f"the server needs {', '.join(missing)}: pip install 'geopin[serve]'")


def register(app: typer.Typer) -> None:
    app.command(name="serve")(serve_cmd)
