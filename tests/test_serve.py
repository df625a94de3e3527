"""`geopin serve` against REAL uvicorn servers on 127.0.0.1, spoken to over HTTP with httpx.

One Predictor (the bundled model) is loaded per module and shared by three servers: an open one with
a 1 MB upload limit, one that needs a token, and one whose time limit no request can meet. After
every bad upload the open server must still answer /api/health.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install 'geopin[serve]'")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from imagefiles import png_header_only  # noqa: E402
from servers import RunningServer  # noqa: E402
from test_predict import geopin, save_jpeg, scene  # noqa: E402

from imagefiles import gps_exif_bytes  # noqa: E402
from geopin.serve.app import WEB_DIR, ServeConfig, create_app, is_loopback  # noqa: E402

TOKEN = "s3cret-token"
LIMIT_MB = 1.0


@pytest.fixture(scope="module")
def server(predictor):
    # no bound on the reader: concurrent photos the text gate sends are all read, so they answer as alone
    # (answering from the pixels when the reader is busy is tests/test_text_gate.py's)
    s = RunningServer(create_app(ServeConfig(max_upload_mb=LIMIT_MB, max_read_pending=None), predictor))
    yield s
    s.close()


@pytest.fixture(scope="module")
def token_server(predictor):
    """Bound to loopback but configured with a token: every /api route must then ask for it."""
    s = RunningServer(create_app(ServeConfig(token=TOKEN), predictor))
    yield s
    s.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A generated street-like JPEG that carries a GPS position in its EXIF."""
    return save_jpeg(scene(7), tmp_path_factory.mktemp("serve") / "street.jpg", exif=gps_exif_bytes(48.8584, 2.2945))


def jpeg_bytes(seed: int = 3) -> bytes:
    buf = io.BytesIO()
    scene(seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def assert_error(resp, status: int, error: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def assert_healthy(server: RunningServer) -> None:
    r = server.client.get("/api/health")
    assert r.status_code == 200 and r.json()["model_loaded"] is True


def approx_tree(a, b) -> None:
    """Equal JSON trees, floats to 1e-9 relative (the CLI runs in another process)."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            approx_tree(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            approx_tree(x, y)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12)
    else:
        assert a == b


# --------------------------------------------------------------------------------- good photos


def test_predict_gives_the_same_json_as_the_cli(server, photo, tmp_path):
    with photo.open("rb") as fh:
        r = server.client.post("/api/predict", files={"photo": ("street.jpg", fh, "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    got = r.json()
    cli = geopin("predict", str(photo), "--json", "--top-k", "3", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)[0]
    assert got["path"] == "street.jpg"
    got["path"] = want["path"]
    approx_tree(want, got)
    assert len(got["top_k"]) == 3
    assert got["exif_gps"] == pytest.approx({"lat": 48.8584, "lon": 2.2945}, abs=1e-4)


def test_k_from_the_query_and_its_bounds(server):
    data = jpeg_bytes()
    r = server.client.post("/api/predict?k=2", files={"photo": ("a.jpg", data)})
    assert r.status_code == 200 and len(r.json()["top_k"]) == 2
    assert r.json()["exif_gps"] is None
    for bad in ("0", "abc", "1000"):
        assert_error(server.client.post("/api/predict", files={"photo": ("a.jpg", data)}, data={"k": bad}),
                     422, "invalid_request")


def test_type_is_judged_by_content_not_by_name(server):
    """A PNG named .txt and sent as text/plain is a photo; text named .jpg sent as image/jpeg is not."""
    buf = io.BytesIO()
    scene(5).save(buf, format="PNG")
    r = server.client.post("/api/predict", files={"photo": ("notes.txt", buf.getvalue(), "text/plain")})
    assert r.status_code == 200, r.text
    body = assert_error(server.client.post("/api/predict", files={"photo": ("x.jpg", b"hello, world\n" * 50, "image/jpeg")}),
                        415, "not_an_image")
    assert "x.jpg" in body["detail"]
    assert_healthy(server)


def same_answer(a: dict, b: dict) -> None:
    """The same answer: every place, token, name and key alike; probabilities to 1e-6 relative (a batch's
    posterior is one matrix product, whose float32 rounding depends on how many photos share it)."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same_answer(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_answer(x, y)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9)
    else:
        assert a == b


def test_concurrent_requests_share_one_model(server):
    from concurrent.futures import ThreadPoolExecutor

    data = jpeg_bytes(11)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: server.client.post("/api/predict", files={"photo": ("c.jpg", data)}), range(6)))
    assert [r.status_code for r in results] == [200] * 6
    for r in results[1:]:  # same photo, same answer
        same_answer(results[0].json(), r.json())


