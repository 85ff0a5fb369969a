"""One model call as a ``chat {model}`` CLIENT span, ended exactly once however the call ends.

A call can end in four ways: an answer, an exception, the end of a stream, or a stream the caller
walks away from. Each has one method here, and each is guarded: a failure in kiln-otel's own
bookkeeping costs telemetry, never the app's call. litellm's callbacks are not used to decide any
of this, because they fire late, twice, or not at all (see the litellm reference notes).
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableSequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, TracerProvider
from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel._guard import report_internal_error
from kiln_otel._tracers import tracer_for
from kiln_otel.encoding import _field
from kiln_otel.litellm._lazy import require_litellm
from kiln_otel.litellm.attributes import provider_name, request_attributes, response_attributes
from kiln_otel.litellm.call_messages import CallMessages, StandaloneCall, call_messages_from_env
from kiln_otel.litellm.metrics import ChatMetrics, chat_metrics
from kiln_otel.redaction import RedactHook
from kiln_otel.run import TracedRun, current_run
from kiln_otel.span_errors import error_type_name, record_failure

__all__ = [
    "INSTRUMENTATION_SCOPE",
    "LITELLM_PARENT_SPAN_KEY",
    "ChatCall",
    "Telemetry",
    "assistant_message",
    "inside_traced_call",
    "litellm_otel_callback_active",
    "record_failure",
]

INSTRUMENTATION_SCOPE = "kiln_otel.litellm"
LITELLM_PARENT_SPAN_KEY = "litellm_parent_otel_span"
"""litellm's metadata key: its callbacks (the "otel" logger) write here, not on the current span."""

_in_call: ContextVar[bool] = ContextVar("kiln_otel_litellm_in_call", default=False)


def inside_traced_call() -> bool:
    """True while a traced call is calling litellm: an instrumented litellm must not trace it again."""
    return _in_call.get()


@dataclass(frozen=True)
class Telemetry:
    """Where a call's span and metrics go; None means the current run's provider, else the global one,
    resolved at call time (`in_run`). ``call_messages``: what a call outside any run records of its
    messages (`kiln_otel.litellm.call_messages`); None reads ``KILN_OTEL_RECORD_CALL_MESSAGES`` per call."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    call_messages: CallMessages | None = None

    def in_run(self) -> Telemetry:
        """What was not given explicitly, taken from the current run: one run's spans, one provider."""
        return self.within(current_run())

    def within(self, run: TracedRun | None) -> Telemetry:
        """`in_run` for a run already looked up."""
        if run is None:
            return self
        tracer_provider = self.tracer_provider if self.tracer_provider is not None else run.tracer_provider
        meter_provider = self.meter_provider if self.meter_provider is not None else run.meter_provider
        if tracer_provider is self.tracer_provider and meter_provider is self.meter_provider:
            return self
        return Telemetry(tracer_provider, meter_provider, self.call_messages)


_CALLBACK_LISTS = (
    "callbacks",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "service_callback",
)


def litellm_otel_callback_active() -> bool:
    """Whether any of litellm's OpenTelemetry loggers is registered (by name or as an instance).

    Only then is the parent-span metadata worth passing: litellm copies and inspects ``metadata`` on
    every call, which measured about 0.2 ms a call, so we do not hand it a span nobody reads.
    """
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return False
    for name in _CALLBACK_LISTS:
        for callback in getattr(litellm, name, None) or ():
            if callback == "otel" or any(cls.__name__ == "OpenTelemetry" for cls in type(callback).__mro__):
                return True
    return False


def assistant_message(response: object) -> Any:
    """The first choice's message: the one a conversation continues with (None if there is none)."""
    choices = _field(response, "choices")
    if not isinstance(choices, (list, tuple)) or not choices:
        return None
    return _field(choices[0], "message")


