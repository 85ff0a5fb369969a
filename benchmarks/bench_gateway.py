"""The gateway tier's throughput and memory, measured through the real binaries (README "Scaling out").

    python benchmarks/bench_gateway.py [--runs N] [--senders N] [--held N] [--json]

1. Throughput: ``--runs`` kiln-otel runs (nine in ten a typical tool-using run of 12 messages with
   chat and tool spans, one in ten a 300-message conversation; one in five failing) are recorded
   first, encoded as the SDK's exporter would send them (requests of up to 256 spans), then posted
   over OTLP/HTTP by ``--senders`` processes as fast as the load balancer takes them, into
   1 load balancer -> 2 tail-sampling collectors (10% of successes kept) -> Jaeger. Reported: runs/s,
   MB/s (OTLP protobuf bytes) until every request was accepted and until every trace was decided and
   exported, and each collector's CPU time per run and peak RSS.
2. Memory held for long runs: ``--held`` runs that are still going (their root span has not ended)
   send 4 ended segment spans of 128 messages each to one sampler whose decision_wait is long;
   reported: the sampler's Go heap and RSS per MB of span data it holds.

CPU time per run is the transferable figure (runs/s per core = 1000 / ms per run): on this shared
2-core machine the senders, the collectors and Jaeger compete for the same cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from kiln_otel import KilnRunError, traced_run  # noqa: E402
from tests.backends import Gateway, build_backends, start_gateway  # noqa: E402

SPANS_PER_REQUEST = 256
TOOL_RESULT = json.dumps(
    [{"hotel": f"Hotel {i}", "eur": 90 + i, "rating": 4.2, "note": "near the river"} for i in range(8)]
)


def record_runs(count: int) -> tuple[list[bytes], int, int]:
    """(requests, spans, bytes) for ``count`` recorded runs."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(count):
        turns = 150 if i % 10 == 9 else 3
        try:
            with traced_run(f"bench-{i}", tracer_provider=provider) as run:
                run.messages.append({"role": "system", "content": "You plan trips with the tools you have."})
                run.messages.append({"role": "user", "content": f"Run {i}: a weekend in Lisbon, hotels under €150?"})
                for turn in range(turns):
                    with tracer.start_as_current_span("chat scripted") as chat:
                        chat.set_attribute("gen_ai.operation.name", "chat")
                    call = {
                        "id": f"c{turn}",
                        "type": "function",
                        "function": {"name": "hotels", "arguments": '{"city": "Lisbon"}'},
                    }
                    run.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                    if turns == 3:
                        with tracer.start_as_current_span("execute_tool hotels"):
                            pass
                    run.messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": TOOL_RESULT})
                run.messages.append({"role": "assistant", "content": "Stay at Hotel 3 (€93), by the river."})
                if i % 5 == 0:
                    raise RuntimeError("Too many tool calls in one turn (31 > 30)")
        except KilnRunError:
            pass
    spans = list(memory.get_finished_spans())
    requests = [
        encode_spans(spans[n : n + SPANS_PER_REQUEST]).SerializeToString()
        for n in range(0, len(spans), SPANS_PER_REQUEST)
    ]
    return requests, len(spans), sum(len(r) for r in requests)


def post_all(args: tuple[str, list[bytes]]) -> None:
    endpoint, requests = args
    host, port = endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for body in requests:
        for _ in range(100):  # the memory limiter may refuse for a moment: retry like the SDK
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"load balancer kept refusing: HTTP {response.status}")
    conn.close()


def metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})?\s+(\S+)$", text, re.M))


def idle(gateway: Gateway) -> bool:
    for sampler in gateway.samplers:
        text = gateway.metrics(sampler.name)
        received = metric(text, "otelcol_processor_tail_sampling_new_trace_id_received")
        decided = metric(text, "otelcol_processor_tail_sampling_global_count_traces_sampled")
        if decided < received or metric(text, "otelcol_exporter_queue_size") > 0:
            return False
    return True


