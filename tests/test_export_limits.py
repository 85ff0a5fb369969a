"""Export that respects the receiver: no OTLP request over the cap, an oversized span cut and marked.

The acceptance test runs the real OpenTelemetry Collector with an OTLP/gRPC receiver at its default
4 MiB limit (a config of our own, nothing raised), and sends it, in one batch, a resumed 2,000 x 3 KB
history, a run_agent run whose tool returned 5 MB, a run that raised a 3 MB exception message, and a
small unrelated run. The same spans sent unsplit are refused whole: that control proves the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from kiln_otel import KilnRunError, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel import config as kiln_config
from kiln_otel.export import (
    DEFAULT_MAX_REQUEST_BYTES,
    ENV_MAX_REQUEST_BYTES,
    BoundedBatchSpanProcessor,
    configure_tracing,
)
from kiln_otel.export_size import fit_span, request_size, split_requests
from kiln_otel.exporters import OtlpJsonFileExporter, SizeLimitedSpanExporter
from kiln_otel.sources import load_spans
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn
from tests.backends import BackendBinaries, BackendProcess, free_ports

GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024
MIB = 1024 * 1024


class RecordingExporter(SpanExporter):
    """Records every request it is handed; fails those holding a span named in ``fail_names``."""

    def __init__(self, fail_names: Sequence[str] = ()) -> None:
        self.requests: list[list[ReadableSpan]] = []
        self.fail_names = set(fail_names)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.requests.append(list(spans))
        if any(span.name in self.fail_names for span in spans):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def delivered(self) -> list[ReadableSpan]:
        return [s for r in self.requests if not any(x.name in self.fail_names for x in r) for s in r]


def new_provider(limits: SpanLimits | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def span_id(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"{context.span_id:016x}"


def trace_id(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}"


# --- Splitting ----------------------------------------------------------------------------------


def test_a_batch_under_the_cap_is_one_request_untouched() -> None:
    provider, memory = new_provider()
    tracer = provider.get_tracer("t")
    for n in range(50):
        tracer.start_span(f"span {n}", attributes={"text": "x" * 1000}).end()
    inner = RecordingExporter()
    assert SizeLimitedSpanExporter(inner).export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    assert inner.requests == [list(memory.get_finished_spans())]


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 300_000), st.integers(0, 3)),
        min_size=1,
        max_size=25,
    )
)
def test_every_span_arrives_once_in_requests_under_the_cap_traces_together(
    shape: list[tuple[int, int, int]],
) -> None:
    """Random traces, span sizes (some alone over the cap) and event counts."""
    cap = 256 * 1024
    provider, memory = new_provider()
    tracer = provider.get_tracer("t")
    roots = {}
    for trace, size, events in shape:
        if trace not in roots:
            roots[trace] = tracer.start_span(f"root {trace}")
        with tracer.start_as_current_span(f"s {trace}", context=_ctx(roots[trace])) as span:
            span.set_attribute("blob", "b" * size)
            for n in range(events):
                span.add_event(f"e{n}", {"text": "e" * (size // 4)})
    for root in roots.values():
        root.end()
    spans = memory.get_finished_spans()
    requests = split_requests(spans, cap)
    assert all(request_size(request) <= cap for request in requests)
    sent = [span for request in requests for span in request]
    assert sorted(map(span_id, sent)) == sorted(map(span_id, spans))
    if len(requests) > 1:  # within one request the order does not matter
        order = [trace_id(span) for span in sent]
        runs = [t for n, t in enumerate(order) if n == 0 or order[n - 1] != t]
        assert len(runs) == len(set(runs)), f"a trace's spans were interleaved with another's: {runs}"
    for original, span in zip(sorted(spans, key=span_id), sorted(sent, key=span_id)):
        cut = (span.attributes or {}).get(wire.ATTR_EXPORT_CUT)
        assert (cut is None) == (request_size([original]) <= cap)


def _ctx(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def test_a_failed_request_takes_no_other_trace_with_it() -> None:
    provider, memory = new_provider()
    tracer = provider.get_tracer("t")
    for name in ("doomed", "fine 1", "fine 2"):
        with tracer.start_as_current_span(name) as root:
            for n in range(4):
                tracer.start_span(f"{name} child {n}", attributes={"blob": "x" * 400_000}).end()
            root.set_attribute("blob", "y" * 100)
    inner = RecordingExporter(fail_names={"doomed"})
    exporter = SizeLimitedSpanExporter(inner, max_request_bytes=1 * MIB)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    delivered = {span.name for span in inner.delivered()}
    assert {"fine 1", "fine 2"} <= delivered
    assert {f"fine {i} child {n}" for i in (1, 2) for n in range(4)} <= delivered
    assert len(inner.requests) > 3


def test_the_cap_is_validated() -> None:
    with pytest.raises(ValueError, match="at least"):
        SizeLimitedSpanExporter(RecordingExporter(), max_request_bytes=100)


# --- Cutting a span that alone is over the cap ----------------------------------------------------


def test_an_oversized_attribute_is_cut_head_and_tail_kept_and_marked() -> None:
    provider, memory = new_provider()
    result = "HEAD" + "z" * 5_000_000 + "TAIL"
    provider.get_tracer("t").start_span(
        "execute_tool fetch", attributes={wire.ATTR_GEN_AI_TOOL_CALL_RESULT: result}
    ).end()
    [span] = memory.get_finished_spans()
    cut = fit_span(span, 1 * MIB)
    assert request_size([cut]) <= 1 * MIB
    text = str(cut.attributes[wire.ATTR_GEN_AI_TOOL_CALL_RESULT])  # type: ignore[index]
    assert text.startswith("HEAD")
    assert text.endswith("TAIL")
    assert "bytes cut at export]" in text
    assert cut.attributes[wire.ATTR_EXPORT_CUT] == 1  # type: ignore[index]
    assert cut.attributes[wire.ATTR_EXPORT_ORIGINAL_SIZE] == request_size([span])  # type: ignore[index]
    assert (cut.name, cut.get_span_context(), cut.parent) == (span.name, span.get_span_context(), span.parent)


def test_a_failed_run_with_a_3_mb_exception_is_cut_and_rebuilt_as_incomplete() -> None:
    """Recording bounds exception text to the message budget; with budgets far above the receiver's the
    exporter still gets the run through."""
    provider, memory = new_provider()
    budgets = {"max_message_bytes": 8 * MIB, "max_span_bytes": 8 * MIB}
    with pytest.raises(KilnRunError) as caught, traced_run("exc", tracer_provider=provider, **budgets) as run:
        run.messages.extend([{"role": "user", "content": "go"}, {"role": "assistant", "content": "on it"}])
        raise ValueError("start " + "m" * 3_000_000 + " end")
    spans = memory.get_finished_spans()
    assert request_size(spans) > GRPC_DEFAULT_LIMIT  # the exception's message and stack trace
    cut = [fit_span(span, DEFAULT_MAX_REQUEST_BYTES) for span in spans]
    assert all(request_size([span]) <= DEFAULT_MAX_REQUEST_BYTES for span in cut)
    payload = reconstruct_error(cut)
    assert payload.trace == [{"role": "user", "content": "go"}, {"role": "assistant", "content": "on it"}]
    assert payload.error_type == "ValueError"
    assert payload.trace_complete is False
    assert payload.message.startswith(caught.value.message[:100])
    [issue] = reconstruct_trace(cut).issues
    assert "cut at export" in issue


def test_an_oversized_message_event_keeps_valid_json_and_says_truncated() -> None:
    """A run configured with budgets far above the receiver's: the exporter still gets it through."""
    provider, memory = new_provider()
    big = {"role": "tool", "tool_call_id": "call_1", "content": "w" * 4_000_000}
    with traced_run("big", tracer_provider=provider, max_message_bytes=8 * MIB, max_span_bytes=8 * MIB) as run:
        run.messages.extend([{"role": "user", "content": "fetch"}, big])
    [span] = memory.get_finished_spans()
    cut = fit_span(span, 1 * MIB)
    assert request_size([cut]) <= 1 * MIB
    rebuilt = reconstruct_trace([cut])
    assert rebuilt[0] == {"role": "user", "content": "fetch"}
    assert rebuilt[1]["tool_call_id"] == "call_1"
    assert rebuilt[1]["_kiln_otel"]["truncated"] is True
    assert rebuilt[1]["_kiln_otel"]["original_size"] == len(json.dumps(big, separators=(",", ":")))
    assert not rebuilt.complete


