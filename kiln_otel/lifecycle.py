"""Runs still open when the process goes: ended as failed at interpreter exit or on SIGTERM, then flushed.

A span that never ends is never exported, and neither ``atexit`` nor ``finally`` runs on SIGTERM's
default action. So kiln-otel keeps a registry of the runs that are open and of the providers runs
recorded into, and ends the open runs itself when the process is on its way out:

- at interpreter exit (normal exit, ``sys.exit``, an uncaught exception): an ``atexit`` hook, kept
  registered after every provider a run uses so it runs before that provider's own shutdown (atexit
  is LIFO), ends each open run as failed (`ProcessExitedError`, or the uncaught exception itself),
  then flushes those runs' providers;
- on SIGTERM (and SIGINT when it is set to its default action), only when the app asked for it with
  `configure_tracing` and never over a handler the app set: the same, every known provider flushed
  (a run that had already ended waits in the batch queue too), then the previous disposition is put
  back and the signal raised again, so the process ends exactly as it would have.

A run the app drops without ending it (a forgotten ``run.end()``, a ``CancelledError`` that skipped an
``except Exception``) is not kept alive for that: the registry holds runs weakly, and a dropped run is
ended as `RunAbandonedError` when the next run starts, or at exit. The drop itself only appends to a
deque (garbage collection may run it anywhere, inside any lock); the ending happens later, in
ordinary code.

Everything here is bounded by the exporter timeout: losing telemetry beats holding a dying process.
SIGKILL and ``os._exit`` run nothing; live export (`kiln_otel.recorder`) is what bounds their loss.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from kiln_otel import _flusher
from kiln_otel._guard import logger, report_internal_error
from kiln_otel.config import SHUTDOWN_SLACK_SECONDS, export_timeout
from kiln_otel.errors import ProcessExitedError, ProcessTerminatedError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from kiln_otel.messages import TracedMessages
    from kiln_otel.recorder import Recorder
    from kiln_otel.run import TracedRun

__all__ = [
    "LOCK_TIMEOUT_SECONDS",
    "Tracking",
    "add_provider",
    "end_dropped_runs",
    "end_open_runs",
    "forget",
    "install_signal_handlers",
    "run_within",
    "track",
]

LOCK_TIMEOUT_SECONDS = 0.5
"""How long ending a run waits for its list's lock before going on without it (its holder is stuck)."""

Ending = Callable[["TracedRun"], tuple[BaseException, str]]
"""For one open run: the error to record and the user-facing message to give it."""

Dropped = tuple["Span", "Recorder", "TracedMessages"]
"""What ending a run takes, kept apart from the run object so the run itself can be collected."""

_lock = threading.Lock()
_open: weakref.WeakValueDictionary[int, TracedRun] = weakref.WeakValueDictionary()
_order = itertools.count()
_dropped: deque[Dropped] = deque()
_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()
_previous_handlers: dict[int, Any] = {}
_stopping = False


# --- the registry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tracking:
    """An open run's place in the registry; `forget` it when the run ends."""

    key: int
    dropped: weakref.finalize[Any, TracedRun]


def track(run: TracedRun, provider: TracerProvider, parts: Dropped) -> Tracking:
    """Remember an open recording run until `forget`. Cheap: once per run.

    ``parts`` are what ending the run takes should the app drop it; they are queued when the run is
    collected, and the runs dropped so far are ended here, in the next run's ordinary code.
    """
    key = next(_order)
    dropped = weakref.finalize(run, _dropped.append, parts)
    dropped.atexit = False  # exit is ours to handle, before the providers shut down
    with _lock:
        _open[key] = run
        new = _remember(provider)
    if new:
        _keep_exit_hook_last()
    if _dropped:
        end_dropped_runs(LOCK_TIMEOUT_SECONDS)
    return Tracking(key, dropped)


def forget(tracking: Tracking) -> None:
    tracking.dropped.detach()
    with _lock:
        _open.pop(tracking.key, None)


def end_dropped_runs(lock_timeout: float) -> None:
    """End, as `RunAbandonedError`, every run collected while open since the last call."""
    from kiln_otel.run import end_abandoned

    while True:
        try:
            span, recorder, messages = _dropped.popleft()
        except IndexError:
            return
        end_abandoned(span, recorder, messages, lock_timeout)


def add_provider(provider: TracerProvider) -> None:
    """A provider to flush on SIGTERM even before any run used it (`configure_tracing`'s)."""
    with _lock:
        new = _remember(provider)
    if new:
        _keep_exit_hook_last()


def _remember(provider: TracerProvider) -> bool:
    try:
        if provider in _providers:
            return False
        _providers.add(provider)
    except TypeError:  # not weakly referenceable: nothing to flush it with later
        return False
    return True


