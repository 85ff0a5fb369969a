"""Reliability on the real pipeline: collector down, collector restarted, many concurrent runs.

The figures these tests measure are printed (run with ``-s``) and quoted in the closing notes; the
assertions are the guarantees the README makes.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import KilnRunError, reconstruct_error, traced_run
from kiln_otel.sources import load_spans
from tests.backends import Pipeline
from tests.test_e2e_pipeline import conversation, failing_run, poll

pytestmark = pytest.mark.backends

RECOMMENDED_BATCH = {"max_queue_size": 8192, "max_export_batch_size": 256, "schedule_delay_millis": 500}
"""The BatchSpanProcessor settings the README recommends (OTEL_BSP_MAX_QUEUE_SIZE etc.)."""
EXPORT_TIMEOUT = 2.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Telemetry:
    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider()
        exporter = GrpcExporter(endpoint=endpoint, insecure=True, timeout=timeout)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, **RECOMMENDED_BATCH))  # type: ignore[arg-type]
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))


@pytest.fixture
def live(pipeline: Pipeline) -> Iterator[Telemetry]:
    telemetry = Telemetry(pipeline.otlp_grpc_endpoint)
    yield telemetry
    telemetry.provider.shutdown()


def timed_run(telemetry: Telemetry, n: int = 300) -> tuple[float, KilnRunError]:
    start = time.perf_counter()
    err = failing_run(telemetry, conversation(n))  # type: ignore[arg-type]
    return time.perf_counter() - start, err


def test_collector_down_for_a_whole_run(live: Telemetry) -> None:
    down = Telemetry(f"http://127.0.0.1:{closed_port()}", timeout=EXPORT_TIMEOUT)
    up_times, down_times = [], []
    for _ in range(5):
        up_times.append(timed_run(live)[0])
        elapsed, err = timed_run(down)
        down_times.append(elapsed)
        payload = err.to_error_with_trace()
        assert payload.trace is not None
        assert len(payload.trace) == 300
    up, slow = min(up_times), min(down_times)
    print(f"\nrun with collector up {up * 1000:.1f} ms, down {slow * 1000:.1f} ms")
    assert slow < max(3 * up, up + 0.25)
    start = time.perf_counter()
    down.provider.shutdown()
    shutdown = time.perf_counter() - start
    print(f"shutdown with collector down: {shutdown:.2f} s (exporter timeout {EXPORT_TIMEOUT} s)")
    assert shutdown < EXPORT_TIMEOUT + 2.0


def test_process_exit_is_bounded_when_collector_is_down() -> None:
    script = textwrap.dedent(
        f"""
        import time
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from kiln_otel import KilnRunError, traced_run
        provider = TracerProvider()  # shuts down at exit, flushing what is queued
        endpoint = "http://127.0.0.1:{closed_port()}"
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout={EXPORT_TIMEOUT})
        provider.add_span_processor(BatchSpanProcessor(exporter))
        try:
            with traced_run("exit", tracer_provider=provider) as run:
                run.messages.extend({{"role": "user", "content": str(i)}} for i in range(500))
                raise ValueError("boom")
        except KilnRunError as err:
            assert err.to_error_with_trace().trace
        print("ran", flush=True)
        """
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"
    print(f"\nprocess with collector down exited after {elapsed:.2f} s (imports included)")
    assert elapsed < EXPORT_TIMEOUT + 8.0


def arrived(pipeline: Pipeline, trace_ids: list[str]) -> int:
    text = "\n".join(
        line for path in pipeline.file_output_paths() if path.exists() for line in path.read_text().splitlines()
    )
    seen = {span.trace_id for span in load_spans(text)} if text else set()
    return sum(1 for trace_id in trace_ids if trace_id in seen)


def runs(telemetry: Telemetry, count: int) -> list[str]:
    return [str(failing_run(telemetry, conversation(10)).trace_id) for _ in range(count)]  # type: ignore[arg-type]


def test_collector_restarted_mid_way(pipeline: Pipeline, live: Telemetry) -> None:
    before = runs(live, 20)
    assert live.provider.force_flush(10_000)
    poll("runs before the outage", lambda: True if arrived(pipeline, before) == 20 else None)
    pipeline.stop_collector()
    try:
        outage_start = time.monotonic()
        during = runs(live, 20)
        time.sleep(2.0)
    finally:
        pipeline.start_collector()
    outage = time.monotonic() - outage_start
    after = runs(live, 20)
    assert live.provider.force_flush(30_000)
    poll("runs after the restart", lambda: True if arrived(pipeline, after) == 20 else None, timeout=30)
    got = arrived(pipeline, during)
    print(f"\ncollector down {outage:.1f} s: {got}/20 runs produced during the outage arrived after restart")
    assert got == 20  # an outage shorter than the exporter's retry window (10 s) loses nothing


def test_two_hundred_concurrent_runs_zero_loss_no_crosstalk(pipeline: Pipeline, live: Telemetry) -> None:
    async def one(i: int) -> tuple[str, Any]:
        try:
            async with traced_run(f"run-{i}", tracer_provider=live.provider) as run:
                for message in conversation(150, tag=f"run-{i}"):
                    run.messages.append(message)
                    if len(run.messages) % 10 == 0:
                        await asyncio.sleep(0)
                raise RuntimeError(f"run {i} failed")
        except KilnRunError as err:
            return str(err.trace_id), err.to_error_with_trace()
        raise AssertionError("no failure")

    async def all_runs() -> list[tuple[str, Any]]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(all_runs())
    assert live.provider.force_flush(30_000)
    produced = len(live.memory.get_finished_spans())
    assert len({trace_id for trace_id, _ in results}) == 200
    exported = 0
    for trace_id, payload in results:
        spans = sum(1 for s in live.memory.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id)
        body = pipeline.fetch_jaeger_v3(trace_id, min_spans=spans, timeout=30)
        exported += len(load_spans(body))
        assert reconstruct_error(body, trace_id) == payload
    print(f"\n200 concurrent runs: produced {produced} spans, {exported} in Jaeger")
    assert exported == produced
