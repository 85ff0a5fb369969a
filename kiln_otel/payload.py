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
from kiln_otel.encoding import serialize
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


def _jsonable(message: Any, hook: RedactHook | None) -> Any:
    """The message as its event carries it; one that had to be approximated is marked as reconstruction marks it."""
    raw, lossy = serialize(message)
    value = json.loads(raw) if hook is None else json.loads(hook(raw.decode()))
    if lossy and isinstance(value, dict):
        value[MARKER_KEY] = {"lossy": True}
    return value


def trace_as_json_data(trace: Sequence[Any], redact: RedactSetting = None) -> list[Any]:
    """Messages (dicts, litellm ``Message`` objects, anything) as the JSON data their events carry."""
    hook = resolve_redactor(redact)
    return [_jsonable(message, hook) for message in trace]


def _marked(trace: Sequence[Any] | None) -> bool:
    return any(isinstance(message, dict) and MARKER_KEY in message for message in trace or ())


def error_with_trace(error: KilnRunError, *, redact: RedactSetting = "default") -> ErrorWithTrace:
    trace = None
    try:
        if error.partial_trace:
            trace = trace_as_json_data(error.partial_trace, redact)
    except Exception as exc:
        report_internal_error("error_with_trace", exc)
        trace = None
    return ErrorWithTrace(
        message=error.message,
        error_type=error.error_type,
        trace=trace,
        trace_id=error.trace_id,
        span_id=error.span_id,
        trace_complete=not _marked(trace),
    )