def _keep_exit_hook_last() -> None:
    """Re-register so the hook runs before the shutdown of every provider created so far (LIFO)."""
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _forget_everything_in_child() -> None:
    """A forked child's copies of open runs are the parent's: ending them here would send them twice."""
    global _lock, _stopping
    _lock = threading.Lock()
    for run in list(_open.values()):
        tracking = run._tracking
        if tracking is not None:
            tracking.dropped.detach()
    _open.clear()
    _dropped.clear()
    _stopping = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_everything_in_child)


# --- ending what is open ---------------------------------------------------------------------------
def end_open_runs(ending: Ending, providers: Iterable[TracerProvider] | None = None, *, bound: float) -> None:
    """End every open run (newest first: nested runs before their parents), then flush.

    ``providers`` None flushes the providers of the runs just ended. Waits at most ``bound`` seconds
    for the flushes; ending a run waits at most `LOCK_TIMEOUT_SECONDS` for its lock.
    """
    deadline = time.monotonic() + bound
    end_dropped_runs(LOCK_TIMEOUT_SECONDS)
    with _lock:
        runs = [run for _, run in sorted(_open.items(), key=lambda item: item[0], reverse=True)]
    to_flush = list(providers) if providers is not None else [run._provider for run in runs]
    for run in runs:
        try:
            error, message = ending(run)
            run._end_unfinished(error, message, LOCK_TIMEOUT_SECONDS)
        except Exception as exc:
            report_internal_error("end_open_runs", exc)
    for pending in _flusher.take_pending():  # runs dropped without ending: their last messages
        pending.flush_now(LOCK_TIMEOUT_SECONDS)
    flushed: set[int] = set()
    for provider in to_flush:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or id(provider) in flushed:
            continue
        flushed.add(id(provider))
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            run_within(lambda f=flush, ms=int(remaining * 1000): f(ms), remaining)  # type: ignore[misc]


def _exit_ending(uncaught: BaseException | None) -> Ending:
    """The uncaught exception, when there is one, is what ended the run: it is recorded itself."""

    def ending(run: TracedRun) -> tuple[BaseException, str]:
        if uncaught is None:
            error = ProcessExitedError()
            return error, str(error)
        return uncaught, run._exit_message(uncaught)

    return ending


def _at_exit() -> None:
    uncaught = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    end_open_runs(_exit_ending(uncaught), bound=_exit_bound())


def _exit_bound() -> float:
    return export_timeout() + SHUTDOWN_SLACK_SECONDS


# --- signals ---------------------------------------------------------------------------------------
def install_signal_handlers(signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> tuple[int, ...]:
    """Handle these signals where their disposition is the default action; returns those handled.

    Only from the main thread (the only one Python lets set handlers) and never over a handler the
    app (or Python, for SIGINT's KeyboardInterrupt) already set: that handler is the app's to chain.
    """
    if threading.current_thread() is not threading.main_thread():
        return ()
    installed = []
    for signum in signums:
        try:
            if signal.getsignal(signum) != signal.SIG_DFL:
                continue
            _previous_handlers[signum] = signal.signal(signum, _on_signal)
        except (ValueError, OSError) as exc:  # not a signal this platform can handle
            logger.debug("kiln-otel: not handling signal %s: %r", signum, exc)
            continue
        installed.append(signum)
    return tuple(installed)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """End open runs, flush every provider (bounded), then let the signal do what it would have done."""
    global _stopping
    if not _stopping:  # a second signal while cleaning up goes straight through
        _stopping = True
        error = ProcessTerminatedError(
            f"The process was stopped by {signal.Signals(signum).name} while the run was in progress."
        )
        with _lock:
            providers = list(_providers)
        bound = _exit_bound()
        try:
            run_within(lambda: end_open_runs(lambda run: (error, str(error)), providers, bound=bound), bound)
        except Exception as exc:
            logger.warning("kiln-otel: could not end the open runs on signal %s: %r", signum, exc)
    signal.signal(signum, _previous_handlers.get(signum, signal.SIG_DFL))
    os.kill(os.getpid(), signum)


# --- bounded waiting -------------------------------------------------------------------------------
def run_within(work: Callable[[], object], seconds: float) -> bool:
    """Run ``work`` in a daemon thread and wait at most ``seconds``; True if it finished.

    A thread, not a timeout argument: SDK flushes do not all honour theirs, and in a signal handler
    the interrupted code may hold a lock the work needs; the process must leave either way.
    """

    def run() -> None:
        try:
            work()
        except Exception as exc:
            logger.warning("kiln-otel: span export or run shutdown failed: %r", exc)

    thread = threading.Thread(target=run, name="kiln-otel-bounded", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    return not thread.is_alive()
