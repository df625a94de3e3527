"""`geopin serve`: the predictor behind a small REST API (and the web page, when installed).

Why it is built this way:
- the model is loaded once, in `create_app`, so a damaged model folder stops the server at start
  with the CLI's message, not at the first request;
- predictions run on ONE model thread, concurrent ones gathered for a few milliseconds into one batch
  (geopin.serve.work.PredictBatcher): on a 2-core machine parallel forward passes only fight over the
  cores, while a batch of B photos costs much less than B passes; the event loop stays free to accept
  and reject uploads; decoding runs in a small pool of its own (Pillow releases the GIL);
- explanations run on a thread of their own, bounded (503 beyond `max_explain_pending`), and yield to
  predictions before every forward pass; one whose client disconnected is stopped at its next pass;
- text is read (OCR, ~0.4 s a photo) only on the photos the model's text gate sends, after their batch, on a
  thread of its own; when `max_read_pending` photos already wait to be read, a photo is answered from its
  pixels at once and its answer says so (`text_read` false, `evidence_error`), rather than every answer
  queueing behind the reader under load;
- `timeout_s` counts from the request's arrival: a body that does not arrive in time is 408, work that
  does not finish in time (queueing included) is 504;
- an upload is counted while it streams in and cut off at the limit (413), so an oversized body never
  sits whole in memory or on disk; its type is judged from its bytes by the same decoder, pixel limit
  and `ImageError` reasons as `geopin predict`, never from its name or Content-Type;
- every error is JSON `{"error": reason_code, "detail": message}`; one bad upload costs one request;
- binding to anything but loopback needs a token, checked on every /api route; the access log never shows
  a `?token=` the page passed in its address;
- a photo the browser cannot show (HEIC/HEIF in Chromium) comes back as a small JPEG from /api/preview,
  decoded like any upload (pillow-heif, EXIF orientation, the one pixel limit);
- /docs and /redoc load their scripts from this server (src/geopin/web/vendor/docs), never from a CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from geopin.dataset.images import PILLOW_MAX_PIXELS, ImageError
from geopin.io import json_default
from geopin.locate.predict import TEXT_MODES, PredictConfig, Predictor
from geopin.serve.schemas import (
    Explanation,
    Health,
    Prediction,
    error_responses,
    image_response,
)
from geopin.serve.work import (
    ExplainCancelled,
    ExplainJob,
    NeedsText,
    PredictBatcher,
    PredictJob,
    hook_forward_passes,
    run_explain_job,
)

log = logging.getLogger(__name__)

#: Where the web page lives (written by the web helper); served at / when index.html is present.
WEB_DIR = Path(__file__).resolve().parents[1] / "web"
#: The environment variable `geopin serve` reads the token from when --token is not given.
TOKEN_ENV = "GEOPIN_TOKEN"
#: Room for the multipart envelope and the small form fields around the photo itself.
MULTIPART_OVERHEAD = 64 * 1024
#: The swagger-ui and redoc files /docs and /redoc load (vendored: they must work offline).
DOCS_ASSETS = WEB_DIR / "vendor" / "docs"

#: Longest side of /api/preview's JPEG by default, and at most (pixels).
PREVIEW_LONG_SIDE = 1024
PREVIEW_MAX_LONG_SIDE = 2048

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
    batch_window_ms: float = 5.0  # how long a prediction waits for others to share its batch
    max_batch: int = 8  # photos per prediction batch
    max_explain_pending: int = 2  # explanations queued or running beyond this get 503
    # Photos waiting for OCR or being read, at which the next one the gate sends is answered unread (its answer
    # says so); None: no bound, every such answer waits for its reading. 4 x ~0.4 s keeps a reading within ~2 s.
    max_read_pending: int | None = 4
    explain_yield_s: float = 1.0  # how long an explanation waits for predictions before each forward pass
    occlusion_max_passes: int | None = None  # forward passes per occlusion map; None: geopin.explain's default
    library: Path | None = None  # `--library DIR`: the review page of `geopin tag` at /library (geopin.serve.library)
    library_options: Any = None  # geopin.serve.library.LibraryOptions; None: its defaults
    text: str = PredictConfig.text  # when photos are read (OCR) for evidence: geopin.locate.predict.TEXT_MODES
    precision: str | None = PredictConfig.precision  # the forward pass: None, the model's own; "int8" (see PredictConfig)

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
        if self.text not in TEXT_MODES:
            raise ValueError(f"--text {self.text!r}: choose one of {', '.join(TEXT_MODES)}")
        if self.precision not in (None, "f32", "int8"):
            raise ValueError(f"--precision {self.precision!r}: choose f32 or int8")
        if not 1 <= self.top_k <= self.max_k:
            raise ValueError(f"top_k {self.top_k}: must be between 1 and {self.max_k}")
        if self.batch_window_ms < 0 or self.max_batch < 1:
            raise ValueError(f"batch window {self.batch_window_ms} ms, max batch {self.max_batch}: "
                             f"the window must be >= 0 and the batch >= 1")
        if self.max_read_pending is not None and self.max_read_pending < 1:
            raise ValueError(f"--max-read-pending {self.max_read_pending}: must be positive (0 on the command line: no bound)")
        if self.max_explain_pending < 1:
            raise ValueError(f"max_explain_pending {self.max_explain_pending}: must be at least 1")


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


class _GuardError(StarletteHTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing passes it on unchanged."""

    error = "bad_request"