def throughput(binaries: Any, workdir: Path, runs: int, senders: int) -> dict[str, Any]:
    requests, spans, total = record_runs(runs)
    env = {"KILN_OTEL_SAMPLER_KEEP_PERCENT": "10", "KILN_OTEL_SAMPLER_WAIT_AFTER_ROOT": "1s"}
    gateway = start_gateway(binaries, workdir / "throughput", samplers=2, sampler_env=env)
    try:
        before = {n: p.usage() for n, p in gateway.collectors().items()}
        shares = [(gateway.otlp_http_endpoint, requests[i::senders]) for i in range(senders)]
        start = time.perf_counter()
        with multiprocessing.Pool(senders) as pool:
            pool.map(post_all, shares)
        accepted = time.perf_counter() - start
        deadline = time.monotonic() + 120
        while not idle(gateway):
            if time.monotonic() > deadline:
                raise SystemExit("the samplers did not finish within 120 s")
            time.sleep(0.2)
        done = time.perf_counter() - start - 1.0  # minus the wait after the root span
        after = {n: p.usage() for n, p in gateway.collectors().items()}
    finally:
        gateway.shutdown()
    collectors = {}
    for name, usage in after.items():
        assert usage is not None
        assert before[name] is not None
        cpu = usage.cpu_seconds - before[name].cpu_seconds  # type: ignore[union-attr]
        collectors[name] = {
            "cpu_ms_per_run": round(cpu / runs * 1e3, 2),
            "peak_rss_mib": round(usage.peak_rss_bytes / 2**20),
        }
    return {
        "runs": runs,
        "spans_per_run": round(spans / runs, 1),
        "kb_per_run": round(total / runs / 1e3, 1),
        "senders": senders,
        "accepted_runs_per_s": round(runs / accepted, 1),
        "accepted_mb_per_s": round(total / accepted / 1e6, 2),
        "processed_runs_per_s": round(runs / done, 1),
        "processed_mb_per_s": round(total / done / 1e6, 2),
        "collectors": collectors,
    }


def open_runs(count: int) -> tuple[bytes, int]:
    """Segments of ``count`` runs whose run span never ends: what a sampler holds for a long run."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    message = json.dumps({"role": "tool", "tool_call_id": "c1", "content": TOOL_RESULT})
    for i in range(count):
        root = tracer.start_span(f"invoke_agent long-{i}")  # never ended: the run is still going
        context = trace.set_span_in_context(root)
        for segment in range(4):
            span = tracer.start_span("kiln_otel.messages", context=context)
            span.set_attribute("kiln_otel.segment.index", segment + 1)
            for seq in range(128):
                span.add_event("kiln_otel.message.tool", {"kiln_otel.message.json": message, "kiln_otel.seq": seq})
            span.end()
    spans = list(memory.get_finished_spans())
    body = encode_spans(spans).SerializeToString()
    return body, len(body)


def held_memory(binaries: Any, workdir: Path, held: int) -> dict[str, Any]:
    env = {"KILN_OTEL_SAMPLER_DECISION_WAIT": "600s"}
    gateway = start_gateway(binaries, workdir / "held", samplers=1, sampler_env=env)
    try:
        time.sleep(2)
        sampler = gateway.samplers[0]
        base_heap = metric(gateway.metrics(sampler.name), "otelcol_process_runtime_heap_alloc_bytes")
        base = sampler.usage()
        sent = 0
        for _ in range(0, held, 10):  # 10 runs (about 4 MB) per request, under the 16 MiB limit
            body, size = open_runs(10)
            post_all((gateway.otlp_http_endpoint, [body]))
            sent += size
        time.sleep(5)  # the load balancer's batching, then the sampler's
        text = gateway.metrics(sampler.name)
        heap = metric(text, "otelcol_process_runtime_heap_alloc_bytes")
        usage = sampler.usage()
        in_memory = metric(text, "otelcol_processor_tail_sampling_sampling_traces_on_memory")
    finally:
        gateway.shutdown()
    assert base is not None
    assert usage is not None
    return {
        "open_runs": held,
        "mb_held_otlp": round(sent / 1e6, 1),
        "traces_on_memory": in_memory,
        "heap_mb_per_mb_held": round((heap - base_heap) / sent, 2),
        "rss_mb_per_mb_held": round((usage.rss_bytes - base.rss_bytes) / sent, 2),
        "rss_mib": round(usage.rss_bytes / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--held", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binaries = build_backends(Path(tmp) / "build.log")
        result = {
            "throughput": throughput(binaries, Path(tmp), args.runs, args.senders),
            "held": held_memory(binaries, Path(tmp), args.held),
        }
    print(json.dumps(result, indent=None if not args.json else 2))


if __name__ == "__main__":
    main()
