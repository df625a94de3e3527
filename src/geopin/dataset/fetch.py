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
  backoff, but only within the URL's `timeout_s`: a URL that answers nothing or stalls costs about
  `timeout_s`, not (retries + 1) x timeout_s. 4xx answers and missing credentials are not retried.
- Bytes are streamed to a temp file in the store (`tmp/dl-<host>-<pid>-*.part`, hashed on the way, never
  held whole in memory), stopped at `max_bytes`, then renamed to `objects/<sha[:2]>/<sha><suffix>`:
  identical photos under two URLs are stored once. Every `fetch_urls` run first removes the temp files
  of writers that are no longer alive (a killed run's).
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
import math
import os
import random
import re
import socket
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
_MIN_TRY = 0.25  # a retry starts only while this share of timeout_s is left of the URL's timeout
TMP_DIR = "tmp"
_PART_PREFIX, _PART_SUFFIX = "dl-", ".part"
# Exceptions (by class name, so no backend has to be imported) that mean this machine has no credentials for the
# store: botocore (s3://) and google-auth (gs://). The same for every URL of the run: not retried.
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"})
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
    # The longest silence (connect, first byte, any pause in the body) and the URL's retry budget: no retry starts
    # once timeout_s has passed since its first try, so a dead or stalled URL costs about timeout_s in all.
    timeout_s: float = 20.0
    deadline_s: float = 300.0  # one attempt's whole download while bytes keep coming (a server dripping forever)
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
    setup: bool = False  # this machine's setup failed (no credentials), not the URL: not retried now, tried on a rerun
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
    def __init__(self, reason: str, detail: str, transient: bool, setup: bool = False) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail, self.transient, self.setup = reason, detail, transient, setup


def fetch_one(url: str, store: str | os.PathLike, cfg: FetchConfig | None = None) -> FetchResult:
    """Download `url` into `store` (retrying transient failures within its timeout); never raises for a bad URL."""
    cfg = cfg or FetchConfig()
    store = Path(store)
    started = time.monotonic()
    budget_end = started + cfg.timeout_s  # no retry starts after this: a stalled URL costs ~timeout_s, not 4x
    timeout = cfg.timeout_s
    result = FetchResult(url=url)
    for attempt in range(cfg.retries + 1):
        result.attempts = attempt + 1
        try:
            sha, rel, size = _download(url.strip(), store, cfg, timeout)
        except _Fail as fail:
            result.reason, result.detail = fail.reason, fail.detail
            result.transient, result.setup = fail.transient, fail.setup
            if not fail.transient or attempt == cfg.retries:
                break
            wait = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** attempt) * (1 + 0.25 * random.random())
            left = budget_end - time.monotonic() - wait
            if left < _MIN_TRY * cfg.timeout_s:
                log.debug("%s: %s (%s); its %g s timeout is spent, no retry", url, fail.reason, fail.detail,
                          cfg.timeout_s)
                break
            log.debug("%s: %s (%s); retry %d in %.2f s", url, fail.reason, fail.detail, attempt + 1, wait)
            time.sleep(wait)
            timeout = left  # the retry waits on silence only for what is left of the URL's timeout
            continue
        result.sha256, result.path, result.size = sha, rel, size
        result.reason = result.detail = None
        result.transient = result.setup = False
        break
    if result.reason and result.transient and result.attempts > 1:
        result.detail = f"{result.detail} (after {result.attempts} attempts)"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _download(url: str, store: Path, cfg: FetchConfig, timeout: float) -> tuple[str, str, int]:
    scheme = scheme_of(url)
    tmp_dir = store / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_part_prefix(), suffix=_PART_SUFFIX, dir=tmp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if scheme in ("http", "https"):
                sha, size, head = _stream_http(url, fh, cfg, timeout)
            else:
                sha, size, head = _stream_fsspec(url, fh, cfg, timeout)
        rel = f"{OBJECTS_DIR}/{sha[:2]}/{sha}{_suffix(head)}"
        final = store / rel
        try:
            if final.exists() and final.stat().st_size == size:
                tmp.unlink()
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        except OSError as exc:  # disk full, or the temp file removed under us: this try failed, not the run
            raise _Fail("download_failed", f"cannot write to the store: {exc}", True) from None
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


def _stream_http(url: str, fh, cfg: FetchConfig, timeout: float) -> tuple[str, int, bytes]:
    import requests

    started = time.monotonic()
    body = False  # the headers have come: a timeout from here on is the body stalling
    try:
        with _session().get(url, stream=True, timeout=(timeout, timeout),
                            headers={"User-Agent": cfg.user_agent}) as resp:
            body = True
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
        raise _Fail("download_timeout", _timeout_detail(timeout, body, type(exc).__name__), True) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader, ValueError) as exc:
        raise _Fail("download_failed", f"invalid URL: {exc}", False) from None
    except requests.exceptions.TooManyRedirects as exc:  # a loop: waiting will not fix it
        raise _Fail("download_failed", f"redirect loop: {exc}", False) from None
    except requests.exceptions.ConnectionError as exc:
        if _is_timeout(exc):  # requests reports a read timeout in the body as a ConnectionError
            raise _Fail("download_timeout", _timeout_detail(timeout, body, "ReadTimeout"), True) from None
        raise _Fail("download_failed", _connection_detail(exc), True) from None
    except requests.exceptions.RequestException as exc:  # ChunkedEncodingError, ContentDecodingError, ...
        raise _Fail("download_failed", f"{type(exc).__name__}: {exc}", True) from None
    except OSError as exc:  # writing the temp file: disk full is not the URL's fault, but must not kill the run
        raise _Fail("download_failed", f"cannot write to the store: {exc}", True) from None


