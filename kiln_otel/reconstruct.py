"""Rebuild a run's message list, and its ErrorWithTrace, from exported telemetry alone.

The replay trusts nothing it can check: every list event has a run-wide sequence number and the run
span states how many events, segments and messages there were, so a lost span, an event the SDK
dropped or a truncated message makes the result say it is incomplete instead of passing for whole.

A run whose own span never reached the telemetry (SIGKILL, ``os._exit``, a hang, a run still going)
is rebuilt from its segment spans, which repeat its identity: the messages so far, marked incomplete,
with a `RunNotEndedError` payload.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln_otel import wire
from kiln_otel.encoding import message_from_event
from kiln_otel.errors import (
    AmbiguousTraceError,
    NotKilnTelemetryError,
    ReconstructionError,
    RunNotEndedError,
    TraceNotFoundError,
)
from kiln_otel.payload import ErrorWithTrace
from kiln_otel.spans import EventRecord, SpanRecord

__all__ = ["ReconstructedTrace", "find_run", "reconstruct_error", "reconstruct_trace"]


class ReconstructedTrace(list[Any]):
    """The rebuilt message list (compares equal to a plain list) plus what a reader must know about it."""

    def __init__(self, messages: Iterable[Any], run: SpanRecord, issues: Sequence[str]) -> None:
        super().__init__(messages)
        self.run = run
        self.issues = list(issues)

    @property
    def complete(self) -> bool:
        return not self.issues

    @property
    def trace_id(self) -> str:
        return self.run.trace_id

    @property
    def span_id(self) -> str:
        return self.run.span_id


def _as_records(source: object) -> list[SpanRecord]:
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, SpanRecord) for s in source):
        return list(source)
    from kiln_otel.sources import load_spans

    return load_spans(source)


def _normalize_id(value: str | int | None, width: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return f"{value:0{width}x}"
    return value.strip().lower().removeprefix("0x").rjust(width, "0")


def _is_run(span: SpanRecord) -> bool:
    return wire.ATTR_SCHEMA_VERSION in span.attributes


def _is_segment(span: SpanRecord) -> bool:
    return wire.ATTR_SEGMENT_INDEX in span.attributes


NOT_ENDED_ISSUE = "the run did not end: the process died or the run is still going"


@dataclass(frozen=True)
class UnendedRun(SpanRecord):
    """A run whose span is not in the telemetry, pieced together from what its segments repeat."""


def _optional_int(value: object) -> int | None:
    try:
        return _int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _unended_run(trace_id: str, span_id: str, segments: Sequence[SpanRecord]) -> UnendedRun:
    """The run as its last segment describes it. That segment's totals stand in for the run's, so a
    segment or an event lost before it still shows (what the run held after it is `NOT_ENDED_ISSUE`);
    each is bounded by the events the segment really carries, so no attribute can inflate them."""
    last = max(segments, key=lambda s: _optional_int(s.attributes.get(wire.ATTR_SEGMENT_INDEX)) or 0)
    attributes: dict[str, Any] = {
        wire.ATTR_SCHEMA_VERSION: wire.SCHEMA_VERSION,
        wire.ATTR_ERROR_TYPE: f"{RunNotEndedError.__module__}.{RunNotEndedError.__qualname__}",
    }
    name = last.attributes.get(wire.ATTR_RUN_NAME)
    name = name if isinstance(name, str) and name else None
    if name:
        attributes[wire.ATTR_GEN_AI_AGENT_NAME] = name
    seqs = [_optional_int(e.attributes.get(wire.ATTR_EVENT_SEQ)) for e in last.events]
    ops = max((seq + 1 for seq in seqs if seq is not None), default=None)
    if ops is not None:
        # Each segment holds at least one event and each event grows the list by at most one.
        totals = {
            wire.ATTR_MESSAGES_OPS: ops,
            wire.ATTR_MESSAGES_COUNT: _optional_int(last.attributes.get(wire.ATTR_MESSAGES_COUNT)),
            wire.ATTR_SEGMENTS: _optional_int(last.attributes.get(wire.ATTR_SEGMENT_INDEX)),
        }
        attributes.update({key: n for key, n in totals.items() if n is not None and 0 <= n <= ops})
    parent = last.attributes.get(wire.ATTR_RUN_PARENT_SPAN_ID)
    return UnendedRun(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent if isinstance(parent, str) and parent else None,
        name=wire.run_span_name(name),
        start_time_unix_nano=min(s.start_time_unix_nano for s in segments),
        attributes=attributes,
        status_code="ERROR",
        status_message=RunNotEndedError.default_message,
    )


def _unended_runs(spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    """One run per span id that segments name as their parent but that is not among the spans."""
    present = {(s.trace_id, s.span_id) for s in spans}
    orphans: dict[tuple[str, str], list[SpanRecord]] = {}
    for span in spans:
        if _is_segment(span) and span.parent_span_id and (span.trace_id, span.parent_span_id) not in present:
            orphans.setdefault((span.trace_id, span.parent_span_id), []).append(span)
    return [_unended_run(trace_id, span_id, segments) for (trace_id, span_id), segments in orphans.items()]


def _outermost(runs: list[SpanRecord], by_id: Mapping[str, SpanRecord]) -> list[SpanRecord]:
    """Runs with no run among their ancestors: a sub-agent's run is part of its parent's story."""
    run_ids = {run.span_id for run in runs}
    result = []
    for run in runs:
        parent, seen = run.parent_span_id, set()
        while parent and parent not in run_ids and parent in by_id and parent not in seen:
            seen.add(parent)
            parent = by_id[parent].parent_span_id
        if not parent or parent not in run_ids:
            result.append(run)
    return result


def _surfaced(run: SpanRecord, runs: Mapping[str, SpanRecord]) -> SpanRecord:
    """The run whose error the app got: a nested run's `KilnRunError` passes through its parents
    unchanged, and each parent names it (`wire.ATTR_ERROR_SPAN_ID`)."""
    seen = {run.span_id}
    while run.status_code == "ERROR":
        source = run.attributes.get(wire.ATTR_ERROR_SPAN_ID)
        if not isinstance(source, str) or source in seen or source not in runs:
            break
        seen.add(source)
        run = runs[source]
    return run


def _describe(run: SpanRecord) -> str:
    if run.status_code != "ERROR":
        return f"{run.span_id} ({run.name}, did not fail)"
    message = run.status_message if len(run.status_message) <= 80 else run.status_message[:79] + "…"
    return f"{run.span_id} ({run.name}, failed: {_error_type(run)}: {message})"


def find_run(spans: Sequence[SpanRecord], trace_id: str | None = None, span_id: str | None = None) -> SpanRecord:
    """The one run span the caller means, or an error that says how to be more specific.

    Without ``span_id``: the trace's outermost run (a sub-agent's run is part of its parent's story),
    except that a run which failed because a nested run's error passed through it stands for that
    nested run, as the app got that one's error. Several outermost runs: the one that failed, if only
    one did; otherwise `AmbiguousTraceError` lists them. A run whose span never ended (SIGKILL, a hang)
    is found through its segments (an `UnendedRun`).
    """
    if not spans:
        raise TraceNotFoundError("the telemetry holds no spans at all")
    if trace_id is not None:
        spans = [s for s in spans if s.trace_id == trace_id]
        if not spans:
            raise TraceNotFoundError(f"no span with trace id {trace_id} in the telemetry")
    every_run = [s for s in spans if _is_run(s)] + _unended_runs(spans)
    runs = [run for run in every_run if span_id is None or run.span_id == span_id]
    if not runs:
        where = f"trace {trace_id}" if trace_id else "the telemetry"
        if span_id is not None:
            raise TraceNotFoundError(f"no kiln-otel run span {span_id} in {where}")
        raise NotKilnTelemetryError(
            f"{where} holds {len(spans)} span(s) but no kiln-otel run "
            f"(no span carries {wire.ATTR_SCHEMA_VERSION}); was it recorded with traced_run?"
        )
    traces = sorted({run.trace_id for run in runs})
    if len(traces) > 1:
        raise AmbiguousTraceError(f"runs from {len(traces)} traces ({', '.join(traces[:10])}): pass trace_id")
    by_span = {run.span_id: run for run in runs}
    candidates = _outermost(runs, {**{s.span_id: s for s in spans}, **by_span})
    if span_id is None:
        candidates = list({run.span_id: run for run in (_surfaced(c, by_span) for c in candidates)}.values())
    if len(candidates) == 1:
        return candidates[0]
    failed = [run for run in candidates if run.status_code == "ERROR"]
    if len(failed) == 1:
        return failed[0]
    listed = "; ".join(_describe(run) for run in candidates[:10])
    raise AmbiguousTraceError(
        f"trace {traces[0]} holds {len(candidates)} separate runs, {len(failed)} of them failed: {listed}; "
        "pass span_id to choose one"
    )


def _list_events(run: SpanRecord, spans: Sequence[SpanRecord]) -> tuple[list[EventRecord], list[SpanRecord]]:
    segments = [s for s in spans if s.trace_id == run.trace_id and s.parent_span_id == run.span_id and _is_segment(s)]
    events = [e for span in (run, *segments) for e in span.events if wire.ATTR_EVENT_SEQ in e.attributes]
    events.sort(key=lambda e: _int(e.attributes[wire.ATTR_EVENT_SEQ]))
    return events, [run, *segments]


def _int(value: object) -> int:
    """Attribute ints come back as int, float or string depending on the backend's JSON."""
    if isinstance(value, (int, float, str)):
        return int(value)
    raise TypeError(f"expected an integer attribute, got {value!r}")


