"""A failed run as text a person can read in a terminal: who said what, which tools ran, what broke.

The JSON payload is exact but unreadable at a glance; the transcript is what someone on call reads
first. It is a pure function of the payload (no I/O, no clock), so the CLI, a log line or a test all
see the same text. Nothing in a trace is trusted to be well formed: messages may be any JSON value,
content a string, a list of parts or anything else, and every one of them still renders.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from kiln_otel import wire
from kiln_otel.message_text import abbreviate, as_text, content_text, one_line
from kiln_otel.payload import ErrorWithTrace

__all__ = ["DEFAULT_SHOWN", "render_trace", "render_transcript"]

DEFAULT_SHOWN = 30
"""Messages a transcript shows by default: the first `_HEAD` (the task) and the last ones, which led to
the failure and must not scroll out of a terminal; a line in between says how many were left out."""
_HEAD = 2
_MIN_ELIDED = 3
"""Leaving out fewer messages than this would save less than the line that says so."""

_INDENT = "    "
_MAX_LINES = 12
"""Wrapped lines shown per text block; a 50 KB tool result must not bury the rest of the run."""
_MAX_ARGUMENTS = 200

_STYLES = {
    "system": "35",
    "developer": "35",
    "user": "32",
    "assistant": "34",
    "tool": "36",
    "mark": "33",
    "error": "1;31",
    "dim": "2",
    "bold": "1",
}


class _Painter:
    """ANSI colour when asked for, plain text otherwise: one switch instead of ``if color`` everywhere."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, style: str, text: str) -> str:
        code = _STYLES.get(style)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text


def render_transcript(
    payload: ErrorWithTrace, *, width: int = 100, color: bool = False, shown: int | None = DEFAULT_SHOWN
) -> str:
    """The payload's trace, message by message, then the error and the trace id.

    ``width`` bounds the lines (text is wrapped, tool arguments abbreviated; only an unbreakable name
    or id can overrun it); ``color`` adds ANSI colours. A trace longer than ``shown`` messages shows
    its first two and its last ones, with a line saying how many are left out (None: all of them).
    """
    paint = _Painter(color)
    lines = _render_messages(payload.trace, width, paint, shown)
    if not payload.trace_complete:
        lines.append(paint("mark", "! the trace is incomplete: the telemetry it was rebuilt from lost something"))
    lines.extend(_error_lines(payload.error_type, payload.message, width, paint))
    lines.extend(_trace_lines(payload.trace_id, payload.span_id, width, paint))
    return "\n".join(lines) + "\n"


def render_trace(
    messages: Sequence[Any] | None,
    *,
    trace_id: str | None = None,
    note: str | None = None,
    width: int = 100,
    color: bool = False,
    shown: int | None = DEFAULT_SHOWN,
) -> str:
    """A run that did not fail (or any message list): the same transcript, with ``note`` at the end."""
    paint = _Painter(color)
    lines = _render_messages(messages, width, paint, shown)
    if note:
        lines.append(paint("mark", note))
    lines.extend(_trace_lines(trace_id, None, width, paint))
    return "\n".join(lines) + "\n"


def _render_messages(messages: Sequence[Any] | None, width: int, paint: _Painter, shown: int | None) -> list[str]:
    if not messages:
        return [paint("dim", "(no messages were recorded before the run ended)")]
    count = len(messages)
    if shown is None or count <= shown + _MIN_ELIDED:
        head = tail_start = count
    else:
        head = min(_HEAD, max(shown - 1, 0))
        tail_start = count - max(shown - head, 1)
    lines: list[str] = []
    for index in range(head):
        lines.extend(_render_message(index, messages[index], max(width, 20), paint))
    if tail_start > head:
        elided = tail_start - head
        note = f"… {elided:,} message{'s' * (elided != 1)} not shown ([{head}] to [{tail_start - 1}] of {count:,})"
        lines.append(paint("mark", note))
    for index in range(tail_start, count):
        lines.extend(_render_message(index, messages[index], max(width, 20), paint))
    return lines


def _error_lines(error_type: str, message: str, width: int, paint: _Painter) -> list[str]:
    head = f"✗ {error_type}:"
    first, *rest = textwrap.wrap(f"{head} {one_line(message)}", max(width, 20), subsequent_indent="  ")
    if first.startswith(head):  # else a type name too long for one line was broken: leave it plain
        first = paint("error", head) + first[len(head) :]
    return [first, *rest]


