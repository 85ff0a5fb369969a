"""LiteLLMInstrumentor: direct litellm calls get the same chat span, and nothing is traced twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import litellm
import pytest
from litellm import exceptions as lx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode

from kiln_otel import _guard, traced_run
from kiln_otel.litellm import LiteLLMInstrumentor, run_agent, traced_acompletion, traced_completion
from kiln_otel.testing import Fault, Turn
from tests.conftest import Tracing
from tests.test_litellm_completion import (
    USER,
    WEATHER,
    Serve,
    call_kwargs,
    histogram_points,
    meter,
    serve,
)

__all__ = ["meter", "serve"]  # the fixtures, imported so pytest finds them here


@pytest.fixture
def instrumented(tracing: Tracing, meter: tuple[MeterProvider, InMemoryMetricReader]) -> Iterator[InMemoryMetricReader]:
    instrumentor = LiteLLMInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider, meter_provider=meter[0])
    try:
        yield meter[1]
    finally:
        instrumentor.uninstrument()


def chat_spans(tracing: Tracing) -> list[Any]:
    return [s for s in tracing.spans() if s.name.startswith("chat")]


def test_instrument_and_uninstrument_swap_the_module_functions_exactly(tracing: Tracing) -> None:
    completion, acompletion = litellm.completion, litellm.acompletion
    instrumentor = LiteLLMInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider)
    try:
        assert litellm.completion is not completion
        assert litellm.acompletion is not acompletion
        assert litellm.completion.__wrapped__ is completion  # type: ignore[attr-defined]
        assert asyncio.iscoroutinefunction(litellm.acompletion)
    finally:
        instrumentor.uninstrument()
    assert litellm.completion is completion
    assert litellm.acompletion is acompletion
    assert LiteLLMInstrumentor().instrumentation_dependencies() == ("litellm >= 1.60",)


def test_the_entry_point_names_the_instrumentor() -> None:
    (entry,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "litellm_kiln_otel"]
    assert entry.load() is LiteLLMInstrumentor


def test_direct_calls_get_a_chat_span_and_metrics_but_nothing_is_appended(
    tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader
) -> None:
    server = serve(Turn.text("Sunny.", prompt_tokens=5, completion_tokens=2), Turn.text("Rainy."))
    with traced_run("direct", tracer_provider=tracing.provider) as run:
        run.messages.append(USER)
        kwargs = call_kwargs(server)
        response = litellm.completion(kwargs.pop("model"), list(run.messages), **kwargs)  # model positional
        asyncio.run(litellm.acompletion(messages=list(run.messages), **call_kwargs(server)))
    assert response.choices[0].message.content == "Sunny."
    assert run.messages == [USER]
    run_span = tracing.span("invoke_agent direct")
    spans = chat_spans(tracing)
    assert [s.name for s in spans] == ["chat scripted", "chat scripted"]
    assert all(s.kind is SpanKind.CLIENT for s in spans)
    assert all(s.parent and s.parent.span_id == run_span.context.span_id for s in spans)
    assert (spans[0].attributes or {})["gen_ai.usage.input_tokens"] == 5
    assert (spans[0].attributes or {})["gen_ai.request.model"] == "scripted"
    assert len(histogram_points(instrumented, "gen_ai.client.operation.duration")) == 1
    assert sum(p.count for _, p in histogram_points(instrumented, "gen_ai.client.operation.duration")) == 2


def test_direct_errors_propagate_unchanged(tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader) -> None:
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=[USER], **call_kwargs(server))
    (span,) = chat_spans(tracing)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "litellm.exceptions.RateLimitError"


def test_direct_streams_are_traced_and_yield_litellms_chunks(
    tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader
) -> None:
    server = serve(Turn.text("Sunny and warm."))
    chunks = list(litellm.completion(messages=[USER], stream=True, **call_kwargs(server)))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sunny and warm."
    (span,) = chat_spans(tracing)
    assert (span.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)


def test_traced_calls_and_run_agent_are_not_traced_twice(
    tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader
) -> None:
    server = serve(Turn.text("One."), Turn.text("Two."), Turn.tool_calls([WEATHER]), Turn.text("Three."))

    async def main() -> None:
        async with traced_run("once", tracer_provider=tracing.provider) as run:
            run.messages.append(USER)
            await traced_acompletion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
            traced_completion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
            kwargs = call_kwargs(server)
            await run_agent(
                kwargs.pop("model"),
                run.messages,
                tools=None,
                tool_handlers={"get_weather": lambda city: "sunny"},
                tracer_provider=tracing.provider,
                **kwargs,
            )

    asyncio.run(main())
    assert len(chat_spans(tracing)) == 4
    run_span_id = tracing.span("invoke_agent once").context.span_id
    assert all(s.parent and s.parent.span_id == run_span_id for s in chat_spans(tracing))


def test_suppressed_instrumentation_calls_litellm_untouched(
    tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader
) -> None:
    server = serve(Turn.text("Sunny."), Turn.text("Sunny."))
    with suppress_instrumentation():
        litellm.completion(messages=[USER], **call_kwargs(server))
        stream = litellm.completion(messages=[USER], stream=True, **call_kwargs(server))
        assert isinstance(stream, litellm.CustomStreamWrapper)
        list(stream)
    assert tracing.spans() == ()


def test_if_setting_up_the_span_fails_the_original_call_goes_through(
    tracing: Tracing, serve: Serve, instrumented: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("kiln-otel bug")

    monkeypatch.setattr("kiln_otel.litellm.chat_span.request_attributes", broken)
    _guard.set_strict(False)  # as in an app: our bug is logged, the user's call is not affected
    server = serve(Turn.text("Sunny."), Turn.text("Streamed."))
    response = litellm.completion(messages=[USER], **call_kwargs(server))
    stream = litellm.completion(messages=[USER], stream=True, **call_kwargs(server))
    assert response.choices[0].message.content == "Sunny."
    assert isinstance(stream, litellm.CustomStreamWrapper)
    list(stream)
    assert tracing.spans() == ()
