"""load_spans: every telemetry source yields the very same SpanRecords as the spans that were recorded."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict, MessageToJson
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from kiln_otel.errors import MalformedTelemetryError
from kiln_otel.exporters import OtlpJsonFileExporter
from kiln_otel.otlp_json import encode_otlp_json
from kiln_otel.sources import load_spans
from kiln_otel.spans import EventRecord, SpanRecord

BIG = ("kiln ✓ 日本語 🎉 " * 8_000)[:100_000]
UNICODE = 'héllo ☃ 日本語 🎉 \u0000 "quoted" \\ back'


def new_tracer(limits: SpanLimits | None = None) -> tuple[Tracer, InMemorySpanExporter]:
    """A private provider: the global one belongs to whoever else runs in this process."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("kiln-otel-tests", "1.0"), exporter


@pytest.fixture
def spans() -> tuple[ReadableSpan, ...]:
    tracer, exporter = new_tracer()
    with tracer.start_as_current_span("invoke_agent demo", attributes={"kiln_otel.schema_version": 1}) as root:
        root.add_event(
            "kiln_otel.message.user",
            {
                "kiln_otel.seq": 0,
                "kiln_otel.message.json": json.dumps({"role": "user", "content": UNICODE}),
                "flag": True,
                "off": False,
                "score": 0.25,
                "huge": 2**63 - 1,
                "tiny": -(2**63),
                "names": ["a", "ü", UNICODE],
                "ints": [1, -2, 3],
                "floats": [1.5, -0.0, 1e300],
                "bools": [True, False],
                "empty": [],
            },
            timestamp=1_700_000_000_123_456_789,
        )
        with tracer.start_as_current_span("tool call", kind=SpanKind.CLIENT) as child:
            child.set_attribute("big", BIG)
            child.add_event("big event", {"blob": BIG, "text": UNICODE})
            child.add_event(UNICODE)
        with tracer.start_as_current_span("ok sibling") as sibling:
            sibling.set_status(Status(StatusCode.OK))
        root.set_status(Status(StatusCode.ERROR, "boom ✗ — failed"))
    return exporter.get_finished_spans()


def plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in (attributes or {}).items()}


def expected_record(span: ReadableSpan) -> SpanRecord:
    """Straight from the SDK's fields, independent of any encoder."""
    context = span.get_span_context()
    assert context is not None
    return SpanRecord(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{span.parent.span_id:016x}" if span.parent else None,
        name=span.name,
        start_time_unix_nano=span.start_time or 0,
        end_time_unix_nano=span.end_time or 0,
        attributes=plain(span.attributes),
        events=tuple(EventRecord(e.name, e.timestamp, plain(e.attributes)) for e in span.events),
        status_code=span.status.status_code.name,
        status_message=span.status.description or "",
        dropped_events=span.dropped_events,
    )


# --- Sources built from the same spans ----------------------------------------------------------


def otlp_lines(spans: Sequence[ReadableSpan]) -> str:
    """Several requests, one per line, with blank lines as a hand-edited file may have."""
    return "\n\n".join(json.dumps(encode_otlp_json([span])) for span in spans) + "\n"


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def exported_file(spans: Sequence[ReadableSpan], path: Path) -> Path:
    exporter = OtlpJsonFileExporter(path / "nested" / "spans.jsonl")
    for span in spans:
        exporter.export([span])
    return exporter.path


