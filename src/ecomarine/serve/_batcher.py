"""Micro-batching: photos from many requests share the networks' forward passes.

One worker thread owns the pipeline. Requests put jobs on a queue; the worker takes the
first job, waits at most ``max_wait`` for more photos (up to ``max_batch``), runs them
through :meth:`~ecomarine.pipeline.Pipeline.predict_many` together, and hands each job
its own predictions. Anything else that touches the pipeline or its gallery (enrolment,
sightings, listing individuals) runs on the same thread between batches, so nothing
needs a lock and a reader never sees a half-updated gallery.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..pipeline import Pipeline
from ..types import Prediction

__all__ = ["Batcher", "BusyError", "ClosedError"]

logger = logging.getLogger(__name__)


class BusyError(RuntimeError):
    """The queue is full: the caller should try again later (HTTP 503)."""


class ClosedError(RuntimeError):
    """The service is shutting down."""


@dataclass
class _Photos:
    names: list[str]
    data: list[bytes]
    future: Future[list[Prediction]]


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


class Batcher:
    """The worker thread and its queue.

    Args:
        pipeline: The pipeline (used from the worker thread only).
        max_batch: Photos per network pass.
        max_wait: Seconds the first photo waits for company.
        max_queue: Photos waiting at most (:class:`BusyError` beyond).
        num_workers: Decode threads per batch.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_queue: int = 1024,
        num_workers: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.num_workers = num_workers
        self._queue: queue.Queue[_Photos | _Call | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._closed = False
        #: Forward passes run and photos predicted (for the model endpoint and benchmarks).
        self.batches = 0
        self.photos = 0
        self._thread = threading.Thread(target=self._run, name="ecomarine-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Photos queued or in the running batch."""
        return self._waiting

    def predict(self, names: Sequence[str], data: Sequence[bytes]) -> Future[list[Prediction]]:
        """Queue photos; the future gets their predictions, in order, named ``names``.

        Raises:
            BusyError: When the queue holds ``max_queue`` photos already.
            ClosedError: After :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise ClosedError("the service is shutting down")
            if self._waiting + len(data) > self.max_queue:
                raise BusyError(f"{self._waiting} photos are waiting; try again shortly")
            self._waiting += len(data)
        future: Future[list[Prediction]] = Future()
        self._queue.put(_Photos(list(names), list(data), future))
        return future

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the worker thread, between batches.

        Raises:
            ClosedError: After :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise ClosedError("the service is shutting down")
        future: Future[Any] = Future()
        self._queue.put(_Call(fn, future))
        return future

    def close(self, timeout: float = 60.0) -> None:
        """Finish the queued work, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # --- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        carry: _Photos | _Call | None = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is None:
                return
            if isinstance(item, _Call):
                _settle(item.future, item.fn)
                continue
            jobs = [item]
            count = len(item.data)
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _Photos):
                    carry = nxt if nxt is not None else _Stop
                    break
                jobs.append(nxt)
                count += len(nxt.data)
            self._predict(jobs, count)
            if carry is _Stop:
                return

    def _predict(self, jobs: list[_Photos], count: int) -> None:
        data = [d for job in jobs for d in job.data]
        try:
            preds = list(
                self.pipeline.predict_many(
                    data, batch_size=self.max_batch, num_workers=self.num_workers
                )
            )
        except Exception as exc:  # handed to every waiting request
            logger.exception("batch of %d photos failed", count)
            for job in jobs:
                job.future.set_exception(exc)
        else:
            start = 0
            for job in jobs:
                mine = preds[start : start + len(job.data)]
                start += len(job.data)
                named = [
                    dataclasses.replace(p, source=n) for p, n in zip(mine, job.names, strict=True)
                ]
                job.future.set_result(named)
            self.batches += 1
            self.photos += count
        finally:
            with self._lock:
                self._waiting -= count


_Stop: Any = object()  # a sentinel met while filling a batch: stop after it


def _settle(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except Exception as exc:  # the caller turns it into an HTTP answer
        future.set_exception(exc)
