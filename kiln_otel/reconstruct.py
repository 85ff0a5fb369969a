"""Rebuild a run's message list, and its ErrorWithTrace, from exported telemetry alone.

The replay trusts nothing it can check: every list event has a run-wide sequence number and the run
span states how many events, segments and messages there were, so a lost span, an event the SDK
dropped or a truncated message makes the result say it is incomplete instead of passing for whole.

A run whose own span never reached the telemetry (SIGKILL, ``os._exit``, a hang, a run still going)
is rebuilt from its segment spans, which repeat its identity: the messages so far, marked incomplete,
with a `RunNotEndedError` payload.

Telemetry is input, possibly hostile: every number is validated before it is used (a count of 10^12
costs nothing), work is bounded by the number of events actually present, and each inconsistency is
named as what it is (a duplicate or negative sequence number, an index outside the list) in
``issues``, never clamped or skipped silently.
"""

from __future__ import annotations

import re
import reprlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln_otel import wire
from kiln_otel.config import ENV_RECORD_CALL_MESSAGES
from kiln_otel.encoding import message_from_event
from kiln_otel.errors import (
    AmbiguousTraceError,
    NotKilnTelemetryError,
    ReconstructionError,
    RunNotEndedError,
    TraceNotFoundError,
)
from kiln_otel.payload import ErrorWithTrace
from kiln_otel.spans import EventRecord, LoadedSpans, SpanRecord

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


