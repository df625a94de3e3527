"""Download photos named by URL into a content-addressed store, once each, resumably.

`geopin ingest` calls this for table rows whose image is a URL (`http(s)://`, or any fsspec URL:
`s3://`, `gs://`, ...). Why our own small loop rather than img2dataset or fsspec's HTTP filesystem:
see docs/downloads.md (measured there). In short: requests (already installed) streams http(s) with a
byte cap and gives a status per URL; fsspec covers every other scheme; img2dataset would pull ~30
packages, downgrade pandas, and re-encode or shard photos in its own format.

- `fetch_one(url, store, cfg)` is a plain picklable function: a thread or a worker process can call
  it. It never raises for a bad URL; the result carries a reject reason (`download_failed`,
  `download_timeout`, `too_large`) and a detail ("HTTP 404 Not Found", "connection refused", ...).
- Transient failures (timeouts, connection errors, HTTP 429 and 5xx) are retried with exponential
  backoff; 4xx answers are not.
- Bytes are streamed to a temp file in the store (hashed on the way, never held whole in memory),
  stopped at `max_bytes`, then renamed to `objects/<sha[:2]>/<sha><suffix>`: identical photos under
  two URLs are stored once.
- `fetch_urls(urls, store, cfg)` runs `fetch_one` over the distinct URLs with a bounded number in
  flight and appends each outcome to `<store>/ledger.jsonl` (JSON lines, flushed per line, fsynced per batch). A rerun
  reads the ledger and fetches nothing already stored or permanently failed; a torn last line left
  by a kill is dropped. Transient failures are tried again on a rerun.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Reject reasons a download can end in (also ingest reject reasons).
FETCH_REASONS = ("download_failed", "download_timeout", "too_large")
LEDGER_NAME = "ledger.jsonl"
OBJECTS_DIR = "objects"
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CHUNK = 64 * 1024
_RETRY_STATUS = frozenset({408, 425, 429})  # plus every 5xx
# Magic bytes -> suffix of the stored object (chosen from the content, so equal bytes get one name).
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"BM", ".bmp"))
_FTYP_SUFFIX = {b"avif": ".avif", b"avis": ".avif"}  # any other ftyp brand: .heic


class FetchInputError(ValueError):
    """The URLs cannot be fetched at all here (a scheme whose fsspec backend is not installed)."""


@dataclass
class FetchConfig:
    """How to download. Defaults suit public web servers and S3; raise workers for many small photos."""

    workers: int = 16  # threads downloading at once
    retries: int = 3  # extra attempts after a transient failure (timeout, connection error, 429, 5xx)
    backoff_s: float = 0.5  # wait before the first retry; doubles each time (with up to 25 % jitter)
    backoff_max_s: float = 30.0
    timeout_s: float = 20.0  # connect timeout, and the longest silence while reading
    deadline_s: float = 300.0  # one attempt's whole download (a server dripping bytes forever)
    max_bytes: int = 50 * 1024 * 1024  # larger downloads are rejected as too_large, unread
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec, e.g. {"endpoint_url": ...}
    user_agent: str = "geopin-fetch/0.1"
    flush_every: int = 64  # ledger lines per fsync (each line is flushed to the OS at once)

    def validate(self) -> None:
        if self.workers < 1 or self.retries < 0 or self.max_bytes < 1 or self.flush_every < 1:
            raise ValueError("fetch: workers, max_bytes and flush_every must be positive, retries >= 0")
        if self.timeout_s <= 0 or self.deadline_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("fetch: timeout_s and deadline_s must be positive, backoffs >= 0")


@dataclass
class FetchResult:
    """One URL's outcome: a stored object (sha256, path relative to the store) or a reject reason."""

    url: str
    sha256: str | None = None
    path: str | None = None  # relative to the store: objects/ab/abcdef....jpg
    size: int | None = None
    reason: str | None = None  # one of FETCH_REASONS
    detail: str | None = None
    transient: bool = False  # the failure may go away: retried on a rerun
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class FetchSummary:
    n_urls: int  # distinct URLs asked for
    n_fetched: int  # downloaded in this run
    n_cached: int  # known from the ledger of an earlier run
    n_failed: int  # failed in this run or permanently before
    bytes: int
    seconds: float
    per_s: float  # URLs fetched in this run per second


def is_url(value: Any) -> bool:
    """True for 'scheme://...' other than file:// (a local path, read as such)."""
    if not isinstance(value, str):
        return False
    m = _URL_RE.match(value.strip())
    return bool(m) and m.group(1).lower() != "file"


def scheme_of(url: str) -> str:
    m = _URL_RE.match(url.strip())
    return m.group(1).lower() if m else ""


