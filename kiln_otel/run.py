"""`traced_run`: one agent run as an ``invoke_agent`` span whose message list records itself.

Use it as ``with`` / ``async with``; code that already owns its try/except (Kiln's adapter) calls
``run.fail(exc)`` and ``run.end()`` itself. Either way the contract on failure is the same: the span
is marked errored with a redacted exception event, and the app gets a `KilnRunError` whose
``.original`` is the very exception that was raised. kiln-otel's own failures never replace it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, TracerProvider
from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel._guard import report_internal_error
from kiln_otel.config import Settings, resolve_settings
from kiln_otel.error_messages import GENERIC_MESSAGE, format_error_message
from kiln_otel.errors import KilnRunError
from kiln_otel.messages import TracedMessages
from kiln_otel.recorder import Recorder
from kiln_otel.redaction import RedactSetting
from kiln_otel.span_errors import record_failure
from kiln_otel.version import __version__

__all__ = ["TracedRun", "current_run", "traced_run"]

_current: ContextVar[TracedRun | None] = ContextVar("kiln_otel_current_run", default=None)


def current_run() -> TracedRun | None:
    """The innermost run active in this context, for integrations that attach to it (litellm)."""
    return _current.get()


def _suppressed() -> bool:
    return bool(otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY))


class TracedRun:
    """A started agent run: its span, its `TracedMessages`, and the way it ends.

    Every keyword falls back to its environment variable, then its default (see `kiln_otel.config`).
    ``redact`` masks secrets in each message and in exception text before they are recorded: the
    default `Redactor`, your own ``str -> str`` hook, or None to record as-is.

    The span starts when the object is made, so ``run.messages`` records from the first append even
    when the run is driven by hand; entering it as a context manager also makes the span current, so
    model and tool spans nest under it.
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
        capture_content: bool | None = None,
        max_message_bytes: int | None = None,
        max_span_bytes: int | None = None,
        redact: RedactSetting = "default",
    ) -> None:
        self.settings: Settings = resolve_settings(
            capture_content=capture_content,
            max_message_bytes=max_message_bytes,
            max_span_bytes=max_span_bytes,
            redact=redact,
        )
        tracer = trace.get_tracer("kiln_otel", __version__, tracer_provider)
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
        self._recorder: Recorder | None = None
        if self.span.is_recording():
            self._recorder = Recorder(self.span, tracer, self.settings)
            self.messages._attach(self._recorder)
        self.messages.extend(messages)
        self._ended = False
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
        if self._ended:
            return
        self._ended = True
        try:
            if self._recorder is not None:
                with self._recorder.lock:
                    self._recorder.close(len(self.messages))
                    self.messages._attach(None)
            self.span.end()
        except Exception as exc:
            report_internal_error("TracedRun.end", exc)

    def fail(self, exc: BaseException) -> KilnRunError:
        """Record ``exc`` on the span, end the run, and return the `KilnRunError` to raise.

        Use it as ``except Exception as e: raise run.fail(e)``: the error's ``__cause__`` is already
        the original. A `KilnRunError` (from a nested run, say) is returned unchanged, never wrapped
        twice.
        """
        original = exc.original if isinstance(exc, KilnRunError) else exc
        message = format_error_message(exc, redact=self.settings.redact)
        if not self._ended:
            self._record_error(original, message)
        self.end()
        if isinstance(exc, KilnRunError):
            return exc
        error = KilnRunError(message, self.messages, exc, trace_id=self.trace_id, span_id=self.span_id)
        error.redact = self.settings.redact
        error.max_message_bytes = self.settings.max_message_bytes
        return error

    def _record_error(self, exc: BaseException, message: str) -> None:
        try:
            settings = self.settings
            record_failure(
                self.span, exc, settings.redact, message or GENERIC_MESSAGE, max_bytes=settings.max_message_bytes
            )
        except Exception as internal:
            report_internal_error("TracedRun._record_error", internal)

    # --- context managers --------------------------------------------------------------------------
    def __enter__(self) -> TracedRun:
        try:
            self._otel_token = otel_context.attach(trace.set_span_in_context(self.span))
            self._run_token = _current.set(self)
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
            if self._run_token is not None:
                _current.reset(self._run_token)
            if self._otel_token is not None:
                otel_context.detach(self._otel_token)  # type: ignore[arg-type]
        except Exception as exc:
            report_internal_error("TracedRun._detach", exc)
        finally:
            self._run_token = self._otel_token = None


traced_run = TracedRun
"""``traced_run(name, **options)`` starts a run: the spelling for ``with`` / ``async with`` blocks."""
