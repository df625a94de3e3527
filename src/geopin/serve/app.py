"""`geopin serve`: the predictor behind a small REST API (and the web page, when installed).

Why it is built this way:
- the model is loaded once, in `create_app`, so a damaged model folder stops the server at start
  with the CLI's message, not at the first request;
- torch runs in ONE worker thread (a single-thread executor): on a 2-core machine parallel forward
  passes only fight over the cores, and the event loop stays free to accept and reject uploads;
  decoding runs in a small pool of its own (Pillow releases the GIL);
- an upload is counted while it streams in and cut off at the limit (413), so an oversized body never
  sits whole in memory or on disk; its type is judged from its bytes by the same decoder, pixel limit
  and `ImageError` reasons as `geopin predict`, never from its name or Content-Type;
- every error is JSON `{"error": reason_code, "detail": message}`; one bad upload costs one request;
- binding to anything but loopback needs a token, checked on every /api route.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from geopin.dataset.images import ImageError
from geopin.io import json_default
from geopin.locate.predict import PredictConfig, Predictor

log = logging.getLogger(__name__)

#: Where the web page lives (written by the web helper); served at / when index.html is present.
WEB_DIR = Path(__file__).resolve().parents[1] / "web"
#: The environment variable `geopin serve` reads the token from when --token is not given.
TOKEN_ENV = "GEOPIN_TOKEN"
#: Room for the multipart envelope and the small form fields around the photo itself.
MULTIPART_OVERHEAD = 64 * 1024

#: HTTP status for each geopin.dataset.images reason: bytes that are no image are the wrong media type, a
#: decompression bomb is too large, a broken or empty photo cannot be processed.
_IMAGE_STATUS = {
    "not_an_image": 415,
    "unsupported_format": 415,
    "decompression_bomb": 413,
    "empty_file": 422,
    "truncated": 422,
    "too_small": 422,
}


@dataclass
class ServeConfig:
    model_dir: Path | None = None  # None: the model bundled with geopin
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required when host is not loopback
    max_upload_mb: float = 20.0
    timeout_s: float = 30.0  # per request, queueing included
    top_k: int = 5  # default k when a request gives none
    max_k: int = 100
    max_pending: int = 64  # requests in flight beyond this get 503 (bounds memory under a flood)
    decode_workers: int = 2
    web_dir: Path | None = None  # None: WEB_DIR

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def check(self) -> None:
        """Raise ValueError naming the setting and the reason for a configuration that must not serve."""
        if self.token is not None and not self.token.strip():
            raise ValueError("--token is empty; give a real token or leave it out")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"refusing to listen on {self.host}: that is reachable from other machines, so a token is "
                f"required (--token T or the {TOKEN_ENV} environment variable); clients then send "
                f"'Authorization: Bearer T'"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: must be between 0 and 65535")
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb {self.max_upload_mb}: must be positive")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout-s {self.timeout_s}: must be positive")
        if not 1 <= self.top_k <= self.max_k:
            raise ValueError(f"top_k {self.top_k}: must be between 1 and {self.max_k}")


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere: treat it as reachable


class ApiError(Exception):
    """An error answer: HTTP status, a stable reason code and a message for people."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


