"""The zero-code route (LiteLLMInstrumentor, no traced_run): what it costs a successful call, what it writes.

    python benchmarks/bench_zerocode.py [--rounds N] [--json]

1. the instrumentor's own cost per successful call, without the network: ``litellm.completion``
   replaced by a function returning a prepared ``ModelResponse``, called directly vs through the
   instrumentor (default ``on_failure``, and ``always``). Reported in microseconds per call and as a
   ratio; run it against another checkout (``PYTHONPATH=<checkout> python benchmarks/bench_zerocode.py``)
   to compare two versions of the instrumentor on the same machine.
2. the same through real litellm and loopback HTTP (the scripted server): a 10-call conversation,
   uninstrumented vs instrumented, as a ratio.
3. bytes: OTLP protobuf bytes exported for a conversation of N calls, by default (no content on a
   successful call) and with ``record_call_messages="always"`` (each call re-records the history it
   was sent, so the total grows with the square of N), against the same conversation recorded once
   by a ``traced_run``.
4. the failure path: recording a failed call's history of 10 / 100 / 1,000 messages.

Variants are interleaved round by round and each ratio is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

import kiln_otel
from kiln_otel import traced_run
from kiln_otel.litellm import LiteLLMInstrumentor
from kiln_otel.testing import ScriptedModelServer, Turn

litellm.suppress_debug_info = True
CALLS = 10
ANSWER = "Day {n}: walk the old town, lunch at a bouchon, then the museum of fine arts by the river."


class DiscardExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class EncodingExporter(SpanExporter):
    """Encodes each batch to OTLP protobuf, as a real exporter does, and counts the bytes."""

    def __init__(self) -> None:
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def supports_call_messages() -> bool:
    """Older checkouts (before issue 13) have no ``record_call_messages``: the ``always`` rows are skipped."""
    try:
        import kiln_otel.litellm.call_messages  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def instrumented(provider: TracerProvider | None, **options: Any) -> Iterator[None]:
    instrumentor = LiteLLMInstrumentor()
    instrumentor.instrument(tracer_provider=provider, **options)
    try:
        yield
    finally:
        instrumentor.uninstrument()


def conversation_start() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a careful trip planner. Answer in one short paragraph."},
        {"role": "user", "content": "Plan day 1 of a week in Lyon."},
    ]


# --- 1. the instrumentor's own cost per call -----------------------------------------------------


def prepared_response() -> Any:
    return litellm.ModelResponse(
        id="chatcmpl-bench",
        model="scripted",
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Sunny."}}],
        usage={"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
    )


def per_call_overhead(rounds: int, calls: int) -> list[dict[str, Any]]:
    """Default mode first, then ``always`` in a phase of its own: each call it records leaves the
    live-export thread a wake-up a second later, which would otherwise land in the other variants."""
    phases: list[list[tuple[str, dict[str, Any]]]] = [[("instrumentor", {})]]
    if supports_call_messages():
        phases.append([("instrumentor, always", {"record_call_messages": "always"})])
    rows = []
    for phase in phases:
        times = timed_calls([("direct", None), *phase], rounds, calls)
        base = times.pop("direct")
        rows += [
            {
                "variant": name,
                "us_per_call": round(statistics.median(t) * 1e6, 2),
                "overhead_us": round(statistics.median(a - b for a, b in zip(t, base)) * 1e6, 2),
            }
            for name, t in times.items()
        ]
    return rows


def timed_calls(modes: list[tuple[str, dict[str, Any] | None]], rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each mode (None: not instrumented), one sample per round, modes interleaved."""
    response = prepared_response()
    messages = [*conversation_start(), {"role": "assistant", "content": "Sunny."}] * 5

    def fake_completion(*args: Any, **kwargs: Any) -> Any:
        return response

    provider = TracerProvider()  # spans handed over synchronously and dropped: only the instrumentor is timed
    provider.add_span_processor(SimpleSpanProcessor(DiscardExporter()))
    real = litellm.completion
    litellm.completion = fake_completion
    times: dict[str, list[float]] = {name: [] for name, _ in modes}
    kwargs = {"model": "openai/scripted", "api_base": "http://127.0.0.1:1/v1", "messages": messages}
    try:
        for round_number in range(rounds + 1):  # the first round warms up
            shift = round_number % len(modes)
            for name, options in modes[shift:] + modes[:shift]:
                with instrumented(provider, **options) if options is not None else nullcontext():
                    call = litellm.completion
                    start = time.perf_counter()
                    for _ in range(calls):
                        call(**kwargs)
                    elapsed = (time.perf_counter() - start) / calls
                if round_number:
                    times[name].append(elapsed)
    finally:
        litellm.completion = real
        provider.shutdown()
    return times


