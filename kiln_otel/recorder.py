"""Where a run's list events go: the run span first, then continuation segment spans.

The SDK keeps at most ``max_events`` events per span (128 by default) and drops the OLDEST, which
would lose the system prompt first. So the recorder counts, and when the current span is full (or
holds ``max_span_bytes`` of messages) it opens a ``kiln_otel.messages`` child span of the run and
carries on there. Every event carries a run-wide sequence number, so a reader can replay them in
order across spans and notice any that went missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

from kiln_otel import wire
from kiln_otel._guard import report_internal_error
from kiln_otel.config import Settings
from kiln_otel.encoding import encode_message

__all__ = ["RUN_SPAN_RESERVED_EVENTS", "Recorder"]

RUN_SPAN_RESERVED_EVENTS = 16
"""Room left on the run span for events that are not ours (the exception, an app's own events)."""
_ASSUMED_MAX_EVENTS = 128
_UNLIMITED_EVENTS_PER_SPAN = 10_000

_TRUNCATED = wire.ATTR_MESSAGE_TRUNCATED
_LOSSY = wire.ATTR_MESSAGE_LOSSY

AddEvent = Callable[[Span, str, dict[str, Any]], None]


def _public_add_event(span: Span, name: str, attributes: dict[str, Any]) -> None:
    span.add_event(name, attributes)


def _event_adder(span: Span) -> AddEvent:
    """The cheapest correct way to add an event to this span.

    The SDK's public ``add_event`` re-validates every attribute (about 1.2 us each, more than
    serializing the message). Our attributes are built from str/int/bool/tuple only, so for the SDK's
    own ``Span`` we hand it a finished ``Event`` directly; any other span, or an SDK whose internals
    moved, gets the public API.
    """
    try:
        from opentelemetry.sdk.trace import Event
        from opentelemetry.sdk.trace import Span as SdkSpan
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return _public_add_event
    if not isinstance(span, SdkSpan) or not callable(getattr(span, "_add_event", None)):
        return _public_add_event
    if getattr(getattr(span, "_limits", None), "max_attribute_length", None) is not None:
        return _public_add_event

    def add(span: Span, name: str, attributes: dict[str, Any]) -> None:
        span._add_event(Event(name, attributes))  # type: ignore[attr-defined]

    return add


def _max_events(span: Span) -> int:
    limits = getattr(span, "_limits", None)
    if limits is None:
        return _ASSUMED_MAX_EVENTS
    limit = getattr(limits, "max_events", _ASSUMED_MAX_EVENTS)
    return _UNLIMITED_EVENTS_PER_SPAN if limit is None else int(limit)


class Recorder:
    """Turns list operations into events; callers hold ``lock`` around the record and the mutation."""

    def __init__(self, run_span: Span, tracer: Tracer, settings: Settings) -> None:
        self.lock = threading.Lock()
        self.settings = settings
        self._run_span = run_span
        self._tracer = tracer
        self._span = run_span
        self._add = _event_adder(run_span)
        self._events_left = max(_max_events(run_span) - RUN_SPAN_RESERVED_EVENTS, 1)
        self._bytes_left = settings.max_span_bytes
        self._seq = 0
        self._segments = 0
        self.truncated = 0
        self.lossy = 0

    @property
    def ops(self) -> int:
        return self._seq

    def inserted(self, index: int, items: Iterable[Any]) -> None:
        for offset, item in enumerate(items):
            self.inserted_one(index + offset, item)

    def inserted_one(self, index: int, item: Any) -> None:
        try:
            name, attributes, size = encode_message(item, index, self.settings)
            if len(attributes) > 2:  # index and json alone: nothing to count
                self.truncated += _TRUNCATED in attributes
                self.lossy += _LOSSY in attributes
            self._emit(name, attributes, size)
        except Exception as exc:
            report_internal_error("Recorder.inserted", exc)

    def deleted(self, index: int, count: int) -> None:
        if count <= 0:
            return
        attributes = {wire.ATTR_MESSAGE_INDEX: index, wire.ATTR_MESSAGES_REMOVED: count}
        self._emit_guarded(wire.EVENT_MESSAGES_DELETE, attributes, 16)

    def reordered(self, order: Sequence[int]) -> None:
        attributes = {wire.ATTR_MESSAGES_ORDER: tuple(order)}
        self._emit_guarded(wire.EVENT_MESSAGES_REORDER, attributes, 8 * len(order))

    def _emit_guarded(self, name: str, attributes: dict[str, Any], size: int) -> None:
        try:
            self._emit(name, attributes, size)
        except Exception as exc:
            report_internal_error("Recorder." + name, exc)

    def _emit(self, name: str, attributes: dict[str, Any], size: int) -> None:
        if self._events_left <= 0 or (size > self._bytes_left and self._bytes_left < self.settings.max_span_bytes):
            self._next_segment()
        attributes[wire.ATTR_EVENT_SEQ] = self._seq
        self._seq += 1
        self._add(self._span, name, attributes)
        self._events_left -= 1
        self._bytes_left -= size

    def _next_segment(self) -> None:
        if self._span is not self._run_span:
            self._span.end()
        self._segments += 1
        self._span = self._tracer.start_span(
            wire.SPAN_SEGMENT,
            context=trace.set_span_in_context(self._run_span),
            kind=SpanKind.INTERNAL,
            attributes={wire.ATTR_SEGMENT_INDEX: self._segments},
        )
        self._add = _event_adder(self._span)
        self._events_left = max(_max_events(self._span), 1)
        self._bytes_left = self.settings.max_span_bytes

    def close(self, final_length: int) -> None:
        """End the open segment and write the totals a reader checks the replay against."""
        try:
            if self._span is not self._run_span:
                self._span.end()
                self._span = self._run_span
            self._run_span.set_attributes(
                {
                    wire.ATTR_MESSAGES_COUNT: final_length,
                    wire.ATTR_MESSAGES_OPS: self._seq,
                    wire.ATTR_SEGMENTS: self._segments,
                    wire.ATTR_MESSAGES_TRUNCATED: self.truncated,
                    wire.ATTR_MESSAGES_LOSSY: self.lossy,
                }
            )
        except Exception as exc:
            report_internal_error("Recorder.close", exc)
