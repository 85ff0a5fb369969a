"""`ErrorWithTrace`: the payload an app shows when a run fails, built in-process or from telemetry.

Kiln's UI already renders ``{message, error_type, trace}`` (``trace`` null when nothing was recorded,
never ``[]``); kiln-otel only adds fields (ids to link to the trace, whether the trace is whole), never
renames one, so that UI keeps working. The trace holds plain JSON data in both cases, so the payload a
caller got and the one rebuilt later from exported telemetry compare equal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, field_validator

from kiln_otel._guard import report_internal_error
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.encoding import message_json, record_json, restore_nulls
from kiln_otel.error_messages import safe_text
from kiln_otel.redaction import RedactHook, RedactSetting, resolve_redactor
from kiln_otel.wire import MARKER_KEY

__all__ = [
    "ErrorWithTrace",
    "error_with_trace",
    "run_error_ids",
    "run_error_message",
    "run_error_type",
    "trace_as_json_data",
]


class ErrorWithTrace(BaseModel):
    message: str
    error_type: str
    trace: list[Any] | None = None
    trace_id: str | None = None
    """Hex, as Jaeger and Grafana show it, so an app can link to the run."""
    span_id: str | None = None
    trace_complete: bool = True
    """False when the trace was rebuilt from telemetry that lost something (truncated, not captured, gaps),
    or holds a message that had to be approximated (marked ``{"_kiln_otel": {"lossy": true}}``)."""

    @field_validator("trace", mode="before")
    @classmethod
    def _plain_json_or_none(cls, trace: Any) -> Any:
        if trace is None or not isinstance(trace, Sequence) or isinstance(trace, (str, bytes)):
            return trace
        return trace_as_json_data(trace) or None


def _jsonable(message: Any, hook: RedactHook | None, budget: int | None) -> tuple[Any, bool]:
    """The message as its event carries it, marked as `reconstruct_trace` marks it: redacted, cut to
    ``budget`` when given, and flagged lossy when it had to be approximated; True when it is marked."""
    raw, lossy, nulls = record_json(message)
    marks: dict[str, Any] = {}
    if budget is None:
        value = json.loads(hook(raw.decode()) if hook is not None else raw)
    else:
        text, truncated = message_json(raw, budget, hook)
        value = json.loads(text)
        if truncated:
            marks.update(truncated=True, original_size=len(raw))
    restore_nulls(value, nulls)
    if lossy:
        marks["lossy"] = True
    if marks and isinstance(value, dict):
        value[MARKER_KEY] = marks
    return value, bool(marks)


def trace_as_json_data(
    trace: Sequence[Any], redact: RedactSetting = None, max_message_bytes: int | None = None
) -> list[Any]:
    """Messages (dicts, litellm ``Message`` objects, anything) as the JSON data their events carry.

    With ``max_message_bytes``, a message over it is cut as `kiln_otel.encoding.encode_message` cuts
    its event, and marked as `reconstruct_trace` marks it, so the payload equals the rebuilt trace.
    """
    return _redacted_trace(trace, resolve_redactor(redact), max_message_bytes)[0]


def _redacted_trace(trace: Sequence[Any], hook: RedactHook | None, budget: int | None) -> tuple[list[Any], bool]:
    messages = [_jsonable(message, hook, budget) for message in trace]
    return [m for m, _ in messages], any(cut for _, cut in messages)


# --- reading a run error by its shape -----------------------------------------------------------------
# kiln-otel's KilnRunError and Kiln's own (kiln_ai.adapters.errors.KilnRunError) carry the same things
# under the same names, but Kiln's has no ``message`` attribute and no ids unless kiln-otel traced its
# run. Reading them by shape lets an app keep raising Kiln's class (its server, eval runner and MCP
# adapter check that exact class) and still serve kiln-otel's payload.


def run_error_message(error: BaseException) -> Any:
    """``error.message`` (kiln-otel's), else ``str(error)``: Kiln's error keeps its text there only.

    A ``message`` that is not a string is handed on as it is, for the caller to reject.
    """
    return getattr(error, "message") if hasattr(error, "message") else safe_text(error)  # noqa: B009


def run_error_type(error: BaseException) -> str:
    """``error.error_type`` when it is a string, else the short class name of what it wraps."""
    error_type = getattr(error, "error_type", None)
    if isinstance(error_type, str):
        return error_type
    original = getattr(error, "original", None)
    return type(original if isinstance(original, BaseException) else error).__name__


def run_error_ids(error: BaseException) -> tuple[str | None, str | None]:
    """The failed run's trace and span ids as strings, or None (a hand-built error may hold anything)."""
    trace_id, span_id = getattr(error, "trace_id", None), getattr(error, "span_id", None)
    return (trace_id if isinstance(trace_id, str) else None, span_id if isinstance(span_id, str) else None)


def error_with_trace(error: BaseException, *, redact: RedactSetting = "default") -> ErrorWithTrace:
    """The payload for a run error: kiln-otel's `KilnRunError` or Kiln's own, read by shape
    (``partial_trace``, ``original``, ``error_type``, and ``trace_id`` / ``span_id`` when traced)."""
    trace = None
    marked = False
    try:
        partial_trace = getattr(error, "partial_trace", None)
        if partial_trace:
            budget = getattr(error, "max_message_bytes", None) or DEFAULT_MAX_MESSAGE_BYTES
            trace, marked = _redacted_trace(partial_trace, resolve_redactor(redact), budget)
    except Exception as exc:
        report_internal_error("error_with_trace", exc)
        trace = None
    trace_id, span_id = run_error_ids(error)
    return ErrorWithTrace(
        message=run_error_message(error),
        error_type=run_error_type(error),
        trace=trace,
        trace_id=trace_id,
        span_id=span_id,
        trace_complete=not marked,
    )