class _BodyTooLarge(_GuardError):
    error = "upload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body passed the limit of {limit} bytes while streaming")


class _BodyTimeout(_GuardError):
    error = "upload_timeout"

    def __init__(self, timeout_s: float, seen: int) -> None:
        super().__init__(408, f"the request body did not arrive within the server's limit of {timeout_s:g} s "
                              f"({seen} bytes received); send it faster or raise --timeout-s")


def _body_within(headers: dict[str, str], limit: int) -> bool:
    """A body is coming (chunked, or a Content-Length) and is not announced as over `limit`."""
    length = headers.get("content-length", "").strip()
    if length.isdigit():
        return 0 < int(length) <= limit
    return "chunked" in headers.get("transfer-encoding", "").lower()


#: Where ApiGuard leaves the request's deadline (time.monotonic()) for the handlers, in scope["state"].
DEADLINE_KEY = "geopin_deadline"


class ApiGuard:
    """ASGI middleware for /api: the token check first, then the body cap and the time limit, as it streams in.

    It sits outside FastAPI so that a request without a token never has its body read, and a body
    over the cap is refused (413) at the first chunk past it, whatever the Content-Length said; no
    handler runs. The rest of such a body is read and dropped (never kept) up to `drain_factor` times
    the cap, because common clients send the whole body before reading the answer and would see a
    reset connection instead of the 413; beyond that the connection is simply closed.
    The request's deadline (`timeout_s` from now) covers reading the body: a slow or stalled upload
    gets 408 and its connection closed, instead of holding a connection open for ever. The handlers
    find the same deadline in scope["state"][DEADLINE_KEY].
    """

    def __init__(self, app: Callable, token: str | None, max_body: int, drain_factor: int = 4,
                 timeout_s: float | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.drain_limit = drain_factor * max_body
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        scope["state"] = {**scope.get("state", {}), DEADLINE_KEY: deadline}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and not self._authorized(headers, scope.get("query_string", b"")):
            if _body_within(headers, self.max_body):  # the client may still be sending it: read and drop it first
                with contextlib.suppress(_BodyTimeout):
                    await self._drain(self._timed(receive, deadline), 0, self.max_body)
            await _send_error(send, 401, "unauthorized",
                              "this server needs a token: send 'Authorization: Bearer <token>' "
                              "or 'X-Geopin-Token: <token>'", [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            if int(length) <= self.drain_limit:
                with contextlib.suppress(_BodyTimeout):
                    await self._drain(self._timed(receive, deadline), 0)
            await _send_error(send, 413, "upload_too_large",
                              f"request body of {int(length)} bytes is over the limit of {self.max_body} bytes")
            return
        seen = 0
        started = False
        body_done = False
        timed_receive = self._timed(receive, deadline, lambda: seen)

        async def limited_receive() -> dict:
            nonlocal seen, body_done
            message = await (receive() if body_done else timed_receive())  # after the body: waits for a disconnect
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_body:
                    if message.get("more_body", False):
                        with contextlib.suppress(_BodyTimeout):
                            await self._drain(timed_receive, seen)
                    raise _BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _GuardError as exc:  # raised outside FastAPI's own handlers
            if started:
                raise
            await _send_error(send, exc.status_code, exc.error, str(exc.detail))

    def _timed(self, receive: Callable, deadline: float | None, seen: Callable[[], int] = lambda: 0) -> Callable:
        """`receive` that raises _BodyTimeout once the request's deadline has passed."""
        if deadline is None:
            return receive

        async def timed() -> dict:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                return await asyncio.wait_for(receive(), left)
            except TimeoutError:
                raise _BodyTimeout(self.timeout_s, seen()) from None

        return timed

    async def _drain(self, receive: Callable, seen: int, limit: int | None = None) -> None:
        """Read and drop the rest of the body, up to `limit` (default drain_limit) bytes in all."""
        limit = self.drain_limit if limit is None else limit
        while seen <= limit:
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
    """The shared predictor, the batcher and the three pools; every request goes through here."""

    def __init__(self, cfg: ServeConfig, predictor: Predictor) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopin-model")
        self.explain_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopin-explain")
        # reading text off a photo (OCR, ~0.4 s) runs here, beside the model thread, not in front of it
        self.read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geopin-read")
        self.decode_pool = ThreadPoolExecutor(max_workers=max(1, cfg.decode_workers), thread_name_prefix="geopin-decode")
        self.batcher = PredictBatcher(self._predict_batch, self.model_pool, cfg.batch_window_ms / 1000.0, cfg.max_batch)
        self.pending = 0  # requests in flight (decoding, queued or running)
        self.predictions = 0  # predictions in flight; explanations yield while there are any
        self.predictions_idle = threading.Event()
        self.predictions_idle.set()
        self.explanations = 0  # explanations queued or running (until the worker is done with them)
        self.reading = 0  # photos waiting for OCR or being read
        self.unread_busy = 0  # photos the gate sent that were answered unread because the reader was busy
        #: how explanations ended: finished, stopped midway (client gone or too late), dropped before they started
        self.explain_stats = {"finished": 0, "stopped": 0, "dropped": 0}
        hook_forward_passes(predictor.backbone.model)

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.stop()
        for pool in (self.model_pool, self.explain_pool, self.read_pool, self.decode_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    async def _in(self, pool: ThreadPoolExecutor, deadline: float, fn: Callable, *args: Any) -> Any:
        """fn(*args) in `pool`, given up with 504 at the deadline (a queued job is then never started)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout()
        fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        try:
            return await asyncio.wait_for(fut, remaining)
        except TimeoutError:
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

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 140, 200)).save(buf, format="JPEG")
        data = buf.getvalue()
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.decode_pool, self._decode, data)
        await loop.run_in_executor(self.model_pool, self._predict_batch, [PredictJob(image, data, "warm-up", 1)])
        if self.predictor.reads_text:  # the OCR models, the gazetteer and the language models load once, now
            await loop.run_in_executor(self.model_pool, self.predictor.prepare_text)
            await loop.run_in_executor(self.read_pool, self.predictor.reading_or_none, data, {"path": "warm-up"})
        log.info("model warmed up in %.1f s", time.monotonic() - t0)

    def _predict_batch(self, jobs: list[PredictJob]) -> list[Any]:
        """On the model thread: the photos embedded together, one answer per k; a photo the text gate sends to be
        read gets a NeedsText (its features) instead, answered once read (`_read_and_answer`, on the read thread).
        A result dict, a NeedsText or an ApiError per job, in order."""
        out: list[Any] = [None] * len(jobs)
        for k in sorted({job.k for job in jobs}):
            idx = [i for i, job in enumerate(jobs) if job.k == k]
            try:
                results = self._embed_and_answer([jobs[i] for i in idx], k)
            except Exception as exc:
                if len(idx) == 1:
                    out[idx[0]] = _unexpected("prediction", exc)
                    continue
                results = []
                for i in idx:  # one bad photo must not fail the others of its batch
                    try:
                        results += self._embed_and_answer([jobs[i]], k)
                    except Exception as exc:
                        results.append(_unexpected("prediction", exc))
            for i, res in zip(idx, results):
                out[i] = res
        return out

    def _embed_and_answer(self, jobs: list[PredictJob], k: int) -> list[Any]:
        p = self.predictor
        emb = p.embed([job.image for job in jobs])
        wanted = p.text_wanted(emb)
        out: list[Any] = [NeedsText(emb[i : i + 1]) if wanted[i] else None for i in range(len(jobs))]
        rest = [i for i in range(len(jobs)) if not wanted[i]]
        if rest:
            answers = p.answer(emb[rest], [jobs[i].image for i in rest], [jobs[i].name for i in rest], top_k=k,
                               readings=[None] * len(rest) if p.reads_text else None, wanted=wanted[rest])
            for i, res in zip(rest, answers):
                out[i] = self._finish(jobs[i], res)
        return out

    def _read_and_answer(self, job: PredictJob, pending: NeedsText, busy: str | None = None) -> dict:
        """A photo the text gate sent: read (OCR, ~0.4 s, on the read thread), then answered from the features
        already computed; or, with `busy` (why the reader cannot take it), answered from its pixels, saying so."""
        import numpy as np

        p = self.predictor
        if busy is None:
            reading = p.reading_or_none(job.data, job.row)
        else:
            log.debug("%s: %s", job.name, busy)  # counted in /api/health; under load one line a photo would flood
            job.row["evidence_error"], reading = busy, None
        res = p.answer(pending.emb, [job.image], [job.name], top_k=job.k, readings=[reading],
                       wanted=np.full(1, busy is None))[0]
        return self._finish(job, res)

    @staticmethod
    def _finish(job: PredictJob, res: dict) -> dict:
        from geopin.locate.predict import exif_info, ordered_result

        row = {"path": job.name, **job.row}
        row.update(exif_info(job.data))  # EXIF reading accepts bytes: no temp file needed
        row.update(res)
        return ordered_result(row)

    def _admit(self) -> None:
        if self.pending >= self.cfg.max_pending:
            raise ApiError(503, "busy", f"{self.pending} requests are already waiting; retry shortly",
                           headers={"Retry-After": "1"})

    async def _decode_upload(self, data: bytes, name: str, deadline: float):
        try:
            return await self._in(self.decode_pool, deadline, self._decode, data)
        except ImageError as exc:
            raise _image_error(exc, name) from None

    async def preview(self, data: bytes, name: str, long_side: int, deadline: float) -> bytes:
        """The upload as a JPEG of at most `long_side` pixels a side, upright, for a browser that cannot show
        its format (Chromium and HEIC); decoded in the decode pool, with the pixel limit of every upload."""
        self._admit()
        self.pending += 1
        try:
            return await self._in(self.decode_pool, deadline, preview_jpeg, data, long_side)
        except ImageError as exc:
            raise _image_error(exc, name) from None
        finally:
            self.pending -= 1

    async def predict(self, data: bytes, name: str, k: int, deadline: float) -> dict:
        """Decode the upload, then predict it in the next batch, all before the deadline."""
        self._admit()
        self.pending += 1
        self.predictions += 1
        self.predictions_idle.clear()
        try:
            image = await self._decode_upload(data, name, deadline)
            job = PredictJob(image, data, name, k)
            fut = self.batcher.submit(job)
            try:
                res = await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))  # cancels (drops) the job
            except TimeoutError:
                raise self._timeout() from None
            if isinstance(res, NeedsText):  # the text gate expects text: read it beside the model thread
                limit = self.cfg.max_read_pending
                if limit is not None and self.reading >= limit:
                    self.unread_busy += 1
                    reason = (f"text not read: the server is busy ({self.reading} photos already waiting to be read); "
                              f"ask again later, or run geopin predict")
                    return await self._in(self.decode_pool, deadline, self._read_and_answer, job, res, reason)
                self.reading += 1
                try:
                    res = await self._in(self.read_pool, deadline, self._read_and_answer, job, res)
                finally:
                    self.reading -= 1
            return res
        finally:
            self.pending -= 1
            self.predictions -= 1
            if self.predictions == 0:
                self.predictions_idle.set()

    async def explain(self, request: Request, data: bytes, name: str, work: Callable, deadline: float) -> Any:
        """Decode the upload, then `work(image)` on the explanation thread, yielding to predictions;
        stopped when the client disconnects or the deadline passes."""
        self._admit()
        if self.explanations >= self.cfg.max_explain_pending:
            raise ApiError(503, "busy", f"{self.explanations} explanations are already queued or running; "
                                        f"retry shortly", headers={"Retry-After": "2"})
        self.pending += 1
        self.explanations += 1
        counted = True
        try:
            image = await self._decode_upload(data, name, deadline)
            job = ExplainJob(self.predictions_idle, self.cfg.explain_yield_s)
            loop = asyncio.get_running_loop()
            work_fut = self.explain_pool.submit(run_explain_job, job, lambda: work(image))
            # counted until the worker lets go of it, whether the request is still there or not
            work_fut.add_done_callback(lambda f: _call_soon(loop, self._explain_done, f))
            counted = False
            fut = asyncio.wrap_future(work_fut)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when nobody waits
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.1)
                if done:
                    return fut.result()
                if time.monotonic() > deadline:
                    job.cancel.set()
                    work_fut.cancel()
                    raise self._timeout()
                if await request.is_disconnected():
                    job.cancel.set()
                    work_fut.cancel()  # succeeds only if it has not started: then it never does
                    log.info("%s: explanation stopped, its client disconnected", name)
                    raise _ClientGone()
        finally:
            self.pending -= 1
            if counted:
                self.explanations -= 1

    def _explain_done(self, work_fut) -> None:
        self.explanations -= 1
        if work_fut.cancelled():
            self.explain_stats["dropped"] += 1
        elif isinstance(work_fut.exception(), ExplainCancelled):
            self.explain_stats["stopped"] += 1
        else:
            self.explain_stats["finished"] += 1


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    """fn(*args) on the event loop, from a worker thread; nothing once the server has stopped its loop."""
    with contextlib.suppress(RuntimeError):  # "Event loop is closed"
        loop.call_soon_threadsafe(fn, *args)


class _ClientGone(Exception):
    """The client left before its answer was ready: nothing to send."""


def _image_error(exc: ImageError, name: str) -> ApiError:
    return ApiError(_IMAGE_STATUS.get(exc.reason, 422), exc.reason,
                    f"{name}: not a usable image ({exc.reason}: {_one_pixel_limit(exc.detail)})")


def preview_jpeg(data: bytes, long_side: int = PREVIEW_LONG_SIDE) -> bytes:
    """The photo decoded as geopin decodes any upload (HEIC/HEIF through pillow-heif, EXIF orientation applied,
    the one pixel limit), scaled to at most `long_side` pixels a side, as JPEG bytes; ImageError if unusable."""
    from PIL import Image

    from geopin.dataset.images import decode_rgb

    img = decode_rgb(data, draft=(long_side, long_side))  # a JPEG decodes at a reduced scale: fast on big photos
    img.thumbnail((long_side, long_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


_PILLOW_BOMB = re.compile(r"Image size \((\d+) pixels\) exceeds limit of \d+ pixels.*", re.DOTALL)


def _one_pixel_limit(detail: str) -> str:
    """Pillow refuses headers over twice its own limit with its own figure; say the one limit geopin applies."""
    m = _PILLOW_BOMB.search(detail)
    return detail if m is None else _PILLOW_BOMB.sub(f"{m.group(1)} pixels > {PILLOW_MAX_PIXELS}", detail)


def create_app(cfg: ServeConfig | None = None, predictor: Predictor | None = None):
    """The FastAPI app, with the model loaded now (or `predictor` shared, e.g. between test servers).

    `cfg` None: ServeConfig's defaults (loopback, the bundled model).
    """
    import geopin

    cfg = ServeConfig() if cfg is None else cfg
    if predictor is None:
        predictor = Predictor(PredictConfig(model_dir=cfg.model_dir, top_k=cfg.top_k, text=cfg.text, precision=cfg.precision))
    service = Service(cfg, predictor)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await _warm_up_imports()
        await service.start()
        await service.warm_up()
        yield
        await service.close()

    app = FastAPI(
        title="geopin",
        version=geopin.__version__,
        description="Where on Earth was this photo taken? Upload a photo to /api/predict. Every error is JSON "
                    "`{\"error\": reason_code, \"detail\": message}`."
                    + (" Every /api route needs the token: `Authorization: Bearer <token>`." if cfg.token else ""),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_api_routes(app, service)
    _add_cells_route(app)
    if cfg.library is not None:  # plans the library now (or reads its plan back) before serving anyone
        from geopin.serve.library import add_library_routes

        add_library_routes(app, cfg, predictor)
    _add_docs(app)
    _document_truthfully(app, cfg, explain_targets(predictor))
    _add_web_page(app, cfg.web_dir or WEB_DIR)
    app.add_middleware(ApiGuard, token=cfg.token, max_body=cfg.max_upload_bytes + MULTIPART_OVERHEAD,
                       timeout_s=cfg.timeout_s)
    _hide_tokens_in_access_log()
    return app


def _error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON {"error": reason_code, "detail": message}: ours, FastAPI's and Starlette's, and crashes."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.error, exc.detail)
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, exc: _ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it (nginx's "client closed request")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc or 'request'}: {_token_problem(e) or e.get('msg', 'invalid')}")
        detail = "; ".join(parts) or "invalid request"
        if any(tuple(e.get("loc", ()))[-1:] == ("photo",) for e in exc.errors()):
            detail += " (send the photo as multipart/form-data in the field 'photo')"
        return _error_response(422, "invalid_request", detail)

    def _token_problem(e: dict) -> str | None:
        """For cell tokens that miss the documented pattern: which token, and why (not the pattern itself)."""
        from geopin.serve.geojson import CellTokenError, cell_polygons, split_tokens

        if tuple(e.get("loc", ()))[-1:] != ("tokens",) or e.get("type") != "string_pattern_mismatch":
            return None
        tokens = split_tokens(str(e.get("input", "")))
        if not tokens:
            return "give at least one cell token (tokens=TOKEN,TOKEN,...)"
        try:
            cell_polygons(tokens)
        except CellTokenError as bad:
            return str(bad)
        return None

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 408: "upload_timeout", 413: "upload_too_large"}
        error = getattr(exc, "error", None) or codes.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(getattr(exc, "headers", None) or {})
        if isinstance(exc, _GuardError):
            headers["Connection"] = "close"  # the rest of the body is not read
        return _error_response(exc.status_code, error, str(exc.detail), headers or None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _unexpected(what: str, exc: Exception) -> ApiError:
    """A failure of the model code itself: logged with its traceback, answered 500; the server goes on."""
    log.exception("%s failed", what)
    return ApiError(500, "internal_error", f"{what} failed: {type(exc).__name__}: {exc}")


def _deadline(request: Request, cfg: ServeConfig) -> float:
    """The request's deadline, set by ApiGuard when the request arrived (body reading counts)."""
    return request.scope.get("state", {}).get(DEADLINE_KEY) or time.monotonic() + cfg.timeout_s


def _add_api_routes(app: FastAPI, service: Service) -> None:
    """GET /api/health, POST /api/predict, POST /api/preview and POST /api/explain."""
    import geopin

    cfg = service.cfg
    upload_errors = (400, 408, 413, 415, 422, 500, 503, 504)
    targets = explain_targets(service.predictor)

    async def read_upload(photo: UploadFile) -> tuple[bytes, str]:
        name = os.path.basename(photo.filename or "") or "upload"
        data = await photo.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"{name}: over the limit of {cfg.max_upload_mb:g} MB")
        return data, name

    @app.get("/api/health", response_model=Health, responses=error_responses(500))
    async def health() -> JSONResponse:
        """Is the model loaded, which backbone and how many classes; the geopin version."""
        p = service.predictor
        return JSONResponse({
            "status": "ok",
            "model_loaded": True,
            "backbone": p.embed_cfg.backbone,
            "backbone_version": p.backbone.version,
            "n_classes": [int(n) for n in p.model.heads.classifier.n_classes],
            "granularities": list(p.model.heads.granularities),
            "version": geopin.__version__,
            "explain": _explain_function() is not None,
            "max_upload_mb": cfg.max_upload_mb,
            "text": {"reads": p.reads_text, "mode": p.cfg.text, "gate": p.model.text_gate is not None,
                     "reading": service.reading, "unread_busy": service.unread_busy},
        })

    @app.post("/api/predict", response_model=Prediction, responses=error_responses(*upload_errors))
    async def predict(
        request: Request,
        photo: UploadFile = File(..., description="The photo (any format geopin reads; judged by its bytes). "
                                                  "An empty or truncated file is 422, bytes that are no photo 415."),
        k_form: int | None = Form(None, alias="k", ge=1, le=cfg.max_k, description="How many places to list."),
        k_query: int | None = Query(None, alias="k", ge=1, le=cfg.max_k, description="How many places to list."),
    ) -> JSONResponse:
        """One element of `geopin predict --json`: best guess, most likely place, top-k places, regions,
        within-km confidences, evidence read off the photo, exif_gps."""
        data, name = await read_upload(photo)
        k = k_form if k_form is not None else k_query
        k = cfg.top_k if k is None else k
        return JSONResponse(await service.predict(data, name, k, _deadline(request, cfg)))

    @app.post("/api/preview", response_class=Response, responses={
        **image_response("image/jpeg", "The photo as a JPEG, upright, at most `long_side` pixels a side."),
        **error_responses(*upload_errors)})
    async def preview(
        request: Request,
        photo: UploadFile = File(..., description="The photo (any format geopin reads, HEIC/HEIF included; judged by "
                                                  "its bytes). An empty or truncated file is 422, bytes that are no photo 415."),
        long_side: int = Form(PREVIEW_LONG_SIDE, ge=16, le=PREVIEW_MAX_LONG_SIDE,
                              description="Longest side of the preview in pixels (a smaller photo is not enlarged)."),
    ) -> Response:
        """The uploaded photo as a small JPEG, for a browser that cannot show its format (HEIC/HEIF in Chromium).

        Decoded as /api/predict decodes it (same formats, orientation and pixel limit); nothing is kept."""
        data, name = await read_upload(photo)
        jpeg = await service.preview(data, name, long_side, _deadline(request, cfg))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.post("/api/explain", response_model=Explanation, responses=error_responses(*upload_errors, 501))
    async def explain(
        request: Request,
        photo: UploadFile = File(..., description="The photo (judged by its bytes)."),
        target: str = Form("guess", description="'guess', an ISO country code or an S2 cell token "
                                                "(one that names no place is 422)."),
        occlusion: bool = Form(True, description="Also the occlusion map (slower: tens of forward passes)."),
    ) -> JSONResponse:
        """What in the photo points to the target (Grad-CAM and occlusion overlays as base64 PNG).

        Explanations run one at a time beside predictions, never ahead of them; disconnecting stops one."""
        fn = _explain_function()
        if fn is None:
            raise ApiError(501, "not_implemented", "explanations are not installed in this geopin (no geopin.explain.maps)")
        if target not in targets:
            raise ApiError(422, "invalid_target", f"target {target!r}: not 'guess', one of this model's "
                                                  f"{len(targets.countries)} country codes (e.g. "
                                                  f"{', '.join(targets.countries[:5])}) or of its {len(targets.cells)} "
                                                  f"fine cell tokens; the list is in /openapi.json")
        data, name = await read_upload(photo)
        occlusion_cfg = {}
        if cfg.occlusion_max_passes is not None:
            from geopin.explain.occlusion import OcclusionConfig

            occlusion_cfg = {"occlusion_cfg": OcclusionConfig(max_passes=cfg.occlusion_max_passes)}

        def work(image) -> dict:
            try:
                out = fn(service.predictor, image, target=target, occlusion=occlusion, name=name, **occlusion_cfg)
            except ExplainCancelled:
                raise
            except ValueError as exc:
                if str(exc).startswith("target "):  # a target that names no country or cell
                    raise ApiError(422, "invalid_target", str(exc)) from None
                raise _unexpected("explanation", exc) from None
            except Exception as exc:
                raise _unexpected("explanation", exc) from None
            return {"path": name, **out}

        out = await service.explain(request, data, name, work, _deadline(request, cfg))
        return JSONResponse(json.loads(json.dumps(out, default=json_default)))  # numpy values from the explainer


@dataclass(frozen=True)
class ExplainTargets:
    """What /api/explain can explain with this model: the guess, a country it has places in, one of its fine cells.

    Exactly these strings (case as listed): the OpenAPI document lists them, so the API accepts no other."""

    countries: tuple[str, ...]
    cells: tuple[str, ...]

    def __contains__(self, target: object) -> bool:
        return target == "guess" or target in self.countries or target in self.cells

    def all(self) -> list[str]:
        return ["guess", *self.countries, *self.cells]


def explain_targets(predictor: Predictor) -> ExplainTargets:
    from geopin.explain.target import countries_with_places

    fine = predictor.model.fine_cells
    # a country some place holds training photos of, even where that place's point lies across a border
    countries = tuple(sorted(c for c in countries_with_places(predictor.model) if len(c) == 2 and c.isalpha()))
    return ExplainTargets(countries, tuple(str(t) for t in fine.token))


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the vendored assets, so they render with no network."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    if not (DOCS_ASSETS / "swagger-ui-dist" / "swagger-ui-bundle.js").is_file():
        log.warning("no API docs page: %s is missing (the OpenAPI document is still at /openapi.json)", DOCS_ASSETS)
        return
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-dist/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui-dist/swagger-ui.css",
            swagger_favicon_url="/docs-assets/swagger-ui-dist/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # the validator badge is fetched from swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                              redoc_js_url="/docs-assets/redoc/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/swagger-ui-dist/favicon-32x32.png",
                              with_google_fonts=False)


def _document_truthfully(app: FastAPI, cfg: ServeConfig, targets: ExplainTargets) -> None:
    """The OpenAPI document says what the server does: with a token, every /api route needs HTTP bearer
    auth and may answer 401; FastAPI's default validation-error schema never occurs (ours is {error, detail})."""
    from fastapi.openapi.utils import get_openapi

    from geopin.serve.schemas import ERROR_MEANINGS

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        for name, schema in schemas.items():
            if not name.startswith("Body_"):
                continue
            props = schema.get("properties", {})
            if "photo" in props:  # an empty photo is refused (422 empty_file): say so
                props["photo"]["minLength"] = 1
            if "target" in props:  # the places this model can explain, no others
                props["target"]["enum"] = targets.all()
            for key, prop in props.items():
                props[key] = _not_null(prop)
        for ops in doc["paths"].values():
            for op in ops.values():
                for param in op.get("parameters", []):
                    param["schema"] = _not_null(param["schema"])
        for ops in doc["paths"].values():  # the photo part is an image (its type is judged by its bytes)
            for op in ops.values():
                form = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
                if form is not None:
                    form["encoding"] = {"photo": {"contentType": "image/*"}}
        if cfg.token:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The server's --token (or GEOPIN_TOKEN); also accepted as X-Geopin-Token."}}
            for path, ops in doc["paths"].items():
                if not path.startswith("/api"):
                    continue
                for op in ops.values():
                    op["security"] = [{"bearer": []}]
                    op["responses"]["401"] = {
                        "description": ERROR_MEANINGS[401],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


def _not_null(schema: dict) -> dict:
    """An optional form field or query parameter is left out, never sent as null: `int | None` is an integer
    here (FastAPI writes anyOf [integer, null], and a client sending k=null gets 422)."""
    options = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" not in schema or len(options) != 1:
        return schema
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **options[0]}


_TOKEN_IN_QUERY = re.compile(r"(?<=[?&])(token=)[^&#\s]*", re.IGNORECASE)


class _HideTokens(logging.Filter):
    """Blanks `token=...` in uvicorn's access log lines (the page may carry the token in its address)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_QUERY.sub(r"\1***", record.msg)
        return True


def _hide_tokens_in_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _HideTokens) for f in access.filters):
        access.addFilter(_HideTokens())


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


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use is a ValueError (exit 2) before the model loads."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT of a previous run is no obstacle
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "already in use (another server is listening there)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ValueError(f"--host {host} --port {port}: cannot listen there: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(cfg: ServeConfig) -> None:
    """Check the configuration, take the port, load the model, then serve until interrupted."""
    import uvicorn

    cfg.check()
    sock = bind_socket(cfg.host, cfg.port)
    try:
        app = create_app(cfg)
        port = sock.getsockname()[1]
        log.info("geopin serve: http://%s:%d/ (API docs at /docs)%s", cfg.host, port,
                 "; token required" if cfg.token else "")
        server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=port, log_level="info", timeout_keep_alive=5))
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["TOKEN_ENV", "WEB_DIR", "ApiError", "ApiGuard", "ServeConfig", "bind_socket", "create_app", "is_loopback", "serve"]