def test_too_many_events_to_cut_are_dropped_and_counted() -> None:
    provider, memory = new_provider(SpanLimits(max_events=20_000, max_event_attributes=4))
    with provider.get_tracer("t").start_as_current_span("chatty") as span:
        for n in range(20_000):
            span.add_event(f"event {n}", {"n": n, "flag": True})
    [original] = memory.get_finished_spans()
    assert request_size([original]) > 512 * 1024
    cut = fit_span(original, 256 * 1024)
    assert request_size([cut]) <= 256 * 1024
    assert 0 < cut.dropped_events == 20_000 - len(cut.events)
    assert [e.name for e in cut.events] == sorted((e.name for e in cut.events), key=lambda n: int(n.split()[1]))


def test_a_span_status_description_is_cut_too() -> None:
    provider, memory = new_provider()
    span = provider.get_tracer("t").start_span("failing")
    span.set_status(Status(StatusCode.ERROR, "why " * 600_000))
    span.end()
    [original] = memory.get_finished_spans()
    cut = fit_span(original, 1 * MIB)
    assert request_size([cut]) <= 1 * MIB
    assert cut.status.status_code is StatusCode.ERROR
    assert "bytes cut at export" in (cut.status.description or "")


# --- configure_tracing wires it -----------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "KILN_OTEL_TRACES_FILE", ENV_MAX_REQUEST_BYTES):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    kiln_config._warned.clear()
    yield monkeypatch
    kiln_config._warned.clear()


