"""A 10-turn tool-using agent run against the scripted server: instrumentation overhead, as ratios.

    pip install -e '.[bench]'      # adds openinference-instrumentation-litellm, for comparison only
    python benchmarks/bench_litellm.py [--rounds N] [--json]

Variants, interleaved round by round (order rotated) so machine noise hits them alike. One run is
10 model calls over loopback HTTP and 9 tool calls; each ratio is the median over rounds of a run's
wall time over the baseline's in the same round:

- uninstrumented: a plain loop calling ``litellm.acompletion`` and the tools (the baseline);
- kiln-otel: ``traced_run`` + ``run_agent`` (run span, message events, chat and tool spans, metrics);
- run_agent, no SDK: the same with a no-op tracer provider: the loop's own cost (threads for sync tools);
- openinference: the same plain loop under openinference-instrumentation-litellm;
- litellm-otel: the same plain loop with litellm's own ``"otel"`` callback.

Every instrumented variant exports through a BatchSpanProcessor to an exporter that encodes the
spans to OTLP protobuf (what a real exporter pays) and drops the bytes. Target: kiln-otel <= 3%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from kiln_otel import traced_run
from kiln_otel.litellm import run_agent
from kiln_otel.testing import ScriptedModelServer, ToolCall, Turn

litellm.suppress_debug_info = True
TURNS = 10
SETTLE_SECONDS = 0.05
"""Unmeasured pause after each run: work a callback deferred (litellm's logger) must not land in the next."""
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


def lookup(q: str) -> str:
    return f"found {q}"


def script(request: dict[str, Any]) -> Turn:
    """Tool calls until the conversation holds TURNS - 1 answers, then a final text answer."""
    done = sum(1 for m in request["messages"] if m.get("role") == "tool")
    if done < TURNS - 1:
        return Turn.tool_calls([ToolCall("lookup", {"q": f"item {done}"})])
    return Turn.text("All done: here is the plan.")


class EncodingExporter(SpanExporter):
    def __init__(self) -> None:
        self.bytes = 0
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


EXPORTERS: dict[TracerProvider, EncodingExporter] = {}


def provider() -> TracerProvider:
    tracer_provider = TracerProvider()
    EXPORTERS[tracer_provider] = EncodingExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(EXPORTERS[tracer_provider]))
    return tracer_provider


def start_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a careful planner."},
        {"role": "user", "content": "Plan a trip, looking up everything you need."},
    ]


