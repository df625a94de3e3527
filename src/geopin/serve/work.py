"""How the server schedules model work: predictions batched on their own thread, explanations on another,
cancellable and always yielding to predictions.

Why:
- one user's occlusion map (tens of forward passes) must not hold every prediction behind it, so
  explanations run on a thread of their own and, before each forward pass, wait while predictions are
  in flight (up to `yield_s`, so an explanation still progresses under constant load);
- an explanation nobody will read (its client left, or the page sent a new photo and aborted the old
  request) is stopped at its next forward pass instead of running to the end;
- concurrent predictions are gathered for a few milliseconds and run as one batch: one forward pass of
  B photos costs much less than B passes on a CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class ExplainCancelled(Exception):
    """Raised inside an explanation at its next forward pass once it is no longer wanted."""


# ------------------------------------------------------------------------------------------ predictions


@dataclass
class PredictJob:
    """One decoded upload waiting for the model."""

    image: Any
    data: bytes
    name: str
    k: int
    row: dict = field(default_factory=dict)  # the answer's first fields (path; evidence_error when reading failed)


@dataclass
class NeedsText:
    """A photo embedded in a batch whose text the gate wants read first: its features, answered once read.

    Reading (~0.4 s) then happens beside the model thread, so a batch never waits for one photo's OCR, and
    the photos the gate expects no text on are answered at once."""

    emb: Any  # (1, dim) features of the photo


class PredictBatcher:
    """Gathers prediction jobs for up to `window_s` (or `max_batch` jobs) and hands them to `run_batch`
    on `pool` as one list; `run_batch` returns one result or exception per job, in order.

    While a batch runs, the next one gathers, so under load batches grow to `max_batch` by themselves.
    A job whose request gave up (its future cancelled by a timeout) is dropped before it runs.
    """

    def __init__(self, run_batch: Callable[[list[PredictJob]], list[Any]], pool, window_s: float, max_batch: int) -> None:
        self.run_batch = run_batch
        self.pool = pool
        self.window_s = max(0.0, window_s)
        self.max_batch = max(1, max_batch)
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # for tests and logs: how the jobs were grouped

    def start(self) -> None:
        """Start gathering on the running event loop (the server's lifespan)."""
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._gather(), name="geopin-predict-batcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def submit(self, job: PredictJob) -> asyncio.Future:
        """The future of `job`'s result; cancel it to drop the job if it has not run yet."""
        if self.queue is None:
            raise RuntimeError("PredictBatcher.start() was not called (the server's lifespan did not run)")
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((job, fut))
        return fut

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            end = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = end - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            live = [(job, fut) for job, fut in batch if not fut.done()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            try:
                results = await loop.run_in_executor(self.pool, self.run_batch, [job for job, _ in live])
            except Exception as exc:  # noqa: BLE001 - run_batch reports per job; this is the pool itself failing
                results = [exc] * len(live)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


# ------------------------------------------------------------------------------------------ explanations


@dataclass
class ExplainJob:
    """One explanation: `cancel` is set when nobody wants it any more; `checkpoint` runs before each forward pass."""

    predictions_idle: threading.Event
    yield_s: float
    cancel: threading.Event = field(default_factory=threading.Event)
    waited_s: float = 0.0  # time spent yielding to predictions (logged)
    passes: int = 0

    def checkpoint(self) -> None:
        """Stop if cancelled; else let predictions in flight go first (for at most yield_s)."""
        import time

        if self.cancel.is_set():
            raise ExplainCancelled("the explanation is no longer wanted")
        if not self.predictions_idle.is_set():
            t = time.monotonic()
            self.predictions_idle.wait(self.yield_s)
            self.waited_s += time.monotonic() - t
            if self.cancel.is_set():
                raise ExplainCancelled("the explanation is no longer wanted")
        self.passes += 1


_current = threading.local()  # the ExplainJob the calling thread runs, if any
_hooked: weakref.WeakSet = weakref.WeakSet()  # modules carrying the checkpoint hook (once per module)


def _checkpoint_hook(_module, _args) -> None:
    job = getattr(_current, "job", None)
    if job is not None:
        job.checkpoint()


def hook_forward_passes(model) -> bool:
    """Make every forward pass of `model` on an explanation's thread a checkpoint of that explanation.

    A forward pre-hook that does nothing on other threads (predictions share the model). False, with a
    log line, when `model` is not a torch module: explanations then cannot be stopped midway.
    """
    register = getattr(model, "register_forward_pre_hook", None)
    if register is None:
        log.info("backbone %s has no forward hooks: explanations are cancelled only before they start",
                 type(model).__name__)
        return False
    if model not in _hooked:
        register(_checkpoint_hook)
        _hooked.add(model)
    return True


def run_explain_job(job: ExplainJob, work: Callable[[], Any]) -> Any:
    """work() with `job` as this thread's current explanation (its forward passes are checkpoints)."""
    job.checkpoint()
    _current.job = job
    try:
        return work()
    finally:
        _current.job = None


__all__ = ["ExplainCancelled", "ExplainJob", "NeedsText", "PredictBatcher", "PredictJob", "hook_forward_passes", "run_explain_job"]