SOURCES: dict[str, Callable[[Sequence[ReadableSpan], Path], object]] = {
    "readable tuple": lambda spans, _: spans,
    "readable list": lambda spans, _: list(spans),
    "readable generator": lambda spans, _: iter(spans),
    "protobuf bytes": lambda spans, _: encode_spans(spans).SerializeToString(),
    "protobuf bytearray": lambda spans, _: bytearray(encode_spans(spans).SerializeToString()),
    "protobuf TracesData": lambda spans, _: TracesData(
        resource_spans=encode_spans(spans).resource_spans
    ).SerializeToString(),
    "otlp json dict": lambda spans, _: encode_otlp_json(spans),
    "otlp json text": lambda spans, _: json.dumps(encode_otlp_json(spans)),
    "otlp json bytes": lambda spans, _: json.dumps(encode_otlp_json(spans), ensure_ascii=False).encode(),
    "otlp json lines": lambda spans, _: otlp_lines(spans),
    "list of requests": lambda spans, _: [encode_otlp_json([span]) for span in spans],
    "MessageToJson base64 ids": lambda spans, _: MessageToJson(encode_spans(spans)),
    "snake_case": lambda spans, _: MessageToDict(encode_spans(spans), preserving_proto_field_name=True),
    "json lines file": lambda spans, tmp: write(tmp / "spans.jsonl", otlp_lines(spans)),
    "protobuf file": lambda spans, tmp: write(tmp / "spans.pb", encode_spans(spans).SerializeToString()),
    "exporter file": exported_file,
    "jaeger v3 dict": lambda spans, _: {"result": encode_otlp_json(spans)},
    "jaeger v3 text": lambda spans, _: json.dumps({"result": encode_otlp_json(spans)}),
    "jaeger v3 stream": lambda spans, _: "\n".join(json.dumps({"result": encode_otlp_json([span])}) for span in spans),
}


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
def test_every_source_gives_the_recorded_spans(
    spans: tuple[ReadableSpan, ...],
    make_source: Callable[[Sequence[ReadableSpan], Path], object],
    tmp_path: Path,
) -> None:
    assert load_spans(make_source(spans, tmp_path)) == [expected_record(span) for span in spans]


def test_the_fixture_holds_what_the_sources_must_carry(spans: tuple[ReadableSpan, ...]) -> None:
    records = load_spans(spans)
    child, sibling, root = records
    assert child.parent_span_id == root.span_id == sibling.parent_span_id
    assert root.parent_span_id is None
    assert (root.status_code, root.status_message) == ("ERROR", "boom ✗ — failed")
    assert (sibling.status_code, child.status_code) == ("OK", "UNSET")
    assert root.events[0].attributes["names"] == ["a", "ü", UNICODE]
    assert root.events[0].time_unix_nano == 1_700_000_000_123_456_789
    assert child.attributes["big"] == BIG
    assert [event.name for event in child.events] == ["big event", UNICODE]


def test_a_single_readable_span(spans: tuple[ReadableSpan, ...]) -> None:
    assert load_spans(spans[0]) == [expected_record(spans[0])]


def test_dropped_events_are_counted() -> None:
    tracer, exporter = new_tracer(SpanLimits(max_events=1))
    with tracer.start_as_current_span("s") as span:
        for n in range(4):
            span.add_event(f"e{n}")
    finished = exporter.get_finished_spans()
    for source in (finished, encode_spans(finished).SerializeToString(), encode_otlp_json(finished)):
        [record] = load_spans(source)
        assert record.dropped_events == 3
        assert [event.name for event in record.events] == ["e3"]


def test_protobuf_that_looks_like_json_after_a_newline() -> None:
    """Tag 0x0a (a newline) then length 0x7b (a brace): binary that a JSON sniffer would take for text."""
    for size in range(120):
        span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x" * size)
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
        data = request.SerializeToString()
        if data.startswith(b"\n{"):
            break
    else:  # pragma: no cover
        pytest.fail("no span size gives a 123-byte ResourceSpans")
    [record] = load_spans(data)
    assert (record.trace_id, record.span_id, record.name) == ("01" * 16, "02" * 8, "x" * size)


@pytest.mark.parametrize("empty", [b"", "", "  \n\n", [], (), {}, {"resourceSpans": []}, {"data": []}])
def test_empty_sources_give_no_spans(empty: object) -> None:
    assert load_spans(empty) == []


def test_an_empty_file_gives_no_spans(tmp_path: Path) -> None:
    assert load_spans(write(tmp_path / "empty.jsonl", "")) == []


# --- OTLP/JSON spellings other writers use -------------------------------------------------------


