"""geopin.dataset.fetch and URL tables in ingest, against real servers on loopback started here.

An HTTP server (http.server in a thread) serves good, missing, slow, broken, non-image, too large and
flaky photos and counts every hit per path; an S3-compatible server (moto in server mode) serves a
bucket read through s3:// URLs. Nothing is mocked: requests, fsspec/s3fs and the decoder run for real.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from geopin.cli import app
from geopin.dataset.fetch import (
    LEDGER_NAME,
    FetchConfig,
    Ledger,
    fetch_one,
    fetch_urls,
    is_url,
)
from geopin.dataset.ingest import REJECT_REASONS, IngestConfig, IngestInputError, ingest

FAST = {"workers": 4, "retries": 2, "backoff_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 0.5, "max_bytes": 200_000}


def _jpeg(seed: int, size: int = 96) -> bytes:
    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    img.putpixel((seed % size, (seed // size) % size), (255 - seed % 256, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class _Photos(BaseHTTPRequestHandler):
    """Routes: /good/N.jpg, /missing.jpg (404), /forbidden.jpg (403), /slow.jpg, /broken.jpg,
    /page.html (HTML as .jpg), /huge.jpg (Content-Length over the cap), /huge-stream.jpg (no length),
    /flaky.jpg (503 twice, then the photo), /drip/N.jpg (a good photo after a short pause),
    /stall-body.jpg (the headers and half the photo, then silence), /hang/N.jpg (silence until released),
    /busy.jpg (503 every time)."""

    hits: typing.ClassVar[Counter] = Counter()
    lock = threading.Lock()
    slow_s = 2.0
    drip_s = 0.0
    stall_s = 3.0
    release = threading.Event()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (byte cap): expected
            pass

    def do_GET(self) -> None:  # http.server's name
        path = self.path.split("?")[0]
        with self.lock:
            self.hits[path] += 1
            n_hits = self.hits[path]
        if path.startswith("/good/"):
            self._send(200, _jpeg(int(Path(path).stem)))
        elif path.startswith("/drip/"):
            time.sleep(self.drip_s)
            self._send(200, _jpeg(int(Path(path).stem)))
        elif path == "/slow.jpg":
            time.sleep(self.slow_s)
            self._send(200, _jpeg(1))
        elif path == "/stall-body.jpg":
            data = _jpeg(6)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                time.sleep(self.stall_s)
                self.wfile.write(data[len(data) // 2:])
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected
                pass
        elif path.startswith("/hang/"):
            self.release.wait(60)
        elif path == "/busy.jpg":  # 503 every time
            self._send(503, b"busy", "text/plain")
        elif path == "/broken.jpg":
            data = _jpeg(2, 256)
            self._send(200, data[: len(data) // 2])
        elif path == "/page.html":
            self._send(200, b"<html><body>Not found, but 200</body></html>", "text/html")
        elif path == "/huge.jpg":
            self._send(200, _jpeg(3) + b"\0" * 400_000)
        elif path == "/huge-stream.jpg":  # HTTP/1.0 without Content-Length: the cap must stop the read
            self._send(200, _jpeg(4) + b"\0" * 400_000, length=False)
        elif path == "/flaky.jpg":
            if n_hits <= 2:
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, _jpeg(5))
        elif path == "/loop.jpg":  # redirects to itself forever
            self.send_response(302)
            self.send_header("Location", "/loop.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/moved.jpg":
            self.send_response(301)
            self.send_header("Location", "/good/9.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/forbidden.jpg":
            self._send(403, b"no", "text/plain")
        else:
            self._send(404, b"not here", "text/plain")


@pytest.fixture()
def http_server():
    _Photos.hits = Counter()
    _Photos.drip_s = 0.0
    _Photos.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Photos)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Photos
    _Photos.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 in server mode on loopback, with a bucket of two photos and a text file."""
    pytest.importorskip("s3fs", reason="s3:// needs s3fs: pip install 'geopin[s3]'")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="photos")
    s3.put_object(Bucket="photos", Key="a/one.jpg", Body=_jpeg(101))
    s3.put_object(Bucket="photos", Key="a/two.jpg", Body=_jpeg(102))
    s3.put_object(Bucket="photos", Key="notes.txt", Body=b"just text")
    s3.put_object(Bucket="photos", Key="big.jpg", Body=_jpeg(103) + b"\0" * 300_000)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_is_url():
    assert is_url("http://x/a.jpg") and is_url("s3://b/k.jpg") and is_url(" gs://b/k ")
    assert not is_url("file:///tmp/a.jpg") and not is_url("photos/a.jpg") and not is_url("C:\\a.jpg")
    assert not is_url(float("nan")) and not is_url(None)