def test_concurrent_predictions_are_batched_and_answer_as_alone(predictor):
    """Photos sent together run as one batch and each gets the answer it gets when sent alone (the photos the
    text gate sends are read after the batch, all of them: no bound on the reader); different k in one batch
    each get their own k. The window is long so that six uploads decoded on a busy machine still meet."""
    from concurrent.futures import ThreadPoolExecutor

    s = RunningServer(create_app(ServeConfig(batch_window_ms=3000, max_batch=8, max_read_pending=None), predictor))
    try:
        photos = [(f"p{i}.jpg", jpeg_bytes(20 + i), 2 + i % 2) for i in range(6)]
        alone = [s.client.post("/api/predict", files={"photo": (n, d)}, data={"k": str(k)}).json() for n, d, k in photos]
        service = s.app.state.service
        service.batcher.batch_sizes.clear()
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda p: s.client.post("/api/predict", files={"photo": (p[0], p[1])},
                                                             data={"k": str(p[2])}), photos))
        assert [r.status_code for r in together] == [200] * 6
        assert max(service.batcher.batch_sizes) >= 3, service.batcher.batch_sizes
        for a, r in zip(alone, together):
            same_answer(a, r.json())
            assert len(r.json()["top_k"]) == len(a["top_k"])
    finally:
        s.close()


# --------------------------------------------------------------------------------- bad uploads


