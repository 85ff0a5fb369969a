"""The one background thread that writes out a run's buffered messages once they are old enough.

Live export needs something to happen when the app does nothing: a run hung on a provider that never
answers appends nothing more, yet its messages must reach an ended span within the live-export delay.
One daemon thread per process serves every run from a deadline heap; a run asks for a wake-up once per
flush window (when its buffer goes from empty to non-empty), not per message. The thread starts with
the first request, so nothing starts while no SDK provider records; a forked child starts its own
when it records its own runs.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from typing import Protocol

from kiln_otel._guard import report_internal_error

__all__ = ["Flushable", "schedule", "take_pending"]


class Flushable(Protocol):
    def flush_due(self) -> None:
        """Called on the flusher thread once the requested deadline has passed."""

    def flush_now(self, lock_timeout: float) -> None:
        """Called at process exit for whatever is still pending, due or not."""


_Entry = tuple[float, int, Flushable]


class _Flusher:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = threading.Lock()
        """Held while a flush runs, so a fork never copies a half-written segment."""
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, target: Flushable) -> None:
        """Call ``target.flush_due()`` on the flusher thread at ``deadline`` (``time.monotonic``)."""
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), target))
            if self._thread is None:
                self._start()
            elif self._heap[0][2] is target:
                self._cond.notify()

    def take_pending(self) -> list[Flushable]:
        """Every target still waiting, removed from the heap (for process exit: flush them now)."""
        with self._cond:
            targets = [target for _, _, target in self._heap]
            self._heap.clear()
            return targets

    def _start(self) -> None:
        thread = threading.Thread(target=self._serve, name="kiln-otel-live-export", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: runs still flush when they end
            return
        self._thread = thread

    def _serve(self) -> None:
        while True:
            target = self._next_due()
            with self._busy:
                _flush(target)
            del target

    def _next_due(self) -> Flushable:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait)

    # --- fork ----------------------------------------------------------------------------------
    # The child inherits the heap but not the thread. The runs in it belong to the parent, which
    # goes on exporting them: the child starts empty, or every pending message would be sent twice.
    def before_fork(self) -> None:
        self._busy.acquire()
        self._cond.acquire()

    def after_fork_in_parent(self) -> None:
        self._cond.release()
        self._busy.release()

    def after_fork_in_child(self) -> None:
        self._reset()


def _flush(target: Flushable) -> None:
    try:
        target.flush_due()
    except Exception as exc:
        try:
            report_internal_error("live export", exc)
        except Exception:  # strict mode (kiln-otel's own tests): fail loudly, keep the thread alive
            threading.excepthook(
                threading.ExceptHookArgs((type(exc), exc, exc.__traceback__, threading.current_thread()))
            )


_FLUSHER = _Flusher()
schedule = _FLUSHER.schedule
take_pending = _FLUSHER.take_pending

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FLUSHER.before_fork,
        after_in_parent=_FLUSHER.after_fork_in_parent,
        after_in_child=_FLUSHER.after_fork_in_child,
    )