def one_span_request(span: dict[str, Any], key: str = "scopeSpans") -> dict[str, Any]:
    return {"resourceSpans": [{key: [{"spans": [span]}]}]}


MINIMAL = {"traceId": "0AF7651916CD43DD8448EB211C80319C", "spanId": "B7AD6B7169203331", "name": "n"}


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0, "UNSET"), (1, "OK"), (2, "ERROR"), ("STATUS_CODE_ERROR", "ERROR"), ("ERROR", "ERROR"), ("ok", "OK")],
)
def test_status_code_as_int_or_name(code: object, expected: str) -> None:
    [record] = load_spans(one_span_request({**MINIMAL, "status": {"code": code, "message": "m"}}))
    assert (record.status_code, record.status_message) == (expected, "m")


def test_other_writers_value_spellings() -> None:
    attributes = [
        {"key": "int as number", "value": {"intValue": 7}},
        {"key": "int as string", "value": {"int_value": "-9223372036854775808"}},
        {"key": "inf", "value": {"doubleValue": "Infinity"}},
        {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}},
        {"key": "empty array", "value": {"arrayValue": {}}},
        {"key": "bytes", "value": {"bytesValue": "AAE="}},
    ]
    span = {**MINIMAL, "parentSpanId": "", "attributes": attributes, "startTimeUnixNano": 5}
    [record] = load_spans(one_span_request(span, key="instrumentationLibrarySpans"))
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert record.span_id == "b7ad6b7169203331"
    assert record.parent_span_id is None
    assert record.start_time_unix_nano == 5
    assert record.attributes == {
        "int as number": 7,
        "int as string": -(2**63),
        "inf": math.inf,
        "map": '{"k": "v"}',
        "empty array": [],
        "bytes": "AAE=",
    }


def test_all_zero_parent_is_no_parent() -> None:
    [record] = load_spans(one_span_request({**MINIMAL, "parentSpanId": "0" * 16}))
    assert record.parent_span_id is None


# --- Jaeger legacy /api/traces, built from the spans as backends.md describes ----------------------