def multipart(field: str, filename: str, payload: bytes, boundary: str = "geopinboundary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()


BAD_UPLOADS = {
    # name: (files, status, error)
    "truncated_jpeg": (lambda: {"photo": ("cut.jpg", jpeg_bytes()[:2000])}, 422, "truncated"),
    "empty_file": (lambda: {"photo": ("empty.jpg", b"")}, 422, "empty_file"),
    "bomb_header_png": (lambda: {"photo": ("bomb.png", png_header_only(20000, 20000))}, 413, "decompression_bomb"),
    "wrong_field_name": (lambda: {"image": ("a.jpg", jpeg_bytes())}, 422, "invalid_request"),
    "over_the_limit": (lambda: {"photo": ("huge.jpg", b"\xff\xd8" + b"\0" * int(1.5 * LIMIT_MB * 2**20))}, 413,
                       "upload_too_large"),
    "just_over_the_limit": (lambda: {"photo": ("big.jpg", b"\0" * (int(LIMIT_MB * 2**20) + 1))}, 413,
                            "upload_too_large"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_json_error_and_the_server_goes_on(server, case):
    files, status, error = BAD_UPLOADS[case]
    body = assert_error(server.client.post("/api/predict", files=files()), status, error)
    if case == "wrong_field_name":
        assert "photo" in body["detail"]
    assert_healthy(server)


def test_no_body_at_all(server):
    assert_error(server.client.post("/api/predict"), 422, "invalid_request")
    assert_healthy(server)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content_length"])
def test_oversized_body_gets_413_not_a_reset_connection(server, chunked):
    """httpx, like most clients, sends the whole body before it reads the answer: it must still see the 413.

    Chunked: no Content-Length to judge by, so the body is counted as it arrives and refused past the
    limit; with a Content-Length the request is refused before any handler runs.
    """
    payload = multipart("photo", "stream.jpg", b"\0" * int(4 * LIMIT_MB * 2**20))  # within the drain limit
    content = (payload[i : i + 64 * 1024] for i in range(0, len(payload), 64 * 1024)) if chunked else payload
    r = server.client.post("/api/predict", content=content,
                           headers={"content-type": "multipart/form-data; boundary=geopinboundary"})
    body = assert_error(r, 413, "upload_too_large")
    assert ("while streaming" in body["detail"]) == chunked
    assert_healthy(server)


def test_unknown_route_and_method_are_json(server):
    assert_error(server.client.get("/api/nothing-here"), 404, "not_found")
    assert_error(server.client.get("/api/predict"), 405, "method_not_allowed")


def test_openapi_describes_the_api(server):
    spec = server.client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain", "/api/health"} <= set(spec["paths"])


def test_health(server, predictor):
    h = server.client.get("/api/health").json()
    assert h["backbone"] == predictor.embed_cfg.backbone
    assert h["n_classes"] == [int(n) for n in predictor.model.heads.classifier.n_classes]
    assert h["version"]


# --------------------------------------------------------------------------------- timeout


def test_request_over_the_time_limit_is_504(predictor):
    """Queueing counts: with the model thread busy longer than the limit, a prediction gets 504."""
    s = RunningServer(create_app(ServeConfig(timeout_s=0.5), predictor))
    try:
        s.app.state.service.model_pool.submit(time.sleep, 1.5)  # the model thread is taken for 1.5 s
        t0 = time.monotonic()
        assert_error(s.client.post("/api/predict", files={"photo": ("a.jpg", jpeg_bytes())}), 504, "timeout")
        assert time.monotonic() - t0 < 1.4
        time.sleep(1.2)
        assert_healthy(s)
    finally:
        s.close()


def test_half_sent_upload_times_out_with_408(predictor):
    """--timeout-s covers reading the body: a client that sends half its photo and stalls gets 408, and
    its connection is closed, instead of holding it for ever."""
    s = RunningServer(create_app(ServeConfig(timeout_s=1.0), predictor))
    try:
        body = multipart("photo", "slow.jpg", jpeg_bytes())
        head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary=geopinboundary\r\n\r\n").encode()
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            t0 = time.monotonic()
            conn.sendall(head + body[: len(body) // 2])  # ... and nothing more
            answer = b""
            while chunk := conn.recv(65536):  # the server closes the connection after its answer
                answer += chunk
            waited = time.monotonic() - t0
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
        body_json = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert body_json["error"] == "upload_timeout" and "1 s" in body_json["detail"]
        assert 0.9 < waited < 5
        assert_healthy(s)
    finally:
        s.close()


# --------------------------------------------------------------------------------- explanations


HAVE_EXPLAIN = __import__("importlib.util").util.find_spec("geopin.explain.maps") is not None


@pytest.mark.skipif(HAVE_EXPLAIN, reason="geopin.explain.maps is installed: the 501 answer cannot occur")
def test_explain_without_the_module_is_501(server):
    r = server.client.post("/api/explain", files={"photo": ("e.jpg", jpeg_bytes(2))})
    assert_error(r, 501, "not_implemented")
    assert server.client.get("/api/health").json()["explain"] is False


@pytest.mark.skipif(not HAVE_EXPLAIN, reason="geopin.explain.maps is not installed")
def test_explain_returns_overlays_and_rejects_bad_input(server):
    import base64

    assert server.client.get("/api/health").json()["explain"] is True
    r = server.client.post("/api/explain", files={"photo": ("e.jpg", jpeg_bytes(2))},
                           data={"target": "guess", "occlusion": "false"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["path"] == "e.jpg" and out["occlusion"] is None
    png = base64.b64decode(out["gradcam"]["png_base64"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert_error(server.client.post("/api/explain", files={"photo": ("e.jpg", jpeg_bytes(2))},
                                    data={"target": "no-such-place"}), 422, "invalid_target")
    assert_error(server.client.post("/api/explain", files={"photo": ("e.txt", b"not a photo at all")}),
                 415, "not_an_image")
    assert_healthy(server)


@pytest.mark.skipif(not HAVE_EXPLAIN, reason="geopin.explain.maps is not installed")
def test_predictions_do_not_wait_behind_explanations(predictor):
    """Two occlusion maps running (the queue's bound: a third is 503) while predictions keep their latency."""
    from concurrent.futures import ThreadPoolExecutor

    s = RunningServer(create_app(ServeConfig(max_explain_pending=2), predictor))
    service = s.app.state.service
    try:
        data = jpeg_bytes(4)
        s.client.post("/api/predict", files={"photo": ("w.jpg", data)})  # warm
        t = time.monotonic()
        assert s.client.post("/api/predict", files={"photo": ("w.jpg", data)}).status_code == 200
        alone_s = time.monotonic() - t
        with ThreadPoolExecutor(2) as pool:
            explaining = [pool.submit(s.client.post, "/api/explain", files={"photo": (f"e{i}.jpg", jpeg_bytes(30 + i))},
                                      data={"occlusion": "true"}) for i in range(2)]
            deadline = time.monotonic() + 10
            while service.explanations < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert_error(s.client.post("/api/explain", files={"photo": ("e.jpg", data)}), 503, "busy")
            latencies = []
            for _ in range(5):
                t = time.monotonic()
                assert s.client.post("/api/predict", files={"photo": ("p.jpg", data)}).status_code == 200
                latencies.append(time.monotonic() - t)
            still_explaining = service.explanations
            answers = [f.result() for f in explaining]
        assert [r.status_code for r in answers] == [200, 200], [r.text[:200] for r in answers]
        assert still_explaining >= 1, "the explanations ended before the predictions: nothing was measured"
        # before: every prediction waited for the whole explanation (p50 10 s with 4 explaining)
        assert sorted(latencies)[2] < max(1.5, 4 * alone_s), (latencies, alone_s)
        assert max(latencies) < max(3.0, 8 * alone_s), (latencies, alone_s)
        assert service.explain_stats["finished"] == 2
    finally:
        s.close()


@pytest.mark.skipif(not HAVE_EXPLAIN, reason="geopin.explain.maps is not installed")
def test_explanation_is_stopped_when_its_client_leaves(predictor):
    """The page aborts the old request when a new photo comes: the server stops that explanation at its
    next forward pass (not at its end), and drops a queued one before it starts."""
    s = RunningServer(create_app(ServeConfig(max_explain_pending=2), predictor))
    service = s.app.state.service
    answered: list = []  # what came back instead of the client giving up (nothing should)

    def ask(seed: int, wait_s: float) -> None:
        """An explanation its client gives up on after wait_s (its connection then closes)."""
        with httpx.Client(base_url=s.url, timeout=httpx.Timeout(60, read=wait_s)) as impatient:
            try:
                r = impatient.post("/api/explain", files={"photo": (f"e{seed}.jpg", jpeg_bytes(seed))},
                                   data={"occlusion": "true"})
                answered.append((seed, r.status_code))
            except httpx.ReadTimeout:
                pass

    try:
        # the first runs (about 4 s on a quiet machine) while the second waits behind it; the second's client
        # leaves first, then the first's: both are still in flight when their clients go, whatever the load
        first = threading.Thread(target=ask, args=(40, 1.6))
        first.start()
        time.sleep(0.5)
        ask(41, 0.4)
        first.join()
        assert not answered, answered
        deadline = time.monotonic() + 15
        while service.explanations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.explanations == 0
        assert service.explain_stats == {"finished": 0, "stopped": 1, "dropped": 1}, service.explain_stats
        assert_healthy(s)
    finally:
        s.close()


# --------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("path", ["/api/health", "/api/predict"])
def test_token_is_required_when_configured(token_server, path):
    files = {"photo": ("a.jpg", jpeg_bytes())} if path == "/api/predict" else None
    call = token_server.client.post if files else token_server.client.get
    assert_error(call(path, files=files) if files else call(path), 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    assert_error(call(path, files=files, headers=wrong) if files else call(path, headers=wrong), 401, "unauthorized")
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Geopin-Token": TOKEN}):
        r = call(path, files=files, headers=headers) if files else call(path, headers=headers)
        assert r.status_code == 200, r.text


def test_cell_polygons_route_is_behind_the_token_too(token_server):
    if "/api/cells" not in token_server.client.get("/openapi.json").json()["paths"]:
        pytest.skip("geopin.serve.geojson (the /api/cells route) is not installed")
    assert_error(token_server.client.get("/api/cells?tokens=89c25"), 401, "unauthorized")
    r = token_server.client.get("/api/cells?tokens=89c25", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["type"] == "FeatureCollection"


def test_page_can_pass_the_token_in_its_address(token_server):
    assert token_server.client.get(f"/api/health?token={TOKEN}").status_code == 200
    assert_error(token_server.client.get("/api/health?token=wrong"), 401, "unauthorized")
    if (WEB_DIR / "index.html").is_file():  # the page itself loads without a token, then passes it on
        r = token_server.client.get(f"/?token={TOKEN}")
        assert r.status_code == 200 and "<html" in r.text.lower()


def test_refuses_a_public_address_without_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(ValueError, match="token"):
        ServeConfig(host="0.0.0.0").check()
    ServeConfig(host="0.0.0.0", token=TOKEN).check()
    import os

    env = {k: v for k, v in os.environ.items() if k != "GEOPIN_TOKEN"}
    import shutil
    import subprocess
    import sys

    exe = shutil.which("geopin")
    cmd = [exe] if exe else [sys.executable, "-c", "from geopin.cli import main; main()"]
    t0 = time.monotonic()
    p = subprocess.run(cmd + ["serve", "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0" in p.stderr and "token" in p.stderr
    assert time.monotonic() - t0 < 30  # refused before loading any model


def test_port_in_use_exits_2_before_the_model_loads(tmp_path):
    """`--help` promises exit 2 for a bad setting: a taken port is one, found before seconds of model loading."""
    import os
    import shutil
    import subprocess
    import sys

    exe = shutil.which("geopin")
    cmd = [exe] if exe and not os.environ.get("PYTHONPATH") else [sys.executable, "-m", "geopin"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = subprocess.run(cmd + ["serve", "--port", str(port), "--model", str(tmp_path / "no-model-here")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert f"--port {port}" in p.stderr and "already in use" in p.stderr, p.stderr
    assert "no-model-here" not in p.stderr  # the port was judged first, before the (missing) model


def test_token_in_the_address_stays_out_of_the_access_log():
    import logging

    from geopin.serve.app import _HideTokens

    # uvicorn.access logs '%s - "%s %s HTTP/%s" %d' with (client, method, full path, http version, status)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/api/health?k=2&token={TOKEN}&x=1", "1.1", 200), None)
    assert _HideTokens().filter(record)
    line = record.getMessage()
    assert TOKEN not in line and "token=***" in line and "k=2" in line and "x=1" in line
    assert logging.getLogger("uvicorn.access").filters  # installed by create_app (the module's servers made one)


def test_every_bomb_message_names_one_pixel_limit(server):
    """Pillow refuses headers over twice its limit with its own figure; the answer names geopin's one limit."""
    from geopin.dataset.images import PILLOW_MAX_PIXELS

    for w, h in ((20000, 20000), (12000, 12000)):  # over twice the limit (Pillow's check), and between
        body = assert_error(server.client.post("/api/predict", files={"photo": ("b.png", png_header_only(w, h))}),
                            413, "decompression_bomb")
        assert f"{w * h} pixels > {PILLOW_MAX_PIXELS}" in body["detail"], body
        assert "178956970" not in body["detail"]


def test_serve_without_page_says_where_the_api_is(predictor, tmp_path):
    s = RunningServer(create_app(ServeConfig(web_dir=tmp_path), predictor))
    try:
        body = assert_error(s.client.get("/"), 404, "not_found")
        assert "/docs" in body["detail"]
    finally:
        s.close()


PROBE = r'''
import io, json, socket, sys, threading, time
import httpx, uvicorn
from PIL import Image
from geopin.serve.app import ServeConfig, create_app
app = create_app(ServeConfig())
sock = socket.socket(); sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True); thread.start()
while not server.started:
    time.sleep(0.05)
client = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=120)
buf = io.BytesIO(); Image.new("RGB", (96, 64), (200, 120, 60)).save(buf, format="JPEG")
import encodings.idna  # the client's own first-request import (host names), not the server's
out, before = {}, set(sys.modules)
for what, call in [("page", lambda: client.get("/")), ("health", lambda: client.get("/api/health")),
                   ("predict", lambda: client.post("/api/predict", files={"photo": ("a.jpg", buf.getvalue(), "image/jpeg")}))]:
    status = call().status_code
    now = set(sys.modules)
    out[what] = [status, sorted(now - before)]
    before = now
server.should_exit = True
thread.join(10)
print(json.dumps(out))
'''


def test_first_requests_import_nothing_on_the_server_thread(tmp_path):
    """Whatever a first page, health or predict request would import is imported at start-up: an import
    inside a request compiled a module on the server's thread and, racing a compile on another thread,
    cut a page off in CI (CPython 3.11: 'AST constructor recursion depth mismatch'). A fresh process,
    so nothing is imported already by other tests."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    statuses = {k: v[0] for k, v in out.items()}
    assert statuses == {"page": 200 if (WEB_DIR / "index.html").is_file() else 404, "health": 200, "predict": 200}, out
    assert {k: v[1] for k, v in out.items()} == {"page": [], "health": [], "predict": []}
