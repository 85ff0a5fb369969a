"""A failed run reads well where people look: the event excerpt, nulls left out, a cut stream flagged,
the error worded by its source with one stack, and transcripts of long runs that keep the end in view.

(What the real Jaeger serves for the same runs is checked in test_e2e_pipeline.py.)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litellm.types.utils import ChatCompletionMessageToolCall, Function, Message
from opentelemetry.trace import StatusCode

from kiln_otel import ErrorWithTrace, KilnRunError, format_error_message, reconstruct_error, traced_run, wire
from kiln_otel.cli import main
from kiln_otel.config import resolve_settings
from kiln_otel.encoding import EXCERPT_CHARS, EXCERPT_MAX_BYTES, encode_message, message_from_event
from kiln_otel.litellm import run_agent
from kiln_otel.payload import trace_as_json_data
from kiln_otel.redaction import Redactor
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn
from kiln_otel.transcript import DEFAULT_SHOWN, render_transcript
from tests.conftest import Tracing
from tests.secret_corpus import PLANTED

SETTINGS = resolve_settings()
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}


def excerpt(message: Any, **settings: Any) -> str | None:
    attributes = encode_message(message, 0, resolve_settings(**settings) if settings else SETTINGS)[1]
    value = attributes.get(wire.ATTR_MESSAGE_EXCERPT)
    assert value is None or isinstance(value, str)
    return value


# --- The excerpt ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "Weather in Lisbon?"}, "user: Weather in Lisbon?"),
        ({"role": "assistant", "content": None, "tool_calls": [CALL]}, 'assistant: → get_weather({"city": "Lisbon"})'),
        (
            {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, CALL]},
            'assistant: Checking. → get_weather({"city": "Lisbon"}), get_weather({"city": "Lisbon"})',
        ),
        ({"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}, 'tool: {"sky": "sunny"}'),
        (
            {"role": "tool", "tool_call_id": "c", "content": "Error: boom", "is_error": True, "error_message": "boom"},
            "tool (error): Error: boom",
        ),
        (
            {"role": "assistant", "content": "Lisbon looks", wire.PARTIAL_MESSAGE_KEY: True},
            "assistant (stream cut): Lisbon looks",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url"}]},
            "user: Look: [image: null]",
        ),
        ({"role": "user", "content": "two\nlines"}, "user: two lines"),
        ({"role": "critic", "content": "meh"}, "critic: meh"),
        ("just a string", 'message: "just a string"'),
    ],
)
def test_excerpt_reads_as_one_line(message: Any, expected: str) -> None:
    assert excerpt(message) == expected


def test_excerpt_of_litellm_message_objects() -> None:
    call = ChatCompletionMessageToolCall(id="c1", type="function", function=Function(name="f", arguments='{"a": 1}'))
    assert excerpt(Message(content=None, role="assistant", tool_calls=[call])) == 'assistant: → f({"a": 1})'


def test_long_text_is_cut_with_a_mark_and_tool_calls_stay_visible() -> None:
    long = "word " * 200
    text = excerpt({"role": "user", "content": long})
    assert text == f"user: {long[:EXCERPT_CHARS]}…"  # marked as cut
    with_call = excerpt({"role": "assistant", "content": long, "tool_calls": [CALL]})
    assert with_call is not None
    assert with_call.endswith('→ get_weather({"city": "Lisbon"})')


def test_excerpt_sorts_before_the_json_and_is_absent_without_content() -> None:
    attributes = encode_message({"role": "user", "content": "hi"}, 0, SETTINGS)[1]
    assert wire.ATTR_MESSAGE_EXCERPT < wire.ATTR_MESSAGE_JSON
    assert wire.ATTR_MESSAGE_EXCERPT < wire.ATTR_MESSAGE_INDEX < wire.ATTR_EVENT_SEQ
    assert set(attributes) >= {wire.ATTR_MESSAGE_EXCERPT, wire.ATTR_MESSAGE_JSON}
    assert excerpt({"role": "user", "content": "hi"}, capture_content=False) is None


@given(
    planted=st.sampled_from(PLANTED),
    before=st.text(max_size=150),
    where=st.sampled_from(["content", "arguments", "tool"]),
    budget=st.sampled_from([1024, 1500, 65536]),
)
def test_the_excerpt_never_shows_a_secret_the_redactor_masks_nor_exceeds_its_budget(
    planted: Any, before: str, where: str, budget: int
) -> None:
    text = before + planted.text
    if where == "content":
        message: dict[str, Any] = {"role": "user", "content": text}
    elif where == "arguments":
        arguments = json.dumps({"note": text})
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**CALL, "function": {"name": "f", "arguments": arguments}}],
        }
    else:
        message = {"role": "tool", "tool_call_id": "c", "content": text}
    value = excerpt(message, max_message_bytes=budget)
    assert value is not None
    assert len(value.encode()) <= min(EXCERPT_MAX_BYTES, budget)
    recorded = encode_message(message, 0, resolve_settings(max_message_bytes=budget))[1][wire.ATTR_MESSAGE_JSON]
    for secret in planted.secrets:
        if secret not in recorded:  # the redactor masked it in the message: the excerpt must too
            assert secret not in value
            assert secret[: len(secret) * 2 // 3] not in value


def test_an_excerpt_redacted_by_a_custom_hook_shows_what_the_hook_left() -> None:
    message = {"role": "user", "content": "call me at 555-0100"}
    assert excerpt(message, redact=lambda text: text.replace("555-0100", "[phone]")) == "user: call me at [phone]"
    assert excerpt(message, redact=None) == "user: call me at 555-0100"


# --- Nulls and cut streams -----------------------------------------------------------------------


LITELLM_SHAPED = [
    {"role": "system", "content": "You plan trips."},
    {"role": "user", "content": "Weather?", "name": None},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL],
        "function_call": None,
        "provider_specific_fields": None,
        "audio": None,
        "refusal": None,
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": null}'},
    {"role": "assistant", "content": "Sunny", "annotations": [None], "reasoning_content": None},
]


def test_top_level_nulls_are_named_not_written_and_come_back_on_rebuild(tracing: Tracing) -> None:
    with pytest.raises(KilnRunError) as caught, traced_run("nulls", tracer_provider=tracing.provider) as run:
        run.messages.extend(LITELLM_SHAPED)
        raise RuntimeError("stop")
    events = {e.attributes[wire.ATTR_EVENT_SEQ]: e for s in tracing.spans() for e in s.events if e.name != "exception"}
    assistant = events[2].attributes
    assert json.loads(assistant[wire.ATTR_MESSAGE_JSON]) == {"role": "assistant", "tool_calls": [CALL]}
    assert assistant[wire.ATTR_MESSAGE_NULL_KEYS] == (
        "content",
        "function_call",
        "provider_specific_fields",
        "audio",
        "refusal",
    )
    assert json.loads(events[3].attributes[wire.ATTR_MESSAGE_JSON])["content"] == '{"sky": null}'  # inner nulls kept
    assert wire.ATTR_MESSAGE_NULL_KEYS not in events[0].attributes
    payload = caught.value.to_error_with_trace()
    assert payload.trace == LITELLM_SHAPED
    assert reconstruct_error(tracing.spans()) == payload


def test_litellm_message_objects_rebuild_with_their_nulls() -> None:
    message = Message(
        content=None,
        role="assistant",
        tool_calls=[ChatCompletionMessageToolCall(id="c", function=Function(name="f", arguments="{}"))],
    )
    name, attributes, _ = encode_message(message, 0, SETTINGS)
    assert "null" not in attributes[wire.ATTR_MESSAGE_JSON]
    rebuilt, marks = message_from_event(name, attributes)
    assert marks == {}
    assert rebuilt == trace_as_json_data([message], "default")[0]
    assert rebuilt["content"] is None
    assert rebuilt["function_call"] is None


def test_a_cut_stream_is_an_event_attribute(tracing: Tracing) -> None:
    script = [Turn.fault(Fault.STREAM_CUT, content="Lisbon looks great: sunny, around 24 °C all weekend.")]
    with ScriptedModelServer(script) as server, pytest.raises(KilnRunError) as caught:
        asyncio.run(_agent(tracing, server, stream=True))
    events = [e for s in tracing.spans() for e in s.events if e.name == "kiln_otel.message.assistant"]
    assert [e.attributes.get(wire.ATTR_MESSAGE_PARTIAL) for e in events] == [True]
    assert str(events[0].attributes[wire.ATTR_MESSAGE_EXCERPT]).startswith("assistant (stream cut): Lisbon")
    assert caught.value.to_error_with_trace() == reconstruct_error(tracing.spans())
    plain = encode_message({"role": "assistant", "content": "whole"}, 0, SETTINGS)[1]
    assert wire.ATTR_MESSAGE_PARTIAL not in plain


async def _agent(tracing: Tracing, server: ScriptedModelServer, **kwargs: Any) -> None:
    def get_weather(city: str) -> str:
        raise TimeoutError("weather backend timed out")

    async with traced_run("readable", tracer_provider=tracing.provider) as run:
        run.messages.append({"role": "user", "content": "Weather in Lisbon?"})
        await run_agent(
            "openai/scripted", run.messages, tools=None, tool_handlers={"get_weather": get_weather},
            on_tool_error="fail_run", api_base=server.base_url, api_key="sk-local", num_retries=0, timeout=2,
            tracer_provider=tracing.provider, **kwargs,
        )  # fmt: skip


# --- The error: wording by source, one stack, the friendly message on the run span ----------------


def test_a_tools_timeout_is_the_tools_and_its_stack_is_recorded_once(tracing: Tracing) -> None:
    script = [Turn.tool_calls([ToolCall("get_weather", {"city": "Lisbon"})])]
    with ScriptedModelServer(script) as server, pytest.raises(KilnRunError) as caught:
        asyncio.run(_agent(tracing, server))
    message = "The tool 'get_weather' did not finish in time. Try again, or allow the tool a longer timeout."
    assert str(caught.value) == message
    assert "model provider" not in message
    run_span, tool_span = tracing.span("invoke_agent readable"), tracing.span("execute_tool get_weather")
    assert run_span.attributes[wire.ATTR_ERROR_MESSAGE] == message
    assert run_span.status.description == message
    tool_event = next(e for e in tool_span.events if e.name == "exception")
    run_event = next(e for e in run_span.events if e.name == "exception")
    tool_id = f"{tool_span.context.span_id:016x}"
    assert run_event.attributes[wire.ATTR_EXCEPTION_SPAN_ID] == tool_id
    assert f"see the exception event of span {tool_id}]" in str(run_event.attributes["exception.stacktrace"])
    inner = str(tool_event.attributes["exception.stacktrace"])
    outer = str(run_event.attributes["exception.stacktrace"])
    assert "in _invoke" in inner
    assert "in _invoke" not in outer
    assert "in run_agent" in outer  # the run's own frames stay on the run span
    assert run_event.attributes["exception.message"] == tool_event.attributes["exception.message"]
    assert caught.value.to_error_with_trace() == reconstruct_error(tracing.spans())


def test_a_providers_failure_keeps_the_providers_wording(tracing: Tracing) -> None:
    with ScriptedModelServer([Turn.fault(Fault.RATE_LIMIT)]) as server, pytest.raises(KilnRunError) as caught:
        asyncio.run(_agent(tracing, server))
    assert str(caught.value) == "Rate limit exceeded. Wait a moment and try again."
    run_span, chat_span = tracing.span("invoke_agent readable"), tracing.span("chat scripted")
    assert chat_span.status.status_code is StatusCode.ERROR
    run_event = next(e for e in run_span.events if e.name == "exception")
    assert run_event.attributes[wire.ATTR_EXCEPTION_SPAN_ID] == f"{chat_span.context.span_id:016x}"
    assert run_span.attributes[wire.ATTR_ERROR_MESSAGE] == str(caught.value)


def test_an_error_raised_in_the_run_itself_keeps_its_whole_stack(tracing: Tracing) -> None:
    with pytest.raises(KilnRunError) as caught, traced_run("plain", tracer_provider=tracing.provider) as run:
        run.messages.append({"role": "user", "content": "hi"})
        raise TimeoutError("the app's own deadline")
    assert str(caught.value) == "A step of the run did not finish in time. Try again, or allow a longer timeout."
    event = next(e for e in tracing.span("invoke_agent plain").events if e.name == "exception")
    assert wire.ATTR_EXCEPTION_SPAN_ID not in event.attributes
    assert "test_an_error_raised_in_the_run_itself_keeps_its_whole_stack" in str(
        event.attributes["exception.stacktrace"]
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), "The tool 'lookup' did not finish in time. Try again, or allow the tool a longer timeout."),
        (RuntimeError("db down"), "The tool 'lookup' failed: db down"),
        (ValueError("Unknown tool 'lookup'. Available tools: none."), "Unknown tool 'lookup'. Available tools: none."),
        (KeyError("x"), "The tool 'lookup' failed with an unexpected error (KeyError)."),
        (
            RuntimeError("key sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDc9876 refused"),
            "The tool 'lookup' failed: key [REDACTED:openai_key] refused",
        ),
    ],
)
def test_tool_wording(exc: BaseException, expected: str) -> None:
    assert format_error_message(exc, tool="lookup", redact=Redactor()) == expected


# --- Transcripts of long runs ----------------------------------------------------------------------


def long_payload(count: int) -> ErrorWithTrace:
    trace = [{"role": "system", "content": "You plan trips."}, {"role": "user", "content": "Plan it."}]
    trace += [{"role": "tool", "tool_call_id": f"c{i}", "content": f"result {i}"} for i in range(2, count)]
    return ErrorWithTrace(message="Rate limit exceeded.", error_type="RateLimitError", trace=trace, trace_id="ab" * 16)


def test_a_long_transcript_keeps_the_start_and_the_end_and_counts_what_it_leaves_out() -> None:
    text = render_transcript(long_payload(300))
    lines = text.splitlines()
    assert lines[0] == "[0] system"
    assert "[1] user" in lines
    elided = 300 - DEFAULT_SHOWN
    assert f"… {elided} messages not shown ([2] to [{2 + elided - 1}] of 300)" in lines
    assert "[299] tool ↳ answers c299" in lines
    assert lines.index("[299] tool ↳ answers c299") < lines.index("✗ RateLimitError: Rate limit exceeded.")
    assert "[150] tool" not in text
    assert len(lines) < 4 * DEFAULT_SHOWN


def test_short_transcripts_and_all_show_everything() -> None:
    assert "not shown" not in render_transcript(long_payload(DEFAULT_SHOWN + 3))
    every = render_transcript(long_payload(300), shown=None)
    assert "not shown" not in every
    assert "[150] tool" in every


def test_kiln_otel_show_elides_a_long_run_and_all_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "error.json"
    saved.write_text(long_payload(300).model_dump_json())
    assert main(["show", str(saved), "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert f"… {300 - DEFAULT_SHOWN} messages not shown" in shown
    assert shown.rstrip().splitlines()[-2:] == [
        "✗ RateLimitError: Rate limit exceeded.",
        f"trace id: {'ab' * 16}",
    ]
    assert main(["show", str(saved), "--all", "--color", "never"]) == 0
    every = capsys.readouterr().out
    assert "not shown" not in every
    assert "[150] tool" in every