# ---------------------------------------------------------------------------------------------
# one URL


class _Fail(Exception):
    def __init__(self, reason: str, detail: str, transient: bool) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail, self.transient = reason, detail, transient


def fetch_one(url: str, store: str | os.PathLike, cfg: FetchConfig | None = None) -> FetchResult:
    """Download `url` into `store` (retrying transient failures); never raises for a bad URL."""
    cfg = cfg or FetchConfig()
    store = Path(store)
    started = time.monotonic()
    result = FetchResult(url=url)
    for attempt in range(cfg.retries + 1):
        result.attempts = attempt + 1
        try:
            sha, rel, size = _download(url.strip(), store, cfg)
        except _Fail as fail:
            result.reason, result.detail, result.transient = fail.reason, fail.detail, fail.transient
            if not fail.transient or attempt == cfg.retries:
                break
            wait = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** attempt) * (1 + 0.25 * random.random())
            log.debug("%s: %s (%s); retry %d in %.2f s", url, fail.reason, fail.detail, attempt + 1, wait)
            time.sleep(wait)
            continue
        result.sha256, result.path, result.size = sha, rel, size
        result.reason = result.detail = None
        result.transient = False
        break
    if result.reason and result.transient and result.attempts > 1:
        result.detail = f"{result.detail} (after {result.attempts} attempts)"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _download(url: str, store: Path, cfg: FetchConfig) -> tuple[str, str, int]:
    scheme = scheme_of(url)
    tmp_dir = store / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="dl-", suffix=".part", dir=tmp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if scheme in ("http", "https"):
                sha, size, head = _stream_http(url, fh, cfg)
            else:
                sha, size, head = _stream_fsspec(url, fh, cfg)
        rel = f"{OBJECTS_DIR}/{sha[:2]}/{sha}{_suffix(head)}"
        final = store / rel
        if final.exists() and final.stat().st_size == size:
            tmp.unlink()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        return sha, rel, size
    finally:
        tmp.unlink(missing_ok=True)