def _is_message_event(name: str) -> bool:
    return name == wire.EVENT_MESSAGE_PREFIX or name.startswith(wire.EVENT_MESSAGE_PREFIX + ".")


def _apply(messages: list[Any], event: EventRecord, lossy: Counter[str]) -> None:
    attributes = event.attributes
    if _is_message_event(event.name):
        message, marks = message_from_event(event.name, attributes)
        for mark in marks:
            lossy[mark] += mark != "original_size" and mark != "size"
        if marks and isinstance(message, dict):
            message[wire.MARKER_KEY] = marks
        messages.insert(_int(attributes[wire.ATTR_MESSAGE_INDEX]), message)
    elif event.name == wire.EVENT_MESSAGES_DELETE:
        start = _int(attributes[wire.ATTR_MESSAGE_INDEX])
        del messages[start : start + _int(attributes[wire.ATTR_MESSAGES_REMOVED])]
    elif event.name == wire.EVENT_MESSAGES_REORDER:
        order = [_int(i) for i in attributes[wire.ATTR_MESSAGES_ORDER]]  # type: ignore[union-attr]
        messages[:] = [messages[i] for i in order]


_MARK_TEXT = {
    "truncated": "message(s) truncated to the size budget",
    "lossy": "message(s) held values JSON cannot carry and were approximated",
    "captured": "message(s) recorded without content (capture was off)",
    "unparseable": "message(s) whose recorded JSON no longer parses",
}