def _timeout_detail(timeout: float, body: bool, kind: str) -> str:
    if body:
        return f"the body stalled: no data for {timeout:.3g} s ({kind})"
    return f"no answer within {timeout:.3g} s ({kind})"


def _is_timeout(exc: BaseException) -> bool:
    """A timeout, whatever wraps it (requests' ConnectionError around urllib3's ReadTimeoutError, botocore's and
    aiohttp's own classes): judged by class names along the chain, so no backend has to be imported. Each class's
    own name only: urllib3's NewConnectionError (a refused connection) descends from ConnectTimeoutError."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, TimeoutError) or "Timeout" in type(item).__name__:
            return True
        linked = [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
        todo.extend(x for x in linked if isinstance(x, BaseException))
    return False


def _no_credentials(exc: BaseException) -> bool:
    return any(c.__name__ in _NO_CREDENTIALS for c in type(exc).__mro__)


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


def _stream_fsspec(url: str, fh, cfg: FetchConfig, timeout: float) -> tuple[str, int, bytes]:
    import fsspec

    started = time.monotonic()
    try:
        fs, path = fsspec.core.url_to_fs(url, **_fs_options(scheme_of(url), cfg, timeout))
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
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types (botocore, gcsfs ...)
        if _no_credentials(exc):  # the same for every URL of the run: retrying cannot help
            raise _Fail("download_failed", f"missing credentials: no {scheme_of(url)}:// credentials found on this "
                        f"machine to read {url} ({type(exc).__name__}: {exc})", False, setup=True) from None
        if _is_timeout(exc):
            raise _Fail("download_timeout", f"no answer within {timeout:.3g} s ({type(exc).__name__}: {exc})",
                        True) from None
        raise _Fail("download_failed", f"{type(exc).__name__}: {exc}", True) from None


def _fs_options(scheme: str, cfg: FetchConfig, timeout: float | None = None) -> dict[str, Any]:
    options = dict(cfg.storage_options)
    if scheme in ("s3", "s3a"):
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # copies of the nested dicts: the caller's storage_options stay as given
            options["client_kwargs"] = {"endpoint_url": endpoint, **options.get("client_kwargs", {})}
        config = options["config_kwargs"] = dict(options.get("config_kwargs", {}))
        # whole seconds: s3fs keeps one filesystem per distinct set of options
        wait = math.ceil(cfg.timeout_s if timeout is None else timeout)
        config.setdefault("connect_timeout", wait)
        config.setdefault("read_timeout", wait)
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
        """The earlier outcome to reuse: a stored object still present, or a permanent failure of the URL itself
        (not one of the machine's setup, such as missing credentials, which may have been fixed since)."""
        res = self.entries.get(url)
        if res is None:
            return None
        if res.ok:
            return res if (store / res.path).is_file() else None
        return None if res.transient or res.setup else res

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
    remove_partial_downloads(store, cfg)
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


def _writer_id() -> str:
    """This machine (host name and, on Linux, pid namespace), as a name part without '-': a pid means something
    only where it was taken."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # not Linux
        return host
    return f"{host}_{re.sub(r'[^0-9]', '', namespace)}"


def _part_prefix() -> str:
    """`dl-<machine>-<pid>-`: names the writer of a partial download, so a later run knows a dead one's leftovers."""
    return f"{_PART_PREFIX}{_writer_id()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # killed but not yet reaped by its parent: a zombie writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_partial_downloads(store: str | os.PathLike, cfg: FetchConfig | None = None) -> int:
    """Remove the partial downloads no live process is writing (a killed run's); the number removed.

    A part made on this machine is removed as soon as its writer's pid is gone. One from another machine
    sharing the store, or from an older geopin (no pid in its name), only once untouched for longer than
    any live download stays silent (deadline_s + timeout_s + 60 s).
    """
    cfg = cfg or FetchConfig()
    tmp_dir = Path(store) / TMP_DIR
    if not tmp_dir.is_dir():
        return 0
    here = _writer_id()
    cutoff = time.time() - cfg.deadline_s - cfg.timeout_s - 60
    removed = 0
    for part in tmp_dir.glob(f"{_PART_PREFIX}*{_PART_SUFFIX}"):
        fields = part.name[len(_PART_PREFIX):].rsplit("-", 2)  # machine, pid, mkstemp's random part
        mine = len(fields) == 3 and fields[0] == here and fields[1].isdigit()
        try:
            if (mine and not _pid_alive(int(fields[1]))) or part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    if removed:
        log.info("%s: removed %d partial download(s) left by an interrupted run", tmp_dir, removed)
    return removed