# --- 2. through real litellm and HTTP ------------------------------------------------------------


def answering(request: dict[str, Any]) -> Turn:
    return Turn.text(ANSWER.format(n=len(request["messages"]) // 2))


def conversation(base_url: str, calls: int = CALLS) -> list[dict[str, Any]]:
    messages = conversation_start()
    for n in range(calls):
        response = litellm.completion(
            model="openai/scripted", messages=messages, api_base=base_url, api_key="sk-local", num_retries=0, timeout=10
        )
        messages.append({"role": "assistant", "content": response.choices[0].message.content})
        messages.append({"role": "user", "content": f"Now plan day {n + 2}."})
    return messages


def through_http(rounds: int, base_url: str) -> list[dict[str, Any]]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("uninstrumented", nullcontext),
        ("instrumentor", lambda: instrumented(provider)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for round_number in range(rounds + 1):
        shift = round_number % len(variants)
        for name, context in variants[shift:] + variants[:shift]:
            with context():
                start = time.perf_counter()
                conversation(base_url)
                elapsed = time.perf_counter() - start
            if round_number:
                times[name].append(elapsed)
    provider.shutdown()
    base = times["uninstrumented"]
    return [
        {
            "variant": name,
            "median_ms": round(statistics.median(t) * 1000, 2),
            "ratio": round(statistics.median(a / b for a, b in zip(t, base)), 3),
        }
        for name, t in times.items()
    ]


# --- 3. bytes ------------------------------------------------------------------------------------


def exported_bytes(base_url: str, calls: int, how: str) -> int:
    exporter = EncodingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        if how == "traced_run":
            with traced_run("bench", tracer_provider=provider) as run, instrumented(provider):
                run.messages.extend(conversation(base_url, calls))
        else:
            with instrumented(provider, **({"record_call_messages": "always"} if how == "always" else {})):
                conversation(base_url, calls)
    finally:
        provider.shutdown()
    return exporter.bytes


def byte_cost(base_url: str) -> list[dict[str, Any]]:
    rows = []
    hows = ["on_failure (default)", "traced_run"] + (["always"] if supports_call_messages() else [])
    for calls in (10, 30):
        for how in hows:
            total = exported_bytes(base_url, calls, how.split()[0])
            rows.append({"calls": calls, "recording": how, "otlp_bytes": total, "bytes_per_call": total // calls})
    return rows


# --- 4. the failure path -------------------------------------------------------------------------


def failure_cost(rounds: int) -> list[dict[str, Any]]:
    error = litellm.exceptions.RateLimitError("Rate limit reached.", llm_provider="openai", model="scripted")

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    real = litellm.completion
    litellm.completion = failing
    rows = []
    try:
        for size in (10, 100, 1000):
            messages = [{"role": "user", "content": f"message {i}: " + "plan the trip " * 10} for i in range(size)]
            samples = []
            with instrumented(provider):
                for _ in range(rounds):
                    start = time.perf_counter()
                    with suppress(litellm.exceptions.RateLimitError):
                        litellm.completion(model="openai/scripted", messages=messages)
                    samples.append(time.perf_counter() - start)
            rows.append({"messages": size, "ms_per_failed_call": round(statistics.median(samples) * 1000, 3)})
    finally:
        litellm.completion = real
        provider.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round in the per-call measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"kiln_otel": os.path.dirname(kiln_otel.__file__)}
    results["per_call"] = per_call_overhead(args.rounds, args.calls)
    with ScriptedModelServer(answering) as server:
        results["http"] = through_http(max(args.rounds // 2, 5), server.base_url)
        results["bytes"] = byte_cost(server.base_url)
    results["failure"] = failure_cost(max(args.rounds // 3, 5))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"kiln_otel from {results['kiln_otel']}")
    print("1. instrumentor's own cost per successful call (no network), over calling litellm directly:")
    for row in results["per_call"]:
        print(f"   {row['variant']:<22} {row['us_per_call']:>8} us/call   overhead {row['overhead_us']:>7} us")
    print(f"2. a {CALLS}-call conversation over loopback HTTP:")
    for row in results["http"]:
        print(f"   {row['variant']:<22} {row['median_ms']:>8} ms   ratio {row['ratio']}")
    print("3. OTLP bytes exported for one conversation:")
    for row in results["bytes"]:
        print(
            f"   {row['calls']:>3} calls, {row['recording']:<22} {row['otlp_bytes']:>9} bytes"
            f"   ({row['bytes_per_call']} per call)"
        )
    print("4. a failed call recording its history:")
    for row in results["failure"]:
        print(f"   {row['messages']:>5} messages  {row['ms_per_failed_call']:>8} ms")


if __name__ == "__main__":
    main()
