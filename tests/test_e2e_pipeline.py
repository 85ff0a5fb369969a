"""End to end: a failing run exported over real OTLP, through the real Collector, into the real Jaeger.

What the caller got in-process must come back, exactly, from Jaeger's v3 API, its legacy API and the
collector's file output: the point of kiln-otel is that the telemetry alone is enough.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import ErrorWithTrace, KilnRunError, reconstruct_error, traced_run
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.encoding import EXCERPT_MAX_BYTES
from kiln_otel.sources import load_spans
from tests.backends import Pipeline

pytestmark = pytest.mark.backends

T = TypeVar("T")


def exporter_for(pipeline: Pipeline, protocol: str, timeout: float = 10) -> SpanExporter:
    if protocol == "grpc":
        return GrpcExporter(endpoint=pipeline.otlp_grpc_endpoint, insecure=True, timeout=timeout)
    return HttpExporter(endpoint=f"{pipeline.otlp_http_endpoint}/v1/traces", timeout=timeout)


class Telemetry:
    """A provider exporting over OTLP, with an in-memory copy to know what was produced."""

    def __init__(self, exporter: SpanExporter, **batch: Any) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(exporter, **batch))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))

    def produced(self, trace_id: str) -> int:
        return sum(1 for s in self.memory.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id)


@pytest.fixture
def telemetry_factory() -> Iterator[Callable[..., Telemetry]]:
    made: list[Telemetry] = []

    def make(exporter: SpanExporter, **batch: Any) -> Telemetry:
        made.append(Telemetry(exporter, **batch))
        return made[-1]

    yield make
    for telemetry in made:
        telemetry.provider.shutdown()


def conversation(n: int, tag: str = "") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"You plan trips. {tag}"}]
    for i in range(1, n):
        kind = i % 3
        if kind == 1:
            messages.append({"role": "user", "content": f"{tag} Étape {i}: café ☕ à 東京 — naïve “quotes”"})
        elif kind == 2:
            call = {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": '{"q": "€"}'}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": f"call_{i - 1}", "content": f"résultat {i} ✓"})
    return messages


def failing_run(telemetry: Telemetry, messages: list[dict[str, Any]], **options: Any) -> KilnRunError:
    with pytest.raises(KilnRunError) as caught, traced_run("e2e", tracer_provider=telemetry.provider, **options) as run:
        for message in messages:
            run.messages.append(message)
        raise RuntimeError("Too many tool calls in one turn (31 > 30)")
    return caught.value


def poll(what: str, probe: Callable[[], T | None], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def file_payload(pipeline: Pipeline, trace_id: str, spans: int) -> ErrorWithTrace:
    def probe() -> ErrorWithTrace | None:
        text = pipeline.read_file_lines(trace_id)
        if sum(1 for s in load_spans(text) if s.trace_id == trace_id) < spans:
            return None
        return reconstruct_error(text, trace_id)

    return poll(f"{spans} spans of {trace_id} in the file output", probe)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_failed_run_rebuilds_exactly_from_jaeger_and_file(
    pipeline: Pipeline, telemetry_factory: Callable[..., Telemetry], protocol: str
) -> None:
    telemetry = telemetry_factory(exporter_for(pipeline, protocol))
    messages = conversation(300, tag=protocol)
    err = failing_run(telemetry, messages)
    assert telemetry.provider.force_flush(10_000)
    expected = err.to_error_with_trace()
    assert expected.trace == messages
    trace_id = str(err.trace_id)
    spans = telemetry.produced(trace_id)
    assert spans >= 3  # 300 messages: the run span plus continuation segments

    v3 = pipeline.fetch_jaeger_v3(trace_id, min_spans=spans)
    assert reconstruct_error(v3, trace_id) == expected
    legacy = pipeline.fetch_jaeger_legacy(trace_id, min_spans=spans)
    assert reconstruct_error(legacy, trace_id) == expected
    assert file_payload(pipeline, trace_id, spans) == expected


def test_collector_masks_a_key_the_client_did_not(
    pipeline: Pipeline, telemetry_factory: Callable[..., Telemetry]
) -> None:
    secret = "sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDc9876"
    telemetry = telemetry_factory(exporter_for(pipeline, "grpc"))
    messages = [
        {"role": "user", "content": f"use {secret}"},
        {"role": "tool", "tool_call_id": "c1", "content": '{"api_key": "plain-text-secret-42"}'},
    ]
    err = failing_run(telemetry, messages, redact=None)
    telemetry.provider.force_flush(10_000)
    trace_id = str(err.trace_id)
    rebuilt = reconstruct_error(pipeline.fetch_jaeger_v3(trace_id), trace_id)
    assert rebuilt.trace is not None
    assert rebuilt.trace[0]["content"] == "use [REDACTED]"
    assert rebuilt.trace[1]["content"] == '{"api_key": "[REDACTED]"}'
    text = pipeline.read_file_lines(trace_id)
    assert secret not in text
    assert "plain-text-secret-42" not in text


def kiln_otel_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("kiln-otel")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_demo_through_the_pipeline_rebuilds_from_jaeger_via_the_cli(
    pipeline: Pipeline, tmp_path: Path, protocol: str
) -> None:
    endpoint = pipeline.otlp_grpc_endpoint if protocol == "grpc" else pipeline.otlp_http_endpoint
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    demo = kiln_otel_cli("demo", "--json", env=env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    printed = json.loads(demo.stdout)
    payload = ErrorWithTrace.model_validate(printed["payload"])
    assert payload.error_type == "RateLimitError"
    trace_id = printed["trace_id"]
    assert not (tmp_path / "kiln-otel-traces.jsonl").exists()  # it went over OTLP, not to the file

    body = pipeline.fetch_jaeger_v3(trace_id, min_spans=4)  # run, 3 chat, tools
    assert reconstruct_error(body, trace_id) == payload
    rebuilt = kiln_otel_cli(
        "reconstruct", "--jaeger", pipeline.jaeger_query_url, trace_id, "--json", env=env, cwd=tmp_path
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert ErrorWithTrace.model_validate(json.loads(rebuilt.stdout)) == payload
    transcript = kiln_otel_cli("reconstruct", "--jaeger", pipeline.jaeger_query_url, trace_id, env=env, cwd=tmp_path)
    assert "Rate limit exceeded" in transcript.stdout
    missing = kiln_otel_cli("reconstruct", "--jaeger", pipeline.jaeger_query_url, "0" * 31 + "1", env=env, cwd=tmp_path)
    assert missing.returncode == 3, missing.stderr


def legacy_events(trace: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, Any]]]]]:
    """The run span (tags as a dict) and, per span, its log items as Jaeger's UI API serves them."""
    spans = trace["data"][0]["spans"]
    run = next(s for s in spans if s["operationName"].startswith("invoke_agent"))
    return {t["key"]: t["value"] for t in run["tags"]}, [(s["spanID"], s.get("logs") or []) for s in spans]


