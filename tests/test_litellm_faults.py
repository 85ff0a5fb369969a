"""Every way a run_agent run can fail, after a tool round or two, checked the same way each time.

For each fault: the KilnRunError wraps the very litellm exception class the fault raises, says the
user-facing message, the span tree is ``invoke_agent`` > ``chat`` / ``execute_tool`` with ERROR and
``error.type`` on the failing chat span and on the run, the partial trace is exactly what was
appended (partial streamed text included), and the ErrorWithTrace the app got equals the one rebuilt
from the exported spans alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litellm import exceptions as lx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from kiln_otel import KilnRunError, format_error_message, reconstruct_error, traced_run, wire
from kiln_otel.encoding import _field
from kiln_otel.litellm import run_agent
from kiln_otel.span_errors import error_type_name
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn
from tests.conftest import Tracing
from tests.test_litellm_completion import USER, WEATHER, Serve, call_kwargs, serve

__all__ = ["serve"]  # the fixture, imported so pytest finds it here

PARTIAL_TEXT = "It is sunny in Paris today, with a light breeze and a high of twenty-one."
TIME = ToolCall("get_time", {"city": "Paris"})
FAULT_TIMEOUT = 0.5


def get_weather(city: str) -> dict[str, str]:
    return {"city": city, "sky": "sunny"}


async def get_time(city: str) -> str:
    return f"12:00 in {city}"


HANDLERS: dict[str, Any] = {"get_weather": get_weather, "get_time": get_time}
TWO_TOOL_ROUNDS = (Turn.tool_calls([WEATHER]), Turn.tool_calls([TIME, WEATHER]))
ROLES_BEFORE_FAULT = ["user", "assistant", "tool", "assistant", "tool", "tool"]


def failing_run(tracing: Tracing, server: ScriptedModelServer, **options: Any) -> tuple[KilnRunError, list[Any]]:
    """run_agent inside traced_run, expected to fail; returns the error and the run's final list."""

    async def main() -> tuple[KilnRunError, list[Any]]:
        run = traced_run("faulty", tracer_provider=tracing.provider)
        kwargs = {**call_kwargs(server, timeout=FAULT_TIMEOUT), **options}
        kwargs.setdefault("tool_handlers", HANDLERS)
        with pytest.raises(KilnRunError) as caught:
            async with run:
                run.messages.append(USER)
                await run_agent(
                    kwargs.pop("model"), run.messages, tools=None, tracer_provider=tracing.provider, **kwargs
                )
        return caught.value, list(run.messages)

    return asyncio.run(asyncio.wait_for(main(), 20))


def _role(message: Any) -> str:
    return str(_field(message, "role"))


def check_failed_run(
    tracing: Tracing,
    err: KilnRunError,
    messages: list[Any],
    expected: type[BaseException],
    *,
    roles: list[str],
    chats: int,
    failing_span: str = "chat",
) -> None:
    """The checks every fault shares; ``failing_span`` names the span kind the error is on (if any)."""
    assert type(err.original) is expected
    failed_tools = [
        (s.attributes or {}).get("gen_ai.tool.name")
        for s in tracing.spans()
        if s.name.startswith("execute_tool") and s.status.status_code is StatusCode.ERROR
    ]
    tool = failed_tools[0] if failing_span == "tool" else None  # a tool's failure is worded as the tool's
    assert str(err) == format_error_message(err.original, tool=tool)
    assert err.__cause__ is err.original
    assert err.partial_trace is not None
    assert list(err.partial_trace) == messages
    assert [_role(m) for m in messages] == roles

    spans = sorted(tracing.spans(), key=lambda s: s.start_time or 0)
    run_span = tracing.span("invoke_agent faulty")
    assert run_span.parent is None
    work = [s for s in spans if s.name.startswith(("chat", "execute_tool"))]
    assert {s.name for s in spans} - {s.name for s in work} == {"invoke_agent faulty"}
    assert all(s.parent is not None and s.parent.span_id == run_span.context.span_id for s in work)
    assert len([s for s in work if s.name.startswith("chat")]) == chats
    assert len([s for s in work if s.name.startswith("execute_tool")]) == roles.count("tool")

    qualified = error_type_name(err.original)
    assert run_span.status.status_code is StatusCode.ERROR
    assert (run_span.attributes or {})["error.type"] == qualified
    errored = [s for s in work if s.status.status_code is StatusCode.ERROR]
    if failing_span == "chat":
        assert [s.name for s in errored] == ["chat scripted"]
        assert errored[0] is [s for s in work if s.name.startswith("chat")][-1]
        assert (errored[0].attributes or {})["error.type"] == qualified
    elif failing_span == "none":
        assert errored == []
    assert err.to_error_with_trace() == reconstruct_error(tracing.spans())


def _fault_cases() -> list[Any]:
    """(fault, streamed, exception class): what litellm 1.110 raises, measured against the server."""
    both = [
        (Fault.RATE_LIMIT, lx.RateLimitError),
        (Fault.SERVER_ERROR, lx.InternalServerError),
        (Fault.SERVICE_UNAVAILABLE, lx.ServiceUnavailableError),
        (Fault.CONTEXT_LENGTH_EXCEEDED, lx.ContextWindowExceededError),
        (Fault.BAD_REQUEST, lx.BadRequestError),
        (Fault.AUTHENTICATION, lx.AuthenticationError),
        (Fault.NOT_FOUND, lx.NotFoundError),
        (Fault.CONTENT_POLICY, lx.BadRequestError),
        (Fault.FLAGGED_PROMPT, lx.ContentPolicyViolationError),
        (Fault.NO_RESPONSE, lx.Timeout),
    ]
    cases = [(fault, streamed, error) for fault, error in both for streamed in (False, True)]
    cases += [
        (Fault.MALFORMED_JSON, False, lx.InternalServerError),
        (Fault.MALFORMED_JSON, True, lx.MidStreamFallbackError),
        (Fault.EMPTY_JSON, False, lx.InternalServerError),
        (Fault.EMPTY_JSON, True, lx.MidStreamFallbackError),
        (Fault.STREAM_CUT, False, lx.InternalServerError),
        (Fault.STREAM_CUT, True, lx.MidStreamFallbackError),
        (Fault.STREAM_ERROR, False, lx.APIError),
        (Fault.STREAM_ERROR, True, lx.MidStreamFallbackError),
    ]
    return [
        pytest.param(fault, streamed, error, id=f"{fault.value}-{'stream' if streamed else 'plain'}")
        for fault, streamed, error in cases
    ]


