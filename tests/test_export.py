"""configure_tracing: the environment picks the exporter, and an unreachable collector cannot hold up exit.

Nothing leaves the machine: OTLP goes to collectors these tests run on 127.0.0.1 (a real gRPC server and
a real HTTP server that decode what they receive), or to a socket that accepts and never answers.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from kiln_otel import config
from kiln_otel.export import (
    DEFAULT_EXPORT_TIMEOUT_SECONDS,
    SHUTDOWN_SLACK_SECONDS,
    configure_tracing,
    export_timeout,
    traces_file_target,
)
from kiln_otel.sources import load_spans

T = TypeVar("T")

_ENV = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "KILN_OTEL_TRACES_FILE",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    config._warned.clear()
    yield
    config._warned.clear()


def _timed(action: Callable[[], T]) -> tuple[float, T]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """The SDK logs every failed export at ERROR; here those failures are the point."""
    sdk_logger = logging.getLogger("opentelemetry")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        sdk_logger.setLevel(level)


def emit(provider: TracerProvider, count: int = 1) -> None:
    tracer = provider.get_tracer("test")
    for n in range(count):
        tracer.start_span(f"span {n}").end()


# --- Collectors on 127.0.0.1 ---------------------------------------------------------------------


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:
        self.names += [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[str, _GrpcCollector]]:
    collector = _GrpcCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", collector
    server.stop(None)


class _HttpCollectorHandler(BaseHTTPRequestHandler):
    received: list[tuple[str, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            self.received.extend((self.path, s.name) for ss in rs.scope_spans for s in ss.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_collector() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    received: list[tuple[str, str]] = []
    handler = type("Handler", (_HttpCollectorHandler,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts connections (the kernel completes the handshake) and never says a word: a hung collector."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


# --- Where spans go ------------------------------------------------------------------------------


def test_file_default_when_no_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    provider, where = configure_tracing(default_file=path)
    emit(provider, 3)
    provider.shutdown()
    assert where == f"OTLP JSON lines in {path}"
    assert sorted(span.name for span in load_spans(path)) == ["span 0", "span 1", "span 2"]


@pytest.mark.parametrize(("environment", "delay"), [(None, 500), ("2000", 2000)])
def test_batch_schedule_delay_is_short_unless_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment: str | None, delay: int
) -> None:
    """Part of what a SIGKILLed process loses: the SDK's own default (5000 ms) unless told."""
    if environment is None:
        monkeypatch.delenv("OTEL_BSP_SCHEDULE_DELAY", raising=False)
    else:
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", environment)
    provider, _ = configure_tracing(traces_file=tmp_path / "t.jsonl", handle_signals=False)
    try:
        (processor,) = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
        assert processor._batch_processor._schedule_delay_millis == delay
    finally:
        provider.shutdown()


def test_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default, env, explicit = tmp_path / "default.jsonl", tmp_path / "env.jsonl", tmp_path / "explicit.jsonl"
    assert traces_file_target(default_file=default) == default
    monkeypatch.setenv("KILN_OTEL_TRACES_FILE", str(env))
    assert traces_file_target(default_file=default) == env
    assert traces_file_target(default_file=default, traces_file=explicit) == explicit
    provider, where = configure_tracing(default_file=default)
    emit(provider)
    provider.shutdown()
    assert where.endswith(str(env))
    assert env.exists()
    assert not default.exists()


def test_nowhere_without_a_file_or_endpoint() -> None:
    provider, where = configure_tracing()
    emit(provider)
    provider.shutdown()
    assert where.startswith("nowhere")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in where


