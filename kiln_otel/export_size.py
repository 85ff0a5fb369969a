"""OTLP export requests that fit the receiver: batches split by encoded size, an oversized span cut.

A receiver refuses a request over its size limit whole (OTLP/gRPC: 4 MiB by default, in the
Collector, Jaeger and most vendors), losing every span in it, other runs' included; the SDK's batch
processor counts spans, never bytes. Sizes here are measured with the OTLP exporters' own protobuf
encoder, so they are the bytes on the wire (before compression). Spans of one trace are kept
together, so a request that still fails takes as few traces with it as possible.

A span that alone is over the limit is cut rather than lost: its longest string values (attributes,
event attributes, the status description) are shortened to the same length, keeping their head and
tail, until it fits; a message event's JSON is cut so that it still parses. Every cut is marked
(`wire.ATTR_EXPORT_CUT`, `wire.ATTR_EXPORT_ORIGINAL_SIZE`, and the message's own truncation marks), so
a reader knows the span is not whole. Only if cutting every string is not enough are whole events
dropped, largest first, and counted as dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status

from kiln_otel import wire
from kiln_otel.bounded import utf8_size
from kiln_otel.encoding import truncate_json

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "MIN_REQUEST_BYTES",
    "fit_span",
    "request_size",
    "split_requests",
]

DEFAULT_MAX_REQUEST_BYTES = 3 * 1024 * 1024
"""A quarter below gRPC's 4 MiB default receive limit: room for a proxy that re-encodes, never close."""
MIN_REQUEST_BYTES = 64 * 1024
"""Below this even an ordinary span could not be sent whole."""

_MARKS_ALLOWANCE = 512
"""Bytes reserved for the marks a cut adds (two span attributes, one per touched event)."""
_CUT_MARK = "…[{} bytes cut at export]…"
_CUT_MARK_BYTES = 48


def request_size(spans: Sequence[ReadableSpan]) -> int:
    """Bytes of the ``ExportTraceServiceRequest`` an OTLP exporter would send for ``spans``."""
    return int(encode_spans(spans).ByteSize())


def split_requests(spans: Sequence[ReadableSpan], max_bytes: int) -> list[list[ReadableSpan]]:
    """``spans`` as requests of at most ``max_bytes`` each, a trace's spans together where they fit.

    Each span is measured as a request of its own, which counts its resource and scope once per
    span: an overestimate by a few hundred bytes a span, never an underestimate. A span over the
    limit is replaced by its `fit_span` cut and goes out alone.
    """
    sizes = [request_size([span]) for span in spans]
    if sum(sizes) <= max_bytes:
        return [list(spans)]
    requests: list[list[ReadableSpan]] = []
    current: list[ReadableSpan] = []
    used = 0
    for span, size in _by_trace(spans, sizes):
        if current and used + size > max_bytes:
            requests.append(current)
            current, used = [], 0
        if size > max_bytes:
            requests.append([fit_span(span, max_bytes, size)])
            continue
        current.append(span)
        used += size
    if current:
        requests.append(current)
    return requests


def _by_trace(spans: Sequence[ReadableSpan], sizes: Sequence[int]) -> Iterator[tuple[ReadableSpan, int]]:
    """Spans grouped by trace id, traces in order of first appearance, spans in batch order."""
    traces: dict[int, list[tuple[ReadableSpan, int]]] = {}
    for span, size in zip(spans, sizes):
        context = span.get_span_context()
        traces.setdefault(context.trace_id if context is not None else 0, []).append((span, size))
    for members in traces.values():
        yield from members


def fit_span(span: ReadableSpan, max_bytes: int, size: int | None = None) -> ReadableSpan:
    """``span`` itself when it fits in a request of ``max_bytes``, else a marked copy that does.

    ``size``: the span's `request_size`, when the caller has measured it already (encoding a span
    over the limit is the expensive part). If even dropping every event leaves it too large
    (thousands of attributes, huge arrays), the most-cut copy is returned: it goes out alone, and at
    worst only it is refused.
    """
    if size is None:
        size = request_size([span])
    if size <= max_bytes:
        return span
    strings = list(_strings(span))
    lengths = [utf8_size(text) for _, _, text in strings]
    limit = _cut_length(lengths, size - max_bytes + _MARKS_ALLOWANCE)
    while True:
        cut = _rebuild(span, strings, limit, size)
        if request_size([cut]) <= max_bytes:
            return cut
        if limit == 0:
            return _drop_events_to_fit(cut, max_bytes)
        limit //= 2


# --- Which strings, and how short --------------------------------------------------------------


def _strings(span: ReadableSpan) -> Iterator[tuple[int, str, str]]:
    """(-1 for the span or the event's index, the attribute key or "" for the status description, the text)."""
    for key, value in (span.attributes or {}).items():
        if isinstance(value, str):
            yield -1, key, value
    for index, event in enumerate(span.events):
        for key, value in (event.attributes or {}).items():
            if isinstance(value, str):
                yield index, key, value
    if span.status.description:
        yield -1, "", span.status.description