async def plain_agent(base_url: str) -> None:
    messages = start_messages()
    for _ in range(TURNS):
        response = await litellm.acompletion(
            model="openai/scripted", messages=messages, tools=TOOLS, api_base=base_url, api_key="sk-local",
            num_retries=0, timeout=10,
        )  # fmt: skip
        message = response.choices[0].message
        messages.append(message.model_dump())
        if not message.tool_calls:
            return
        for call in message.tool_calls:
            result = lookup(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise RuntimeError("Too many turns")


def kiln_agent(tracer_provider: trace.TracerProvider) -> Callable[[str], Awaitable[None]]:
    """``run_agent`` in a ``traced_run``; with a no-op provider it isolates the loop's own cost."""

    async def run(base_url: str) -> None:
        async with traced_run("bench", tracer_provider=tracer_provider) as traced:
            traced.messages.extend(start_messages())
            await run_agent(
                "openai/scripted", traced.messages, tools=TOOLS, tool_handlers={"lookup": lookup},
                max_turns=TURNS, api_base=base_url, api_key="sk-local", num_retries=0, timeout=10,
                tracer_provider=tracer_provider,
            )  # fmt: skip

    return run


class Variant:
    def __init__(
        self,
        name: str,
        run: Callable[[str], Awaitable[None]],
        on: Callable[[], None],
        off: Callable[[], None],
        tracer_provider: TracerProvider | None = None,
    ):
        self.name, self.run, self.on, self.off = name, run, on, off
        self.tracer_provider = tracer_provider
        self.times: list[float] = []

    def spans_per_run(self) -> float | None:
        """Spans exported per run (warm-up included), to tell cheap from merely deferred work."""
        if self.tracer_provider is None:
            return None
        self.tracer_provider.force_flush()
        return round(EXPORTERS[self.tracer_provider].spans / (len(self.times) + 1), 1)


def nothing() -> None:
    return None


def openinference_variant() -> Variant | None:
    try:
        from openinference.instrumentation.litellm import LiteLLMInstrumentor
    except ImportError:
        return None
    instrumentor = LiteLLMInstrumentor()
    tracer_provider = provider()
    return Variant(
        "openinference",
        plain_agent,
        lambda: instrumentor.instrument(tracer_provider=tracer_provider),
        instrumentor.uninstrument,
        tracer_provider,
    )


def litellm_otel_variant() -> Variant:
    from litellm.integrations.opentelemetry import OpenTelemetry

    tracer_provider = provider()
    callback = OpenTelemetry(tracer_provider=tracer_provider)
    saved: list[Any] = []

    def on() -> None:
        saved[:] = list(litellm.callbacks)
        litellm.callbacks = [*saved, callback]

    def off() -> None:
        litellm.callbacks = saved

    return Variant("litellm-otel", plain_agent, on, off, tracer_provider)


async def measure(variants: list[Variant], base_url: str, rounds: int) -> None:
    for variant in variants:  # warm up each once: imports, connection pools, first-call caches
        variant.on()
        await variant.run(base_url)
        variant.off()
    for round_number in range(rounds):
        shift = round_number % len(variants)  # rotate, so no variant always follows the same one
        for variant in variants[shift:] + variants[:shift]:
            variant.on()
            start = time.perf_counter()
            await variant.run(base_url)
            variant.times.append(time.perf_counter() - start)
            variant.off()
            await asyncio.sleep(SETTLE_SECONDS)


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """Median of per-round ratios: each run is compared with the baseline run of the same round,
    so slow drifts of the machine (other processes, CPU frequency) cancel out."""
    return statistics.median(t / b for t, b in zip(times, baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kiln_provider = provider()
    variants = [
        Variant("uninstrumented", plain_agent, nothing, nothing),
        Variant("kiln-otel", kiln_agent(kiln_provider), nothing, nothing, kiln_provider),
        Variant("run_agent, no SDK", kiln_agent(NoOpTracerProvider()), nothing, nothing),
    ]
    optional = openinference_variant()
    if optional is not None:
        variants.append(optional)
    variants.append(litellm_otel_variant())
    with ScriptedModelServer(script) as server:
        asyncio.run(measure(variants, server.base_url, args.rounds))
    results = []
    for v in variants:
        ratio = paired_ratio(v.times, variants[0].times)
        results.append(
            {
                "variant": v.name,
                "median_ms": round(statistics.median(v.times) * 1000, 2),
                "ratio": round(ratio, 3),
                "overhead_percent": round((ratio - 1) * 100, 1),
                "spans_per_run": v.spans_per_run(),
            }
        )
    instrumentation = paired_ratio(variants[1].times, variants[2].times)
    results.append({"variant": "kiln-otel vs run_agent, no SDK", "ratio": round(instrumentation, 3),
                    "overhead_percent": round((instrumentation - 1) * 100, 1)})  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
        return
    if optional is None:
        print("(openinference-instrumentation-litellm not installed: pip install -e '.[bench]')")
    for r in results:
        if "median_ms" not in r:
            print(f"{r['variant']}: ratio {r['ratio']}, the instrumentation's own overhead {r['overhead_percent']}%")
            continue
        print(
            f"{r['variant']:<16} {r['median_ms']:>8} ms per run   ratio {r['ratio']:>6}"
            f"   overhead {r['overhead_percent']:>6}%   spans/run {r['spans_per_run']}"
        )


if __name__ == "__main__":
    main()