@pytest.mark.parametrize(("fault", "streamed", "expected"), _fault_cases())
def test_a_provider_fault_after_two_tool_rounds(
    tracing: Tracing, serve: Serve, fault: Fault, streamed: bool, expected: type[BaseException]
) -> None:
    server = serve(*TWO_TOOL_ROUNDS, Turn.fault(fault, content=PARTIAL_TEXT))
    err, messages = failing_run(tracing, server, stream=streamed)
    partial = getattr(err.original, "generated_content", None)
    roles = ROLES_BEFORE_FAULT + (["assistant"] if partial else [])
    check_failed_run(tracing, err, messages, expected, roles=roles, chats=3)
    if partial:
        assert messages[-1] == {
            "role": "assistant",
            "content": partial,
            "tool_calls": None,
            "function_call": None,
            "provider_specific_fields": None,
            wire.PARTIAL_MESSAGE_KEY: True,
        }
        assert PARTIAL_TEXT.startswith(partial)
        assert len(partial) < len(PARTIAL_TEXT)
    assert bool(partial) == (streamed and fault in (Fault.STREAM_CUT, Fault.STREAM_ERROR))


def test_a_stream_cut_during_tool_calls_keeps_the_partial_tool_call(tracing: Tracing, serve: Serve) -> None:
    server = serve(*TWO_TOOL_ROUNDS, Turn.fault(Fault.STREAM_CUT, content="Checking.", calls=[WEATHER, TIME]))
    err, messages = failing_run(tracing, server, stream=True)
    check_failed_run(
        tracing, err, messages, lx.MidStreamFallbackError, roles=[*ROLES_BEFORE_FAULT, "assistant"], chats=3
    )
    partial = messages[-1]
    assert partial[wire.PARTIAL_MESSAGE_KEY] is True
    assert partial["content"] == "Checking."
    assert partial["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_refused_connection_after_a_tool_round(tracing: Tracing, serve: Serve) -> None:
    """The tool takes the server down, so the next model call finds nobody listening."""
    server = serve(Turn.tool_calls([WEATHER]))

    def weather_then_outage(city: str) -> str:
        server.close()
        return "sunny"

    err, messages = failing_run(tracing, server, tool_handlers={"get_weather": weather_then_outage})
    check_failed_run(tracing, err, messages, lx.InternalServerError, roles=["user", "assistant", "tool"], chats=2)
    assert str(err) == "Could not connect to the model provider. Check your network connection."


# --------------------------------------------------------------------------------------------------
# Failures of the loop itself


def _chat_spans(tracing: Tracing) -> list[ReadableSpan]:
    return [s for s in tracing.spans() if s.name.startswith("chat")]


def test_too_many_turns(tracing: Tracing, serve: Serve) -> None:
    server = serve(*TWO_TOOL_ROUNDS)
    err, messages = failing_run(tracing, server, max_turns=2)
    check_failed_run(tracing, err, messages, RuntimeError, roles=ROLES_BEFORE_FAULT, chats=2, failing_span="none")
    assert str(err.original).startswith("Too many turns (max 2)")
    assert str(err) == "The run exceeded the maximum number of turns."


def test_too_many_tool_calls_in_one_turn(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.tool_calls([TIME, WEATHER, TIME]))
    err, messages = failing_run(tracing, server, max_tool_calls_per_turn=2)
    roles = ["user", "assistant", "tool", "assistant"]
    check_failed_run(tracing, err, messages, RuntimeError, roles=roles, chats=2, failing_span="none")
    assert str(err.original).startswith("Too many tool calls in one turn (3 > max 2)")
    assert str(err) == "The run exceeded the maximum number of tool calls in one turn."


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (ToolCall("get_moon", {}), ValueError),
        (ToolCall("get_weather", "{not json"), ValueError),
        (ToolCall("get_weather", {"town": "Paris"}), TypeError),
    ],
)
def test_a_failing_tool_with_fail_run(
    tracing: Tracing, serve: Serve, call: ToolCall, expected: type[BaseException]
) -> None:
    server = serve(Turn.tool_calls([WEATHER]), Turn.tool_calls([TIME, call]))
    err, messages = failing_run(tracing, server, on_tool_error="fail_run")
    check_failed_run(tracing, err, messages, expected, roles=ROLES_BEFORE_FAULT, chats=2, failing_span="tool")
    assert messages[-1][wire.TOOL_ERROR_KEY] is True
    assert messages[-2] == {"role": "tool", "tool_call_id": "call_2_0", "content": "12:00 in Paris"}
    errored = [s for s in tracing.spans() if s.status.status_code is StatusCode.ERROR]
    assert sorted(s.name for s in errored) == sorted(["invoke_agent faulty", f"execute_tool {call.name}"])
    assert all(s.status.status_code is StatusCode.UNSET for s in _chat_spans(tracing))
