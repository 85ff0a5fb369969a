"""run_agent: the tool loop's spans, its tool messages, and what it does with a tool that fails."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from kiln_otel import KilnRunError, traced_run, wire
from kiln_otel.litellm import run_agent
from kiln_otel.testing import ToolCall, Turn
from tests.conftest import Tracing
from tests.test_litellm_completion import PLANTED_KEY, USER, WEATHER, Serve, call_kwargs, exported_text, serve

__all__ = ["serve"]  # the fixture, imported so pytest finds it here

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for a place",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]


def get_weather(city: str) -> dict[str, Any]:
    return {"city": city, "sky": "sunny"}


async def get_time(city: str) -> str:
    return f"12:00 in {city}"


HANDLERS = {"get_weather": get_weather, "get_time": get_time}


def agent(tracing: Tracing, server: Any, *, capture_content: bool | None = None, **options: Any) -> Any:
    """One run_agent inside a traced_run; returns (final message or KilnRunError, run messages)."""

    async def main() -> tuple[Any, list[Any]]:
        run = traced_run("agent", tracer_provider=tracing.provider, capture_content=capture_content)
        try:
            async with run:
                run.messages.append(USER)
                options.setdefault("tools", TOOLS)
                options.setdefault("tool_handlers", HANDLERS)
                kwargs = {**call_kwargs(server), **options}
                final = await run_agent(kwargs.pop("model"), run.messages, tracer_provider=tracing.provider, **kwargs)
        except KilnRunError as err:
            return err, list(run.messages)
        return final, list(run.messages)

    return asyncio.run(asyncio.wait_for(main(), 20))


def spans_named(tracing: Tracing, prefix: str) -> list[ReadableSpan]:
    return [s for s in tracing.spans() if s.name.startswith(prefix)]


def test_two_tool_rounds_then_an_answer(tracing: Tracing, serve: Serve) -> None:
    time_call = ToolCall("get_time", {"city": "Paris"})
    server = serve(Turn.tool_calls([WEATHER]), Turn.tool_calls([time_call, WEATHER]), Turn.text("Sunny, noon."))
    final, messages = agent(tracing, server)
    assert final.content == "Sunny, noon."
    assert [m["role"] if isinstance(m, dict) else m.role for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert messages[-1] is final
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1_0", "content": '{"city":"Paris","sky":"sunny"}'}
    assert [m["content"] for m in messages[4:6]] == ["12:00 in Paris", '{"city":"Paris","sky":"sunny"}']
    assert [m["tool_call_id"] for m in messages[4:6]] == ["call_2_0", "call_2_1"]
    assert server.requests[0]["tools"] == TOOLS

    run_span = tracing.span("invoke_agent agent")
    children = [s for s in tracing.spans() if s.parent and s.parent.span_id == run_span.context.span_id]
    assert sorted(s.name for s in children) == sorted(
        ["chat scripted"] * 3 + ["execute_tool get_weather"] * 2 + ["execute_tool get_time"]
    )
    assert run_span.status.status_code is StatusCode.UNSET
    assert len([e for e in run_span.events if e.name.startswith(wire.EVENT_MESSAGE_PREFIX)]) == 7
    assert all(not s.events for s in spans_named(tracing, "chat"))


def test_tool_span_attributes_and_opt_in_content(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sunny."))
    agent(tracing, server)
    tool = tracing.span("execute_tool get_weather")
    assert tool.kind is SpanKind.INTERNAL
    assert dict(tool.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "call_1_0",
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.arguments": '{"city": "Paris"}',
        "gen_ai.tool.call.result": '{"city":"Paris","sky":"sunny"}',
    }
    assert tool.status.status_code is StatusCode.UNSET


def test_without_content_capture_tool_arguments_and_results_are_not_recorded(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sunny."))
    agent(tracing, server, capture_content=False)
    attributes = tracing.span("execute_tool get_weather").attributes or {}
    assert wire.ATTR_GEN_AI_TOOL_CALL_ARGUMENTS not in attributes
    assert wire.ATTR_GEN_AI_TOOL_CALL_RESULT not in attributes


def test_captured_tool_content_is_redacted(tracing: Tracing, serve: Serve) -> None:
    leaky = ToolCall("get_weather", {"city": f"Paris {PLANTED_KEY}"})
    server = serve(Turn.tool_calls([leaky]), Turn.text("Sunny."))
    agent(tracing, server)
    attributes = tracing.span("execute_tool get_weather").attributes or {}
    assert "[REDACTED:" in str(attributes[wire.ATTR_GEN_AI_TOOL_CALL_ARGUMENTS])
    assert PLANTED_KEY not in exported_text(tracing.spans())


def test_tools_of_one_turn_run_concurrently_and_answer_in_call_order(tracing: Tracing, serve: Serve) -> None:
    """``slow`` only finishes once ``fast`` has run, and a sync ``blocking`` tool waits on both in a thread:
    sequential execution would time out."""
    fast_done = asyncio.Event()
    thread_may_finish = threading.Event()
    threads: list[str] = []

    async def slow() -> str:
        await asyncio.wait_for(fast_done.wait(), 5)
        thread_may_finish.set()
        return "slow"

    async def fast() -> str:
        fast_done.set()
        return "fast"

    def blocking() -> str:
        threads.append(threading.current_thread().name)
        assert thread_may_finish.wait(5)
        return "blocking"

    calls = [ToolCall("blocking", {}), ToolCall("slow", {}), ToolCall("fast", {})]
    server = serve(Turn.tool_calls(calls), Turn.text("Done."))
    handlers = {"slow": slow, "fast": fast, "blocking": blocking}
    _, messages = agent(tracing, server, tool_handlers=handlers, tools=None)
    assert [m["content"] for m in messages[2:5]] == ["blocking", "slow", "fast"]
    assert threads != [threading.main_thread().name]
    assert "tools" not in server.requests[0]


def test_tool_spans_are_current_while_the_handler_runs(tracing: Tracing, serve: Serve) -> None:
    from opentelemetry import trace

    seen: list[int] = []

    def handler() -> str:
        seen.append(trace.get_current_span().get_span_context().span_id)
        return "ok"

    server = serve(Turn.tool_calls([ToolCall("probe", {})]), Turn.text("Done."))
    agent(tracing, server, tool_handlers={"probe": handler})
    assert seen == [tracing.span("execute_tool probe").context.span_id]


@pytest.mark.parametrize(
    ("call", "error_text", "error_type"),
    [
        (ToolCall("get_moon", {}), "Unknown tool 'get_moon'. Available tools: get_time, get_weather.", "ValueError"),
        (ToolCall("get_weather", '{"city": '), "The arguments for tool 'get_weather' are not valid JSON", "ValueError"),
        (ToolCall("get_weather", "[1, 2]"), "must be a JSON object, got list", "ValueError"),
        (ToolCall("get_weather", {"town": "Paris"}), "Tool 'get_weather' raised TypeError", "TypeError"),
    ],
)
def test_a_failing_tool_call_is_returned_to_the_model_by_default(
    tracing: Tracing, serve: Serve, call: ToolCall, error_text: str, error_type: str
) -> None:
    server = serve(Turn.tool_calls([call]), Turn.text("Sorry about that."))
    final, messages = agent(tracing, server)
    assert final.content == "Sorry about that."
    error = messages[2]
    assert error["role"] == "tool"
    assert error["tool_call_id"] == "call_1_0"
    assert error["is_error"] is True
    assert error_text in error["error_message"]
    assert error["content"] == f"Error: {error['error_message']}"
    sent = server.requests[1]["messages"][2]
    assert "is_error" not in sent
    assert "error_message" not in sent
    assert sent["content"] == error["content"]
    tool = spans_named(tracing, "execute_tool")[0]
    assert tool.status.status_code is StatusCode.ERROR
    assert dict(tool.attributes or {})["error.type"] == error_type
    assert [e.name for e in tool.events] == ["exception"]
    assert tracing.span("invoke_agent agent").status.status_code is StatusCode.UNSET


def test_a_handler_error_text_is_redacted_in_the_tool_message(tracing: Tracing, serve: Serve) -> None:
    def leaky(city: str) -> str:
        raise PermissionError(f"denied for {PLANTED_KEY}")

    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sorry."))
    _, messages = agent(tracing, server, tool_handlers={"get_weather": leaky})
    assert PLANTED_KEY not in json.dumps(messages[2])
    assert "[REDACTED:" in messages[2]["error_message"]
    assert PLANTED_KEY not in json.dumps(server.requests[1])
    assert PLANTED_KEY not in exported_text(tracing.spans())


def test_fail_run_answers_every_tool_call_then_raises_the_handlers_own_exception(
    tracing: Tracing, serve: Serve
) -> None:
    boom = RuntimeError("the weather service is down")

    def broken(city: str) -> str:
        raise boom

    server = serve(Turn.tool_calls([WEATHER, ToolCall("get_time", {"city": "Paris"})]))
    err, messages = agent(
        tracing, server, tool_handlers={"get_weather": broken, "get_time": get_time}, on_tool_error="fail_run"
    )
    assert isinstance(err, KilnRunError)
    assert err.original is boom
    assert str(err) == "The tool 'get_weather' failed: the weather service is down"
    assert [m["role"] for m in messages[2:]] == ["tool", "tool"]
    assert messages[2]["is_error"] is True
    assert messages[3] == {"role": "tool", "tool_call_id": "call_1_1", "content": "12:00 in Paris"}
    assert err.partial_trace is not None
    assert list(err.partial_trace) == messages


def test_an_unknown_on_tool_error_is_refused(serve: Serve) -> None:
    server = serve()
    with pytest.raises(ValueError, match="on_tool_error"):
        asyncio.run(
            run_agent(messages=[USER], tools=None, tool_handlers={}, on_tool_error="ignore", **call_kwargs(server))
        )
    assert server.requests == []


def test_outside_a_run_it_works_on_a_plain_list(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sunny."))
    messages: list[Any] = [USER]
    final = asyncio.run(
        run_agent(
            messages=messages,
            tools=TOOLS,
            tool_handlers=HANDLERS,
            tracer_provider=tracing.provider,
            **call_kwargs(server),
        )
    )
    assert final.content == "Sunny."
    assert len(messages) == 4
    assert {s.name for s in tracing.spans()} == {"chat scripted", "execute_tool get_weather"}


def test_streaming_turns_assemble_tool_calls(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.text("Sunny."))
    final, messages = agent(tracing, server, stream=True)
    assert final.content == "Sunny."
    assert messages[1].tool_calls[0].function.name == "get_weather"
    assert messages[2]["content"] == '{"city":"Paris","sky":"sunny"}'
    assert all(s.attributes and s.attributes["gen_ai.request.stream"] for s in spans_named(tracing, "chat"))