def test_fetch_one_each_outcome(http_server, tmp_path):
    base, handler = http_server
    cfg = FetchConfig(**FAST)
    good = fetch_one(f"{base}/good/7.jpg", tmp_path, cfg)
    assert good.ok and good.attempts == 1
    stored = tmp_path / good.path
    assert stored.read_bytes() == _jpeg(7)  # original bytes, not re-encoded
    assert good.path == f"objects/{good.sha256[:2]}/{good.sha256}.jpg"

    missing = fetch_one(f"{base}/missing.jpg", tmp_path, cfg)
    assert (missing.reason, missing.detail) == ("download_failed", "HTTP 404 Not Found")
    forbidden = fetch_one(f"{base}/forbidden.jpg", tmp_path, cfg)
    assert forbidden.reason == "download_failed" and "403" in forbidden.detail
    assert handler.hits["/missing.jpg"] == 1 and handler.hits["/forbidden.jpg"] == 1  # 4xx: no retry

    flaky = fetch_one(f"{base}/flaky.jpg", tmp_path, cfg)
    assert flaky.ok and flaky.attempts == 3 and handler.hits["/flaky.jpg"] == 3  # 503, 503, then the photo

    huge = fetch_one(f"{base}/huge.jpg", tmp_path, cfg)
    assert huge.reason == "too_large" and "Content-Length" in huge.detail
    streamed = fetch_one(f"{base}/huge-stream.jpg", tmp_path, cfg)
    assert streamed.reason == "too_large" and "stopped reading" in streamed.detail

    started = time.monotonic()
    slow = fetch_one(f"{base}/slow.jpg", tmp_path, cfg)
    # the 0.5 s timeout is the URL's whole budget: spent by the first silence, so no retry (it was 3 tries)
    assert slow.reason == "download_timeout" and slow.detail == "no answer within 0.5 s (ReadTimeout)"
    assert slow.attempts == 1 and slow.transient
    assert handler.hits["/slow.jpg"] == 1 and time.monotonic() - started < 1.5

    refused = fetch_one("http://127.0.0.1:9/a.jpg", tmp_path, FetchConfig(**{**FAST, "retries": 0}))
    assert (refused.reason, refused.detail) == ("download_failed", "connection refused")
    unknown = fetch_one("nosuchscheme://x/y.jpg", tmp_path, cfg)
    assert unknown.reason == "download_failed" and "nosuchscheme" in unknown.detail
    # no partial downloads are left behind
    assert not list((tmp_path / "tmp").glob("*"))


def test_redirects_and_invalid_urls(http_server, tmp_path):
    base, _ = http_server
    cfg = FetchConfig(**FAST)
    moved = fetch_one(f"{base}/moved.jpg", tmp_path, cfg)
    assert moved.ok and (tmp_path / moved.path).read_bytes() == _jpeg(9)
    loop = fetch_one(f"{base}/loop.jpg", tmp_path, cfg)
    assert loop.reason == "download_failed" and "redirect" in loop.detail.lower()
    assert loop.attempts == 1  # a redirect loop does not go away by itself: no retry
    for bad in ("http://", "http://[::1/a.jpg", "https://exa mple.invalid/a b.jpg"):
        res = fetch_one(bad, tmp_path, cfg)
        assert res.reason == "download_failed" and res.detail, bad


def test_fetch_one_in_a_worker_process(http_server, tmp_path):
    """fetch_one and its config and result pickle: a process pool (or a distributed engine) can run it."""
    base, handler = http_server
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        res = pool.submit(fetch_one, f"{base}/good/11.jpg", tmp_path, FetchConfig(**FAST)).result(timeout=60)
    assert res.ok and (tmp_path / res.path).read_bytes() == _jpeg(11) and handler.hits["/good/11.jpg"] == 1


