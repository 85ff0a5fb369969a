"""`ErrorWithTrace`: the payload an app shows when a run fails, built in-process or from telemetry.

Kiln's UI already renders ``{message, error_type, trace}`` (``trace`` null when nothing was recorded,
never ``[]``); kiln-otel only adds fields (ids to link to the trace, whether the trace is whole), never
renames one, so that UI keeps working. The trace holds plain JSON data in both cases, so the payload a
caller got and the one rebuilt later from exported telemetry compare equal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, field_validator

from kiln_otel._guard import report_internal_error
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.encoding import message_json, serialize
from kiln_otel.redaction import RedactHook, RedactSetting, resolve_redactor
from kiln_otel.wire import MARKER_KEY

if TYPE_CHECKING:
    from kiln_otel.errors import KilnRunError

__all__ = ["ErrorWithTrace", "error_with_trace", "trace_as_json_data"]


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
    raw, lossy = serialize(message)
    marks: dict[str, Any] = {}
    if budget is None:
        value = json.loads(hook(raw.decode()) if hook is not None else raw)
    else:
        text, truncated = message_json(raw, budget, hook)
        value = json.loads(text)
        if truncated:
            marks.update(truncated=True, original_size=len(raw))
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


def error_with_trace(error: KilnRunError, *, redact: RedactSetting = "default") -> ErrorWithTrace:
    trace = None
    truncated = False
    try:
        if error.partial_trace:
            budget = getattr(error, "max_message_bytes", None) or DEFAULT_MAX_MESSAGE_BYTES
            trace, truncated = _redacted_trace(error.partial_trace, resolve_redactor(redact), budget)
    except Exception as exc:
        report_internal_error("error_with_trace", exc)
        trace = None
    return ErrorWithTrace(
        message=error.message,
        error_type=error.error_type,
        trace=trace,
        trace_id=error.trace_id,
        span_id=error.span_id,
        trace_complete=not truncated,
    )