async def _send_error(send: Callable, status: int, error: str, detail: str,
                      extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` past the cap; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body passed the limit of {limit} bytes while streaming")


class ApiGuard:
    """ASGI middleware for /api: the token check first, then the body cap, counted as it streams in.

    It sits outside FastAPI so that a request without a token never has its body read, and a body
    over the cap is refused (413) at the first chunk past it, whatever the Content-Length said; no
    handler runs. The rest of such a body is read and dropped (never kept) up to `drain_factor` times
    the cap, because common clients send the whole body before reading the answer and would see a
    reset connection instead of the 413; beyond that the connection is simply closed.
    """

    def __init__(self, app: Callable, token: str | None, max_body: int, drain_factor: int = 4) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.drain_limit = drain_factor * max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and not self._authorized(headers, scope.get("query_string", b"")):
            await _send_error(send, 401, "unauthorized",
                              "this server needs a token: send 'Authorization: Bearer <token>' "
                              "or 'X-Geopin-Token: <token>'", [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            if int(length) <= self.drain_limit:
                await self._drain(receive, 0)
            await _send_error(send, 413, "upload_too_large",
                              f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes")
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    if message.get("more_body", False):
                        await self._drain(receive, seen)
                    raise _BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge as exc:  # raised outside FastAPI's own handlers
            if started:
                raise
            await _send_error(send, 413, "upload_too_large", str(exc.detail))

    async def _drain(self, receive: Callable, seen: int) -> None:
        """Read and drop the rest of the body, up to drain_limit bytes in all."""
        while seen <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _authorized(self, headers: dict[str, str], query_string: bytes) -> bool:
        from urllib.parse import parse_qs

        offered = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        if "x-geopin-token" in headers:
            offered.append(headers["x-geopin-token"].strip())
        # the web page may carry ?token= from its own address; accepted, but headers are preferred
        offered += parse_qs(query_string.decode("latin-1")).get("token", [])
        want = self.token.encode()
        return any(hmac.compare_digest(o.encode(), want) for o in offered)


class Service:
    """The shared predictor and the two executors; every request goes through here."""

    def __init__(self, cfg: ServeConfig, predictor: Predictor) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopin-model")
        self.decode_pool = ThreadPoolExecutor(max_workers=max(1, cfg.decode_workers), thread_name_prefix="geopin-decode")
        self.pending = 0

    def close(self) -> None:
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    async def _in(self, pool: ThreadPoolExecutor, deadline: float, fn: Callable, *args: Any) -> Any:
        """fn(*args) in `pool`, given up with 504 at the deadline (a queued job is then never started)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout()
        fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        try:
            return await asyncio.wait_for(fut, remaining)
        except asyncio.TimeoutError:
            raise self._timeout() from None

    def _timeout(self) -> ApiError:
        return ApiError(504, "timeout", f"the request took longer than the server's limit of {self.cfg.timeout_s:g} s "
                                        f"(the server may be busy; retry later or raise --timeout-s)")

    def _decode(self, data: bytes):
        from geopin.features.embed import load_image

        p = self.predictor
        return load_image(data, p.embed_cfg.mode, p.embed_cfg.long_side, p.backbone.native_size)

    async def warm_up(self) -> None:
        """One prediction on a generated photo before the server accepts anyone, on the same threads as
        a request: what a first prediction imports and builds (country tables, the places' score
        matrix) is then neither paid by the first user nor compiled inside a request (_warm_up_imports)."""
        from PIL import Image

        from geopin.locate.predict import exif_info

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 140, 200)).save(buf, format="JPEG")
        data = buf.getvalue()
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.decode_pool, self._decode, data)
        await loop.run_in_executor(self.model_pool, lambda: (self.predictor.predict_images([image], ["warm-up"]), exif_info(data)))
        if self.predictor.reads_text:  # the OCR models, the gazetteer and the language models load once, now
            await loop.run_in_executor(self.model_pool, self.predictor.prepare_text)
        log.info("model warmed up in %.1f s", time.monotonic() - t0)

    async def run(self, data: bytes, name: str, work: Callable) -> Any:
        """Decode the upload, then run `work(image)` on the model thread, all within the timeout."""
        if self.pending >= self.cfg.max_pending:
            raise ApiError(503, "busy", f"{self.pending} requests are already waiting; retry shortly",
                           headers={"Retry-After": "1"})
        self.pending += 1
        deadline = time.monotonic() + self.cfg.timeout_s
        try:
            try:
                image = await self._in(self.decode_pool, deadline, self._decode, data)
            except ImageError as exc:
                raise ApiError(_IMAGE_STATUS.get(exc.reason, 422), exc.reason,
                               f"{name}: not a usable image ({exc.reason}: {exc.detail})") from None
            return await self._in(self.model_pool, deadline, work, image)
        finally:
            self.pending -= 1


def create_app(cfg: ServeConfig | None = None, predictor: Predictor | None = None):
    """The FastAPI app, with the model loaded now (or `predictor` shared, e.g. between test servers).

    `cfg` None: ServeConfig's defaults (loopback, the bundled model).
    """
    import geopin

    cfg = ServeConfig() if cfg is None else cfg
    if predictor is None:
        predictor = Predictor(PredictConfig(model_dir=cfg.model_dir, top_k=cfg.top_k))
    service = Service(cfg, predictor)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await _warm_up_imports()
        await service.warm_up()
        yield
        service.close()

    app = FastAPI(
        title="geopin",
        version=geopin.__version__,
        description="Where on Earth was this photo taken? Upload a photo to /api/predict.",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_api_routes(app, service)
    _add_cells_route(app)
    _add_web_page(app, cfg.web_dir or WEB_DIR)
    app.add_middleware(ApiGuard, token=cfg.token, max_body=cfg.max_upload_bytes + MULTIPART_OVERHEAD)
    return app


def _error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON {"error": reason_code, "detail": message}: ours, FastAPI's and Starlette's, and crashes."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.error, exc.detail)
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
        detail = "; ".join(parts) or "invalid request"
        if any(tuple(e.get("loc", ()))[-1:] == ("photo",) for e in exc.errors()):
            detail += " (send the photo as multipart/form-data in the field 'photo')"
        return _error_response(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "upload_too_large"}
        return _error_response(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail),
                               getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _unexpected(what: str, exc: Exception) -> ApiError:
    """A failure of the model code itself: logged with its traceback, answered 500; the server goes on."""
    log.exception("%s failed", what)
    return ApiError(500, "internal_error", f"{what} failed: {type(exc).__name__}: {exc}")


def _add_api_routes(app: FastAPI, service: Service) -> None:
    """GET /api/health, POST /api/predict and POST /api/explain."""
    import geopin

    cfg = service.cfg

    async def read_upload(photo: UploadFile) -> tuple[bytes, str]:
        name = os.path.basename(photo.filename or "") or "upload"
        data = await photo.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"{name}: over the limit of {cfg.max_upload_mb:g} MB")
        return data, name

    @app.get("/api/health")
    async def health() -> dict:
        """Is the model loaded, which backbone and how many classes; the geopin version."""
        p = service.predictor
        return {
            "status": "ok",
            "model_loaded": True,
            "backbone": p.embed_cfg.backbone,
            "backbone_version": p.backbone.version,
            "n_classes": [int(n) for n in p.model.heads.classifier.n_classes],
            "granularities": list(p.model.heads.granularities),
            "version": geopin.__version__,
            "explain": _explain_function() is not None,
            "max_upload_mb": cfg.max_upload_mb,
        }

    @app.post("/api/predict")
    async def predict(
        photo: UploadFile = File(..., description="The photo (any format geopin reads; judged by its bytes)."),
        k_form: int | None = Form(None, alias="k", ge=1, le=cfg.max_k, description="How many places to list."),
        k_query: int | None = Query(None, alias="k", ge=1, le=cfg.max_k),
    ) -> JSONResponse:
        """One element of `geopin predict --json`: best guess, top-k places, within-km confidences, exif_gps."""
        from geopin.locate.predict import exif_info, ordered_result

        data, name = await read_upload(photo)
        k = k_form if k_form is not None else k_query
        k = cfg.top_k if k is None else k

        def work(image) -> dict:
            row: dict = {"path": name}
            reading = service.predictor.reading_or_none(data, row) if service.predictor.reads_text else None
            try:
                res = service.predictor.predict_images([image], [name], top_k=k, readings=None if reading is None else [reading])[0]
            except Exception as exc:  # noqa: BLE001 - one request fails with 500, the server goes on
                raise _unexpected("prediction", exc) from None
            row.update(exif_info(data))  # EXIF reading accepts bytes: no temp file needed
            row.update(res)
            return ordered_result(row)

        return JSONResponse(await service.run(data, name, work))

    @app.post("/api/explain")
    async def explain(
        photo: UploadFile = File(...),
        target: str = Form("guess", description="'guess', an ISO country code or an S2 cell token."),
        occlusion: bool = Form(True, description="Also the occlusion map (slower: tens of forward passes)."),
    ) -> JSONResponse:
        """What in the photo points to the target (Grad-CAM and occlusion overlays as base64 PNG)."""
        fn = _explain_function()
        if fn is None:
            raise ApiError(501, "not_implemented", "explanations are not installed in this geopin (no geopin.explain.maps)")
        data, name = await read_upload(photo)

        def work(image) -> dict:
            try:
                out = fn(service.predictor, image, target=target, occlusion=occlusion, name=name)
            except ValueError as exc:  # a target that names no country or cell
                raise ApiError(422, "invalid_target", str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - one request fails with 500, the server goes on
                raise _unexpected("explanation", exc) from None
            return {"path": name, **out}

        out = await service.run(data, name, work)
        return JSONResponse(json.loads(json.dumps(out, default=json_default)))  # numpy values from the explainer


def _add_cells_route(app: FastAPI) -> None:
    """GET /api/cells (cell polygons for the page's map), under /api: the ApiGuard token check covers it."""
    try:
        from geopin.serve.geojson import router as geojson_router
    except ModuleNotFoundError as exc:
        if exc.name != "geopin.serve.geojson":
            raise  # an import failing inside our own module is a bug, not a missing feature
        log.info("no cell polygons endpoint (geopin.serve.geojson: %s)", exc)
    else:
        app.include_router(geojson_router)


def _add_web_page(app: FastAPI, web_dir: Path) -> None:
    """The map page at / when it is installed; else a JSON 404 that says where the API is."""
    if (web_dir / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        # the page is the router's fallback, not a mount at "/": a mount matches every path, so a wrong
        # method on an API route would get the page's 404 instead of 405
        app.router.default = StaticFiles(directory=web_dir, html=True)
    else:
        @app.get("/", include_in_schema=False)
        async def no_page() -> JSONResponse:
            return _error_response(404, "not_found", f"the web page is not installed ({web_dir / 'index.html'} "
                                                     f"missing); the API is at /api and described at /docs")


async def _warm_up_imports() -> None:
    """Import at start-up what a first request would import: anyio loads its API and its event-loop
    backend lazily (the page's file response, the worker threads). An import inside a request may
    compile a module on the server's thread while another thread compiles; under pytest that hit
    CPython 3.11's parser race once in CI ("SystemError: AST constructor recursion depth mismatch")
    and the page request was cut off. Start-up runs before the server accepts anyone.
    """
    import anyio
    import anyio.to_thread

    for name in dir(anyio):
        with contextlib.suppress(ImportError, AttributeError):
            getattr(anyio, name)
    _explain_function()  # geopin.explain.maps and torch's autograd parts, where installed
    await anyio.to_thread.run_sync(lambda: None)  # loads the asyncio backend and its thread pool


def _explain_function() -> Callable | None:
    """geopin.explain.maps.explain_photo when that module is installed, else None (the API answers 501).

    Only the module's own absence means "not installed": an import failing inside it is a bug, and is raised.
    """
    try:
        from geopin.explain.maps import explain_photo
    except ModuleNotFoundError as exc:
        if exc.name not in ("geopin.explain", "geopin.explain.maps"):
            raise
        return None
    return explain_photo


def serve(cfg: ServeConfig) -> None:
    """Check the configuration, load the model, then serve until interrupted."""
    import uvicorn

    cfg.check()
    app = create_app(cfg)
    log.info("geopin serve: http://%s:%d/ (API docs at /docs)%s", cfg.host, cfg.port,
             "; token required" if cfg.token else "")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_keep_alive=5)


__all__ = ["ServeConfig", "ApiError", "ApiGuard", "create_app", "serve", "is_loopback", "TOKEN_ENV", "WEB_DIR"]