def test_fetch_urls_once_each_and_ledger_resume(http_server, tmp_path):
    base, handler = http_server
    urls = [f"{base}/good/{i}.jpg" for i in range(6)] + [f"{base}/good/0.jpg", f"{base}/missing.jpg",
                                                          f"{base}/slow.jpg"]
    cfg = FetchConfig(**{**FAST, "retries": 0})
    results, summary = fetch_urls(urls, tmp_path, cfg)
    assert set(results) == set(urls) and summary.n_urls == 8
    assert handler.hits["/good/0.jpg"] == 1  # listed twice, fetched once
    assert summary.n_fetched == 6 and summary.n_failed == 2

    again, summary2 = fetch_urls(urls, tmp_path, cfg)
    assert summary2.n_cached == 7  # the photos and the permanent 404; the timeout is tried again
    assert all(handler.hits[f"/good/{i}.jpg"] == 1 for i in range(6))
    assert handler.hits["/missing.jpg"] == 1 and handler.hits["/slow.jpg"] == 2
    assert {u: r.sha256 for u, r in again.items()} == {u: r.sha256 for u, r in results.items()}


def test_ledger_torn_last_line_is_dropped(tmp_path, http_server):
    base, handler = http_server
    fetch_urls([f"{base}/good/1.jpg", f"{base}/good/2.jpg"], tmp_path, FetchConfig(**FAST))
    ledger = tmp_path / LEDGER_NAME
    with open(ledger, "ab") as fh:
        fh.write(b'{"url": "http://torn')  # a kill mid-write
    results, summary = fetch_urls([f"{base}/good/1.jpg", f"{base}/good/3.jpg"], tmp_path, FetchConfig(**FAST))
    assert summary.n_cached == 1 and results[f"{base}/good/3.jpg"].ok
    lines = ledger.read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["url"].startswith(base) for line in lines)
    assert handler.hits["/good/1.jpg"] == 1


def test_same_bytes_under_two_urls_stored_once(http_server, tmp_path):
    base, _ = http_server
    results, _ = fetch_urls([f"{base}/good/5.jpg", f"{base}/flaky.jpg"], tmp_path, FetchConfig(**FAST))
    assert results[f"{base}/good/5.jpg"].path == results[f"{base}/flaky.jpg"].path
    assert len(list((tmp_path / "objects").rglob("*.jpg"))) == 1


_KILL_SCRIPT = """
import json, sys
from geopin.dataset.fetch import FetchConfig, fetch_urls
urls = json.load(open(sys.argv[1]))
fetch_urls(urls, sys.argv[2], FetchConfig(workers=2, retries=0, timeout_s=5, flush_every=1000))
"""


def test_kill_and_resume_fetches_nothing_twice(http_server, tmp_path):
    base, handler = http_server
    handler.drip_s = 0.05
    urls = [f"{base}/drip/{i}.jpg" for i in range(100)]
    (tmp_path / "urls.json").write_text(json.dumps(urls))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "urls.json"), str(store)])
    ledger = store / LEDGER_NAME
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ledger.exists() and len(ledger.read_bytes().splitlines()) >= 10:
            break
        time.sleep(0.02)
    # kill 15 downloads later, a moment unrelated to any write: lines left in a user-space buffer would be lost
    target = len(ledger.read_bytes().splitlines()) + 15
    while time.monotonic() < deadline and sum(handler.hits.values()) < target:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no fsync: the lines already written must survive
    proc.wait(timeout=10)
    done_before = {json.loads(line)["url"] for line in ledger.read_bytes().splitlines() if line.endswith(b"}")}
    assert 10 <= len(done_before) < len(urls), "the kill should land partway"

    results, summary = fetch_urls(urls, store, FetchConfig(workers=4, retries=0, timeout_s=5))
    assert set(results) == set(urls) and all(r.ok for r in results.values())  # every URL accounted for
    assert summary.n_cached == len(done_before)
    for url in done_before:
        assert handler.hits[url[len(base):]] == 1, f"{url} fetched again after the resume"
    refetched = sum(handler.hits[u[len(base):]] - 1 for u in urls)
    assert refetched <= 4  # only the downloads in flight at the kill (2 workers, 2 x workers queued)
    assert sum(1 for _ in (store / "objects").rglob("*.jpg")) == len(urls)


def test_s3_urls_through_moto(s3_server, tmp_path, monkeypatch):
    cfg = FetchConfig(**{**FAST, "timeout_s": 5, "storage_options": {"endpoint_url": s3_server}})
    one = fetch_one("s3://photos/a/one.jpg", tmp_path, cfg)
    assert one.ok and (tmp_path / one.path).read_bytes() == _jpeg(101)
    missing = fetch_one("s3://photos/a/none.jpg", tmp_path, cfg)
    assert missing.reason == "download_failed" and "not found" in missing.detail
    big = fetch_one("s3://photos/big.jpg", tmp_path, cfg)
    assert big.reason == "too_large" and "not read" in big.detail
    # the endpoint from the standard AWS environment variable instead of an option
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    two = fetch_one("s3://photos/a/two.jpg", tmp_path, FetchConfig(**{**FAST, "timeout_s": 5}))
    assert two.ok and (tmp_path / two.path).read_bytes() == _jpeg(102)