def _trace_lines(trace_id: str | None, span_id: str | None, width: int, paint: _Painter) -> list[str]:
    if not trace_id:
        return [paint("dim", "trace id: none (the run was not recorded)")]
    line, span = f"trace id: {trace_id}", f"(run span {span_id})" if span_id else ""
    if not span:
        return [paint("dim", line)]
    if len(line) + 2 + len(span) <= width:
        return [paint("dim", f"{line}  {span}")]
    return [paint("dim", line), paint("dim", span)]


# --- One message ---------------------------------------------------------------------------------


def _render_message(index: int, message: Any, width: int, paint: _Painter) -> list[str]:
    if not isinstance(message, Mapping):
        head = f"[{index}] " + paint("mark", f"(not a message: {type(message).__name__})")
        return [head, *_block(as_text(message), width, paint)]
    role = str(message.get("role") or "?")
    lines = [_header(index, role, message, paint)]
    lines.extend(_block(content_text(message.get("content")), width, paint))
    lines.extend(_extras(message, width, paint))
    return lines


def _header(index: int, role: str, message: Mapping[str, Any], paint: _Painter) -> str:
    parts = [f"[{index}]", paint(role if role in _STYLES else "bold", role)]
    if message.get("name"):
        parts.append(paint("dim", f"({message['name']})"))
    if role == "tool":
        parts.append(paint("dim", f"↳ answers {message.get('tool_call_id') or '?'}"))
    if message.get(wire.TOOL_ERROR_KEY):
        parts.append(paint("error", "✗ error"))
    parts.extend(paint("mark", f"[{mark}]") for mark in _marks(message))
    return " ".join(parts)


def _marks(message: Mapping[str, Any]) -> list[str]:
    """What reconstruction or the stream wrapper says about how faithful this message is."""
    marks = []
    if message.get(wire.PARTIAL_MESSAGE_KEY):
        marks.append("partial: the stream broke off here")
    recorded = message.get(wire.MARKER_KEY)
    if isinstance(recorded, Mapping):
        if recorded.get("truncated"):
            marks.append(f"truncated in telemetry{_size_note(recorded.get('original_size'))}")
        if recorded.get("captured") is False:
            marks.append(f"content not captured{_size_note(recorded.get('size'))}")
        if recorded.get("lossy"):
            marks.append("approximated: held values JSON cannot carry")
        if recorded.get("unparseable"):
            marks.append("its recorded JSON no longer parses")
    return marks


def _size_note(size: object) -> str:
    return f", was {size:,} bytes" if isinstance(size, int) and not isinstance(size, bool) else ""


def _extras(message: Mapping[str, Any], width: int, paint: _Painter) -> list[str]:
    lines = []
    reasoning = message.get("reasoning_content")
    if reasoning:
        lines.extend(_block(f"(thinking) {as_text(reasoning)}", width, paint, style="dim"))
    if message.get("refusal"):
        lines.extend(_block(f"(refusal) {as_text(message['refusal'])}", width, paint, style="mark"))
    calls = message.get("tool_calls")
    if isinstance(calls, Sequence) and not isinstance(calls, str):
        lines.extend(_tool_call_line(call, width, paint) for call in calls)
    return lines


def _tool_call_line(call: Any, width: int, paint: _Painter) -> str:
    function = call.get("function") if isinstance(call, Mapping) else None
    name = str(function.get("name") or "?") if isinstance(function, Mapping) else "?"
    arguments = function.get("arguments") if isinstance(function, Mapping) else call
    call_id = call.get("id") if isinstance(call, Mapping) else None
    suffix = f"  id {call_id}" if call_id else ""
    room = width - len(f"{_INDENT}→ {name}(){suffix}")
    shown = abbreviate(one_line(as_text(arguments)), max(20, min(_MAX_ARGUMENTS, room)))
    return f"{_INDENT}→ {name}({shown})" + paint("dim", suffix)


# --- Text ----------------------------------------------------------------------------------------


def _block(text: str, width: int, paint: _Painter, *, style: str | None = None) -> list[str]:
    """Wrapped and indented; past `_MAX_LINES` lines, cut with a note of how much is not shown."""
    if not text.strip():
        return []
    room = width - len(_INDENT)
    head = text[: room * (_MAX_LINES + 1)]  # wrapping a megabyte only to show twelve lines is waste
    wrapped = [
        line
        for paragraph in head.splitlines()
        for line in textwrap.wrap(paragraph, room, replace_whitespace=False) or [""]
    ]
    shown = wrapped[:_MAX_LINES]
    lines = [_INDENT + (paint(style, line) if style else line) for line in shown]
    if len(wrapped) > _MAX_LINES or len(head) < len(text):
        hidden = len(text) - sum(len(line) + 1 for line in shown)
        note = f"… about {max(hidden, 1):,} more characters not shown ({len(text):,} in all)"
        lines.append(_INDENT + paint("dim", note))
    return lines
