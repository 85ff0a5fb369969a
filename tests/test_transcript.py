"""The transcript is what a person reads first when a run fails: every message must show, whatever its shape."""

from __future__ import annotations

from typing import Any

import pytest

from kiln_otel import ErrorWithTrace
from kiln_otel.transcript import render_trace, render_transcript

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def payload(trace: list[Any] | None, **fields: Any) -> ErrorWithTrace:
    defaults: dict[str, Any] = {
        "message": "Rate limit exceeded. Wait a moment and try again.",
        "error_type": "RateLimitError",
        "trace_id": TRACE_ID,
        "span_id": "00f067aa0ba902b7",
    }
    return ErrorWithTrace(trace=trace, **{**defaults, **fields})


TOOL_RUN = [
    {"role": "system", "content": "You plan trips."},
    {"role": "user", "content": "Weather in Lisbon?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"forecast": "sunny"}'},
    {
        "role": "tool",
        "tool_call_id": "call_2",
        "content": "Error: boom",
        "is_error": True,
        "error_message": "boom",
    },
]


def test_roles_tool_calls_results_and_the_error_in_order() -> None:
    text = render_transcript(payload(TOOL_RUN))
    order = [
        "[0] system",
        "You plan trips.",
        "[1] user",
        "[2] assistant",
        '→ get_weather({"city": "Lisbon"})  id call_1',
        "[3] tool ↳ answers call_1",
        '{"forecast": "sunny"}',
        "[4] tool ↳ answers call_2 ✗ error",
        "✗ RateLimitError: Rate limit exceeded. Wait a moment and try again.",
        f"trace id: {TRACE_ID}",
    ]
    positions = [text.index(piece) for piece in order]
    assert positions == sorted(positions)
    assert text.endswith("\n")
    assert "\x1b[" not in text


def test_no_line_exceeds_the_width_and_long_content_says_how_much_was_cut() -> None:
    long = "word " * 2000
    text = render_transcript(payload([{"role": "tool", "tool_call_id": "c", "content": long}]), width=60)
    body = [line for line in text.splitlines() if not line.startswith(("✗", "trace id"))]
    assert all(len(line) <= 60 for line in body)
    assert len(body) < 20
    assert "more characters not shown (10,000 in all)" in text


@pytest.mark.parametrize("width", [60, 100, 300])
def test_long_tool_arguments_and_errors_stay_within_the_width(width: int) -> None:
    call = {"id": "c1", "function": {"name": "write", "arguments": '{"text": "' + "x" * 5000 + '"}'}}
    long_error = payload([{"role": "assistant", "tool_calls": [call]}], message="It broke. " * 40)
    text = render_transcript(long_error, width=width, color=True)
    line = next(line for line in text.splitlines() if "→ write(" in line)
    assert "…" in line
    assert len(render_transcript(long_error, width=width).splitlines()[1]) <= width
    plain = render_transcript(long_error, width=width)
    assert all(len(line) <= width for line in plain.splitlines())
    assert "\x1b[1;31m✗ RateLimitError:\x1b[0m It broke." in text


@pytest.mark.parametrize(
    ("message", "mark"),
    [
        ({"role": "assistant", "content": "Half an ans", "kiln_otel_partial": True}, "partial: the stream broke off"),
        (
            {"role": "tool", "content": "{...}", "_kiln_otel": {"truncated": True, "original_size": 120000}},
            "truncated in telemetry, was 120,000 bytes",
        ),
        (
            {"role": "user", "content": "[content not captured]", "_kiln_otel": {"captured": False, "size": 42}},
            "content not captured, was 42 bytes",
        ),
        ({"role": "user", "content": "b'x'", "_kiln_otel": {"lossy": True}}, "approximated"),
        ({"role": "user", "content": "", "_kiln_otel": {"unparseable": True}}, "no longer parses"),
    ],
)
def test_markers_say_how_faithful_a_message_is(message: dict[str, Any], mark: str) -> None:
    assert mark in render_transcript(payload([message]))


def test_no_trace_recorded() -> None:
    text = render_transcript(payload(None, trace_id=None, span_id=None))
    assert "no messages were recorded" in text
    assert "✗ RateLimitError" in text
    assert "trace id: none" in text


def test_incomplete_trace_is_flagged() -> None:
    assert "incomplete" in render_transcript(payload(TOOL_RUN, trace_complete=False))


def missing(text: str, *pieces: str) -> list[str]:
    return [piece for piece in pieces if piece not in text]


def test_non_dict_messages_still_render() -> None:
    text = render_transcript(payload(["just a string", 42, None, ["a", "list"]]))
    assert not missing(
        text, "[0] (not a message: str)", "just a string", "[1] (not a message: int)", "[3] (not a message: list)"
    )


def test_content_as_parts() -> None:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}},
        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
        {"type": "file", "file": {"filename": "plan.pdf"}},
        {"type": "weird"},
        "a bare string part",
    ]
    text = render_transcript(payload([{"role": "user", "content": parts}]))
    assert not missing(
        text,
        "What is in this picture?",
        "[image: data:image/png;base64,AAA",
        "[audio]",
        "[file: plan.pdf]",
        "[weird part]",
        "a bare string part",
    )
    assert "A" * 200 not in text


def test_odd_fields_and_values() -> None:
    messages = [
        {"content": "no role at all"},
        {"role": "assistant", "content": None, "reasoning_content": "Let me think.", "refusal": "I can't."},
        {"role": "assistant", "content": {"an": "object"}, "tool_calls": ["not a call"]},
        {"role": "user", "name": "alice", "content": "line one\n\nline three"},
    ]
    text = render_transcript(payload(messages))
    assert not missing(
        text,
        "[0] ?",
        "(thinking) Let me think.",
        "(refusal) I can't.",
        '{"an": "object"}',
        "→ ?(not a call)",
        "[3] user (alice)",
        "    line one\n    \n    line three",
    )


def test_color_only_when_asked() -> None:
    plain = render_transcript(payload(TOOL_RUN))
    colored = render_transcript(payload(TOOL_RUN), color=True)
    assert "\x1b[" in colored
    assert "\x1b[" not in plain


def test_render_trace_for_a_run_that_did_not_fail() -> None:
    text = render_trace(TOOL_RUN[:2], trace_id=TRACE_ID, note="this run did not fail")
    assert "[1] user" in text
    assert "this run did not fail" in text
    assert "✗" not in text
    assert TRACE_ID in text
