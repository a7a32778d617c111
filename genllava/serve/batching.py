"""The bounded queue between the HTTP handlers and the one model copy.

Handlers submit jobs (one conversation, n replies); one worker thread takes the oldest job, waits
`batch_wait_ms` for company (longer while the server is busy, see BUSY_WAIT_SHARE), and runs every
queued job with the same generation options (task,
max tokens, sampling, guidance, steps, strength) in one batched `GenLlava.generate` call, up to
`max_batch` rows. Each row carries its own seed, so a reply is the same whatever shares its batch
(up to the float rounding that padding brings). A full queue refuses at once (429); closing lets
the queued and running jobs finish."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from ..data.conversation import Message

log = logging.getLogger("genllava.serve")


# While the last generate call held several rows, a batch waits for company up to this share of
# that call's time: the clients it just answered come back within milliseconds, and without the
# wait a steady load splits into half-size batches that take turns
# (docs/findings/2026-11-30-serving-speed.md).
BUSY_WAIT_SHARE = 0.05


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class Job:
    messages: list[Message]
    images: list[Image.Image]  # the user turns' images, in order
    init_image: Image.Image | None  # where an edit with strength < 1 starts
    seed: int
    n: int
    options: dict  # generate's keyword arguments shared by a batch
    on_text: Callable[[int, str], None] | None = None  # hears reply k's words as they are written (streaming)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.options.items()))


class Batcher:
    def __init__(self, model, max_queue: int = 64, max_batch: int = 8, batch_wait_ms: float = 5.0,
                 own_thread: bool = True):
        """`own_thread` False: the caller runs `run()` in a thread of its own choosing (`genllava serve`
        runs it in the main thread, see server.py)."""
        self.model, self.max_queue, self.max_batch, self.batch_wait = model, max_queue, max_batch, batch_wait_ms / 1000
        self._queue: deque[Job] = deque()
        self._running = 0  # jobs inside a generate call
        self._lock = threading.Condition()
        self._closing = False
        self._stopped = threading.Event()
        self.stats = {"calls": 0, "rows": 0, "largest": 0}  # generate calls and their rows (tests, benchmarks)
        self._last_call = (0, 0.0)  # rows and seconds of the latest generate call
        if own_thread:
            threading.Thread(target=self.run, name="genllava-batcher", daemon=True).start()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + self._running

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if len(self._queue) + self._running >= self.max_queue:
                raise QueueFull()
            self._queue.append(job)
            self._lock.notify_all()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued and running ones, stop the worker."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._stopped.wait(timeout)

    # ---- the worker ----------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._lock:
            while True:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft().future.cancel()
                if self._queue:
                    break
                if self._closing:
                    return None
                self._lock.wait()
            first = self._queue[0]
            last_rows, last_seconds = self._last_call
            busy_wait = BUSY_WAIT_SHARE * last_seconds if last_rows > 1 else 0.0
            deadline = time.monotonic() + max(self.batch_wait, busy_wait)
            while (not self._closing and sum(j.n for j in self._queue if j.key == first.key) < self.max_batch
                   and (left := deadline - time.monotonic()) > 0):
                self._lock.wait(left)
            batch, rows = [], 0
            for job in list(self._queue):
                if job.cancelled:
                    self._queue.remove(job)
                    job.future.cancel()
                elif job.key == first.key and (not batch or rows + job.n <= self.max_batch):
                    self._queue.remove(job)
                    batch.append(job)
                    rows += job.n
            self._running = len(batch)
            return batch

    def run(self) -> None:
        """The worker: takes batches and runs them until close()."""
        try:
            while (batch := self._take()) is not None:
                try:
                    self._run(batch)
                finally:
                    with self._lock:
                        self._running = 0
                        self._lock.notify_all()
        finally:
            self._stopped.set()

    def _generate(self, jobs: list[Job]) -> list:
        rows = [(job, k) for job in jobs for k in range(job.n)]
        self.stats["calls"] += 1
        self.stats["rows"] += len(rows)
        self.stats["largest"] = max(self.stats["largest"], len(rows))
        def on_text(row: int, delta: str) -> None:
            job, k = rows[row]
            if job.on_text is not None:
                job.on_text(k, delta)

        streaming = any(job.on_text is not None for job in jobs)
        start = time.monotonic()
        try:
            return self.model.generate([job.messages for job, _ in rows], [job.images for job, _ in rows],
                                       init_images=[job.init_image for job, _ in rows],
                                       seed=[job.seed + k for job, k in rows], on_text=on_text if streaming else None,
                                       **jobs[0].options)
        finally:
            self._last_call = (len(rows), time.monotonic() - start)

    def _run(self, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            replies = self._generate(jobs)
        except Exception as err:  # noqa: BLE001 - one bad job must not fail its batch-mates
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            log.warning("a batch of %d failed (%s); running its jobs one by one", len(jobs), err)
            for job in jobs:
                try:
                    job.future.set_result(self._generate([job]))
                except Exception as one:  # noqa: BLE001
                    job.future.set_exception(one)
            return
        start = 0
        for job in jobs:
            job.future.set_result(replies[start:start + job.n])
            start += job.n