def jaeger_tag(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": json.dumps(list(value), separators=(",", ":"))}


def jaeger_status_tags(span: ReadableSpan) -> list[dict[str, Any]]:
    code = span.status.status_code
    if code is StatusCode.UNSET:
        return []
    tags = [jaeger_tag("otel.status_code", code.name)]
    if code is StatusCode.ERROR:
        tags.append(jaeger_tag("error", True))
    if span.status.description:
        tags.append(jaeger_tag("otel.status_description", span.status.description))
    return tags


def jaeger_span(span: ReadableSpan) -> dict[str, Any]:
    """Microsecond times, truncated, as Jaeger's JSON model writes them; kind and status as tags."""
    record = expected_record(span)
    scope = span.instrumentation_scope
    assert scope is not None
    assert span.start_time is not None
    assert span.end_time is not None
    return {
        "traceID": record.trace_id,
        "spanID": record.span_id,
        "operationName": record.name,
        "references": (
            [{"refType": "CHILD_OF", "traceID": record.trace_id, "spanID": record.parent_span_id}]
            if record.parent_span_id
            else []
        ),
        "startTime": span.start_time // 1000,
        "duration": (span.end_time - span.start_time) // 1000,
        "tags": [
            jaeger_tag("otel.scope.name", scope.name),
            jaeger_tag("otel.scope.version", scope.version),
            *(jaeger_tag(key, value) for key, value in record.attributes.items()),
            jaeger_tag("span.kind", span.kind.name.lower()),
            *jaeger_status_tags(span),
        ],
        "logs": [
            {
                "timestamp": event.time_unix_nano // 1000,
                "fields": [
                    jaeger_tag("event", event.name),
                    *(jaeger_tag(key, value) for key, value in event.attributes.items()),
                ],
            }
            for event in record.events
        ],
        "processID": "p1",
        "warnings": None,
    }


def jaeger_legacy_body(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    trace_id = expected_record(spans[0]).trace_id
    return {
        "data": [
            {
                "traceID": trace_id,
                "spans": [jaeger_span(span) for span in spans],
                "processes": {"p1": {"serviceName": "unknown_service:python", "tags": []}},
                "warnings": None,
            }
        ],
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": None,
    }


def at_microseconds(record: SpanRecord) -> SpanRecord:
    start_us = record.start_time_unix_nano // 1000
    duration_us = (record.end_time_unix_nano - record.start_time_unix_nano) // 1000
    return replace(
        record,
        start_time_unix_nano=start_us * 1000,
        end_time_unix_nano=(start_us + duration_us) * 1000,
        events=tuple(replace(e, time_unix_nano=e.time_unix_nano // 1000 * 1000) for e in record.events),
    )


def ints_as_strings(tags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**tag, "value": str(tag["value"])} if tag["type"] == "int64" else tag for tag in tags]


def test_jaeger_legacy_body_gives_the_recorded_spans(spans: tuple[ReadableSpan, ...]) -> None:
    expected = [at_microseconds(expected_record(span)) for span in spans]
    body = jaeger_legacy_body(spans)
    assert load_spans(body) == expected
    assert load_spans(json.dumps(body, ensure_ascii=False).encode()) == expected
    assert load_spans(body["data"]) == expected


def test_jaeger_legacy_int64_as_strings_and_vtype(spans: tuple[ReadableSpan, ...]) -> None:
    body = jaeger_legacy_body(spans)
    for span in body["data"][0]["spans"]:
        span["tags"] = [
            {"key": tag["key"], "vType": tag["type"].upper(), "value": tag["value"]}
            for tag in ints_as_strings(span["tags"])
        ]
        for log in span["logs"]:
            log["fields"] = ints_as_strings(log["fields"])
    assert load_spans(body) == [at_microseconds(expected_record(span)) for span in spans]


def test_jaeger_legacy_short_trace_id_and_parent_field() -> None:
    span = {"traceID": "00f067aa0ba902b7", "spanID": "1", "parentSpanID": "2", "operationName": "x"}
    [record] = load_spans({"data": [{"traceID": "f067aa0ba902b7", "spans": [span]}]})
    assert record.trace_id == "0" * 16 + "00f067aa0ba902b7"
    assert (record.span_id, record.parent_span_id) == ("0000000000000001", "0000000000000002")


def test_jaeger_legacy_event_attribute_shadows_the_name() -> None:
    """Documented limitation: the translator writes no name field when an attribute is called "event"."""
    log = {"timestamp": 3, "fields": [{"key": "event", "type": "string", "value": "from attribute"}]}
    span = {"traceID": "a" * 32, "spanID": "b" * 16, "operationName": "x", "logs": [log]}
    [record] = load_spans({"data": [{"spans": [span]}]})
    assert record.events == (EventRecord("from attribute", 3000, {}),)


def test_jaeger_legacy_string_that_is_not_a_json_array_stays_a_string() -> None:
    tags = [jaeger_tag("a", "[content not captured]"), jaeger_tag("b", "[1, {}]"), jaeger_tag("c", "[1, 2]")]
    span = {"traceID": "a" * 32, "spanID": "b" * 16, "operationName": "x", "tags": tags}
    [record] = load_spans({"data": [{"spans": [span]}]})
    assert record.attributes == {"a": "[content not captured]", "b": "[1, {}]", "c": [1, 2]}


# --- Malformed input ------------------------------------------------------------------------------


def truncated_lines(spans: Sequence[ReadableSpan]) -> str:
    lines = otlp_lines(spans).split("\n\n")
    return "\n".join([lines[0], lines[1][: len(lines[1]) // 2]])


BAD: dict[str, tuple[object, Sequence[str]]] = {
    "garbage bytes": (b"\x00\xff\xfe not telemetry", ["protobuf", "00 ff fe"]),
    "truncated protobuf": (b"\x0a\x40\x0a\x02", ["protobuf"]),
    "unknown fields only": (b"\x10\x01", ["no resource_spans"]),
    "not json text": ("hello world", ["not JSON", "pathlib.Path"]),
    "json of the wrong shape": ({"foo": 1}, ["resourceSpans", "'foo'"]),
    "json list of numbers": ([1, 2], ["[0]", "expected a JSON object", "int 1"]),
    "resourceSpans not a list": ({"resourceSpans": "x"}, ["resourceSpans: expected a JSON list", "str 'x'"]),
    "bad trace id": (
        one_span_request({**MINIMAL, "traceId": "xyz"}),
        ["resourceSpans[0].scopeSpans[0].spans[0].traceId", "32 hex digits", "'xyz'"],
    ),
    "missing span id": (one_span_request({"traceId": "a" * 32}), ["spanId", "NoneType"]),
    "bad time": (
        one_span_request({**MINIMAL, "startTimeUnixNano": "soon"}),
        ["startTimeUnixNano", "integer"],
    ),
    "bad status": (one_span_request({**MINIMAL, "status": {"code": 7}}), ["status.code", "int 7"]),
    "bad utf-8": (b'{"resourceSpans": "\xff"}', ["UTF-8"]),
    "jaeger errors": (
        {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]},
        ["trace not found"],
    ),
    "jaeger v3 error": ({"error": {"httpCode": 404, "message": "trace not found"}}, ["backend error"]),
    "jaeger bad duration": (
        {"data": [{"spans": [{"traceID": "a" * 32, "spanID": "b" * 16, "duration": "x"}]}]},
        ["data[0].spans[0].duration", "str 'x'"],
    ),
    "number": (42, ["found a int"]),
    "mixed list": (["x"], ["[0]", "expected a JSON object"]),
}


@pytest.mark.parametrize(("source", "words"), BAD.values(), ids=BAD.keys())
def test_malformed_sources_say_what_was_expected_and_found(source: object, words: Sequence[str]) -> None:
    with pytest.raises(MalformedTelemetryError) as raised:
        load_spans(source)
    for word in words:
        assert word in str(raised.value)


def test_a_torn_line_is_skipped_and_reported_the_rest_kept(spans: tuple[ReadableSpan, ...]) -> None:
    loaded = load_spans(truncated_lines(spans))
    assert loaded == [expected_record(spans[0])]
    [skipped] = loaded.skipped
    assert skipped.number == 2
    assert "not JSON" in skipped.reason
    torn_after_its_trace_id = json.dumps(encode_otlp_json(spans[1:2])).split('"spanId"')[0]
    [skipped] = load_spans(otlp_lines(spans[:1]) + torn_after_its_trace_id).skipped
    assert skipped.trace_ids == {expected_record(spans[1]).trace_id}


def test_a_source_with_nothing_readable_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"resourceSpans": [\n{"torn": \n')
    with pytest.raises(MalformedTelemetryError, match=r"bad\.jsonl: .*line 1 is not readable") as raised:
        load_spans(path)
    assert isinstance(raised.value.__cause__, MalformedTelemetryError)
    with pytest.raises(MalformedTelemetryError, match="could not read") as missing:
        load_spans(tmp_path / "missing.jsonl")
    assert isinstance(missing.value.__cause__, FileNotFoundError)


def test_readable_spans_mixed_with_other_items(spans: tuple[ReadableSpan, ...]) -> None:
    with pytest.raises(MalformedTelemetryError, match="mixed"):
        load_spans([spans[0], {"resourceSpans": []}])


# --- Property: whatever attributes and events a span holds survive every encoding ----------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False)
VALUES = st.one_of(
    TEXT,
    st.booleans(),
    INT64,
    FLOATS,
    *(st.lists(scalar, max_size=4) for scalar in (TEXT, st.booleans(), INT64, FLOATS)),
)
ATTRIBUTES = st.dictionaries(st.text(st.characters(codec="utf-8"), min_size=1, max_size=20), VALUES, max_size=6)
EVENTS = st.lists(st.tuples(TEXT, ATTRIBUTES), max_size=4)


def recorded_span(attributes: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> ReadableSpan:
    tracer, exporter = new_tracer()
    with tracer.start_as_current_span("s", attributes=attributes) as span:
        for n, (name, event_attributes) in enumerate(events):
            span.add_event(name, event_attributes, timestamp=1_000 + n)
    [finished] = exporter.get_finished_spans()
    return finished


@settings(deadline=None, max_examples=75)
@given(attributes=ATTRIBUTES, events=EVENTS)
def test_attributes_and_events_survive_every_encoding(
    attributes: dict[str, Any], events: list[tuple[str, dict[str, Any]]]
) -> None:
    span = recorded_span(attributes, events)
    expected_events = tuple(EventRecord(name, 1_000 + n, plain(attrs)) for n, (name, attrs) in enumerate(events))
    for source in (
        encode_otlp_json([span]),
        json.dumps(encode_otlp_json([span])),
        encode_spans([span]).SerializeToString(),
        span,
    ):
        [record] = load_spans(source)
        assert record.attributes == plain(attributes)
        assert record.events == expected_events


# --- One trace out of many: filtered, and JSON Lines that do not mention it never parsed -----------


def two_traces(spans: Sequence[ReadableSpan]) -> tuple[list[ReadableSpan], str]:
    tracer, exporter = new_tracer()
    with tracer.start_as_current_span("other run"), tracer.start_as_current_span("other child"):
        pass
    return [*exporter.get_finished_spans(), *spans], expected_record(spans[0]).trace_id


@pytest.mark.parametrize("make_source", SOURCES.values(), ids=SOURCES.keys())
def test_trace_id_keeps_that_trace_from_every_source(
    spans: tuple[ReadableSpan, ...],
    make_source: Callable[[Sequence[ReadableSpan], Path], object],
    tmp_path: Path,
) -> None:
    mixed, trace_id = two_traces(spans)
    for n, spelling in enumerate((trace_id, trace_id.upper(), "0x" + trace_id)):
        (tmp_path / str(n)).mkdir()
        source = make_source(mixed, tmp_path / str(n))
        assert load_spans(source, trace_id=spelling) == [expected_record(s) for s in spans]


def test_lines_that_do_not_mention_the_trace_are_not_parsed(spans: tuple[ReadableSpan, ...]) -> None:
    text = otlp_lines(spans) + "{not json, and about another trace}\n"
    trace_id = expected_record(spans[0]).trace_id
    assert load_spans(text, trace_id=trace_id).skipped == []
    [skipped] = load_spans(text).skipped
    assert skipped.trace_ids == frozenset()


def test_base64_ids_are_found_by_the_line_filter(spans: tuple[ReadableSpan, ...]) -> None:
    """protobuf's JSON printer writes ids in base64: the cheap filter must still see the trace."""
    lines = "\n".join(MessageToJson(encode_spans([span]), indent=None) for span in spans)
    trace_id = expected_record(spans[0]).trace_id
    assert len(load_spans(lines, trace_id=trace_id)) == len(spans)
    assert load_spans(lines, trace_id="f" * 32) == []


def test_a_binary_stream_is_read_line_by_line(spans: tuple[ReadableSpan, ...]) -> None:
    stream = io.BytesIO((otlp_lines(spans) + '{"torn": ').encode())
    loaded = load_spans(stream)
    assert loaded == [expected_record(span) for span in spans]
    assert [line.number for line in loaded.skipped] == [2 * len(spans)]


def test_a_bad_trace_id_is_refused() -> None:
    with pytest.raises(ValueError, match="hex"):
        load_spans("{}", trace_id="not hex")


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])  # the ones JSON allows raw
def test_text_is_split_on_newlines_only(spans: tuple[ReadableSpan, ...], char: str) -> None:
    lines = otlp_lines(spans).replace("boom", f"bo{char}om")  # raw, as a writer without escaping left it
    assert load_spans(lines)[-1].status_message == f"bo{char}om ✗ — failed"
