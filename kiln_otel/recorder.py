"""Where a run's list events go: a buffer, then ended segment spans, and the run span at its end.

A span is exported only once it has ended, and a run's span ends only with the run: written straight
onto it, the conversation of a run that is killed or hangs would never leave the process. So the
recorder buffers each event (name, attributes, time) and writes the buffer onto a NEW
``kiln_otel.messages`` segment span, a child of the run started at the first event's time and ended at
once, as soon as either

- the oldest buffered event is ``live_export_delay`` old (the flusher thread does it, so a hung run's
  messages leave too), or
- the next event would not fit one span (event count, ``max_span_bytes``).

When the run ends, what is still buffered goes onto the run span itself: a run shorter than the delay
is one span with every message, and a long run's last messages sit next to its exception.

The SDK keeps at most ``max_events`` events per span and drops the OLDEST (the system prompt first), so
no span gets more than that, and the run span keeps room for the exception. Every event carries a run-wide sequence
number, so a reader replays them in order across spans and notices any that went missing; each
segment carries the run's identity, so a run whose own span never ended can still be rebuilt.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from kiln_otel import _flusher, wire
from kiln_otel._guard import report_internal_error
from kiln_otel.config import Settings
from kiln_otel.encoding import encode_message
from kiln_otel.redaction import masked_count

__all__ = ["RUN_SPAN_RESERVED_EVENTS", "Recorder"]

RUN_SPAN_RESERVED_EVENTS = 16
"""Room left on the run span for events that are not ours (the exception, an app's own events)."""
_ASSUMED_MAX_EVENTS = 128
_UNLIMITED_EVENTS_PER_SPAN = 10_000

_TRUNCATED = wire.ATTR_MESSAGE_TRUNCATED
_LOSSY = wire.ATTR_MESSAGE_LOSSY
_SEQ = wire.ATTR_EVENT_SEQ
_time_ns = time.time_ns

_Buffered = tuple[str, dict[str, Any], int]
"""(event name, attributes, time in ns since the epoch): an event recorded but not yet on a span.

Each is made as an instance of `_event_type`: the SDK's own ``Event`` as far as any reader can tell,
so a buffer goes onto an SDK span as it is."""
_new_tuple = tuple.__new__


@functools.cache
def _event_type() -> type[tuple[str, dict[str, Any], int]]:
    """An SDK ``Event`` that is a ``(name, attributes, time)`` tuple: made in ~90 ns, where
    ``Event(name, attributes, time)`` takes ~200 (its ``__init__`` chain), at ~4 us a message.

    Made on first use: importing kiln-otel does not import the SDK.
    """
    from opentelemetry.sdk.trace import Event

    class RecordedEvent(tuple, Event):  # type: ignore[type-arg]
        __slots__ = ()
        name = property(itemgetter(0))
        attributes = property(itemgetter(1))
        timestamp = property(itemgetter(2))
        dropped_attributes = 0

    return RecordedEvent


def _write_events(span: Span, events: Sequence[_Buffered]) -> None:
    """Add the events with their own timestamps, the cheapest correct way for this span."""
    events_list = _sdk_events(span)
    if events_list is not None:
        with span._lock:  # type: ignore[attr-defined]
            if span._end_time is None:  # type: ignore[attr-defined]
                events_list.extend(events)
                return
    for name, attributes, timestamp in events:
        span.add_event(name, attributes, timestamp)


def _sdk_events(span: Span) -> Any:
    """The SDK span's own event list, when it is safe to extend it with finished ``Event`` objects.

    The public ``add_event`` re-validates every attribute (about 1.2 us each, more than serializing
    the message) and locks the span once per event. Ours are built from str/int/bool/tuple only, and
    already SDK events (`_event_type`), so for the SDK's own ``Span`` the whole batch goes in under
    one lock, exactly as its ``_add_event`` would put each; any other span, a length limit to apply,
    or an SDK whose internals moved gets the public API.
    """
    try:
        from opentelemetry.sdk.trace import Span as SdkSpan
        from opentelemetry.sdk.util import BoundedList
    except ImportError:  # pragma: no cover - the SDK is a dependency
        return None
    if not isinstance(span, SdkSpan) or not hasattr(span, "_lock") or not hasattr(span, "_end_time"):
        return None
    if getattr(getattr(span, "_limits", None), "max_attribute_length", None) is not None:
        return None
    events = getattr(span, "_events", None)
    return events if isinstance(events, BoundedList) else None


def _max_events(span: Span) -> int:
    limits = getattr(span, "_limits", None)
    if limits is None:
        return _ASSUMED_MAX_EVENTS
    limit = getattr(limits, "max_events", _ASSUMED_MAX_EVENTS)
    return _UNLIMITED_EVENTS_PER_SPAN if limit is None else int(limit)


class Recorder:
    """Turns list operations into events; callers hold ``lock`` around the record and the mutation.

    ``identity`` (the run's name, conversation, parent) is copied onto every segment span.
    """

    def __init__(
        self, run_span: Span, tracer: Tracer, settings: Settings, identity: Mapping[str, AttributeValue]
    ) -> None:
        self.lock = threading.Lock()
        self.settings = settings
        self._event = _event_type()
        self._run_span = run_span
        self._run_context = trace.set_span_in_context(run_span)
        self._tracer = tracer
        self._identity = dict(identity)
        self._capacity = max(_max_events(run_span), 1)
        self._run_span_capacity = max(self._capacity - RUN_SPAN_RESERVED_EVENTS, 1)
        self._delay = settings.live_export_delay
        self._buffer: list[_Buffered] = []
        self._bytes_left = settings.max_span_bytes
        self._due = 0.0
        self._scheduled = False
        self._closed = False
        self._seq = 0
        self._length = 0
        self._segments = 0
        self._last_segment_id: str | None = None
        self.truncated = 0
        self.lossy = 0

    @property
    def ops(self) -> int:
        return self._seq

    @property
    def segments(self) -> int:
        return self._segments

    def record_all(self, items: Sequence[Any]) -> None:
        """Record ``items`` as inserted into an empty list, then close: a list complete at once (a
        failed call's messages). Nothing is left to flush later, so the flusher is never woken for it."""
        with self.lock:
            self._scheduled = True  # `_emit` asks for a wake-up only when none is pending
            self.inserted(0, items)
            self.close(len(items))

    # --- list operations (the caller holds ``lock``) -------------------------------------------
    def inserted(self, index: int, items: Iterable[Any]) -> None:
        for offset, item in enumerate(items):
            self.inserted_one(index + offset, item)

    def inserted_one(self, index: int, item: Any) -> None:
        try:
            name, attributes, size = encode_message(item, index, self.settings)
            if len(attributes) > 3:  # index, excerpt and json alone (or capture off's three): nothing to count
                self.truncated += _TRUNCATED in attributes
                self.lossy += _LOSSY in attributes
            self._emit(name, attributes, size)
        except Exception as exc:
            report_internal_error("Recorder.inserted", exc)
        finally:
            self._length += 1

    def deleted(self, index: int, count: int) -> None:
        if count <= 0:
            return
        attributes = {wire.ATTR_MESSAGE_INDEX: index, wire.ATTR_MESSAGES_REMOVED: count}
        self._emit_guarded(wire.EVENT_MESSAGES_DELETE, attributes, 16)
        self._length -= count

    def reordered(self, order: Sequence[int]) -> None:
        attributes = {wire.ATTR_MESSAGES_ORDER: tuple(order)}
        self._emit_guarded(wire.EVENT_MESSAGES_REORDER, attributes, 8 * len(order))

    def _emit_guarded(self, name: str, attributes: dict[str, Any], size: int) -> None:
        try:
            self._emit(name, attributes, size)
        except Exception as exc:
            report_internal_error("Recorder." + name, exc)

    def _emit(self, name: str, attributes: dict[str, Any], size: int) -> None:
        buffer = self._buffer
        if buffer and (len(buffer) >= self._capacity or size > self._bytes_left):
            self._write_segment()
            buffer = self._buffer
        seq = self._seq
        attributes[_SEQ] = seq
        self._seq = seq + 1
        buffer.append(_new_tuple(self._event, (name, attributes, _time_ns())))
        self._bytes_left -= size
        if len(buffer) == 1:
            self._due = time.monotonic() + self._delay
            if not self._scheduled:
                self._scheduled = True
                _flusher.schedule(self._due, self)

    # --- writing the buffer out ----------------------------------------------------------------
    def _write_segment(self) -> None:
        """Put the buffer on a new segment span spanning its events' times, ended at once."""
        events, self._buffer = self._buffer, []
        self._bytes_left = self.settings.max_span_bytes
        self._segments += 1
        attributes = {
            **self._identity,
            wire.ATTR_SEGMENT_INDEX: self._segments,
            wire.ATTR_SEGMENT_FIRST_SEQ: events[0][1][_SEQ],
            wire.ATTR_SEGMENT_LAST_SEQ: events[-1][1][_SEQ],
            wire.ATTR_MESSAGES_COUNT: self._length,
        }
        span = self._tracer.start_span(
            wire.SPAN_SEGMENT,
            context=self._run_context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=events[0][2],
        )
        _write_events(span, events)
        span.end(end_time=max(events[-1][2], events[0][2]))
        self._last_segment_id = trace.format_span_id(span.get_span_context().span_id)

    def flush_due(self) -> None:
        """The flusher's call: write the buffer out if its oldest event is old enough, else ask again."""
        with self.lock:
            self._scheduled = False
            if self._closed or not self._buffer:
                return
            if self._due > time.monotonic():
                self._scheduled = True
                _flusher.schedule(self._due, self)
                return
            self._write_segment()

    def flush_now(self, lock_timeout: float) -> None:
        """Write the buffer out whatever its age (a process on its way out); gives up on a held lock."""
        if not self.lock.acquire(timeout=lock_timeout):
            return
        try:
            if not self._closed and self._buffer:
                self._write_segment()
        finally:
            self.lock.release()

    def close(self, final_length: int) -> None:
        """Put what is still buffered on the run span and write the totals a reader checks against."""
        try:
            self._closed = True
            if len(self._buffer) > self._run_span_capacity:  # leave room for the exception
                self._write_segment()
            last = self._last_segment_id
            if self._buffer:
                events, self._buffer = self._buffer, []
                _write_events(self._run_span, events)
                last = trace.format_span_id(self._run_span.get_span_context().span_id)
            if last is not None:
                self._run_span.set_attribute(wire.ATTR_MESSAGES_LAST_SPAN_ID, last)
            self._run_span.set_attributes(
                {
                    wire.ATTR_MESSAGES_COUNT: final_length,
                    wire.ATTR_MESSAGES_OPS: self._seq,
                    wire.ATTR_SEGMENTS: self._segments,
                    wire.ATTR_MESSAGES_TRUNCATED: self.truncated,
                    wire.ATTR_MESSAGES_LOSSY: self.lossy,
                }
            )
            masked = masked_count(self.settings.redact)
            if masked is not None:
                self._run_span.set_attribute(wire.ATTR_REDACTION_MASKED, masked)
        except Exception as exc:
            report_internal_error("Recorder.close", exc)