def _copy_capped(chunks: Iterable[bytes], fh, cfg: FetchConfig, started: float, url: str
                 ) -> tuple[str, int, bytes]:
    """Write chunks to fh, hashing; _Fail(too_large) past max_bytes, (download_timeout) past the deadline."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > cfg.max_bytes:
            raise _Fail("too_large", f"more than {cfg.max_bytes:,} bytes (stopped reading)", False)
        if len(head) < 32:
            head += chunk[:32]
        digest.update(chunk)
        fh.write(chunk)
        if time.monotonic() - started > cfg.deadline_s:
            raise _Fail("download_timeout", f"not finished within the {cfg.deadline_s:g} s deadline", True)
    return digest.hexdigest(), size, head


_local = threading.local()


def _session():
    """One requests.Session per thread (connection reuse; Session is not documented as thread-safe)."""
    import requests

    sess = getattr(_local, "session", None)
    if sess is None or getattr(_local, "pid", None) != os.getpid():
        sess = requests.Session()
        _local.session, _local.pid = sess, os.getpid()
    return sess


def _stream_http(url: str, fh, cfg: FetchConfig) -> tuple[str, int, bytes]:
    import requests

    started = time.monotonic()
    try:
        with _session().get(url, stream=True, timeout=(cfg.timeout_s, cfg.timeout_s),
                            headers={"User-Agent": cfg.user_agent}) as resp:
            if resp.status_code >= 400:
                transient = resp.status_code >= 500 or resp.status_code in _RETRY_STATUS
                raise _Fail("download_failed", f"HTTP {resp.status_code} {resp.reason or ''}".strip(), transient)
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise _Fail("too_large", f"Content-Length {int(length):,} > {cfg.max_bytes:,} bytes (not read)",
                            False)
            return _copy_capped(resp.iter_content(_CHUNK), fh, cfg, started, url)
    except _Fail:
        raise
    except requests.exceptions.Timeout as exc:
        raise _Fail("download_timeout", f"no answer within {cfg.timeout_s:g} s ({type(exc).__name__})", True) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader, ValueError) as exc:
        raise _Fail("download_failed", f"invalid URL: {exc}", False) from None
    except requests.exceptions.TooManyRedirects as exc:  # a loop: waiting will not fix it
        raise _Fail("download_failed", f"redirect loop: {exc}", False) from None
    except requests.exceptions.ConnectionError as exc:
        raise _Fail("download_failed", _connection_detail(exc), True) from None
    except requests.exceptions.RequestException as exc:  # ChunkedEncodingError, ContentDecodingError, ...
        raise _Fail("download_failed", f"{type(exc).__name__}: {exc}", True) from None
    except OSError as exc:  # writing the temp file: disk full is not the URL's fault, but must not kill the run
        raise _Fail("download_failed", f"cannot write to the store: {exc}", True) from None


def _connection_detail(exc: Exception) -> str:
    text = str(exc)
    for needle, says in (("Connection refused", "connection refused"),
                         ("Name or service not known", "host not found (DNS)"),
                         ("nodename nor servname", "host not found (DNS)"),
                         ("Temporary failure in name resolution", "host not found (DNS)"),
                         ("Connection reset", "connection reset by the server"),
                         ("RemoteDisconnected", "server closed the connection without an answer"),
                         ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted")):
        if needle in text:
            return says
    return f"connection error: {text[:300]}"


def _stream_fsspec(url: str, fh, cfg: FetchConfig) -> tuple[str, int, bytes]:
    import fsspec

    started = time.monotonic()
    try:
        fs, path = fsspec.core.url_to_fs(url, **_fs_options(scheme_of(url), cfg))
    except ImportError as exc:
        raise _Fail("download_failed", f"no filesystem installed for {scheme_of(url)}://: {exc}", False) from None
    except ValueError as exc:  # "Protocol not known"
        raise _Fail("download_failed", f"unsupported URL: {exc}", False) from None
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            raise _Fail("download_failed", "is a folder (prefix), not an object", False)
        size = info.get("size")
        if size is not None and size > cfg.max_bytes:
            raise _Fail("too_large", f"size {int(size):,} > {cfg.max_bytes:,} bytes (not read)", False)
        extra = {"size": size} if size is not None and scheme_of(url) in ("s3", "s3a") else {}  # no 2nd HEAD
        with fs.open(path, "rb", block_size=_CHUNK * 16, **extra) as src:
            return _copy_capped(iter(lambda: src.read(_CHUNK), b""), fh, cfg, started, url)
    except _Fail:
        raise
    except FileNotFoundError:
        raise _Fail("download_failed", "not found (no such object)", False) from None
    except PermissionError as exc:
        raise _Fail("download_failed", f"access denied: {exc}", False) from None
    except (TimeoutError, ConnectionError) as exc:
        reason = "download_timeout" if isinstance(exc, TimeoutError) else "download_failed"
        raise _Fail(reason, f"{type(exc).__name__}: {exc}", True) from None
    except OSError as exc:
        raise _Fail("download_failed", f"{type(exc).__name__}: {exc}", True) from None
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types (botocore, gcsfs ...)
        raise _Fail("download_failed", f"{type(exc).__name__}: {exc}", True) from None


def _fs_options(scheme: str, cfg: FetchConfig) -> dict[str, Any]:
    options = dict(cfg.storage_options)
    if scheme in ("s3", "s3a"):
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
        config = options.setdefault("config_kwargs", {})
        config.setdefault("connect_timeout", cfg.timeout_s)
        config.setdefault("read_timeout", cfg.timeout_s)
    return options


def _suffix(head: bytes) -> str:
    for magic, suffix in _MAGIC:
        if head.startswith(magic):
            return suffix
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[4:8] == b"ftyp":
        return _FTYP_SUFFIX.get(head[8:12], ".heic")
    return ".bin"  # not a photo we know: ingest's decoder says why


# ---------------------------------------------------------------------------------------------
# many URLs


class Ledger:
    """`<store>/ledger.jsonl`: one JSON line per finished URL; the last line for a URL wins."""

    def __init__(self, store: Path) -> None:
        self.path = Path(store) / LEDGER_NAME
        self.entries: dict[str, FetchResult] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):  # a torn last line (killed mid-write): drop it, then append cleanly
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - good_end)
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)
        names = {f.name for f in dataclasses.fields(FetchResult)}
        for n, line in enumerate(data[:good_end].splitlines(), 1):
            try:
                rec = json.loads(line)
                res = FetchResult(**{k: v for k, v in rec.items() if k in names})
            except (ValueError, TypeError) as exc:
                log.warning("%s:%d: unreadable ledger line skipped (%s)", self.path, n, exc)
                continue
            self.entries[res.url] = res

    def done(self, url: str, store: Path) -> FetchResult | None:
        """The earlier outcome to reuse: a stored object still present, or a permanent failure."""
        res = self.entries.get(url)
        if res is None:
            return None
        if res.ok:
            return res if (store / res.path).is_file() else None
        return None if res.transient else res

    def open(self, fsync_every: int) -> Ledger:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - held across fetch_urls, closed in close()
        self._fsync_every, self._unsynced = fsync_every, 0
        return self

    def record(self, res: FetchResult) -> None:
        """Append one line in one write (a killed process leaves whole lines); fsync per batch."""
        self._fh.write(json.dumps(dataclasses.asdict(res)).encode() + b"\n")
        self._fh.flush()  # in the OS now: survives a kill of this process
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            os.fsync(self._fh.fileno())  # on disk: survives a power cut
            self._unsynced = 0
        self.entries[res.url] = res

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()


def check_schemes(urls: Iterable[str], cfg: FetchConfig | None = None) -> None:
    """Fail before any download when a scheme's fsspec backend is missing (e.g. s3fs for s3://)."""
    schemes = sorted({scheme_of(u) for u in urls} - {"http", "https", ""})
    if not schemes:
        return
    import fsspec

    for scheme in schemes:
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as exc:
            hint = " (pip install 'geopin[s3]')" if scheme in ("s3", "s3a") else ""
            raise FetchInputError(f"{scheme}:// URLs need a package that is not installed{hint}: {exc}") from None
        except ValueError:
            log.warning("%s:// is not a scheme fsspec knows; those rows will be rejected", scheme)


