"""Streamed calls: chunks pass through unchanged, the span ends however the caller leaves the stream."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import litellm
import pytest
from litellm import exceptions as lx
from opentelemetry.trace import StatusCode

from kiln_otel import traced_run, wire
from kiln_otel.litellm import AsyncTracedStream, TracedStream, traced_acompletion, traced_completion
from kiln_otel.testing import Fault, ToolCall, Turn
from tests.conftest import Tracing
from tests.test_litellm_completion import USER, WEATHER, Serve, call_kwargs, events_named, serve

__all__ = ["serve"]  # the fixture, imported so pytest finds it here

TEXT = "It is sunny in Paris today, with a light breeze."


def _stream_sync(tracing: Tracing, messages: list[Any], **kwargs: Any) -> tuple[list[Any], TracedStream]:
    stream = traced_completion(messages, tracer_provider=tracing.provider, stream=True, **kwargs)
    return list(stream), stream


def _stream_async(tracing: Tracing, messages: list[Any], **kwargs: Any) -> tuple[list[Any], AsyncTracedStream]:
    async def main() -> tuple[list[Any], AsyncTracedStream]:
        stream = await traced_acompletion(messages, tracer_provider=tracing.provider, stream=True, **kwargs)
        return [chunk async for chunk in stream], stream

    return asyncio.run(main())


STREAMERS = [pytest.param(_stream_sync, id="sync"), pytest.param(_stream_async, id="async")]


@pytest.mark.parametrize("streamer", STREAMERS)
def test_chunks_pass_through_and_the_assembled_message_is_appended_once(
    tracing: Tracing, serve: Serve, streamer: Any
) -> None:
    server = serve(Turn.text(TEXT))
    with traced_run("s", tracer_provider=tracing.provider) as run:
        run.messages.append(USER)
        chunks, stream = streamer(tracing, run.messages, **call_kwargs(server))
    assert all(type(c).__name__ == "ModelResponseStream" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert len(run.messages) == 2
    assert run.messages[-1].content == TEXT
    assert run.messages[-1] is stream.response.choices[0].message
    assert events_named(tracing.span("invoke_agent s"), "kiln_otel.message") == [
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
    ]
    chat = tracing.span("chat scripted")
    attributes = dict(chat.attributes or {})
    assert chat.status.status_code is StatusCode.UNSET
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.id"] == "chatcmpl-scripted-1"
    duration = (chat.end_time or 0) - (chat.start_time or 0)
    assert 0 < float(attributes["gen_ai.response.time_to_first_chunk"]) * 1e9 <= duration  # type: ignore[arg-type]
    assert chat.events == ()


@pytest.mark.parametrize("streamer", STREAMERS)
def test_usage_is_marked_as_litellms_estimate_unless_the_provider_sent_it(
    tracing: Tracing, serve: Serve, streamer: Any
) -> None:
    """What litellm does: without include_usage it still fills usage in, from its own tokenizer."""
    server = serve(*[Turn.text(TEXT, prompt_tokens=321, completion_tokens=45)] * 2)
    _, estimated = streamer(tracing, [USER], **call_kwargs(server))
    _, reported = streamer(tracing, [USER], **call_kwargs(server, stream_options={"include_usage": True}))
    assert server.requests[0].get("stream_options") is None
    assert estimated.response.usage.completion_tokens != 45  # litellm's estimate, dressed as usage
    first, second = (dict(s.attributes or {}) for s in tracing.spans())
    assert first["kiln_otel.usage.estimated"] is True
    assert first["gen_ai.usage.output_tokens"] == estimated.response.usage.completion_tokens
    assert "kiln_otel.usage.estimated" not in second
    assert (second["gen_ai.usage.input_tokens"], second["gen_ai.usage.output_tokens"]) == (321, 45)
    assert reported.response.usage.prompt_tokens == 321


@pytest.mark.parametrize("streamer", STREAMERS)
def test_streamed_tool_calls_are_assembled(tracing: Tracing, serve: Serve, streamer: Any) -> None:
    calls = [WEATHER, ToolCall("get_time", {"zone": "Europe/Paris"})]
    server = serve(Turn.tool_calls(calls))
    messages: list[Any] = [USER]
    streamer(tracing, messages, **call_kwargs(server))
    assembled = messages[-1].tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in assembled] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "Europe/Paris"}),
    ]
    assert dict(tracing.span("chat scripted").attributes or {})["gen_ai.response.finish_reasons"] == ("tool_calls",)


@pytest.mark.parametrize("streamer", STREAMERS)
@pytest.mark.parametrize("fault", [Fault.STREAM_CUT, Fault.STREAM_ERROR])
def test_a_broken_stream_appends_what_arrived_marked_partial_before_raising(
    tracing: Tracing, serve: Serve, streamer: Any, fault: Fault
) -> None:
    server = serve(Turn.fault(fault, content=TEXT))
    messages: list[Any] = [USER]
    with pytest.raises(lx.MidStreamFallbackError) as caught:
        streamer(tracing, messages, **call_kwargs(server))
    partial = messages[-1]
    assert len(messages) == 2
    assert partial["role"] == "assistant"
    assert partial[wire.PARTIAL_MESSAGE_KEY] is True
    assert partial["content"] == caught.value.generated_content
    assert 0 < len(partial["content"]) < len(TEXT)
    chat = tracing.span("chat scripted")
    assert chat.status.status_code is StatusCode.ERROR
    assert dict(chat.attributes or {})["error.type"] == "litellm.exceptions.MidStreamFallbackError"
    assert "gen_ai.response.time_to_first_chunk" in (chat.attributes or {})


def test_the_partial_message_is_in_the_list_when_the_error_reaches_the_caller(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.fault(Fault.STREAM_CUT, calls=[WEATHER]))
    messages: list[Any] = [USER]
    stream = traced_completion(messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server))
    seen_at_raise: list[Any] = []
    try:
        for _ in stream:
            pass
    except lx.MidStreamFallbackError:
        seen_at_raise = list(messages)
    partial = seen_at_raise[-1]
    assert partial[wire.PARTIAL_MESSAGE_KEY] is True
    assert partial["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_stream_that_fails_before_any_content_appends_nothing(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.fault(Fault.MALFORMED_JSON))
    messages: list[Any] = [USER]
    with pytest.raises(lx.MidStreamFallbackError):
        _stream_sync(tracing, messages, **call_kwargs(server))
    assert messages == [USER]
    assert tracing.span("chat scripted").status.status_code is StatusCode.ERROR


# --------------------------------------------------------------------------------------------------
# Abandoned streams


def _assert_abandoned(tracing: Tracing, messages: list[Any]) -> None:
    chat = tracing.span("chat scripted")
    assert chat.end_time is not None
    assert chat.status.status_code is StatusCode.UNSET
    assert dict(chat.attributes or {})["kiln_otel.stream.abandoned"] is True
    assert messages == [USER]


def test_closing_a_sync_stream_early_ends_its_span_as_abandoned(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text(TEXT))
    messages: list[Any] = [USER]
    with traced_completion(messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server)) as stream:
        next(iter(stream))
    _assert_abandoned(tracing, messages)
    assert list(stream) == []  # litellm's stream is closed too


def test_an_async_stream_left_with_break_ends_its_span_on_aclose(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text(TEXT))
    messages: list[Any] = [USER]

    async def main() -> None:
        stream = await traced_acompletion(
            messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server)
        )
        async with stream:
            async for _ in stream:
                break

    asyncio.run(main())
    _assert_abandoned(tracing, messages)


@pytest.mark.parametrize("streamer", ["sync", "async"])
def test_a_dropped_stream_ends_its_span_when_garbage_collected(tracing: Tracing, serve: Serve, streamer: str) -> None:
    server = serve(Turn.text(TEXT))
    messages: list[Any] = [USER]

    async def open_async() -> None:
        stream = await traced_acompletion(
            messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server)
        )
        await stream.__anext__()
        del stream
        gc.collect()

    if streamer == "async":
        asyncio.run(open_async())
    else:
        stream = traced_completion(messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server))
        next(stream)
        del stream
    gc.collect()
    _assert_abandoned(tracing, messages)


def test_closing_after_the_end_changes_nothing(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text(TEXT))
    messages: list[Any] = [USER]
    _, stream = _stream_sync(tracing, messages, **call_kwargs(server))
    stream.close()
    chat = tracing.span("chat scripted")
    assert "kiln_otel.stream.abandoned" not in (chat.attributes or {})
    assert len(messages) == 2


def test_the_wrapper_passes_unknown_attributes_to_litellms_stream(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text(TEXT))
    stream = traced_completion([USER], tracer_provider=tracing.provider, stream=True, **call_kwargs(server))
    assert isinstance(stream._inner, litellm.CustomStreamWrapper)
    assert stream.model == stream._inner.model
    with pytest.raises(AttributeError):
        stream._no_such_private_thing  # noqa: B018
    stream.close()
