"""encode_otlp_json is what an OTLP exporter sends; OtlpJsonFileExporter writes it like the collector does."""

from __future__ import annotations

import base64
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from kiln_otel.exporters import OtlpJsonFileExporter
from kiln_otel.otlp_json import encode_otlp_json
from kiln_otel.sources import load_spans


@pytest.fixture
def memory() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(memory: InMemorySpanExporter) -> TracerProvider:
    """Its own provider, never the global one."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


@pytest.fixture
def spans(provider: TracerProvider, memory: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    tracer = provider.get_tracer("otlp-json-tests")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        link = Link(parent.get_span_context(), {"why": "test"})
        with tracer.start_as_current_span("child", links=[link], attributes={"n": 2**62, "s": "ü"}) as child:
            child.add_event("e", {"ok": True, "xs": [1.5, 2.5]}, timestamp=42)
            child.set_status(Status(StatusCode.ERROR, "bad"))
    return memory.get_finished_spans()


def only_spans(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for rs in request["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]


def test_ids_are_lowercase_hex_and_match_the_span_contexts(spans: tuple[ReadableSpan, ...]) -> None:
    child, parent = only_spans(encode_otlp_json(spans))
    context = spans[1].get_span_context()
    assert context is not None
    assert parent["traceId"] == child["traceId"] == f"{context.trace_id:032x}"
    assert parent["spanId"] == child["parentSpanId"] == child["links"][0]["spanId"] == f"{context.span_id:016x}"
    assert child["links"][0]["traceId"] == parent["traceId"]
    assert "parentSpanId" not in parent


def test_camel_case_int64_strings_and_integer_enums(spans: tuple[ReadableSpan, ...]) -> None:
    child, parent = only_spans(encode_otlp_json(spans))
    assert (parent["kind"], child["kind"]) == (2, 1)
    assert child["status"] == {"code": 2, "message": "bad"}
    assert isinstance(child["startTimeUnixNano"], str)
    assert child["events"][0] == {
        "timeUnixNano": "42",
        "name": "e",
        "attributes": [
            {"key": "ok", "value": {"boolValue": True}},
            {"key": "xs", "value": {"arrayValue": {"values": [{"doubleValue": 1.5}, {"doubleValue": 2.5}]}}},
        ],
    }
    assert {"key": "n", "value": {"intValue": str(2**62)}} in child["attributes"]


def test_it_is_the_sdk_encoders_request_with_hex_ids(spans: tuple[ReadableSpan, ...]) -> None:
    """Turning the ids back into protobuf's base64 gives exactly the request the OTLP exporter sends."""
    request = encode_otlp_json(spans)
    for span in only_spans(request):
        for holder in [span, *span.get("links", [])]:
            for key in ("traceId", "spanId", "parentSpanId"):
                if key in holder:
                    holder[key] = base64.b64encode(bytes.fromhex(holder[key])).decode()
    assert ParseDict(request, ExportTraceServiceRequest()) == encode_spans(spans)


def test_plain_json_values(spans: tuple[ReadableSpan, ...]) -> None:
    text = json.dumps(encode_otlp_json(spans), allow_nan=False)
    assert json.loads(text) == encode_otlp_json(spans)
    assert encode_otlp_json([]) == {}


# --- OtlpJsonFileExporter ---------------------------------------------------------------------


def test_exporter_appends_one_parsable_request_per_export(spans: tuple[ReadableSpan, ...], tmp_path: Path) -> None:
    exporter = OtlpJsonFileExporter(tmp_path / "a" / "b" / "traces.jsonl")
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    assert exporter.export(spans[1:]) is SpanExportResult.SUCCESS
    assert exporter.export([]) is SpanExportResult.SUCCESS
    lines = exporter.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [encode_otlp_json(spans[:1]), encode_otlp_json(spans[1:])]
    assert ": " not in lines[0]
    assert ", " not in lines[0]
    assert "ü" in lines[0]
    assert load_spans(exporter.path) == load_spans(spans)


def test_exporter_behind_a_span_processor(
    provider: TracerProvider, memory: InMemorySpanExporter, tmp_path: Path
) -> None:
    exporter = OtlpJsonFileExporter(tmp_path / "traces.jsonl")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("in"):
        pass
    provider.shutdown()
    exporter.shutdown()  # idempotent
    assert load_spans(exporter.path) == load_spans(memory.get_finished_spans())
    assert [record.name for record in load_spans(exporter.path)] == ["in", "outer"]
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE


def test_exporter_survives_concurrent_exports(spans: tuple[ReadableSpan, ...], tmp_path: Path) -> None:
    exporter = OtlpJsonFileExporter(tmp_path / "traces.jsonl")
    results: list[SpanExportResult] = []
    start = threading.Barrier(8)

    def export_many() -> None:
        start.wait()
        results.extend(exporter.export(spans) for _ in range(25))

    threads = [threading.Thread(target=export_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [SpanExportResult.SUCCESS] * 200
    lines = exporter.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    assert all(json.loads(line) == encode_otlp_json(spans) for line in lines)
    assert len(load_spans(exporter.path)) == 200 * len(spans)


def test_exporter_io_error_is_a_failure_logged_once(
    spans: tuple[ReadableSpan, ...], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = OtlpJsonFileExporter(tmp_path)  # a directory cannot be opened for appending
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans) is SpanExportResult.FAILURE
    assert [record.name for record in caplog.records] == ["kiln_otel"]
    assert str(tmp_path) in caplog.records[0].getMessage()
    assert exporter.force_flush()