def test_otlp_grpc_by_default(
    grpc_collector: tuple[str, _GrpcCollector], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, collector = grpc_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    provider, where = configure_tracing(default_file=tmp_path / "unused.jsonl")
    emit(provider, 2)
    provider.shutdown()
    assert where == f"OTLP/gRPC to {endpoint}"
    assert sorted(collector.names) == ["span 0", "span 1"]
    assert not (tmp_path / "unused.jsonl").exists()
    assert traces_file_target(default_file=tmp_path / "unused.jsonl") is None


def test_traces_endpoint_alone_selects_otlp(
    grpc_collector: tuple[str, _GrpcCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, collector = grpc_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    provider, where = configure_tracing()
    emit(provider)
    provider.shutdown()
    assert where == f"OTLP/gRPC to {endpoint}"
    assert collector.names == ["span 0"]


def test_otlp_http_protobuf(http_collector: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, received = http_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    provider, where = configure_tracing()
    emit(provider)
    provider.shutdown()
    assert where == f"OTLP/HTTP (protobuf) to {endpoint}"
    assert received == [("/v1/traces", "span 0")]


def test_traces_protocol_beats_the_general_one(
    grpc_collector: tuple[str, _GrpcCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, collector = grpc_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    provider, where = configure_tracing()
    emit(provider)
    provider.shutdown()
    assert where.startswith("OTLP/gRPC")
    assert collector.names == ["span 0"]


@pytest.mark.parametrize(("value", "chosen"), [("http/json", "OTLP/HTTP"), ("carrier-pigeon", "OTLP/gRPC")])
def test_unknown_protocol_warns_and_falls_back(
    value: str, chosen: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", value)
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        provider, where = configure_tracing()
    provider.shutdown()
    assert where.startswith(chosen)
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in caplog.text


def test_the_global_provider_is_left_alone(tmp_path: Path) -> None:
    before = trace.get_tracer_provider()
    provider, _ = configure_tracing(default_file=tmp_path / "t.jsonl")
    provider.shutdown()
    assert trace.get_tracer_provider() is before


# --- Resource --------------------------------------------------------------------------------------


def test_service_name_from_the_argument() -> None:
    provider, _ = configure_tracing(service_name="trip-planner")
    assert provider.resource.attributes["service.name"] == "trip-planner"
    assert provider.resource.attributes["telemetry.sdk.name"] == "opentelemetry"


def test_the_deployment_renames_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment=prod")
    provider, _ = configure_tracing(service_name="trip-planner")
    assert provider.resource.attributes["service.name"] == "from-attributes"
    assert provider.resource.attributes["deployment.environment"] == "prod"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    provider, _ = configure_tracing(service_name="trip-planner")
    assert provider.resource.attributes["service.name"] == "from-service-name"


# --- The export timeout and the shutdown bound ---------------------------------------------------


def test_export_timeout_from_env(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert export_timeout() == DEFAULT_EXPORT_TIMEOUT_SECONDS
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    assert export_timeout() == 3.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1.5")
    assert export_timeout() == 1.5
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        assert export_timeout() == DEFAULT_EXPORT_TIMEOUT_SECONDS
    assert "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in caplog.text


def test_a_timeout_that_looks_like_milliseconds_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        assert export_timeout() == 10000.0
    assert "read in seconds" in caplog.text


@pytest.mark.parametrize("flush_first", [True, False], ids=["flush-then-shutdown", "shutdown-only"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_hung_collector_cannot_hold_exit_past_the_bound(
    protocol: str, flush_first: bool, black_hole: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches' worth of spans: the SDK alone waits one full timeout per batch (measured: 3 s).

    The usual way out, a flush then a shutdown, waits one bound in all, not one each.
    """
    timeout = 1.0
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", black_hole)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
    provider, _ = configure_tracing()
    emit(provider, 3 * 512)
    flush_seconds, flushed = 0.0, False
    with _quiet_sdk():
        if flush_first:
            flush_seconds, flushed = _timed(provider.force_flush)
        shutdown_seconds, _ = _timed(provider.shutdown)
    assert not flushed
    total = flush_seconds + shutdown_seconds
    assert total < timeout + SHUTDOWN_SLACK_SECONDS, f"flush {flush_seconds:.2f}s + shutdown {shutdown_seconds:.2f}s"


def test_an_unreachable_collector_does_not_delay_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection refused: the exporter's retries back off, the bound still holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    provider, _ = configure_tracing()
    emit(provider, 10)
    with _quiet_sdk():
        elapsed, _ = _timed(provider.shutdown)
    assert elapsed < 1.0 + SHUTDOWN_SLACK_SECONDS, f"shutdown took {elapsed:.2f}s"


_EXITING_APP = """
import atexit, time
atexit.register(lambda: print(time.time(), flush=True))  # registered first, so it runs last
from kiln_otel.export import configure_tracing
provider, _ = configure_tracing()  # the SDK registers provider.shutdown with atexit
tracer = provider.get_tracer("app")
for n in range(3 * 512):
    tracer.start_span("work").end()
print(time.time(), flush=True)  # the app is done: nothing but the atexit hooks is left
"""


def test_process_exit_waits_at_most_the_bound(black_hole: str) -> None:
    """No explicit shutdown: the SDK's atexit hook runs it, against a collector that never answers.

    Measured from the app's last line to the last atexit hook, which leaves out the interpreter's own
    teardown (about half a second here, with or without spans).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "KILN_OTEL_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=black_hole, OTEL_EXPORTER_OTLP_TIMEOUT="1", OTEL_PYTHON_LOG_LEVEL="critical")
    process = subprocess.run(
        [sys.executable, "-c", _EXITING_APP], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    done, after_shutdown = map(float, process.stdout.split())
    assert after_shutdown - done < 1.0 + SHUTDOWN_SLACK_SECONDS, f"exit waited {after_shutdown - done:.2f}s"