def _cut_length(lengths: Sequence[int], excess: int) -> int:
    """The longest length L such that cutting every string to L bytes saves at least ``excess``."""

    def saved(limit: int) -> int:
        return sum(length - limit - _CUT_MARK_BYTES for length in lengths if length > limit + _CUT_MARK_BYTES)

    low, high = 0, max(lengths, default=0)
    if saved(0) < excess:
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        if saved(mid) >= excess:
            low = mid
        else:
            high = mid - 1
    return low


def _cut_text(text: str, limit: int) -> str:
    """Head and tail (a stack trace's last line says what was raised), with the cut made visible."""
    data = text.encode()
    if len(data) <= limit:
        return text
    head = data[: limit - limit // 3].decode("utf-8", "ignore")
    tail = data[len(data) - limit // 3 :].decode("utf-8", "ignore")
    return head + _CUT_MARK.format(len(data) - limit) + tail


# --- Building the cut copy --------------------------------------------------------------------


def _rebuild(span: ReadableSpan, strings: Sequence[tuple[int, str, str]], limit: int, size: int) -> ReadableSpan:
    cuts: dict[int, dict[str, str]] = {}
    for index, key, text in strings:
        if utf8_size(text) > limit:
            cuts.setdefault(index, {})[key] = text
    total = sum(len(keys) for keys in cuts.values())
    own = cuts.get(-1, {})
    attributes: dict[str, Any] = dict(span.attributes or {})
    for key, text in own.items():
        if key:
            attributes[key] = _cut_text(text, limit)
    attributes[wire.ATTR_EXPORT_CUT] = total
    attributes[wire.ATTR_EXPORT_ORIGINAL_SIZE] = size
    events = [
        _cut_event(event, cuts[index], limit) if index in cuts else event for index, event in enumerate(span.events)
    ]
    description = span.status.description
    status = span.status
    if description and "" in own:
        status = Status(span.status.status_code, _cut_text(description, limit))
    return _copy(span, attributes=attributes, events=events, status=status)


def _cut_event(event: Event, cut: Mapping[str, str], limit: int) -> Event:
    attributes: dict[str, Any] = dict(event.attributes or {})
    for key, text in cut.items():
        if key == wire.ATTR_MESSAGE_JSON:
            attributes[key] = truncate_json(text, limit)
            attributes.setdefault(wire.ATTR_MESSAGE_SIZE, utf8_size(text))
            attributes[wire.ATTR_MESSAGE_TRUNCATED] = True
        else:
            attributes[key] = _cut_text(text, limit)
    attributes[wire.ATTR_EXPORT_CUT] = len(cut)
    return Event(event.name, _bounded(attributes, event.dropped_attributes), event.timestamp)


def _drop_events_to_fit(span: ReadableSpan, max_bytes: int) -> ReadableSpan:
    """Keep the smallest events that fit (in their order), counting the others as dropped."""
    events = list(span.events)
    if not events or request_size([span]) <= max_bytes:
        return span
    base = request_size([_copy(span, events=[])])
    costs = {id(event): request_size([_copy(span, events=[event])]) - base for event in events}
    kept: set[int] = set()
    used = base
    for event in sorted(events, key=lambda event: costs[id(event)]):
        if used + costs[id(event)] > max_bytes:
            break
        kept.add(id(event))
        used += costs[id(event)]
    while True:
        remaining = [event for event in events if id(event) in kept]
        candidate = _copy(span, events=remaining, dropped=len(events) - len(remaining))
        if not remaining or request_size([candidate]) <= max_bytes:
            return candidate
        kept.discard(id(max(remaining, key=lambda event: costs[id(event)])))


def _bounded(attributes: Mapping[str, Any], dropped: int) -> BoundedAttributes:
    bounded = BoundedAttributes(attributes=attributes, immutable=True)
    bounded.dropped = dropped
    return bounded


def _copy(
    span: ReadableSpan,
    *,
    attributes: Mapping[str, Any] | None = None,
    events: Sequence[Event] | None = None,
    status: Status | None = None,
    dropped: int = 0,
) -> ReadableSpan:
    """A ReadableSpan like ``span`` with some parts replaced; dropped counts carried over (plus ``dropped``)."""
    new_events: BoundedList[Event] = BoundedList(None)
    new_events.extend(list(span.events if events is None else events))
    new_events.dropped = span.dropped_events + dropped
    links: BoundedList[Link] = BoundedList(None)
    links.extend(list(span.links))
    links.dropped = span.dropped_links
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=_bounded(span.attributes or {} if attributes is None else attributes, span.dropped_attributes),
        events=new_events,
        links=links,
        kind=span.kind,
        status=span.status if status is None else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
