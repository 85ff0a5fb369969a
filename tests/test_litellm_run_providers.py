"""Inside a run, the run's tracer and meter providers are the default for every litellm entry point.

No global provider is set in the test process, so a span or metric that went to the global providers
instead would simply be missing here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import litellm
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import traced_run
from kiln_otel.litellm import LiteLLMInstrumentor, run_agent, traced_acompletion, traced_completion
from kiln_otel.testing import Turn
from tests.conftest import Tracing
from tests.test_litellm_agent import HANDLERS, TOOLS
from tests.test_litellm_completion import USER, WEATHER, Serve, call_kwargs, histogram_points, meter, serve

__all__ = ["meter", "serve"]  # the fixtures, imported so pytest finds them here

DURATION = "gen_ai.client.operation.duration"


def test_no_global_provider_is_set() -> None:
    assert not trace.get_tracer("probe").start_span("probe").is_recording()


def test_run_agent_and_traced_calls_default_to_the_runs_providers(
    tracing: Tracing, serve: Serve, meter: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    meter_provider, reader = meter
    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sunny."), Turn.text("Yes."), Turn.text("Sure."))

    async def main() -> None:
        async with traced_run("agent", tracer_provider=tracing.provider, meter_provider=meter_provider) as run:
            run.messages.append(USER)
            kwargs = call_kwargs(server)
            await run_agent(kwargs.pop("model"), run.messages, tools=TOOLS, tool_handlers=HANDLERS, **kwargs)
            await traced_acompletion(run.messages, **call_kwargs(server))
            traced_completion(run.messages, **call_kwargs(server))

    asyncio.run(main())
    spans = tracing.spans()
    run_span = tracing.span("invoke_agent agent")
    names = sorted(s.name for s in spans if s is not run_span)
    assert names == ["chat scripted"] * 4 + ["execute_tool get_weather"]
    assert {s.context.trace_id for s in spans} == {run_span.context.trace_id}
    chat_and_tools = [s for s in spans if s is not run_span]
    assert all(s.parent is not None and s.parent.span_id == run_span.context.span_id for s in chat_and_tools)
    assert sum(point.count for _, point in histogram_points(reader, DURATION)) == 4


def test_a_provider_given_to_the_call_beats_the_runs(tracing: Tracing, serve: Serve) -> None:
    other = InMemorySpanExporter()
    other_provider = TracerProvider()
    other_provider.add_span_processor(SimpleSpanProcessor(other))
    server = serve(Turn.text("Sunny."))

    async def main() -> None:
        async with traced_run("agent", tracer_provider=tracing.provider) as run:
            run.messages.append(USER)
            await traced_acompletion(run.messages, tracer_provider=other_provider, **call_kwargs(server))

    asyncio.run(main())
    assert [s.name for s in tracing.spans()] == ["invoke_agent agent"]
    assert [s.name for s in other.get_finished_spans()] == ["chat scripted"]
    other_provider.shutdown()


@pytest.fixture
def instrumented_without_providers() -> Iterator[None]:
    instrumentor = LiteLLMInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.mark.usefixtures("instrumented_without_providers")
def test_the_instrumentor_uses_the_runs_providers_inside_a_run_only(
    tracing: Tracing, serve: Serve, meter: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    meter_provider, reader = meter
    server = serve(Turn.text("Inside."), Turn.text("Outside."))

    async def main() -> None:
        async with traced_run("direct", tracer_provider=tracing.provider, meter_provider=meter_provider):
            await litellm.acompletion(messages=[USER], **call_kwargs(server))
        await litellm.acompletion(messages=[USER], **call_kwargs(server))  # no run: the global providers

    asyncio.run(main())
    assert sorted(s.name for s in tracing.spans()) == ["chat scripted", "invoke_agent direct"]
    assert sum(point.count for _, point in histogram_points(reader, DURATION)) == 1