def fetch_urls(urls: Iterable[str], store: str | os.PathLike, cfg: FetchConfig | None = None
               ) -> tuple[dict[str, FetchResult], FetchSummary]:
    """Fetch every distinct URL once into `store`; {url: result} for all of them, and a summary.

    URLs done by an earlier run (per the ledger) are not fetched again. At most 2 x workers
    downloads are in flight, so memory stays bounded whatever the table's length.
    """
    from geopin.log import progress

    cfg = cfg or FetchConfig()
    cfg.validate()
    store = Path(os.path.abspath(store))
    store.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    distinct = list(dict.fromkeys(u.strip() for u in urls))
    check_schemes(distinct, cfg)
    ledger = Ledger(store)
    _clean_tmp(store, cfg)
    results: dict[str, FetchResult] = {}
    todo = []
    for url in distinct:
        prior = ledger.done(url, store)
        if prior is not None:
            results[url] = prior
        else:
            todo.append(url)
    n_cached = len(results)
    if n_cached:
        log.info("fetch: %d of %d URLs already done (ledger %s)", n_cached, len(distinct), ledger.path)
    log.info("fetch: %d URLs to download into %s with %d workers", len(todo), store, cfg.workers)
    n_bytes = 0
    ledger.open(cfg.flush_every)
    try:
        with progress(total=len(todo), desc="fetch", unit="url") as bar:
            for res in fetch_many(todo, store, cfg):
                results[res.url] = res
                n_bytes += res.size or 0
                ledger.record(res)
                bar.update(1)
    finally:
        ledger.close()
    seconds = time.perf_counter() - started
    fresh = [results[u] for u in todo]
    summary = FetchSummary(
        n_urls=len(distinct), n_fetched=sum(r.ok for r in fresh), n_cached=n_cached,
        n_failed=sum(not r.ok for r in results.values()), bytes=n_bytes, seconds=round(seconds, 3),
        per_s=round(len(todo) / seconds, 1) if todo and seconds > 0 else 0.0)
    failed = [r for r in results.values() if not r.ok]
    if failed:
        counts: dict[str, int] = {}
        for r in failed:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        log.warning("fetch: %d of %d URLs failed (%s), e.g. %s: %s", len(failed), len(distinct),
                    ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), failed[0].url, failed[0].detail)
    log.info("fetch done: %d fetched, %d from the ledger, %d failed, %.1f MB, %.1f URLs/s",
             summary.n_fetched, n_cached, summary.n_failed, n_bytes / 1e6, summary.per_s)
    return results, summary


def fetch_many(todo: list[str], store: Path, cfg: FetchConfig) -> Iterator[FetchResult]:
    """fetch_one over todo on a thread pool, at most 2 x workers submitted at once; no ledger (fetch_urls adds one)."""
    if not todo:
        return
    queue = iter(todo)
    with cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="fetch") as pool:
        pending: set[cf.Future] = set()

        def submit_next() -> None:
            url = next(queue, None)
            if url is not None:
                pending.add(pool.submit(fetch_one, url, store, cfg))

        for _ in range(2 * cfg.workers):
            submit_next()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                pending.discard(fut)
                yield fut.result()  # fetch_one does not raise for a bad URL
                submit_next()


def _clean_tmp(store: Path, cfg: FetchConfig) -> None:
    """Remove partial downloads a killed run left behind (old enough that no live download owns them)."""
    tmp_dir = store / "tmp"
    if not tmp_dir.is_dir():
        return
    cutoff = time.time() - cfg.deadline_s - 60
    for stale in tmp_dir.glob("dl-*.part"):
        try:
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
        except FileNotFoundError:
            pass
