"""End to end through the real backends: SDK -> OTLP (gRPC / HTTP) -> collector -> Jaeger + file.

The collector runs collector-config/otelcol.yaml as users do; these tests check that spans and
span events arrive, that the redaction step masked every planted secret in span attributes and
in the JSON of ``kiln_otel.message.json`` (which must still parse), and that Jaeger's two query
APIs answer in the shapes docs and code rely on (shared/reference/backends.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.backends import Pipeline, otlp_spans

pytestmark = pytest.mark.backends

SK_KEY = "sk-proj-abcdefghijklmnopqrstuv123456"
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.kiln-smoke-token_0001"
API_KEY_VALUE = "kiln-smoke-plain-api-key-0002"
NESTED_API_KEY = "kiln-smoke-nested-api-key-0003"
AUTH_VALUE = "Basic a2lsbi1zbW9rZS1hdXRoLTAwMDQ="
SECRETS = (SK_KEY, BEARER_TOKEN, API_KEY_VALUE, NESTED_API_KEY, AUTH_VALUE)
REDACTED = "[REDACTED]"

MESSAGE_ATTR = "kiln_otel.message.json"
EVENT_NAME = "kiln_otel.message"
SPAN_NAME = "kiln_otel.smoke.agent_run"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def _message() -> dict[str, Any]:
    """An LLM message as kiln-otel records it, with secrets planted in every masked shape."""
    return {
        "role": "assistant",
        "content": f"calling the API with {SK_KEY} now",
        "api_key": API_KEY_VALUE,
        "headers": {"authorization": AUTH_VALUE, "x-trace": "keep-me"},
        "note": f"sent Authorization: Bearer {BEARER_TOKEN}",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "fetch_weather",
                    # JSON inside a JSON string, as tool-call arguments travel
                    "arguments": json.dumps({"city": "Oslo", "api_key": NESTED_API_KEY}),
                },
            }
        ],
    }


@dataclass(frozen=True)
class Sent:
    transport: str
    trace_id: str
    span_id: str
    start_ns: int


def _export_one(exporter: SpanExporter, transport: str) -> Sent:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "kiln-otel-smoke", "kiln_otel.transport": transport})
    )
    try:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("kiln_otel.tests.smoke")
        with tracer.start_as_current_span(SPAN_NAME, kind=SpanKind.CLIENT) as span:
            span.set_attribute("kiln_otel.transport", transport)
            span.set_attribute("http.request.header.authorization", f"Bearer {BEARER_TOKEN}")
            span.set_attribute("kiln_otel.provider_key", SK_KEY)
            span.set_attribute("kiln_otel.request.json", json.dumps({"model": "m", "api_key": API_KEY_VALUE}))
            span.set_attribute("kiln_otel.turns", 2)
            span.add_event(EVENT_NAME, {MESSAGE_ATTR: json.dumps(_message()), "kiln_otel.message.index": 3})
            span.set_status(Status(StatusCode.ERROR, "smoke failure"))
            ctx = span.get_span_context()
            start_ns = span.start_time or 0
        assert provider.force_flush(15_000), f"{transport}: force_flush timed out"
    finally:
        provider.shutdown()
    return Sent(transport, format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), start_ns)


@pytest.fixture(scope="module", params=["grpc", "http"])
def sent(request: pytest.FixtureRequest, pipeline: Pipeline) -> Sent:
    if request.param == "grpc":
        exporter: SpanExporter = GrpcSpanExporter(endpoint=pipeline.otlp_grpc_endpoint, insecure=True, timeout=10)
    else:
        exporter = HttpSpanExporter(endpoint=f"{pipeline.otlp_http_endpoint}/v1/traces", timeout=10)
    return _export_one(exporter, request.param)


# ---------------------------------------------------------------------------------------------
# checks shared by the three read-back paths


def _assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where}: secret {secret[:12]}... not masked"


def _assert_message_masked(raw: str) -> None:
    message = json.loads(raw)  # the mask kept the JSON valid
    assert message["role"] == "assistant"
    assert message["content"] == f"calling the API with {REDACTED} now"
    assert message["api_key"] == REDACTED
    assert message["headers"] == {"authorization": REDACTED, "x-trace": "keep-me"}
    assert message["note"] == f"sent Authorization: Bearer {REDACTED}"
    arguments = json.loads(message["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"city": "Oslo", "api_key": REDACTED}


def _otlp_attrs(attrs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["key"]: a["value"] for a in attrs}


def _assert_otlp_span(where: str, span: dict[str, Any], sent: Sent) -> None:
    """An OTLP JSON span (Jaeger v3 and the file exporter share the encoding)."""
    trace_id = span.get("traceId", span.get("trace_id"))
    span_id = span.get("spanId", span.get("span_id"))
    assert trace_id == sent.trace_id, f"{where}: trace id {trace_id!r} (hex expected)"
    assert span_id == sent.span_id, f"{where}: span id {span_id!r} (hex expected)"
    attrs = _otlp_attrs(span["attributes"])
    assert attrs["http.request.header.authorization"] == {"stringValue": f"Bearer {REDACTED}"}
    assert attrs["kiln_otel.provider_key"] == {"stringValue": REDACTED}
    assert json.loads(attrs["kiln_otel.request.json"]["stringValue"]) == {"model": "m", "api_key": REDACTED}
    assert attrs["kiln_otel.turns"] == {"intValue": "2"}, f"{where}: intValue is a JSON string"
    events = span["events"]
    assert [e["name"] for e in events] == [EVENT_NAME]
    event = events[0]
    t = event.get("timeUnixNano", event.get("time_unix_nano"))
    assert isinstance(t, str), f"{where}: event time {t!r} is not a string"
    assert t.isdigit()
    assert int(t) >= sent.start_ns
    event_attrs = _otlp_attrs(event["attributes"])
    assert event_attrs["kiln_otel.message.index"] == {"intValue": "3"}
    _assert_message_masked(event_attrs[MESSAGE_ATTR]["stringValue"])
    assert span["status"]["code"] in (2, "STATUS_CODE_ERROR")
    assert span["status"]["message"] == "smoke failure"
    assert "redaction.masked.keys" not in attrs, "summary: silent adds no attributes"


def _find_span(spans: list[dict[str, Any]], where: str) -> dict[str, Any]:
    found = [s for s in spans if s.get("name") == SPAN_NAME]
    assert len(found) == 1, f"{where}: {len(found)} spans named {SPAN_NAME}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Jaeger /api/v3 (OTLP JSON)


def test_jaeger_v3_has_span_event_and_masks(pipeline: Pipeline, sent: Sent) -> None:
    body = pipeline.fetch_jaeger_v3(sent.trace_id)
    _assert_no_secret("jaeger v3", json.dumps(body))
    span = _find_span(otlp_spans(body["result"]), "jaeger v3")
    _assert_otlp_span("jaeger v3", span, sent)


def test_jaeger_v3_shape(pipeline: Pipeline, sent: Sent) -> None:
    """What backends.md promises: result.resourceSpans in camelCase OTLP JSON, hex ids."""
    body = pipeline.fetch_jaeger_v3(sent.trace_id)
    assert set(body) == {"result"}
    result = body["result"]
    assert "resourceSpans" in result, f"camelCase expected, got keys {sorted(result)}"
    rs = result["resourceSpans"][0]
    resource = _otlp_attrs(rs["resource"]["attributes"])
    assert resource["service.name"] == {"stringValue": "kiln-otel-smoke"}
    span = rs["scopeSpans"][0]["spans"][0]
    assert HEX32.match(span["traceId"])
    assert HEX16.match(span["spanId"])
    assert isinstance(span["startTimeUnixNano"], str)
    assert isinstance(span["endTimeUnixNano"], str)
    assert int(span["startTimeUnixNano"]) == sent.start_ns
    assert span["kind"] in (3, "SPAN_KIND_CLIENT")


# ---------------------------------------------------------------------------------------------
# Jaeger /api/traces (legacy, the UI's)


def test_jaeger_legacy_has_span_logs_and_masks(pipeline: Pipeline, sent: Sent) -> None:
    body = pipeline.fetch_jaeger_legacy(sent.trace_id)
    _assert_no_secret("jaeger legacy", json.dumps(body))
    [trace] = body["data"]
    assert trace["traceID"] == sent.trace_id
    matching = [s for s in trace["spans"] if s["operationName"] == SPAN_NAME]
    assert len(matching) == 1, f"{len(matching)} spans named {SPAN_NAME}"
    span = matching[0]
    assert trace["processes"][span["processID"]]["serviceName"] == "kiln-otel-smoke"
    assert span["spanID"] == sent.span_id
    assert span["startTime"] == sent.start_ns // 1000, "legacy times are microseconds"
    # typed key/value lists: {"key", "type" (this Jaeger says "type", older ones "vType"), "value"}
    assert all("type" in t or "vType" in t for t in span["tags"])
    tags = {t["key"]: t["value"] for t in span["tags"]}
    assert tags["http.request.header.authorization"] == f"Bearer {REDACTED}"
    assert tags["kiln_otel.provider_key"] == REDACTED
    assert tags["kiln_otel.turns"] == 2
    assert tags["span.kind"] == "client"
    assert tags["otel.status_code"] == "ERROR"
    assert tags["otel.status_description"] == "smoke failure"
    assert tags["error"] is True
    [log] = span["logs"]
    fields = {f["key"]: f["value"] for f in log["fields"]}
    assert fields["event"] == EVENT_NAME
    assert fields["kiln_otel.message.index"] == 3
    _assert_message_masked(fields[MESSAGE_ATTR])
    assert isinstance(log["timestamp"], int)
    assert log["timestamp"] >= sent.start_ns // 1000


# ---------------------------------------------------------------------------------------------
# file exporter (OTLP JSON lines)


def test_file_output_has_span_and_masks(pipeline: Pipeline, sent: Sent) -> None:
    text = pipeline.read_file_lines(sent.trace_id)
    _assert_no_secret("file output", text)
    spans: list[dict[str, Any]] = []
    for line in text.splitlines():
        spans.extend(s for s in otlp_spans(json.loads(line)) if s.get("traceId") == sent.trace_id)
    span = _find_span(spans, "file output")
    _assert_otlp_span("file output", span, sent)


def test_collector_log_has_no_secret(pipeline: Pipeline, sent: Sent) -> None:
    """The debug exporter sees data only after the redaction step."""
    pipeline.read_file_lines(sent.trace_id)  # the pipeline has handled the span
    _assert_no_secret("collector log", pipeline.collector_log.read_text(errors="replace"))


# ---------------------------------------------------------------------------------------------
# the fixture's lifecycle helpers (reliability tests build on them)


def test_restart_collector_keeps_endpoints_and_output(pipeline: Pipeline, sent: Sent) -> None:
    pipeline.read_file_lines(sent.trace_id)
    old_pid = pipeline.collector_pid
    pipeline.restart_collector()
    assert pipeline.collector_running
    assert pipeline.collector_pid != old_pid
    assert pipeline.collector_healthy()
    exporter = GrpcSpanExporter(endpoint=pipeline.otlp_grpc_endpoint, insecure=True, timeout=10)
    after = _export_one(exporter, f"{sent.transport}-after-restart")
    assert pipeline.fetch_jaeger_v3(after.trace_id)
    assert pipeline.read_file_lines(after.trace_id)
    # the file output was appended to, not truncated, by the new collector process
    assert pipeline.read_file_lines(sent.trace_id, timeout=1)


def test_stopped_collector_refuses_then_start_brings_it_back(pipeline: Pipeline) -> None:
    pipeline.stop_collector()
    try:
        assert not pipeline.collector_running
        assert not pipeline.collector_healthy()
    finally:
        pipeline.start_collector()
    assert pipeline.collector_healthy()