def test_ingest_table_of_urls_local_paths_and_s3(http_server, s3_server, tmp_path, monkeypatch):
    """Every row ends in the manifest or the rejects, with the download's reason or the decoder's."""
    base, handler = http_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    local = tmp_path / "local.jpg"
    local.write_bytes(_jpeg(200))
    rows = [
        (f"{base}/good/1.jpg", 48.85, 2.35),
        (f"{base}/good/2.jpg", 40.7, -74.0),
        (f"{base}/good/1.jpg", 10.0, 10.0),  # the same URL twice: fetched once, second a duplicate
        (str(local), 51.5, -0.12),  # a local path in the same table
        ("local.jpg", 51.5, -0.12),  # the same file by relative path: duplicate
        (f"file://{local}", 51.5, -0.12),  # and as a file:// URL: a local path, not downloaded
        (f"{base}/missing.jpg", 1.0, 1.0),
        (f"{base}/slow.jpg", 2.0, 2.0),
        (f"{base}/broken.jpg", 3.0, 3.0),
        (f"{base}/page.html", 4.0, 4.0),
        (f"{base}/huge.jpg", 5.0, 5.0),
        (f"{base}/flaky.jpg", 6.0, 6.0),
        (f"{base}/good/3.jpg", None, 7.0),  # no position: rejected for that, and not downloaded
        ("s3://photos/a/one.jpg", 35.0, 139.0),
        ("s3://photos/notes.txt", 36.0, 139.0),
        ("s3://photos/missing.jpg", 37.0, 139.0),
    ]
    table = tmp_path / "urls.csv"
    pd.DataFrame(rows, columns=["image", "lat", "lon"]).to_csv(table, index=False)
    # 1.5 s: the flaky URL's three attempts must fit in one budget on a loaded 2-core CI machine; slow.jpg (2 s) still times out
    cfg = IngestConfig(workers=1, fetch=FetchConfig(**{**FAST, "timeout_s": 1.5}))
    summary = ingest(table, tmp_path / "out", cfg)
    man = pd.read_parquet(summary.manifest_path)
    rej = pd.read_parquet(summary.rejects_path)
    assert len(man) + len(rej) == len(rows)
    assert set(rej["reason"]) <= set(REJECT_REASONS)
    by_id = {r.id: (r.reason, r.detail) for r in rej.itertuples() if r.reason != "duplicate"}
    assert by_id[f"{base}/missing.jpg"] == ("download_failed", "HTTP 404 Not Found")
    assert by_id[f"{base}/slow.jpg"][0] == "download_timeout"
    assert by_id[f"{base}/broken.jpg"][0] == "truncated"
    assert by_id[f"{base}/page.html"][0] == "not_an_image"
    assert by_id[f"{base}/huge.jpg"][0] == "too_large"
    assert by_id[f"{base}/good/3.jpg"][0] == "coords_missing"
    assert by_id["s3://photos/notes.txt"][0] == "not_an_image"
    assert by_id["s3://photos/missing.jpg"][0] == "download_failed"
    assert rej.set_index("id").loc[f"{base}/missing.jpg", "path"] == f"{base}/missing.jpg"
    assert sorted(rej.loc[rej.reason == "duplicate", "source_row"]) == [2, 4, 5]
    assert list(man["id"]) == [f"{base}/good/1.jpg", f"{base}/good/2.jpg", "local.jpg", f"{base}/flaky.jpg",
                               "s3://photos/a/one.jpg"]
    store = tmp_path / "out" / "photos"
    for row in man.itertuples():
        if is_url(row.id):
            assert Path(row.path).is_relative_to(store) and Path(row.path).is_file()
    assert handler.hits["/good/1.jpg"] == 1 and handler.hits["/good/3.jpg"] == 0
    assert summary.reasons["download_failed"] == 2 and summary.reasons["too_large"] == 1

    # a rerun downloads nothing that is already stored
    hits_before = sum(v for k, v in handler.hits.items() if k != "/slow.jpg")
    summary2 = ingest(table, tmp_path / "out", cfg)
    assert summary2.n_kept == summary.n_kept
    assert sum(v for k, v in handler.hits.items() if k != "/slow.jpg") == hits_before


