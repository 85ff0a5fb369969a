"""Core costs as ratios against baselines measured in the same run (these machines are noisy).

    python benchmarks/bench_core.py [--rounds N] [--json]

1. recording one appended message on a recording span (BatchSpanProcessor) vs the naive
   ``json.dumps`` + ``span.add_event`` of the same message, ending the span included on both sides
   (live export buffers events and writes them when the run ends);  target <= 0.8
2. the cost of live export: the same run with a segment span written every 10 messages (one per model
   turn: a run whose turns are slower than the live-export delay) vs none written (a run shorter than
   the delay); no target, the difference is the cost per message (the flusher thread pays it, not
   the app's, in a real run)
3. appending with no SDK provider configured vs plain ``list.append``; target <= 5
4. ``reconstruct_trace`` of a 10,000-message OTLP JSON trace vs ``json.loads`` of the same bytes;
   target <= 3
4. exporting a 512-span batch of a long run through ``SizeLimitedSpanExporter`` (measures every span's
   protobuf size, splits under the 3 MiB cap) vs the protobuf encoding an OTLP exporter does anyway;
   target <= 2.5
Each figure is the median over rounds, baseline and subject interleaved round by round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from kiln_otel import reconstruct_trace, traced_run
from kiln_otel.export_size import DEFAULT_MAX_REQUEST_BYTES, split_requests
from kiln_otel.exporters import SizeLimitedSpanExporter
from kiln_otel.otlp_json import encode_otlp_json

MESSAGE = {
    "role": "assistant",
    "content": "Let me check the weather in Paris for you, then I will look up flights. " * 2,
    "tool_calls": [
        {
            "id": "call_abc123",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": json.dumps({"city": "Paris", "unit": "celsius"}),
            },
        }
    ],
}
PER_SPAN = 100
SEGMENT_EVERY = 10
REDACT: Any = "default"


class DiscardExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def per_call(fn: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / calls


def interleaved(baseline: Callable[[], float], subject: Callable[[], float], rounds: int) -> tuple[float, float]:
    base, subj = [], []
    for _ in range(rounds):
        base.append(baseline())
        subj.append(subject())
    return statistics.median(base), statistics.median(subj)


def _naive(tracer: trace.Tracer) -> Callable[[], float]:
    def naive() -> float:
        span = tracer.start_span("naive")

        def body() -> None:
            for _ in range(PER_SPAN):
                span.add_event("message", {"role": "assistant", "message": json.dumps(MESSAGE)})
            span.end()

        return per_call(body, PER_SPAN)

    return naive


def _kiln(provider: TracerProvider, segment_every: int | None) -> Callable[[], float]:
    """Appends then the run's end; with ``segment_every``, a segment written as the flusher would."""

    def kiln() -> float:
        run = traced_run("bench", tracer_provider=provider, redact=REDACT, live_export_delay=3600)
        append = run.messages.append
        recorder = run._recorder
        assert recorder is not None

        def body() -> None:
            for i in range(1, PER_SPAN + 1):
                append(MESSAGE)
                if segment_every and i % segment_every == 0 and i < PER_SPAN:
                    recorder.flush_now(1.0)
            run.end()

        elapsed = per_call(body, PER_SPAN)
        assert recorder.segments == (PER_SPAN // segment_every - 1 if segment_every else 0)
        return elapsed

    return kiln


def _discarding_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    return provider


def bench_recording(rounds: int) -> tuple[float, float]:
    provider = _discarding_provider()
    try:
        return interleaved(_naive(provider.get_tracer("bench")), _kiln(provider, None), rounds)
    finally:
        provider.shutdown()


def bench_live_export(rounds: int) -> tuple[float, float]:
    provider = _discarding_provider()
    try:
        return interleaved(_kiln(provider, None), _kiln(provider, SEGMENT_EVERY), rounds)
    finally:
        provider.shutdown()


def bench_no_provider(rounds: int) -> tuple[float, float]:
    assert not trace.get_tracer("probe").start_span("probe").is_recording()
    calls = 10_000

    def plain() -> float:
        target: list[Any] = []
        append = target.append
        return per_call(lambda: [append(MESSAGE) for _ in range(calls)] and None, calls)

    def kiln() -> float:
        run = traced_run("unconfigured")
        append = run.messages.append
        elapsed = per_call(lambda: [append(MESSAGE) for _ in range(calls)] and None, calls)
        run.end()
        return elapsed

    return interleaved(plain, kiln, rounds * 5)


def bench_reconstruct(rounds: int) -> tuple[float, float]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with traced_run("long", tracer_provider=provider) as run:
        for i in range(10_000):
            run.messages.append({**MESSAGE, "content": f"{i} {MESSAGE['content']}"})
    data = json.dumps(encode_otlp_json(exporter.get_finished_spans())).encode()
    assert len(reconstruct_trace(data)) == 10_000
    return interleaved(
        lambda: per_call(lambda: json.loads(data) and None, 1),
        lambda: per_call(lambda: reconstruct_trace(data) and None, 1),
        max(rounds // 4, 3),
    )


class EncodingExporter(SpanExporter):
    """What an OTLP exporter does with a batch before the network: encode it to protobuf bytes."""

    def export(self, spans: Any) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


def bench_export_split(rounds: int) -> tuple[float, float]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    with traced_run("long", tracer_provider=provider) as run:
        for i in range(4_000):
            run.messages.append({**MESSAGE, "content": f"{i} {MESSAGE['content'] * 10}"})
            if i % 10 == 0:
                tracer.start_span("chat bench", attributes={"gen_ai.request.model": "m"}).end()
    batch = exporter.get_finished_spans()[:512]
    inner = EncodingExporter()
    limited = SizeLimitedSpanExporter(inner)
    assert len(split_requests(batch, DEFAULT_MAX_REQUEST_BYTES)) > 1
    return interleaved(
        lambda: per_call(lambda: inner.export(batch) and None, 1),
        lambda: per_call(lambda: limited.export(batch) and None, 1),
        max(rounds // 4, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    results = []
    for name, bench, target, unit in (
        ("record one message vs json.dumps+add_event", bench_recording, 0.8, 1e6),
        ("live export: a segment every 10 messages vs none", bench_live_export, None, 1e6),
        ("append, no SDK provider vs list.append", bench_no_provider, 5.0, 1e9),
        ("reconstruct 10k-message OTLP JSON vs json.loads", bench_reconstruct, 3.0, 1e3),
        ("export 512 spans size-limited vs protobuf encoding", bench_export_split, 2.5, 1e3),
    ):
        base, subject = bench(args.rounds)
        unit_name = {1e6: "us", 1e9: "ns", 1e3: "ms"}[unit]
        results.append(
            {
                "benchmark": name,
                "baseline": round(base * unit, 3),
                "kiln_otel": round(subject * unit, 3),
                "unit": unit_name,
                "ratio": round(subject / base, 3),
                "target": target,
                "met": target is None or subject / base <= target,
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        verdict = "ok" if r["met"] else "MISSED"
        goal = f"(target <= {r['target']}) {verdict}" if r["target"] is not None else "(measured, no target)"
        print(
            f"{r['benchmark']:<50} baseline {r['baseline']:>9} {r['unit']}  kiln-otel {r['kiln_otel']:>9} "
            f"{r['unit']}  ratio {r['ratio']:>6} {goal}"
        )
    live = results[1]
    print(
        f"live export costs {live['kiln_otel'] - live['baseline']:.2f} us per appended message when a segment is "
        f"written every {SEGMENT_EVERY} (the flusher thread's work in a real run; none in a run shorter than the delay)"
    )


if __name__ == "__main__":
    main()