def _gaps(events: list[EventRecord], run: SpanRecord, spans: list[SpanRecord]) -> list[str]:
    issues = []
    seqs = [_int(e.attributes[wire.ATTR_EVENT_SEQ]) for e in events]
    ops = run.attributes.get(wire.ATTR_MESSAGES_OPS)
    if ops is None:
        issues.append("the run span carries no totals (it had not ended when exported)")
    elif seqs != list(range(_int(ops))):
        issues.append(f"{_int(ops) - len(set(seqs))} of {ops} list events are missing")
    expected_segments = run.attributes.get(wire.ATTR_SEGMENTS)
    if expected_segments is not None and len(spans) - 1 != expected_segments:
        issues.append(f"{len(spans) - 1} of {expected_segments} continuation segment spans found")
    dropped = sum(span.dropped_events for span in spans)
    if dropped:
        issues.append(f"the SDK dropped {dropped} event(s) over its per-span limit")
    return issues


def reconstruct_trace(
    source: object, *, trace_id: str | int | None = None, span_id: str | int | None = None
) -> ReconstructedTrace:
    """The run's message list as it stood when the run ended, from any telemetry source.

    ``source``: SDK ReadableSpans, OTLP protobuf bytes, OTLP JSON (a request, JSON lines, a file
    path, Jaeger's ``/api/v3/traces`` body) or Jaeger's legacy ``/api/traces`` body.
    """
    spans = _as_records(source)
    run = find_run(spans, _normalize_id(trace_id, 32), _normalize_id(span_id, 16))
    events, run_spans = _list_events(run, spans)
    issues = [NOT_ENDED_ISSUE] if isinstance(run, UnendedRun) else []
    issues += _gaps(events, run, run_spans)
    messages: list[Any] = []
    lossy: Counter[str] = Counter()
    for event in events:
        try:
            _apply(messages, event, lossy)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            issues.append(f"event {event.name} could not be replayed: {exc!r}")
    issues.extend(f"{n} {_MARK_TEXT[mark]}" for mark, n in lossy.items() if n)
    count = run.attributes.get(wire.ATTR_MESSAGES_COUNT)
    if count is not None and count != len(messages):
        issues.append(f"rebuilt {len(messages)} messages, the run ended with {count}")
    return ReconstructedTrace(messages, run, issues)


def _error_type(run: SpanRecord) -> str:
    qualified = run.attributes.get(wire.ATTR_ERROR_TYPE)
    if not isinstance(qualified, str):
        exception = next((e for e in run.events if e.name == wire.EVENT_EXCEPTION), None)
        qualified = exception.attributes.get("exception.type") if exception else None
    return qualified.rsplit(".", 1)[-1] if isinstance(qualified, str) and qualified else "_OTHER"


def reconstruct_error(
    source: object, trace_id: str | int | None = None, *, span_id: str | int | None = None
) -> ErrorWithTrace:
    """The ErrorWithTrace the app got when the run failed, rebuilt from telemetry alone."""
    trace = reconstruct_trace(source, trace_id=trace_id, span_id=span_id)
    run = trace.run
    if run.status_code != "ERROR":
        raise ReconstructionError(f"run {run.span_id} in trace {run.trace_id} did not fail (status {run.status_code})")
    return ErrorWithTrace(
        message=run.status_message,
        error_type=_error_type(run),
        trace=list(trace) or None,
        trace_id=run.trace_id,
        span_id=run.span_id,
        trace_complete=trace.complete,
    )