def test_cli_ingest_urls(http_server, tmp_path):
    base, _ = http_server
    table = tmp_path / "t.csv"
    pd.DataFrame([(f"{base}/good/{i}.jpg", 10.0 + i, 20.0) for i in range(3)] + [(f"{base}/missing.jpg", 1, 1)],
                 columns=["image", "lat", "lon"]).to_csv(table, index=False)
    store = tmp_path / "cache"
    result = CliRunner().invoke(app, ["ingest", str(table), "--out", str(tmp_path / "o"), "--store", str(store),
                                      "--download-workers", "2", "--retries", "0", "--timeout", "2",
                                      "--max-bytes", "100000", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n_kept"] == 3 and out["reasons"]["download_failed"] == 1
    assert len(Ledger(store).entries) == 4


def test_missing_backend_stops_before_any_download(http_server, tmp_path, monkeypatch):
    """A scheme whose fsspec package is absent is an input error naming the table, not N rejects."""
    from fsspec.registry import known_implementations

    base, handler = http_server
    monkeypatch.setitem(known_implementations, "geopintest",
                        {"class": "geopin_no_such_pkg.FS", "err": "pip install geopin-no-such-pkg"})
    table = tmp_path / "t.csv"
    pd.DataFrame([(f"{base}/good/1.jpg", 1.0, 1.0), ("geopintest://b/k.jpg", 2.0, 2.0)],
                 columns=["image", "lat", "lon"]).to_csv(table, index=False)
    with pytest.raises(IngestInputError, match=r"t\.csv: cannot download.*geopintest://.*geopin-no-such-pkg"):
        ingest(table, tmp_path / "out", IngestConfig(workers=1))
    assert handler.hits["/good/1.jpg"] == 0


def test_cli_rejects_bad_storage_option(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image,lat,lon\ns3://b/k.jpg,1,1\n")
    result = CliRunner().invoke(app, ["ingest", str(table), "--out", str(tmp_path / "o"),
                                      "--storage-option", "endpoint_url"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_a_stalled_body_is_a_timeout_and_costs_one_timeout_not_four(http_server, tmp_path):
    """The headers and half the photo come, then nothing: a download_timeout (requests reports it as a
    ConnectionError, which was filed as download_failed), and with the default retries and backoff it costs
    about one timeout in all (it cost 4 timeouts and 3.5-4.4 s of backoff: 85 s per URL at the 20 s default)."""
    base, handler = http_server
    defaults = FetchConfig()
    cfg = FetchConfig(timeout_s=1.0)  # the default retries (3) and backoff (0.5 s doubling) apply
    assert (cfg.retries, cfg.backoff_s) == (defaults.retries, defaults.backoff_s) == (3, 0.5)
    for path, detail in (("/stall-body.jpg", "the body stalled: no data for 1 s (ReadTimeout)"),
                         ("/slow.jpg", "no answer within 1 s (ReadTimeout)")):
        started = time.monotonic()
        res = fetch_one(f"{base}{path}", tmp_path, cfg)
        seconds = time.monotonic() - started
        assert (res.reason, res.detail) == ("download_timeout", detail), path
        assert res.transient and res.attempts == 1 and handler.hits[path] == 1, path
        assert seconds < 1.8, (path, seconds)
    assert not list((tmp_path / "tmp").glob("*"))


def test_retries_fit_in_the_timeout(http_server, tmp_path):
    """Fast transient failures are still retried, but none starts once the URL's timeout is spent."""
    base, handler = http_server
    flaky = fetch_one(f"{base}/flaky.jpg", tmp_path, FetchConfig(timeout_s=5.0, backoff_s=0.05))
    assert flaky.ok and flaky.attempts == 3
    handler.hits.clear()
    started = time.monotonic()  # 503 every time; backoff 0.4, 0.8, 1.6 s (+ up to 25 %): only ~2 retries fit in 2 s
    res = fetch_one(f"{base}/busy.jpg", tmp_path, FetchConfig(timeout_s=2.0, backoff_s=0.4, retries=10))
    assert (res.reason, res.transient) == ("download_failed", True) and res.detail.startswith("HTTP 503")
    assert time.monotonic() - started < 2.5 and 2 <= res.attempts <= 3 and handler.hits["/busy.jpg"] == res.attempts


_HANG_SCRIPT = """
import sys
from geopin.dataset.fetch import FetchConfig, fetch_urls
fetch_urls(sys.argv[2:], sys.argv[1], FetchConfig(workers=4, retries=0, timeout_s=60))
"""


def _parts(store: Path) -> list[Path]:
    return sorted((store / "tmp").glob("*.part")) if (store / "tmp").is_dir() else []


def _wait_for_parts(store: Path, pid: int, n: int) -> list[Path]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mine = [p for p in _parts(store) if f"-{pid}-" in p.name]
        if len(mine) >= n:
            return mine
        time.sleep(0.05)
    raise AssertionError(f"process {pid} made no partial download in {store}")


def test_partial_downloads_of_a_killed_run_are_removed_by_the_next_run_even_an_up_to_date_one(http_server, tmp_path):
    """SIGKILL of a process mid-download leaves its zero-byte .part files; the next run removes them at once,
    though it has nothing to download, and leaves alone those of a download still running in another process
    (the old rule removed only parts older than deadline + 60 s, 6 minutes at the defaults)."""
    base, _ = http_server
    store = tmp_path / "store"
    fetch_urls([f"{base}/good/1.jpg"], store, FetchConfig(**FAST))
    killed = subprocess.Popen([sys.executable, "-c", _HANG_SCRIPT, str(store), f"{base}/hang/1.jpg",
                               f"{base}/hang/2.jpg"])
    alive = subprocess.Popen([sys.executable, "-c", _HANG_SCRIPT, str(store), f"{base}/hang/3.jpg"])
    try:
        left_behind = _wait_for_parts(store, killed.pid, 2)
        running = _wait_for_parts(store, alive.pid, 1)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        assert all(p.exists() and p.stat().st_size == 0 for p in left_behind)

        results, summary = fetch_urls([f"{base}/good/1.jpg"], store, FetchConfig(**FAST))  # up to date
        assert summary.n_cached == 1 and summary.n_fetched == 0 and results[f"{base}/good/1.jpg"].ok
        assert not any(p.exists() for p in left_behind), "the killed run's partial downloads are still there"
        assert all(p.exists() for p in running), "a live download's temp file was removed"
    finally:
        for proc in (killed, alive):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    fetch_urls([], store, FetchConfig(**FAST))
    assert _parts(store) == []


def test_missing_s3_credentials_fail_at_once_naming_the_url(s3_server, tmp_path, monkeypatch):
    """botocore's NoCredentialsError is the machine's setup, not a passing fault: no retry within the run, a
    detail naming the URL; a rerun (with credentials set by then) tries it again."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup: loopback only
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    # a filesystem of its own: s3fs would otherwise reuse one made (with credentials) by an earlier test
    options = {"endpoint_url": s3_server, "skip_instance_cache": True}
    cfg = FetchConfig(**{**FAST, "retries": 3, "timeout_s": 5, "storage_options": options})
    url = "s3://photos/a/one.jpg"
    started = time.monotonic()
    res = fetch_one(url, tmp_path, cfg)
    assert res.reason == "download_failed" and res.attempts == 1 and time.monotonic() - started < 5
    assert "missing credentials" in res.detail and url in res.detail and "NoCredentialsError" in res.detail
    assert not res.transient and res.setup

    store = tmp_path / "store"
    results, summary = fetch_urls([url], store, cfg)
    assert not results[url].ok and summary.n_failed == 1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    again, summary = fetch_urls([url], store, cfg)
    assert again[url].ok and summary.n_cached == 0 and (store / again[url].path).read_bytes() == _jpeg(101)


def test_a_file_url_row_keeps_the_url_as_its_id(tmp_path):
    """A file:// row is read from disk (not downloaded); its id is the URL as given, as for http(s) rows
    (it was the bare path)."""
    photo = tmp_path / "photos" / "a.jpg"
    photo.parent.mkdir()
    photo.write_bytes(_jpeg(300))
    url = f"file://{photo}"
    table = tmp_path / "t.csv"
    pd.DataFrame([(url, 48.85, 2.35)], columns=["image", "lat", "lon"]).to_csv(table, index=False)
    summary = ingest(table, tmp_path / "out", IngestConfig(workers=1))
    man = pd.read_parquet(summary.manifest_path)
    assert man["id"].tolist() == [url] and man["path"].tolist() == [str(photo)]
    assert not (tmp_path / "out" / "photos").exists()  # nothing was downloaded