class _Active:
    """`ChatCall.active`: a plain class, not a generator (``contextlib.contextmanager`` costs ~2 us a call)."""

    __slots__ = ("_call", "_flag", "_token")

    def __init__(self, call: ChatCall) -> None:
        self._call = call

    def __enter__(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self._call.span))
        self._flag = _in_call.set(True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None:
                self._call.failed(exc)
        finally:
            _in_call.reset(self._flag)
            otel_context.detach(self._token)


@functools.cache
def _known_providers() -> frozenset[str]:
    return frozenset(str(getattr(p, "value", p)) for p in require_litellm().provider_list)


class ChatCall:
    """The span, metrics and outcome of one model call, shared by every entry point."""

    def __init__(
        self,
        span: Span,
        attributes: dict[str, AttributeValue],
        metrics: ChatMetrics | None,
        redact: RedactHook | None,
        standalone: StandaloneCall | None = None,
    ) -> None:
        self.span = span
        self.attributes = attributes
        self.redact = redact
        self.standalone = standalone
        """Set outside any run: the call then resolves its own settings when it ends, and may record its
        messages (``redact`` is unused)."""
        self._metrics = metrics
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._ended = False

    @classmethod
    def inactive(cls) -> ChatCall:
        """A call that records nothing (instrumentation suppressed, or our own setup failed)."""
        return cls(trace.INVALID_SPAN, {}, None, None)

    @classmethod
    def start(cls, request: Mapping[str, Any], telemetry: Telemetry) -> ChatCall:
        if not is_instrumentation_enabled():
            return cls.inactive()
        try:
            run = current_run()
            telemetry = telemetry.within(run)
            attributes = request_attributes(request, _known_providers())
            tracer = tracer_for(INSTRUMENTATION_SCOPE, telemetry.tracer_provider)
            name = wire.chat_span_name(str(attributes.get(wire.ATTR_GEN_AI_REQUEST_MODEL) or ""))
            span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
            metrics = chat_metrics(telemetry.meter_provider)
            if run is not None:
                return cls(span, attributes, metrics, run.settings.redact)
            policy = telemetry.call_messages or call_messages_from_env()
            return cls(span, attributes, metrics, None, StandaloneCall(tracer, request.get("messages"), policy))
        except Exception as exc:
            report_internal_error("ChatCall.start", exc)
            return cls.inactive()

    @property
    def recording(self) -> bool:
        return self._metrics is not None

    def litellm_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Point litellm's own callbacks at this span, so they never write onto the caller's (the run).

        A parent span the caller already put in the metadata wins: they asked for it.
        """
        metadata = kwargs.get("metadata")
        if not self.recording or not (metadata is None or isinstance(metadata, Mapping)):
            return kwargs
        if not litellm_otel_callback_active():
            return kwargs
        if metadata is not None and LITELLM_PARENT_SPAN_KEY in metadata:
            return kwargs
        return {**kwargs, "metadata": {**(metadata or {}), LITELLM_PARENT_SPAN_KEY: self.span}}

    def active(self) -> _Active:
        """Around the litellm call: the chat span is current (HTTP client spans nest under it), and
        whatever the call raises is recorded, then re-raised untouched."""
        return _Active(self)

    def streaming(self) -> None:
        """The request went out as a stream: what it was sent is what its list holds now."""
        if self.standalone is not None:
            self.standalone.freeze()

    # --- the four endings ---------------------------------------------------------------------
    def answered(self, response: Any, record_to: MutableSequence[Any] | None, *, estimated: bool = False) -> None:
        """Append the answer to the caller's list (the app's behaviour, so outside the guard), then end."""
        message = assistant_message(response)
        if message is not None and record_to is not None:
            record_to.append(message)
        if self._claim_end():
            self._guard("ChatCall.answered", self._record_answer, response, message, estimated)

    def failed(self, exc: BaseException, partial: Any = None) -> None:
        """``partial``: what a broken stream delivered, as the message the caller's list got."""
        if self._claim_end():
            self._guard("ChatCall.failed", self._record_failure, exc, partial)

    def abandoned(self) -> None:
        """A stream closed or dropped before its end: not an error, so the status stays UNSET."""
        if self._claim_end():
            self._guard("ChatCall.abandoned", self._record_abandoned)

    def first_chunk(self) -> None:
        seconds = time.perf_counter() - self._started
        self._guard(
            "ChatCall.first_chunk",
            self.span.set_attribute,
            wire.ATTR_GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
            seconds,
        )

    # --- recording ----------------------------------------------------------------------------
    def _claim_end(self) -> bool:
        """Exactly one ending wins, even when a stream's finalizer races its last ``next``."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            return True

    def _guard(self, where: str, func: Callable[..., object], *args: Any) -> None:
        try:
            func(*args)
        except Exception as exc:
            report_internal_error(where, exc)

    def _update(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)
        self.span.set_attributes(attributes)

    def _learn_provider(self, litellm_provider: object) -> None:
        """A bare model name (``gpt-4o``) only reveals its provider once litellm has routed it."""
        if wire.ATTR_GEN_AI_PROVIDER_NAME not in self.attributes and isinstance(litellm_provider, str):
            self._update({wire.ATTR_GEN_AI_PROVIDER_NAME: provider_name(litellm_provider)})

    def _record_answer(self, response: Any, message: Any, estimated: bool) -> None:
        if wire.ATTR_GEN_AI_PROVIDER_NAME not in self.attributes:
            hidden = getattr(response, "_hidden_params", None)
            if isinstance(hidden, Mapping):
                self._learn_provider(hidden.get("custom_llm_provider"))
        attributes = response_attributes(response)
        if estimated and wire.ATTR_GEN_AI_USAGE_INPUT_TOKENS in attributes:
            attributes[wire.ATTR_USAGE_ESTIMATED] = True
        self._update(attributes)
        if self._metrics is not None:
            seconds = time.perf_counter() - self._started
            tokens = (
                attributes.get(wire.ATTR_GEN_AI_USAGE_INPUT_TOKENS),
                attributes.get(wire.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS),
            )
            self._metrics.record(self.attributes, seconds, tokens=tokens, estimated=estimated)  # type: ignore[arg-type]
        if self.standalone is not None:
            self.standalone.answered(self.span, message)
        self.span.end()

    def _record_failure(self, exc: BaseException, partial: Any) -> None:
        self._learn_provider(getattr(exc, "llm_provider", None))
        if self.standalone is None:
            record_failure(self.span, exc, self.redact)
        else:
            self.standalone.failed(self.span, exc, partial)
        if self._metrics is not None:
            seconds = time.perf_counter() - self._started
            self._metrics.record(self.attributes, seconds, error_type=error_type_name(exc))
        self.span.end()

    def _record_abandoned(self) -> None:
        """No metrics: how long an abandoned stream stayed open says nothing about the provider."""
        self.span.set_attribute(wire.ATTR_STREAM_ABANDONED, True)
        self.span.end()