def _as_records(source: object, trace_id: str | None) -> list[SpanRecord]:
    if isinstance(source, LoadedSpans):
        return source
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, SpanRecord) for s in source):
        return list(source)
    from kiln_otel.sources import load_spans

    return load_spans(source, trace_id=trace_id)


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
    if trace_id is not None:
        unread = [line.number for line in getattr(spans, "skipped", ()) if trace_id in line.trace_ids]
        spans = [s for s in spans if s.trace_id == trace_id]
        if not spans:
            hint = f" (line {unread[0]}, which mentions it, could not be read)" if unread else ""
            raise TraceNotFoundError(f"no span with trace id {trace_id} in the telemetry{hint}")
    elif not spans:
        raise TraceNotFoundError("the telemetry holds no spans at all")
    every_run = [s for s in spans if _is_run(s)] + _unended_runs(spans)
    runs = [run for run in every_run if span_id is None or run.span_id == span_id]
    if not runs:
        where = f"trace {trace_id}" if trace_id else "the telemetry"
        if span_id is not None:
            raise TraceNotFoundError(f"no kiln-otel run span {span_id} in {where}")
        raise NotKilnTelemetryError(
            f"{where} holds {len(spans)} span(s) but no kiln-otel run (no span carries "
            f"{wire.ATTR_SCHEMA_VERSION}): traced_run records one, and so does a litellm call made outside "
            f"any run that failed ({ENV_RECORD_CALL_MESSAGES}=always: every call)"
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
    return events, [run, *segments]


# --- Validation and replay: every number checked before it is used --------------------------------

_INT64 = 2**63
_DECIMAL = re.compile(r"\s*-?[0-9]{1,19}\s*")
_MISSING_SHOWN = 10
_MOVE_BUDGET = 10**9
"""Messages shifted along the list by inserts and removals before the replay gives up: a second or two.

A real run appends (nothing moves); a hostile trace of n inserts at index 0 would otherwise cost n²/2.
"""
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40


def _int(value: object) -> int:
    """An int64 attribute, which backends give back as int, integral float or decimal string.

    Raises ValueError saying what the value is instead: a NaN, an infinity, text, a list, or a number
    no OTLP encoder could have written.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and _DECIMAL.fullmatch(value)):
        number = int(value)
    if number is None:
        raise ValueError(f"{_SHOW.repr(value)} is not an integer")
    if not -_INT64 <= number < _INT64:
        raise ValueError(f"{_SHOW.repr(value)} is outside the 64-bit range")
    return number


def _attribute_int(attributes: Mapping[str, Any], key: str) -> int:
    """``attributes[key]`` as an int64; the ValueError names the attribute."""
    try:
        return _int(attributes[key])
    except ValueError as err:
        raise ValueError(f"{key} {err}") from err


def _count(value: object, what: str) -> tuple[int | None, str | None]:
    """A non-negative integer, or None and the issue naming why not."""
    try:
        number = _int(value)
    except ValueError as err:
        return None, f"{what} is not a count: {err}"
    if number < 0:
        return None, f"{what} is negative ({number})"
    return number, None


def _is_message_event(name: str) -> bool:
    return name == wire.EVENT_MESSAGE_PREFIX or name.startswith(wire.EVENT_MESSAGE_PREFIX + ".")


def _is_list_event(name: str) -> bool:
    return _is_message_event(name) or name in (wire.EVENT_MESSAGES_DELETE, wire.EVENT_MESSAGES_REORDER)


def _label(seq: int, event: EventRecord) -> str:
    return f"list event {seq} ({event.name})"


def _sequence(events: Iterable[EventRecord]) -> tuple[list[tuple[int, EventRecord]], list[str]]:
    """List events in ``kiln_otel.seq`` order, and what is wrong with the others.

    An event whose seq is not a non-negative int64 is not replayed. A copy of the first event with a
    seq (a retried export delivered it twice) counts once; different events claiming one seq are
    named, the first (in span order) replayed.
    """
    by_seq: dict[int, list[EventRecord]] = {}
    issues = []
    for event in events:
        raw = event.attributes[wire.ATTR_EVENT_SEQ]
        try:
            seq = _int(raw)
        except ValueError as err:
            issues.append(f"a {event.name} event has an unusable {wire.ATTR_EVENT_SEQ}: {err}; not replayed")
            continue
        if seq < 0:
            issues.append(f"a {event.name} event has a negative {wire.ATTR_EVENT_SEQ} ({seq}); not replayed")
            continue
        if not _is_list_event(event.name):
            issues.append(f"a {event.name} event carries {wire.ATTR_EVENT_SEQ} {seq} but is no list event; ignored")
            continue
        same = by_seq.setdefault(seq, [])
        if not same or same[0].name != event.name or same[0].attributes != event.attributes:
            same.append(event)  # compared with the first only: linear however many claim one seq
    ordered = []
    for seq in sorted(by_seq):
        claimants = by_seq[seq]
        if len(claimants) > 1:
            names = ", ".join(event.name for event in claimants[:3]) + (", ..." if len(claimants) > 3 else "")
            issues.append(
                f"duplicate {wire.ATTR_EVENT_SEQ} {seq}: {len(claimants)} different events ({names}); "
                "replayed the first"
            )
        ordered.append((seq, claimants[0]))
    return ordered, issues


def _missing(present: Sequence[int], ops: int) -> str:
    """Names the first few of ``ops - len(present)`` missing seqs; ``present`` is sorted, unique, below ``ops``.

    Linear in ``len(present)``: a claimed count of 10^12 costs no more than one of 7.
    """
    named: list[int] = []
    expected = 0
    for seq in (*present, ops):
        while expected < seq and len(named) < _MISSING_SHOWN:
            named.append(expected)
            expected += 1
        if len(named) >= _MISSING_SHOWN:
            break
        expected = seq + 1
    missing = ops - len(present)
    more = ", ..." if missing > len(named) else ""
    return f"{missing} of {ops} list events are missing (seq {', '.join(map(str, named))}{more})"


def _apply(messages: list[Any], seq: int, event: EventRecord, lossy: Counter[str], issues: list[str]) -> int:
    """Replay one list event onto ``messages``; anything out of place is done as well as it can be and named.

    Returns how many messages the event shifted along the list (the replay's only cost that the
    input's size does not pay for).
    """
    attributes = event.attributes
    if _is_message_event(event.name):
        message, marks = message_from_event(event.name, attributes)
        for mark in marks:
            lossy[mark] += mark != "original_size" and mark != "size"
        if marks and isinstance(message, dict):
            message[wire.MARKER_KEY] = marks
        index = _attribute_int(attributes, wire.ATTR_MESSAGE_INDEX)
        if not 0 <= index <= len(messages):
            where = "is negative" if index < 0 else f"is past the end of the {len(messages)}-message list"
            issues.append(f"{_label(seq, event)}: insertion index {index} {where}; the message was appended")
            index = len(messages)
        messages.insert(index, message)
        return len(messages) - 1 - index
    if event.name == wire.EVENT_MESSAGES_DELETE:
        start = _attribute_int(attributes, wire.ATTR_MESSAGE_INDEX)
        removed = _attribute_int(attributes, wire.ATTR_MESSAGES_REMOVED)
        if not 0 <= start < len(messages) or removed <= 0:
            issues.append(
                f"{_label(seq, event)}: cannot remove {removed} message(s) at index {start} "
                f"of a {len(messages)}-message list; nothing removed"
            )
            return 0
        if start + removed > len(messages):
            issues.append(
                f"{_label(seq, event)}: removes {removed} message(s) at index {start} but only "
                f"{len(messages) - start} follow; removed those"
            )
        del messages[start : start + removed]
        return max(len(messages) - start, 0)
    order = attributes[wire.ATTR_MESSAGES_ORDER]
    if not isinstance(order, (list, tuple)) or len(order) != len(messages):
        issues.append(f"{_label(seq, event)}: the order does not cover the {len(messages)}-message list; not applied")
        return 0
    try:
        positions = [_int(i) for i in order]
    except ValueError as err:
        raise ValueError(f"{wire.ATTR_MESSAGES_ORDER} holds {err}") from err
    if sorted(positions) != list(range(len(messages))):
        issues.append(f"{_label(seq, event)}: the order is not a permutation of the list; not applied")
        return 0
    messages[:] = [messages[i] for i in positions]
    return 0  # as long as the order itself, which the input holds


_MARK_TEXT = {
    "truncated": "message(s) truncated to the size budget",
    "lossy": "message(s) held values JSON cannot carry and were approximated",
    "captured": "message(s) recorded without content (capture was off)",
    "unparseable": "message(s) whose recorded JSON no longer parses",
}


def _gaps(seqs: Sequence[int], run: SpanRecord, spans: list[SpanRecord]) -> list[str]:
    """What the run span's totals say is missing, checked against what arrived, never against a range."""
    issues = []
    ops_value = run.attributes.get(wire.ATTR_MESSAGES_OPS)
    if ops_value is None:
        issues.append("the run span carries no totals (it had not ended when exported)")
    else:
        ops, problem = _count(ops_value, wire.ATTR_MESSAGES_OPS)
        if problem or ops is None:
            issues.append(f"{problem}; cannot tell whether list events are missing")
        else:
            in_range = [seq for seq in seqs if seq < ops]
            if len(in_range) < ops:
                issues.append(_missing(in_range, ops))
            beyond = seqs[len(in_range) :]
            if beyond:
                shown = ", ".join(map(str, beyond[:_MISSING_SHOWN])) + (", ..." if len(beyond) > _MISSING_SHOWN else "")
                issues.append(
                    f"{len(beyond)} list event(s) have a seq past the run's {ops} ({wire.ATTR_MESSAGES_OPS}): "
                    f"{shown}; replayed in seq order"
                )
    segments_value = run.attributes.get(wire.ATTR_SEGMENTS)
    if segments_value is not None:
        expected, problem = _count(segments_value, wire.ATTR_SEGMENTS)
        found = len({span.span_id for span in spans}) - 1
        if problem:
            issues.append(problem)
        elif found != expected:
            issues.append(f"{found} of {expected} continuation segment spans found")
    dropped = sum(span.dropped_events for span in spans)
    if dropped:
        issues.append(
            f"{dropped} event(s) were dropped before export (the SDK's per-span limit, or an export size cut)"
        )
    for span in spans:
        cut = span.attributes.get(wire.ATTR_EXPORT_CUT)
        if cut:
            issues.append(
                f"span {span.name} {span.span_id}: {_SHOW.repr(cut)} value(s) were cut at export to fit the "
                "receiver's request size limit"
            )
    return issues


def _without_copies(spans: list[SpanRecord]) -> list[SpanRecord]:
    """The same span delivered twice (an export retried after a timeout that had in fact succeeded) counts once.

    Only exact copies go: two different spans under one id are both kept, and the replay names what
    they disagree on.
    """
    seen: dict[tuple[str, str], list[SpanRecord]] = {}
    unique = LoadedSpans(skipped=getattr(spans, "skipped", ()))
    for span in spans:
        same_id = seen.setdefault((span.trace_id, span.span_id), [])
        if span not in same_id:
            same_id.append(span)
            unique.append(span)
    return unique


def _skipped_lines(spans: Sequence[SpanRecord], run: SpanRecord) -> list[str]:
    """Lines of the source that could not be read and mention this trace, or no trace at all."""
    return [
        f"line {line.number} of the source could not be read and "
        + ("holds spans of this trace" if line.trace_ids else "may hold spans of this trace")
        for line in getattr(spans, "skipped", ())
        if not line.trace_ids or run.trace_id in line.trace_ids
    ]


def reconstruct_trace(
    source: object, *, trace_id: str | int | None = None, span_id: str | int | None = None
) -> ReconstructedTrace:
    """The run's message list as it stood when the run ended, from any telemetry source.

    ``source``: SDK ReadableSpans, OTLP protobuf bytes, OTLP JSON (a request, JSON lines, a file
    path, Jaeger's ``/api/v3/traces`` body) or Jaeger's legacy ``/api/traces`` body. With a
    ``trace_id``, a JSON Lines file is streamed and only that trace's lines are parsed.
    """
    wanted = _normalize_id(trace_id, 32)
    spans = _without_copies(_as_records(source, wanted))
    run = find_run(spans, wanted, _normalize_id(span_id, 16))
    events, run_spans = _list_events(run, spans)
    ordered, issues = _sequence(events)
    if isinstance(run, UnendedRun):
        issues.insert(0, NOT_ENDED_ISSUE)
    issues += _gaps([seq for seq, _ in ordered], run, run_spans)
    issues += _skipped_lines(spans, run)
    messages: list[Any] = []
    lossy: Counter[str] = Counter()
    moved = 0
    for seq, event in ordered:
        if moved > _MOVE_BUDGET:
            issues.append(
                f"replay stopped before list event {seq}: inserts and removals inside the list had moved "
                f"{moved} messages, far beyond any real run"
            )
            break
        try:
            moved += _apply(messages, seq, event, lossy, issues)
        except KeyError as exc:
            issues.append(f"{_label(seq, event)} lacks {exc}; not replayed")
        except (ValueError, TypeError) as exc:
            issues.append(f"{_label(seq, event)} not replayed: {exc}")
    issues.extend(f"{n} {_MARK_TEXT[mark]}" for mark, n in lossy.items() if n)
    count_value = run.attributes.get(wire.ATTR_MESSAGES_COUNT)
    if count_value is not None:
        count, problem = _count(count_value, wire.ATTR_MESSAGES_COUNT)
        if problem:
            issues.append(problem)
        elif count != len(messages):
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