@pytest.mark.parametrize(("count", "flushed"), [(10, False), (10, True), (300, False)])
def test_the_ui_api_serves_excerpts_before_the_json_and_points_at_the_last_message(
    pipeline: Pipeline, telemetry_factory: Callable[..., Telemetry], count: int, flushed: bool
) -> None:
    """What Jaeger's UI reads (the legacy /api/traces): each message's excerpt sorts before its JSON,
    the run span names the span holding the last message, budgets hold, and the payload rebuilds.

    ``flushed``: the run then waits past the live-export delay before failing (a slow model call), so
    its last messages are in a segment, not on the run span."""
    telemetry = telemetry_factory(exporter_for(pipeline, "grpc"))
    messages = conversation(count, tag="ui")
    messages[2]["function_call"] = None  # a litellm-style null: named, not written, restored
    run = traced_run("e2e", tracer_provider=telemetry.provider, live_export_delay=0.05)
    with pytest.raises(KilnRunError) as caught, run:
        run.messages.extend(messages)
        if flushed:
            time.sleep(0.5)
        raise TimeoutError("the model call never came back")
    err = caught.value
    assert telemetry.provider.force_flush(10_000)
    trace_id = str(err.trace_id)
    legacy = pipeline.fetch_jaeger_legacy(trace_id, min_spans=telemetry.produced(trace_id))
    run_tags, logs = legacy_events(legacy)

    seen: dict[int, tuple[str, dict[str, Any]]] = {}
    for span_id, items in logs:
        for item in items:
            keys = [f["key"] for f in item["fields"]]
            fields = {f["key"]: f["value"] for f in item["fields"]}
            if fields.get("event", "").startswith("kiln_otel.message."):
                assert keys.index("kiln_otel.message.excerpt") < keys.index("kiln_otel.message.json")
                assert keys[1:3] in (  # right after the event name, or after a tool message's call id
                    ["kiln_otel.message.excerpt", "kiln_otel.message.index"],
                    ["gen_ai.tool.call.id", "kiln_otel.message.excerpt"],
                )
                assert len(fields["kiln_otel.message.excerpt"].encode()) <= EXCERPT_MAX_BYTES
                assert len(fields["kiln_otel.message.json"].encode()) <= DEFAULT_MAX_MESSAGE_BYTES
                assert fields["kiln_otel.message.excerpt"].split(":")[0] == fields["event"].rsplit(".", 1)[1]
                seen[int(fields["kiln_otel.seq"])] = (span_id, fields)
    assert sorted(seen) == list(range(count))
    last_span = run_tags["kiln_otel.messages.last_span_id"]
    assert seen[count - 1][0] == last_span  # the run span names the span holding the last message
    run_id = next(s["spanID"] for s in legacy["data"][0]["spans"] if s["operationName"].startswith("invoke_agent"))
    assert (last_span != run_id) is flushed  # flushed: a segment holds the tail; else the run span itself
    assert run_tags["kiln_otel.error.message"] == str(err)
    assert json.loads(seen[2][1]["kiln_otel.message.json"]).keys() == {"role", "tool_calls"}
    assert seen[2][1]["kiln_otel.message.excerpt"] == 'assistant: → search({"q": "€"})'
    assert err.to_error_with_trace() == reconstruct_error(legacy, trace_id)
    assert reconstruct_error(legacy, trace_id).trace == messages