def _exporter_of(provider: TracerProvider) -> SpanExporter:
    [processor] = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    assert isinstance(processor, BoundedBatchSpanProcessor)
    exporter: SpanExporter = processor.span_exporter
    return exporter


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_configure_tracing_caps_otlp_requests(clean_env: pytest.MonkeyPatch, protocol: str) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    provider, _ = configure_tracing()
    exporter = _exporter_of(provider)
    assert isinstance(exporter, SizeLimitedSpanExporter)
    assert exporter.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES < GRPC_DEFAULT_LIMIT
    clean_env.setenv(ENV_MAX_REQUEST_BYTES, str(2 * MIB))
    assert _cap(configure_tracing()[0]) == 2 * MIB
    assert _cap(configure_tracing(max_request_bytes=1 * MIB)[0]) == 1 * MIB  # the argument wins
    provider.shutdown()


def _cap(provider: TracerProvider) -> int:
    exporter = _exporter_of(provider)
    assert isinstance(exporter, SizeLimitedSpanExporter)
    provider.shutdown()
    return exporter.max_request_bytes


@pytest.mark.parametrize("value", ["lots", "100", "-5", "9" * 30, "²"])  # "²" is a digit to str.isdigit, not to int
def test_a_bad_cap_in_the_environment_warns_and_uses_the_default(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_env.setenv(ENV_MAX_REQUEST_BYTES, value)
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        assert _cap(configure_tracing()[0]) == DEFAULT_MAX_REQUEST_BYTES
    assert ENV_MAX_REQUEST_BYTES in caplog.text


def test_a_bad_cap_argument_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_request_bytes"):
        configure_tracing(max_request_bytes=10)


def test_the_trace_file_is_not_capped(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No receiver limit there: cutting would only lose data."""
    provider, _ = configure_tracing(default_file=tmp_path / "t.jsonl")
    assert isinstance(_exporter_of(provider), OtlpJsonFileExporter)
    provider.shutdown()


# --- The acceptance test: a real collector at gRPC's 4 MiB default --------------------------------

RECEIVER_CONFIG = """\
# A receiver at its defaults: no max_recv_msg_size_mib, so gRPC's 4 MiB applies.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {output}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"""


@pytest.fixture
def default_receiver(backend_binaries: BackendBinaries, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The real collector with an OTLP/gRPC receiver at its defaults, writing what it accepts to a file."""
    [port] = free_ports(1)
    output = tmp_path / "received.jsonl"
    config = tmp_path / "receiver.yaml"
    config.write_text(RECEIVER_CONFIG.format(port=port, output=output))
    process = BackendProcess(
        "receiver", [str(backend_binaries.collector), "--config", str(config)], dict(os.environ), tmp_path / "log"
    )
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert process.running, process.exit_message()
            assert time.monotonic() < deadline, f"receiver not listening: {process.exit_message()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", output
    finally:
        process.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _received(output: Path, expected: set[str], timeout: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        records = load_spans(output) if output.exists() else []
        if expected <= {record.span_id for record in records} or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def _tool_run(provider: TracerProvider, server: ScriptedModelServer, result: str) -> str:
    """run_agent calls a tool that returns ``result``, then the model call after it is rate limited."""
    from kiln_otel.litellm import run_agent

    async def main() -> str:
        run = traced_run("tool-run", tracer_provider=provider)
        try:
            async with run:
                run.messages.append({"role": "user", "content": "fetch the report"})
                await run_agent(
                    "openai/scripted",
                    run.messages,
                    tools=[{"type": "function", "function": {"name": "fetch", "parameters": {"type": "object"}}}],
                    tool_handlers={"fetch": lambda: result},
                    tracer_provider=provider,
                    api_base=server.base_url,
                    api_key="sk-local",
                    num_retries=0,
                    timeout=30,
                )
        except KilnRunError:
            pass
        assert run.trace_id is not None
        return run.trace_id

    return asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.filterwarnings("ignore:Sending a large body directly")  # aiohttp, about the 5 MB request
def test_a_real_grpc_receiver_at_its_4_mib_default_receives_every_span(
    default_receiver: tuple[str, Path], clean_env: pytest.MonkeyPatch
) -> None:
    endpoint, output = default_receiver
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    clean_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    provider, where = configure_tracing(service_name="export-limits")
    assert where == f"OTLP/gRPC to {endpoint}"
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    history = [{"role": "user" if n % 2 else "assistant", "content": f"{n} " + "h" * 3000} for n in range(2000)]
    with traced_run("resumed", messages=history, tracer_provider=provider) as resumed:
        pass
    server = ScriptedModelServer(
        [Turn.tool_calls([ToolCall("fetch", {}, id="call_fetch")]), Turn.fault(Fault.RATE_LIMIT)]
    ).start()
    try:
        tool_trace = _tool_run(provider, server, "r" * 5_000_000)
    finally:
        server.close()
    with pytest.raises(KilnRunError), traced_run("exception", tracer_provider=provider) as failing:
        failing.messages.append({"role": "user", "content": "explode"})
        raise RuntimeError("boom " + "e" * 3_000_000)
    with traced_run("unrelated", tracer_provider=provider) as unrelated:
        unrelated.messages.append({"role": "user", "content": "hello"})

    spans = memory.get_finished_spans()
    assert request_size(spans) > 6 * MIB
    assert len(spans) < 512, "the runs must fit one batch of the batch processor"
    control = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=3)
    small = [span for span in spans if request_size([span]) < MIB][:1]
    assert control.export(small) is SpanExportResult.SUCCESS  # the receiver answers...
    with _quiet("opentelemetry"):
        assert control.export(spans) is SpanExportResult.FAILURE, "...and refuses over 4 MiB"
    control.shutdown()

    assert provider.force_flush()
    provider.shutdown()
    expected = {span_id(span) for span in spans}
    records = _received(output, expected)
    assert {record.span_id for record in records} == expected

    rebuilt = reconstruct_trace(records, trace_id=resumed.trace_id)
    assert rebuilt == history
    assert rebuilt.complete, rebuilt.issues
    unrelated_trace = reconstruct_trace(records, trace_id=unrelated.trace_id)
    assert unrelated_trace == [{"role": "user", "content": "hello"}]
    assert unrelated_trace.complete

    tool_payload = reconstruct_error(records, tool_trace)
    assert tool_payload.error_type == "RateLimitError", tool_payload.message
    assert [m["role"] for m in tool_payload.trace or []] == ["user", "assistant", "tool"]
    [tool_span] = [r for r in records if r.name.startswith("execute_tool")]
    tool_result = str(tool_span.attributes.get(wire.ATTR_GEN_AI_TOOL_CALL_RESULT, ""))
    assert tool_result == "r" * 5_000_000 or _marked(tool_span.attributes), "a cut result must be marked"

    payload = reconstruct_error(records, failing.trace_id)
    assert payload.error_type == "RuntimeError"
    assert payload.trace == [{"role": "user", "content": "explode"}]
    [run_span] = [r for r in records if r.span_id == failing.span_id]
    assert payload.trace_complete is not (wire.ATTR_EXPORT_CUT in run_span.attributes)


def _marked(attributes: Any) -> bool:
    return wire.ATTR_EXPORT_CUT in attributes or any("truncat" in key for key in attributes)


class _quiet:
    """The SDK logs the refused request at ERROR; here the refusal is the point."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
