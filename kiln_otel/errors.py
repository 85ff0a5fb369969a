"""Every exception kiln-otel raises or hands back.

::

    Exception
     ├── KilnRunError               a traced run failed; wraps the app's own exception (.original)
     ├── RunInterruptedError        a run that ended without the app ending or failing it
     │    ├── ProcessExitedError        the interpreter exited with the run still open
     │    ├── ProcessTerminatedError    a signal (SIGTERM) stopped the process with the run still open
     │    ├── RunAbandonedError         the app dropped the run without ending it
     │    └── RunNotEndedError          rebuilt from telemetry: the run's span never ended
     └── KilnOtelError              kiln-otel itself could not do what was asked
          └── ReconstructionError   telemetry could not be turned back into a trace
               ├── TraceNotFoundError      no kiln-otel run with that trace id in the source
               ├── AmbiguousTraceError     several runs match: pass trace_id (or span_id)
               ├── NotKilnTelemetryError   the spans hold no kiln-otel run at all
               └── MalformedTelemetryError the source is not OTLP / Jaeger data we can read

The `RunInterruptedError` family is never raised into an app: nobody is left to catch it. kiln-otel
records it on the run's span as the reason the run ended (``error.type``, the ``exception`` event, the
status), so the payload rebuilt from telemetry names the ending (``error_type``) and says what happened
(``message``). `RunNotEndedError` is only ever a rebuilt payload's ``error_type``: a run killed by
SIGKILL or ``os._exit``, or one still hung or running when its telemetry was read.

`KilnRunError` keeps Kiln's shape (``KilnRunError(message, partial_trace, original)``) so Kiln's
adapter and UI take it unchanged. kiln-otel never raises anything into a running app except that:
its own failures while recording are logged and swallowed (see ``kiln_otel._guard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln_otel.payload import ErrorWithTrace

__all__ = [
    "AmbiguousTraceError",
    "KilnOtelError",
    "KilnRunError",
    "MalformedTelemetryError",
    "NotKilnTelemetryError",
    "ProcessExitedError",
    "ProcessTerminatedError",
    "ReconstructionError",
    "RunAbandonedError",
    "RunInterruptedError",
    "RunNotEndedError",
    "TraceNotFoundError",
]


_RUN_REDACTION: Any = object()


class KilnRunError(Exception):
    """A run failed. ``str(err)`` is safe to show a user; ``.original`` is the real exception.

    Retry logic must look at ``.original`` (Kiln's eval runner once never retried because a wrapper hid
    the litellm type), so it is always the very object that was raised, never a copy.
    """

    def __init__(
        self,
        message: str,
        partial_trace: Sequence[Any] | None,
        original: BaseException,
        *,
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        super().__init__(message)
        # Set here, not only by ``raise ... from``: `TracedRun.fail` hands back a nested run's error
        # unchanged, and ``raise run.fail(e) from e`` would then make it its own cause.
        self.__cause__ = original
        self.message = message
        self.partial_trace = partial_trace
        self.original = original
        self.trace_id = trace_id
        self.span_id = span_id
        self.redact: Any = "default"
        """The redaction the run used; `to_error_with_trace` applies the same one by default."""
        self.max_message_bytes: int | None = None
        """The run's per-message budget: `to_error_with_trace` cuts messages as the run's events did."""

    @property
    def error_type(self) -> str:
        return type(self.original).__name__

    def to_error_with_trace(self, *, redact: Any = _RUN_REDACTION) -> ErrorWithTrace:
        """The payload an app serves: Kiln's keys plus trace/span ids, the trace passed through redaction.

        By default the trace is redacted exactly as the run redacted its events, so what an app sends
        equals what `reconstruct_error` rebuilds from the exported telemetry. ``redact`` overrides it:
        a `kiln_otel.Redactor`, a ``str -> str`` callable, ``"default"``, or None for no redaction.
        """
        from kiln_otel.payload import error_with_trace

        return error_with_trace(self, redact=self.redact if redact is _RUN_REDACTION else redact)


class RunInterruptedError(Exception):
    """Why a run ended when neither the app's code nor ``with`` ended it; recorded, never raised.

    ``str(err)`` is the user-facing message (the run span's status description and the rebuilt
    payload's ``message``); each subclass has its own default.
    """

    default_message = "The run was interrupted."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class ProcessExitedError(RunInterruptedError):
    """Normal exit, ``sys.exit`` or an uncaught exception with a hand-driven run still open.

    With an uncaught exception, kiln-otel records that exception itself (its type, its stack) and
    only uses this message; this class is the ``error.type`` when no exception explains the exit.
    """

    default_message = "The process exited while the run was in progress."


class ProcessTerminatedError(RunInterruptedError):
    """The handler `configure_tracing` installs for SIGTERM (or SIGINT set to its default) ended the run."""

    default_message = "The process was stopped by a signal while the run was in progress."


class RunAbandonedError(RunInterruptedError):
    """The last reference to a hand-driven run went away while it was open: no ``run.end()`` or
    ``run.fail()`` ran (a forgotten call, or a ``CancelledError`` that skipped ``except Exception``).
    kiln-otel ends it when the next run starts, or at exit, so its span is not left open forever."""

    default_message = "The run was abandoned: it was dropped before it ended."


class RunNotEndedError(RunInterruptedError):
    """The telemetry holds the run's messages but not its ended span: SIGKILL, ``os._exit``, a hang."""

    default_message = "The run did not end: the process died or the run is still going."


class KilnOtelError(Exception):
    """Base of the errors kiln-otel raises for its own reasons (never while recording a run)."""


class ReconstructionError(KilnOtelError):
    """Telemetry could not be turned back into a trace; the message says why and what to pass instead."""


class TraceNotFoundError(ReconstructionError):
    pass


class AmbiguousTraceError(ReconstructionError):
    pass


class NotKilnTelemetryError(ReconstructionError):
    pass


class MalformedTelemetryError(ReconstructionError):
    pass
