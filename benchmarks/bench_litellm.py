"""A 10-turn tool-using agent run against the scripted server: instrumentation overhead, as ratios.

    pip install -e '.[bench]'      # adds openinference-instrumentation-litellm, for comparison only
    python benchmarks/bench_litellm.py [--rounds N] [--json]

Variants, interleaved round by round so machine noise hits them alike; each figure is the median
wall time of one run (10 model calls over loopback HTTP, 9 tool calls):

- uninstrumented: a plain loop calling ``litellm.acompletion`` and the tools (the baseline);
- kiln-otel: ``traced_run`` + ``run_agent`` (run span, message events, chat and tool spans, metrics);
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
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from kiln_otel import traced_run
from kiln_otel.litellm import run_agent
from kiln_otel.testing import ScriptedModelServer, ToolCall, Turn

litellm.suppress_debug_info = True
TURNS = 10
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

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def provider() -> TracerProvider:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
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


def kiln_agent(tracer_provider: TracerProvider) -> Callable[[str], Awaitable[None]]:
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
        self, name: str, run: Callable[[str], Awaitable[None]], on: Callable[[], None], off: Callable[[], None]
    ):
        self.name, self.run, self.on, self.off = name, run, on, off
        self.times: list[float] = []


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
    )


def litellm_otel_variant() -> Variant:
    from litellm.integrations.opentelemetry import OpenTelemetry

    callback = OpenTelemetry(tracer_provider=provider())
    saved: list[Any] = []

    def on() -> None:
        saved[:] = list(litellm.callbacks)
        litellm.callbacks = [*saved, callback]

    def off() -> None:
        litellm.callbacks = saved

    return Variant("litellm-otel", plain_agent, on, off)


async def measure(variants: list[Variant], base_url: str, rounds: int) -> None:
    for variant in variants:  # warm up each once: imports, connection pools, first-call caches
        variant.on()
        await variant.run(base_url)
        variant.off()
    for _ in range(rounds):
        for variant in variants:
            variant.on()
            start = time.perf_counter()
            await variant.run(base_url)
            variant.times.append(time.perf_counter() - start)
            variant.off()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = [
        Variant("uninstrumented", plain_agent, nothing, nothing),
        Variant("kiln-otel", kiln_agent(provider()), nothing, nothing),
    ]
    optional = openinference_variant()
    if optional is not None:
        variants.append(optional)
    variants.append(litellm_otel_variant())
    with ScriptedModelServer(script) as server:
        asyncio.run(measure(variants, server.base_url, args.rounds))
    base = statistics.median(variants[0].times)
    results = [
        {
            "variant": v.name,
            "median_ms": round(statistics.median(v.times) * 1000, 2),
            "ratio": round(statistics.median(v.times) / base, 3),
            "overhead_percent": round((statistics.median(v.times) / base - 1) * 100, 1),
        }
        for v in variants
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    if optional is None:
        print("(openinference-instrumentation-litellm not installed: pip install -e '.[bench]')")
    for r in results:
        print(
            f"{r['variant']:<16} {r['median_ms']:>8} ms per run   ratio {r['ratio']:>6}"
            f"   overhead {r['overhead_percent']:>6}%"
        )


if __name__ == "__main__":
    main()
