"""Group commit on SQLite: terminal requests arriving together share one durable commit.

One committer thread owns a connection of the :class:`~posterm.host.store.sqlite.Store`.
A request's transaction (a function of a :class:`~posterm.host.store.queries.Tx`) is
queued to it; the committer takes what is queued (at most ``max_batch``, waiting at most
``max_wait`` seconds for more once the first has come), opens one ``BEGIN IMMEDIATE``,
runs each request in its own ``SAVEPOINT`` (a request that raises is rolled back to it,
alone: the others keep their changes), and ends the batch with one ``COMMIT``: one WAL
``fdatasync`` for the whole batch. Only after the ``COMMIT`` has returned is any request
of the batch told its result, so an answer signed from it describes committed state: if
the ``COMMIT`` fails every request of the batch raises :class:`CommitFailed` (nothing of
it happened, no answer leaves), and a process killed before it leaves no trace of them.

Every ``store.write()`` / ``store.transaction()`` a request's function opens runs on the
committer's thread, inside the batch transaction, so it is a savepoint of it (see
:meth:`Store.write`): the service modules need no change.

A request that finds nothing to share with (the committer idle, nothing queued) is a batch
of one run on the caller's own thread and connection, the same way (``BEGIN IMMEDIATE``,
its savepoint, ``COMMIT``, then its result): the hand-off to the committer and back would
cost a lone request about as much as its commit. Batches still run one at a time (the
``_busy`` flag, taken under the queue's lock), so requests that arrive meanwhile queue for
the committer and share its next COMMIT; what an answer means does not change.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, TypeVar

from posterm.errors import PosError
from posterm.host.store.queries import Tx

__all__ = ["CommitFailed", "GroupCommit"]

log = logging.getLogger("posterm.host.store")
T = TypeVar("T")

MAX_BATCH = 64          # requests per COMMIT at most
MAX_WAIT = 0.0          # seconds the committer waits for more once one request is queued (0: takes what is there)
MAX_QUEUED = 4096       # requests waiting at once; one more waits for room (bounded by ``timeout``)
TIMEOUT = 30.0          # seconds a request waits for its batch's COMMIT before giving up


class CommitFailed(PosError):
    """The batch a request was in did not commit: nothing it did happened."""


class _Job:
    __slots__ = ("done", "error", "fn", "result", "state")

    def __init__(self, fn: Callable[[Tx], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.state = "queued"          # queued -> running -> done, or queued -> abandoned (under the lock)


class GroupCommit:
    """The committer of one store (see the module docstring). :meth:`run` from any thread;
    :meth:`close` stops it (requests still queued then raise :class:`CommitFailed`)."""

    def __init__(self, store, *, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT,
                 max_queued: int = MAX_QUEUED, timeout: float = TIMEOUT, direct: bool = True) -> None:
        if not 1 <= max_batch <= 10_000 or not 0 <= max_wait <= 1.0 or max_queued < 1 or timeout <= 0:
            raise ValueError("GroupCommit: 1 <= max_batch <= 10000, 0 <= max_wait <= 1 s, max_queued >= 1, timeout > 0")
        self.store = store
        self.max_batch, self.max_wait, self.max_queued, self.timeout = max_batch, max_wait, max_queued, timeout
        self._queue: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)     # a job was queued, or close()
        self._room = threading.Condition(self._lock)     # a job left the queue
        self._closed = False
        self.direct_path = direct  # a lone request runs on its caller's thread (False: always the committer's)
        self._busy = False        # a batch is running (the committer's, or a lone caller's own)
        self.direct = 0           # batches of one run on the caller's thread (counted in batches too)
        self.batches = 0          # COMMITs done
        self.requests = 0         # requests in them (committed)
        self.largest = 0          # the largest batch
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    def run(self, fn: Callable[[Tx], T]) -> T:
        """``fn(tx)`` in a durable transaction shared with the requests queued with it; its
        result once the batch has committed. Raises what ``fn`` raised (its changes undone,
        the batch's others kept) or :class:`CommitFailed` (the batch's COMMIT failed, the
        committer stopped, or no commit within ``timeout``).

        Called on the committer's own thread, or on a thread already in a transaction on
        the store, it runs there and then (a savepoint of that transaction): queueing it
        would wait on a commit that waits on the caller. With no batch running and nothing
        queued it is a batch of one on the caller's thread (counted in :attr:`direct`).
        """
        if threading.current_thread() is self._thread or self.store.in_transaction():
            with self.store.transaction() as tx:
                return fn(tx)
        job = _Job(fn)
        deadline = time.monotonic() + self.timeout
        with self._lock:
            direct = self.direct_path and not self._busy and not self._queue and not self._closed
            if direct:
                self._busy = True        # the committer waits for this batch of one to end
                job.state = "running"
        if direct:
            try:
                self._execute([job])
                self.direct += 1
            finally:
                self._idle()
            if job.error is not None:
                raise job.error
            return job.result  # type: ignore[return-value]
        with self._lock:
            while len(self._queue) >= self.max_queued and not self._closed:
                if not self._room.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    raise CommitFailed("group commit: queue full")
            if self._closed:
                raise CommitFailed("group commit: stopped")
            self._queue.append(job)
            self._more.notify()
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                if job.state == "queued":        # not started: it never will be
                    job.state = "abandoned"
                    raise CommitFailed(f"group commit: no commit in {self.timeout:g} s")
            job.done.wait()   # started: its batch ends (commit or rollback) without waiting on anyone
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the batch in hand; fail what is still queued. Bounded by ``timeout``."""
        with self._lock:
            self._closed = True
            self._more.notify_all()
            self._room.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the committer

    def _take(self) -> list[_Job] | None:
        """The next batch (None once closed and drained... or closed: queued jobs are failed)."""
        with self._lock:
            while (not self._queue or self._busy) and not self._closed:
                self._more.wait()
            if self._closed:
                left = list(self._queue)
                self._queue.clear()
                for job in left:
                    job.state = "done"
                    job.error = CommitFailed("group commit: stopped")
                    job.done.set()
                return None
            if self.max_wait > 0 and len(self._queue) < self.max_batch:
                end = time.monotonic() + self.max_wait
                while len(self._queue) < self.max_batch and not self._closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._more.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                if job.state == "queued":
                    job.state = "running"
                    batch.append(job)
            self._busy = bool(batch)
            self._room.notify_all()
            return batch

    def _loop(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                if batch:
                    try:
                        self._execute(batch)
                    finally:
                        self._idle()
        finally:
            try:
                self.store.close_thread()
            except Exception:  # noqa: BLE001 - the thread is ending; nothing to report to
                pass

    def _idle(self) -> None:
        """The batch in hand has ended: the next may start (the committer is told if one is
        queued; waking it for nothing would cost a lone request a thread switch each time)."""
        with self._lock:
            self._busy = False
            if self._queue:
                self._more.notify()

    def _execute(self, batch: list[_Job]) -> None:
        """:meth:`_run_batch` on this thread's connection; a failure of the connection itself
        fails the requests not yet told (nothing of them happened)."""
        try:
            self._run_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - the connection itself failed
            log.error("group commit batch failed: %s", exc)
            self._rollback()
            self._finish([j for j in batch if not j.done.is_set()], CommitFailed(f"batch failed: {exc}"))

    def _run_batch(self, batch: list[_Job]) -> None:
        c = self.store.conn()
        try:
            c.execute("BEGIN IMMEDIATE")
        except Exception as exc:  # noqa: BLE001 - handed to every caller
            return self._finish(batch, CommitFailed(f"could not begin: {exc}"))
        kept: list[_Job] = []
        for i, job in enumerate(batch):
            c.execute("SAVEPOINT request")
            try:
                job.result = job.fn(Tx(c))
            except BaseException as exc:  # noqa: BLE001 - the request's own failure, handed back to it
                job.error = exc
                if not c.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error): the
                    # batch so far is gone; the rest gets a transaction of its own.
                    self._finish(kept, CommitFailed(f"batch rolled back: {exc}"))
                    self._finish([job], None)
                    return self._run_batch(batch[i + 1:]) if i + 1 < len(batch) else None
                c.execute("ROLLBACK TO request")
                c.execute("RELEASE request")
                self._finish([job], None)      # its changes are undone: its error may leave now
                continue
            c.execute("RELEASE request")
            kept.append(job)
        try:
            self.commit(c)
        except BaseException as exc:  # noqa: BLE001 - no request of the batch happened
            log.error("group commit of %d requests failed: %s", len(kept), exc)
            self._rollback()
            return self._finish(kept, CommitFailed(f"commit failed: {exc}"))
        self.store.commits += 1
        self.batches += 1
        self.requests += len(kept)
        self.largest = max(self.largest, len(kept))
        self._finish(kept, None)

    def _rollback(self) -> None:
        try:
            c = self.store.conn()
            if c.in_transaction:
                c.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection: the next BEGIN says so
            pass

    def commit(self, c) -> None:
        """The batch's COMMIT (a method of its own so a test can make it fail or stop in it)."""
        c.execute("COMMIT")

    @staticmethod
    def _finish(jobs: list[_Job], error: BaseException | None) -> None:
        for job in jobs:
            if error is not None:
                job.error, job.result = error, None
            job.state = "done"
            job.done.set()
