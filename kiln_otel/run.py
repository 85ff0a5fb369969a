"""`traced_run`: one agent run as an ``invoke_agent`` span whose message list records itself.

Use it as ``with`` / ``async with``; code that already owns its try/except (Kiln's adapter) calls
``run.fail(exc)`` and ``run.end()`` itself. Either way the contract on failure is the same: the span
is marked errored with a redacted exception event, and the app gets a `KilnRunError` whose
``.original`` is the very exception that was raised. kiln-otel's own failures never replace it.

A run is never left open silently: cancellation (``asyncio.CancelledError``, ``KeyboardInterrupt``)
is recorded as such and propagates unchanged, and a run still open when the process exits (or gets
SIGTERM, with `configure_tracing`) is ended by `kiln_otel.lifecycle`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from kiln_otel import lifecycle, wire
from kiln_otel._guard import report_internal_error
from kiln_otel._tracers import tracer_for
from kiln_otel.config import Settings, resolve_settings
from kiln_otel.error_messages import GENERIC_MESSAGE, format_error_message
from kiln_otel.errors import KilnRunError, ProcessExitedError, RunAbandonedError, RunInterruptedError
from kiln_otel.messages import TracedMessages
from kiln_otel.recorder import Recorder
from kiln_otel.redaction import RedactSetting
from kiln_otel.span_errors import FailureLog, collect_failures, record_failure, record_run_failure, stop_collecting

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["CANCELLED_MESSAGE", "TracedRun", "current_run", "is_cancellation", "traced_run"]

CANCELLED_MESSAGE = "The run was cancelled."

_current: ContextVar[TracedRun | None] = ContextVar("kiln_otel_current_run", default=None)


def current_run() -> TracedRun | None:
    """The innermost run active in this context, for integrations that attach to it (litellm)."""
    return _current.get()


def _suppressed() -> bool:
    return bool(otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY))


def is_cancellation(exc: BaseException) -> bool:
    """``KeyboardInterrupt`` or ``asyncio.CancelledError``: someone stopped the run, it did not fail.

    asyncio is looked up, not imported: if nothing imported it, nothing raised its CancelledError.
    """
    if isinstance(exc, KeyboardInterrupt):
        return True
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


class TracedRun:
    """A started agent run: its span, its `TracedMessages`, and the way it ends.

    Every keyword falls back to its environment variable, then its default (see `kiln_otel.config`).
    ``redact`` masks secrets in each message and in exception text before they are recorded: the
    default `Redactor`, your own ``str -> str`` hook, or None to record as-is.

    The span starts when the object is made, so ``run.messages`` records from the first append even
    when the run is driven by hand; entering it as a context manager also makes the span current, so
    model and tool spans nest under it. Inside the run, ``tracer_provider`` and ``meter_provider`` are
    what `kiln_otel.litellm` uses when it is not given its own.

    ``live_export_delay`` (seconds, ``KILN_OTEL_LIVE_EXPORT_DELAY``, default 1) bounds how long a
    recorded message waits before it is on an ended, exportable span: what a killed or hung process
    can lose (see `kiln_otel.recorder`).
    """

    def __init__(
        self,
        name: str | None,
        *,
        conversation_id: str | None = None,
        provider_name: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        messages: Iterable[Any] = (),
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        capture_content: bool | None = None,
        max_message_bytes: int | None = None,
        max_span_bytes: int | None = None,
        redact: RedactSetting = "default",
        live_export_delay: float | None = None,
    ) -> None:
        self.settings: Settings = resolve_settings(
            capture_content=capture_content,
            max_message_bytes=max_message_bytes,
            max_span_bytes=max_span_bytes,
            redact=redact,
            live_export_delay=live_export_delay,
        )
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        tracer = tracer_for("kiln_otel", self._provider)
        self.span: Span = (
            trace.INVALID_SPAN
            if _suppressed()
            else tracer.start_span(
                wire.run_span_name(name),
                kind=SpanKind.INTERNAL,
                attributes=self._start_attributes(name, conversation_id, provider_name, attributes),
            )
        )
        self.messages = TracedMessages()
        self._failures = FailureLog()
        self._failures_token: Token[FailureLog | None] | None = None
        self._recorder: Recorder | None = None
        self._end_lock = threading.Lock()
        self._ended = False
        self._tracking: lifecycle.Tracking | None = None
        if self.span.is_recording():
            self._start_recording(tracer, name, conversation_id)
        self.messages.extend(messages)
        self._otel_token: object | None = None
        self._run_token: Token[TracedRun | None] | None = None

    @staticmethod
    def _start_attributes(
        name: str | None,
        conversation_id: str | None,
        provider_name: str | None,
        extra: Mapping[str, AttributeValue] | None,
    ) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            wire.ATTR_GEN_AI_OPERATION_NAME: wire.OPERATION_INVOKE_AGENT,
            wire.ATTR_SCHEMA_VERSION: wire.SCHEMA_VERSION,
        }
        optional = {
            wire.ATTR_GEN_AI_AGENT_NAME: name,
            wire.ATTR_GEN_AI_CONVERSATION_ID: conversation_id,
            wire.ATTR_GEN_AI_PROVIDER_NAME: provider_name,
        }
        attributes.update({key: value for key, value in optional.items() if value})
        attributes.update(extra or {})
        return attributes

    def _start_recording(self, tracer: Tracer, name: str | None, conversation_id: str | None) -> None:
        """Attach a recorder to the list and register the open run; on failure the list just records nothing."""
        try:
            recorder = Recorder(self.span, tracer, self.settings, self._identity(name, conversation_id))
            self._tracking = lifecycle.track(self, self._provider, (self.span, recorder, self.messages))
        except Exception as exc:
            report_internal_error("TracedRun recording setup", exc)
            return
        self._recorder = recorder
        self.messages._attach(recorder)

    def _identity(self, name: str | None, conversation_id: str | None) -> dict[str, AttributeValue]:
        """What every segment span repeats, so a run whose own span never ended can be rebuilt."""
        identity: dict[str, AttributeValue] = {}
        if name:
            identity[wire.ATTR_RUN_NAME] = name
        if conversation_id:
            identity[wire.ATTR_GEN_AI_CONVERSATION_ID] = conversation_id
        parent = getattr(self.span, "parent", None)
        if parent is not None and parent.is_valid:
            identity[wire.ATTR_RUN_PARENT_SPAN_ID] = trace.format_span_id(parent.span_id)
        return identity

    # --- identity ----------------------------------------------------------------------------------
    @property
    def trace_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None

    @property
    def span_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return trace.format_span_id(ctx.span_id) if ctx.is_valid else None

    # --- ending ------------------------------------------------------------------------------------
    def end(self) -> None:
        """End a successful run. Later calls (and calls after `fail`) do nothing."""
        self._finish(None, "", None)

    def fail(self, exc: BaseException) -> KilnRunError:
        """Record ``exc`` on the span, end the run, and return the `KilnRunError` to raise.

        Use it as ``except Exception as e: raise run.fail(e)``: the error's ``__cause__`` is already
        the original. A `KilnRunError` (from a nested run, say) is returned unchanged, never wrapped
        twice, and this run's span records which run it came from. Cancellation
        (``asyncio.CancelledError``, ``KeyboardInterrupt``) is recorded as "The run was cancelled."
        """
        message = self._failure_message(exc)
        self._finish(exc, message, None)
        if isinstance(exc, KilnRunError):
            return exc
        error = KilnRunError(message, self.messages, exc, trace_id=self.trace_id, span_id=self.span_id)
        error.redact = self.settings.redact
        error.max_message_bytes = self.settings.max_message_bytes
        return error

    def _failure_message(self, exc: BaseException) -> str:
        """The user-facing message `fail` gives ``exc``: the span's status and the payload's message."""
        if is_cancellation(exc):
            return CANCELLED_MESSAGE
        if isinstance(exc, SystemExit):
            return ProcessExitedError.default_message
        if isinstance(exc, RunInterruptedError):
            return str(exc)
        recorded = self._failures.find(exc.original if isinstance(exc, KilnRunError) else exc)
        tool = recorded.tool if recorded is not None else None
        return format_error_message(exc, redact=self.settings.redact, tool=tool)

    def _exit_message(self, uncaught: BaseException) -> str:
        """The message of a run still open when ``uncaught`` ended the process."""
        message = self._failure_message(uncaught)
        if is_cancellation(uncaught) or isinstance(uncaught, SystemExit):
            return message
        return f"{ProcessExitedError.default_message.rstrip('.')}: {message}"

    def _end_unfinished(self, error: BaseException, message: str, lock_timeout: float) -> None:
        """End a run its own code never ended (process exit, a signal): see `kiln_otel.lifecycle`."""
        self._finish(error, message, lock_timeout)

    def _fail_as(self, error: BaseException, message: str) -> None:
        """End the run as failed by ``error`` with a user-facing ``message`` its owner already has.

        For integrations whose host builds its own error (Kiln's adapter): the run span then reads
        like any other failed run (``kiln_otel.error.message``, the stack once) without kiln-otel
        building a `KilnRunError` nobody raises.
        """
        self._finish(error, message, None)

    def _finish(self, exc: BaseException | None, message: str, lock_timeout: float | None) -> None:
        """End the run exactly once, recording ``exc`` (None: success) with ``message`` first."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        if exc is not None:
            self._record_error(exc, message)
        try:
            if self._tracking is not None:
                lifecycle.forget(self._tracking)
            _close(self.span, self._recorder, self.messages, lock_timeout)
        except Exception as internal:
            report_internal_error("TracedRun.end", internal)

    def _record_error(self, exc: BaseException, message: str) -> None:
        try:
            original = exc.original if isinstance(exc, KilnRunError) else exc
            settings = self.settings
            record_run_failure(
                self.span,
                original,
                settings.redact,
                message or GENERIC_MESSAGE,
                failures=self._failures,
                max_bytes=settings.max_message_bytes,
            )
            source = self._nested_source(exc)
            if source is not None:
                self.span.set_attribute(wire.ATTR_ERROR_SPAN_ID, source)
        except Exception as internal:
            report_internal_error("TracedRun._record_error", internal)

    def _nested_source(self, exc: BaseException) -> str | None:
        """The span id of the run (in this trace) whose `KilnRunError` is passing through this one."""
        if not isinstance(exc, KilnRunError) or exc.span_id is None or exc.span_id == self.span_id:
            return None
        return exc.span_id if exc.trace_id == self.trace_id else None

    # --- context managers --------------------------------------------------------------------------
    def __enter__(self) -> TracedRun:
        try:
            self._otel_token = otel_context.attach(trace.set_span_in_context(self.span))
            self._run_token = _current.set(self)
            self._failures_token = collect_failures(self._failures)
        except Exception as exc:
            report_internal_error("TracedRun.__enter__", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._detach()
        if exc is None:
            self.end()
            return
        error = self.fail(exc)
        if isinstance(exc, Exception) and error is not exc:
            raise error

    async def __aenter__(self) -> TracedRun:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _detach(self) -> None:
        try:
            if self._failures_token is not None:
                stop_collecting(self._failures_token)
            if self._run_token is not None:
                _current.reset(self._run_token)
            if self._otel_token is not None:
                otel_context.detach(self._otel_token)  # type: ignore[arg-type]
        except Exception as exc:
            report_internal_error("TracedRun._detach", exc)
        finally:
            self._run_token = self._otel_token = self._failures_token = None


def _close(span: Span, recorder: Recorder | None, messages: TracedMessages, lock_timeout: float | None) -> None:
    """Write what is buffered and the totals, stop the list recording, end the span.

    Past ``lock_timeout`` the lock's holder is stuck (or is the thread a signal interrupted): closing
    without it risks one event's bookkeeping, waiting risks the whole run.
    """
    if recorder is not None:
        locked = recorder.lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout)
        try:
            recorder.close(len(messages))
            messages._attach(None)
        finally:
            if locked:
                recorder.lock.release()
    span.end()


def end_abandoned(span: Span, recorder: Recorder, messages: TracedMessages, lock_timeout: float) -> None:
    """End a run the app dropped while it was open (`kiln_otel.lifecycle` queues them)."""
    try:
        error = RunAbandonedError()
        record_failure(span, error, None, str(error))
        _close(span, recorder, messages, lock_timeout)
    except Exception as internal:
        report_internal_error("end_abandoned", internal)


traced_run = TracedRun
"""``traced_run(name, **options)`` starts a run: the spelling for ``with`` / ``async with`` blocks."""
