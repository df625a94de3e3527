"""Run a per-partition function on a cluster (Ray) or in this process, with partitioned, resumable output.

Why this shape: embed, predict and ingest all map a plain function over chunks of independent records. The
engine adds only what a cluster needs and the local path does not: a worker (a Ray actor) that builds its
expensive state (a backbone, a Predictor) ONCE and serves many partitions; each partition's rows written
atomically as `<parts>/part-NNNNN.parquet`, tagged with a digest of its input and of the job's fingerprint,
so a rerun skips the partitions already finished and never reuses one made from other input; a partition
whose worker raises (or dies) is retried, and if it fails again its rows carry the error instead of being lost.

    from geopin.scale.engine import EngineConfig, map_partitions, partition, read_parts
    report = map_partitions(fn, partition(items, 64), out / "parts", EngineConfig("ray"),
                            setup=make_state, fingerprint={"kind": "mine"}, on_error=error_row)
    table = read_parts(out / "parts", report.n_partitions)

`fn(items)` (or `fn(state, items)` with `setup`) returns a list of row dicts or a pyarrow Table; `setup()`
runs once per worker. Both must be picklable (module-level functions, functools.partial of them).
The names `"local"` runs the same partitions in this process (no cluster needed, same files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from geopin.io import atomic_path, write_json
from geopin.runtime import limit_native_threads

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
PARTS_DIR = "parts"
JOB_JSON = "_job.json"
_META_DIGEST = b"geopin.partition_digest"
_META_FAILED = b"geopin.partition_failed"
LOOPBACK = "127.0.0.1"
# Ray's switch for "a cluster of this machine only" (its default on macOS and Windows): the node's address becomes
# 127.0.0.1, and Ray's gRPC servers, agents and workers then listen on loopback instead of every interface.
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class EngineUnavailable(RuntimeError):
    """The chosen engine is not installed or its cluster cannot be reached."""


@dataclass
class EngineConfig:
    """Where partitions run. address: None starts a local cluster of `workers` CPUs; "auto" joins the cluster
    started on this node with `ray start`; "HOST:PORT" joins that head; "ray://HOST:10001" is Ray Client."""

    name: str = "local"
    address: str | None = None
    workers: int = 2  # actors, each holding one copy of the model
    partition_size: int = 64  # rows per partition: the unit of retry, resume and output file
    cpus_per_worker: int = 1  # Ray CPUs and torch threads of each actor (2 workers x 1 on 2 cores)
    retries: int = 1  # extra attempts of a partition whose worker raised or died
    in_flight: int = 2  # partitions queued per worker, so a worker never waits for the driver

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"unknown engine {self.name!r}; choose one of {', '.join(ENGINES)}")
        for name in ("workers", "partition_size", "cpus_per_worker", "in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine {name} must be positive, got {getattr(self, name)}")
        if self.retries < 0:
            raise ValueError(f"engine retries must be >= 0, got {self.retries}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineReport:
    """What a map_partitions call did: partitions computed, skipped (finished before), retried, failed."""

    n_partitions: int = 0
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)  # worker id -> partitions it computed
    setups: int = 0  # times a worker built its state (once per worker, plus once per replaced worker)
    start_seconds: float = 0.0  # cluster start (when not running yet) and workers ready with their state
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def partition(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive chunks of `size` items: deterministic, so a rerun on the same input finds the same parts."""
    if size < 1:
        raise ValueError(f"partition size must be positive, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def part_path(parts_dir: Path | str, index: int) -> Path:
    return Path(parts_dir) / f"part-{index:05d}.parquet"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _finished(path: Path, digest: str) -> bool:
    """A part counts as done when it exists, was made from this very input and did not fail as a whole."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return meta.get(_META_DIGEST) == digest.encode() and meta.get(_META_FAILED) != b"1"


def _to_table(rows: list[dict] | pa.Table, schema: pa.Schema | None) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows.cast(schema) if schema is not None and rows.schema != schema else rows
    return pa.Table.from_pylist(rows, schema=schema)


def _write_part(path: Path, table: pa.Table, digest: str, failed: bool) -> None:
    meta = dict(table.schema.metadata or {})
    meta[_META_DIGEST] = digest.encode()
    meta[_META_FAILED] = b"1" if failed else b"0"
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def read_parts(parts_dir: Path | str, n_partitions: int | None = None) -> pa.Table:
    """All parts in partition order as one table; with n_partitions, a missing part is an error."""
    parts_dir = Path(parts_dir)
    if n_partitions is None:
        paths = sorted(parts_dir.glob("part-*.parquet"))
    else:
        paths = [part_path(parts_dir, i) for i in range(n_partitions)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{parts_dir}: missing part(s) {', '.join(missing[:5])}")
    if not paths:
        return pa.table({})
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")


class _Worker:
    """Holds the state `setup` built once and maps `fn` over the partitions it is sent (a Ray actor's body)."""

    def __init__(self, fn: Callable, setup: Callable | None, threads: int, own_process: bool = True):
        self.fn = fn
        self.torch_threads = threads if own_process else None  # in the caller's process ("local"): left alone
        self.state = setup() if setup is not None else None
        self.has_state = setup is not None
        self._limit_torch()
        self.limits = limit_native_threads(threads) if own_process else None
        self.id = f"{os.uname().nodename}:{os.getpid()}"

    def _limit_torch(self) -> None:
        """torch to the worker's share of the cores once something (setup, fn) has loaded it. Never imported just
        for this: an ingest worker has no use for torch, and its import was 2-8 s of a 30 s job's start-up here."""
        torch = sys.modules.get("torch") if self.torch_threads else None
        if torch is not None:
            torch.set_num_threads(self.torch_threads)
            self.torch_threads = None  # done: later partitions keep the setting

    def ready(self) -> str:
        return self.id

    def run(self, items: list) -> tuple[Any, str]:
        self._limit_torch()  # fn may have imported torch during the previous partition
        rows = self.fn(self.state, items) if self.has_state else self.fn(items)
        return rows, self.id


def map_partitions(
    fn: Callable,
    partitions: Sequence[Sequence[Any]],
    parts_dir: Path | str,
    engine: EngineConfig,
    *,
    setup: Callable[[], Any] | None = None,
    fingerprint: Any = None,
    on_error: Callable[[Any, str], dict] | None = None,
    schema: pa.Schema | None = None,
) -> EngineReport:
    """Compute every partition not already finished in `parts_dir` and write it as part-NNNNN.parquet.

    fingerprint: what, besides the items, decides the output (e.g. the backbone and preprocessing): a part
    made under another fingerprint or from other items is recomputed. on_error(item, message) -> the row
    of an item whose partition failed twice (default: {"error": message}). schema: the parts' Arrow schema
    (needed when a failed partition's error rows must match the good ones).
    """
    t0 = time.perf_counter()
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    job_fp = _digest(fingerprint)
    digests = [_digest([job_fp, list(p)]) for p in partitions]
    for stale in parts_dir.glob("part-*.parquet"):  # left from a longer input: never part of this job's output
        try:
            index = int(stale.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        if index >= len(partitions):
            stale.unlink()
    write_json({"fingerprint": fingerprint, "fingerprint_sha256": job_fp, "n_partitions": len(partitions),
                "n_items": sum(len(p) for p in partitions), "input_sha256": _digest(digests),
                "engine": engine.to_dict()}, parts_dir / JOB_JSON)
    report = EngineReport(n_partitions=len(partitions))
    todo = []
    for i, d in enumerate(digests):
        if _finished(part_path(parts_dir, i), d):
            report.skipped.append(i)
        else:
            todo.append(i)
    if report.skipped:
        logger.info("%s: %d of %d partitions already finished, %d to compute",
                    parts_dir, len(report.skipped), len(partitions), len(todo))

    def done(i: int, rows: Any, worker: str) -> None:
        _write_part(part_path(parts_dir, i), _to_table(rows, schema), digests[i], failed=False)
        report.computed.append(i)
        report.workers[worker] = report.workers.get(worker, 0) + 1

    def give_up(i: int, message: str) -> None:
        logger.error("partition %d (%d items) failed %d times, its rows carry the error: %s",
                     i, len(partitions[i]), engine.retries + 1, message)
        make = on_error or (lambda item, msg: {"error": msg})
        rows = [make(item, f"worker failed: {message}") for item in partitions[i]]
        _write_part(part_path(parts_dir, i), _to_table(rows, schema), digests[i], failed=True)
        report.failed.append(i)

    if todo:
        runner = _run_ray if engine.name == "ray" else _run_local
        runner(fn, setup, partitions, todo, engine, report, done, give_up)
    report.seconds = time.perf_counter() - t0
    logger.info("%s: %d partitions computed (%d retried, %d failed), %d skipped in %.1f s on %d worker(s)",
                parts_dir, len(report.computed), len(report.retried), len(report.failed), len(report.skipped),
                report.seconds, len(report.workers))
    return report


def _run_local(fn, setup, partitions, todo, engine, report, done, give_up) -> None:
    """The same partitions in this process: one state, partitions in order (no cluster needed)."""
    t0 = time.perf_counter()
    worker = _Worker(fn, setup, 1, own_process=False)
    report.setups += setup is not None
    report.start_seconds = time.perf_counter() - t0
    for i in todo:
        for attempt in range(engine.retries + 1):
            try:
                rows, wid = worker.run(partitions[i])
            except Exception as exc:  # noqa: BLE001 - a partition's failure is recorded in its rows, never the job's end
                message = f"{type(exc).__name__}: {exc}"
                if attempt < engine.retries:
                    logger.warning("partition %d raised (%s); retrying", i, message)
                    report.retried.append(i)
                    continue
                give_up(i, message)
                break
            done(i, rows, wid)
            break


def _ray():
    try:
        import ray
    except ImportError:
        raise EngineUnavailable("the ray engine needs Ray: pip install 'geopin[cluster]'") from None
    return ray


def ray_shutdown() -> None:
    """Stop the Ray cluster this process started or joined (start_ray returned True)."""
    _ray().shutdown()


def start_ray(engine: EngineConfig) -> bool:
    """Connect to (address) or start (None: `workers` x `cpus_per_worker` CPUs) a Ray cluster; True if we started
    or joined it here (and so should shut it down), False when this process was already connected.

    A cluster started here is for this machine alone: every port it opens listens on loopback, no dashboard
    (Ray's job API runs any code for anyone who reaches it; see docs/cluster.md for a real cluster)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": False}
    if engine.address is None:
        kwargs["num_cpus"] = engine.workers * engine.cpus_per_worker
        kwargs["dashboard_host"] = LOOPBACK
        # the local cluster's processes inherit this: idle OpenMP threads sleep instead of spinning (see embed)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        kwargs["address"] = engine.address
    try:
        if engine.address is None:
            with _loopback_node():
                ray.init(**kwargs)
            _check_loopback(ray)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineUnavailable(f"cannot start or reach the Ray cluster at {engine.address or 'a new local cluster'}: "
                                f"{exc}") from None
    return True


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While a throwaway cluster starts: its node address is 127.0.0.1 (`ray.init(_node_ip_address="127.0.0.1")`
    cannot do this: Ray swaps a loopback address for the machine's routable one). The processes the cluster
    starts inherit the environment variable; this process reads the constant Ray took from it at import, so both
    are set, and both restored after: a later `--address` join from this process must advertise its real address.
    (_check_loopback fails closed should a Ray version drop the switch.)"""
    from ray._private import ray_constants

    old_env, old_const = os.environ.get(_RAY_CLUSTER_ENV), getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[_RAY_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = old_env


def _check_loopback(ray) -> None:
    """Fail closed: a Ray version that ignores the switch above must not leave a cluster open to the network."""
    address = ray.util.get_node_ip_address()
    if not address.startswith("127.") and address != "::1":
        ray.shutdown()
        raise RuntimeError(f"the throwaway Ray cluster took the address {address}, not loopback; refusing to run "
                           f"it (start a cluster yourself, firewalled, and pass --address: docs/cluster.md)")


def _run_ray(fn, setup, partitions, todo, engine, report, done, give_up) -> None:
    """Actors hold the state; each gets up to `in_flight` partitions; a raised or lost partition is retried."""
    ray = _ray()
    t0 = time.perf_counter()
    owned = start_ray(engine)
    try:
        # No per-actor runtime_env: it would bar Ray's pre-started workers and cost ~2 s per worker; idle OpenMP
        # threads are told to sleep through the environment the cluster was started with (start_ray, docs/cluster.md).
        actor_cls = ray.remote(_Worker).options(num_cpus=engine.cpus_per_worker, max_restarts=0, max_concurrency=1)
        n_workers = min(engine.workers, len(todo))
        actors = [actor_cls.remote(fn, setup, engine.cpus_per_worker) for _ in range(n_workers)]
        report.setups += n_workers if setup is not None else 0
        try:  # a setup that fails (no model, wrong backbone) fails the same on every worker: say so once
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayActorError as exc:
            raise EngineUnavailable(f"engine worker could not start: {_short_error(exc)}") from None
        report.start_seconds = time.perf_counter() - t0
        queue = deque(todo)
        attempts: dict[int, int] = {}
        in_flight: dict[Any, tuple[int, Any, int]] = {}  # ref -> (slot, actor, partition)

        def submit(slot: int) -> None:
            if queue:
                i = queue.popleft()
                in_flight[actors[slot].run.remote(partitions[i])] = (slot, actors[slot], i)

        for _ in range(engine.in_flight):
            for slot in range(n_workers):
                submit(slot)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, i = in_flight.pop(ref)
            try:
                rows, wid = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError,
                    ray.exceptions.WorkerCrashedError) as exc:
                if isinstance(exc, ray.exceptions.RayActorError) and actors[slot] is actor:
                    logger.warning("worker %d died; starting a new one", slot)
                    actors[slot] = actor_cls.remote(fn, setup, engine.cpus_per_worker)
                    report.setups += setup is not None
                message = _short_error(exc)
                attempts[i] = attempts.get(i, 0) + 1
                if attempts[i] <= engine.retries:
                    logger.warning("partition %d failed (%s); retrying", i, message)
                    report.retried.append(i)
                    queue.appendleft(i)
                else:
                    give_up(i, message)
            else:
                done(i, rows, wid)
            submit(slot)
        for actor in actors:
            ray.kill(actor)
    finally:
        if owned:
            ray.shutdown()


def _short_error(exc: BaseException) -> str:
    """The worker's own exception line, not Ray's wrapper and traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def report_brief(report: EngineReport) -> dict:
    return {"n_partitions": report.n_partitions, "computed": len(report.computed), "skipped": len(report.skipped),
            "retried": len(report.retried), "failed": len(report.failed), "workers": len(report.workers),
            "start_seconds": round(report.start_seconds, 2)}  # workers ready (and the cluster, when started here)
