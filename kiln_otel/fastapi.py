"""FastAPI / Starlette: a `KilnRunError` escaping a route becomes an HTTP 500 Kiln's UI already renders.

Install with ``pip install 'kiln-otel[fastapi]'``; plain Starlette apps work too. ``import kiln_otel``
never imports this module, so apps without a web framework do not pay for one.

::

    app = FastAPI()
    install_error_handler(app, trace_url_template="http://localhost:16686/trace/{trace_id}")

The body is `ErrorWithTraceResponse`: Kiln's keys (``message``, ``error_type``, ``trace``: null when
nothing was recorded, never ``[]``) plus ``trace_id``, ``span_id``, ``trace_complete``; ``trace_url``
only when a template is set (``{trace_id}`` and ``{span_id}`` are replaced literally, so Grafana
Explore links full of JSON braces work); ``trace_truncated`` only when the bound below cut the trace.
The ``traceparent`` header (``00-{trace_id}-{span_id}-01``) names the failed run span, so a proxy or
browser tool can jump to it without parsing the body.

What never leaves the process: the original exception (it is logged on the ``kiln_otel`` logger at
ERROR with its stack, the text passed through the same redaction hook, then cut like the exception
event's) and any secret the hook masks: it runs over the message and over every message of the trace
before the body is rendered, and before anything is cut.

The payload bound (``max_payload_bytes``, default 1 MiB; the rendered body never exceeds it).
A 10 MB trace in a 500 would freeze the browser that shows it, and the part that explains a failure
is its start (system prompt, first user turn: what was asked) and its end (what led to the error):

1. The trace fits: it is sent whole.
2. Otherwise the budget left for messages (the bound minus the rest of the body) is walked from both
   ends. The head, the messages up to and including the first ``user`` message (only the first message
   when there is none), gets at most half of it, the tail walks back from the last message and gets
   the rest. Each walk keeps whole messages while they fit; the first one that does not is cut to
   what is left with `kiln_otel.encoding.truncate_json` (strings shortened, shape kept) when at least
   512 bytes are left, and the walk stops there. So a single message larger than the budget is cut,
   never dropped, when it is the first or the last one.
3. The messages between the two walks are replaced by one marker message at the cut::

       {"role": "kiln_otel", "content": "… N messages (B bytes) left out …",
        "_kiln_otel": {"omitted_messages": N, "omitted_bytes": B}}

   (none when nothing was left out); ``trace_complete`` becomes false and a top-level
   ``trace_truncated`` object says ``{"omitted_messages": N, "omitted_bytes": B,
   "truncated_messages": T}`` (B counts the omitted messages' compact JSON, T the messages cut).
4. If not even the marker fits, ``trace`` is null (``trace_truncated`` counts every message) and the
   message text is cut to fit.

If building the body fails, the handler still answers: a minimal ErrorWithTrace with ``trace`` null.
Exceptions other than the run error classes it was installed for (`KilnRunError` by default; Kiln's
own class with ``error_classes=``) are not touched: they take Starlette's normal 500 path.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import BaseModel

from kiln_otel import wire
from kiln_otel._guard import logger, report_internal_error
from kiln_otel.bounded import bound_text
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.encoding import message_role, truncate_json
from kiln_otel.error_messages import GENERIC_MESSAGE, MAX_DESCRIPTION_BYTES
from kiln_otel.errors import KilnRunError
from kiln_otel.payload import (
    ErrorWithTrace,
    error_with_trace,
    run_error_ids,
    run_error_message,
    run_error_type,
    trace_as_json_data,
)
from kiln_otel.redaction import RedactHook, RedactSetting, resolve_redactor
from kiln_otel.span_errors import bounded_stacktrace

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
except ImportError as _missing:  # pragma: no cover - depends on the installed extras
    raise ImportError("kiln_otel.fastapi needs Starlette (or FastAPI): pip install 'kiln-otel[fastapi]'") from _missing

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MIN_PAYLOAD_BYTES",
    "ErrorWithTraceResponse",
    "TraceTruncated",
    "error_response",
    "install_error_handler",
    "openapi_error_responses",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
"""Large enough for a long agent run, small enough for a browser to render without stalling."""
MIN_PAYLOAD_BYTES = 4096
"""Below this not even the error text and a marker are guaranteed to fit."""

_MIN_CUT_BYTES = 512
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_DESCRIPTION = "The run failed: Kiln's ErrorWithTrace (message, error_type, trace) plus its telemetry ids."
_TRACEPARENT_HEADER = {
    "traceparent": {
        "description": "W3C trace context of the failed run span (absent when the run was not traced).",
        "required": False,
        "schema": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-01$"},
    }
}


class TraceTruncated(BaseModel):
    """How much of the trace the payload bound took out; present only when it took something."""

    omitted_messages: int
    omitted_bytes: int
    truncated_messages: int


class ErrorWithTraceResponse(ErrorWithTrace):
    """The HTTP body: `ErrorWithTrace` plus keys Kiln's UI ignores, so it keeps rendering it."""

    trace_url: str | None = None
    """Absent (not null) when no template was configured."""
    trace_truncated: TraceTruncated | None = None
    """Absent when the whole trace fitted in the payload bound."""


def _dumps(value: Any) -> bytes:
    """The exact bytes sent, so the bound is measured on what the client receives (NaN becomes null)."""
    return pydantic_core.to_json(value, inf_nan_mode="null")


class _CompactJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


# --- the payload bound ----------------------------------------------------------------------------
_Sized = tuple[Any, int]


def _marker(omitted: int, omitted_bytes: int) -> dict[str, Any]:
    return {
        "role": "kiln_otel",
        "content": f"… {omitted} messages ({omitted_bytes} bytes) left out …",
        wire.MARKER_KEY: {"omitted_messages": omitted, "omitted_bytes": omitted_bytes},
    }


def _counts(omitted: int, omitted_bytes: int, truncated: int) -> dict[str, int]:
    return {"omitted_messages": omitted, "omitted_bytes": omitted_bytes, "truncated_messages": truncated}


def _cut(message: Any, budget: int) -> _Sized:
    cut = json.loads(truncate_json(_dumps(message).decode(), budget))
    return cut, len(_dumps(cut))


def _walk(messages: Iterable[_Sized], budget: int) -> tuple[list[_Sized], int, int]:
    """Whole messages while they fit (each costs its size plus a comma), then one cut message at most.

    Returns what was kept, the bytes it costs, and how many messages were cut.
    """
    kept: list[_Sized] = []
    used = 0
    for message, size in messages:
        if size + 1 <= budget - used:
            kept.append((message, size))
            used += size + 1
            continue
        if budget - used - 1 >= _MIN_CUT_BYTES:
            cut, cut_size = _cut(message, budget - used - 1)
            kept.append((cut, cut_size))
            return kept, used + cut_size + 1, 1
        break
    return kept, used, 0


def _head_length(messages: Sequence[_Sized]) -> int:
    """System prompt(s) through the first user turn: what the run was asked to do."""
    for index, (message, _) in enumerate(messages):
        if message_role(message) == "user":
            return index + 1
    return min(1, len(messages))


def _fit_trace(payload: dict[str, Any], sized: list[_Sized], limit: int) -> dict[str, Any] | None:
    total = sum(size for _, size in sized)
    # Counts at their largest possible values, so the real ones can only make the body smaller.
    envelope = {
        **payload,
        "trace": [_marker(len(sized), total)],
        "trace_complete": False,
        "trace_truncated": _counts(len(sized), total, len(sized)),
    }
    room = limit - len(_dumps(envelope))
    if room <= 0:
        return None
    head_end = _head_length(sized)
    head, head_used, head_cut = _walk(sized[:head_end], room // 2 if head_end < len(sized) else room)
    tail, _, tail_cut = _walk(reversed(sized[head_end:]), room - head_used)
    tail.reverse()
    middle = sized[len(head) : len(sized) - len(tail)]
    omitted_bytes = sum(size for _, size in middle)
    marker = [_marker(len(middle), omitted_bytes)] if middle else []
    return {
        **payload,
        "trace": [m for m, _ in head] + marker + [m for m, _ in tail],
        "trace_complete": False,
        "trace_truncated": _counts(len(middle), omitted_bytes, head_cut + tail_cut),
    }


def _without_trace(payload: dict[str, Any], sized: list[_Sized], limit: int) -> dict[str, Any]:
    result = {
        **payload,
        "trace": None,
        "trace_complete": False,
        "trace_truncated": _counts(len(sized), sum(size for _, size in sized), 0),
    }
    rest = len(_dumps({**result, "message": ""}))
    if rest + len(_dumps(result["message"])) > limit:
        result["message"] = json.loads(truncate_json(json.dumps(result["message"]), max(limit - rest, 0)))
    if len(_dumps(result)) > limit:  # only a pathological error_type or trace_url can get here
        result["message"] = GENERIC_MESSAGE
    return result


def _bound(payload: dict[str, Any], limit: int) -> dict[str, Any]:
    if len(_dumps(payload)) <= limit:
        return payload
    sized = [(message, len(_dumps(message))) for message in payload.get("trace") or ()]
    fitted = _fit_trace(payload, sized, limit) if sized else None
    if fitted is not None and len(_dumps(fitted)) <= limit:
        return fitted
    return _without_trace(payload, sized, limit)


# --- building the response ------------------------------------------------------------------------
def _traceparent(err: BaseException) -> dict[str, str]:
    trace_id, span_id = run_error_ids(err)
    if _TRACE_ID.fullmatch(trace_id or "") and _SPAN_ID.fullmatch(span_id or ""):
        return {"traceparent": f"00-{trace_id}-{span_id}-01"}
    return {}


@dataclass(frozen=True)
class _Options:
    trace_url_template: str | None
    max_payload_bytes: int
    redact: RedactHook | None
    status_code: int

    @classmethod
    def create(
        cls, trace_url_template: str | None, max_payload_bytes: int, redact: RedactSetting, status_code: int
    ) -> _Options:
        """Misconfiguration fails here, at install time, not while answering a failed request."""
        if trace_url_template is not None and "{trace_id}" not in trace_url_template:
            raise ValueError(f"trace_url_template must contain {{trace_id}}; got {trace_url_template!r}")
        if max_payload_bytes < MIN_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be at least {MIN_PAYLOAD_BYTES}; got {max_payload_bytes}")
        return cls(trace_url_template, max_payload_bytes, resolve_redactor(redact), status_code)

    def trace_url(self, err: BaseException) -> dict[str, str]:
        trace_id, span_id = run_error_ids(err)
        if self.trace_url_template is None or not trace_id:
            return {}
        url = self.trace_url_template.replace("{trace_id}", trace_id)
        return {"trace_url": url.replace("{span_id}", span_id or "")}

    def payload(self, err: BaseException) -> dict[str, Any]:
        """The run's own redaction first (so the trace equals its telemetry), then this hook on top.

        Kiln's own KilnRunError has no ``to_error_with_trace``: its trace is taken as Kiln built it
        and this hook does all the redacting.
        """
        to_error_with_trace = getattr(err, "to_error_with_trace", None)
        if callable(to_error_with_trace):
            payload = to_error_with_trace().model_dump()
        else:
            payload = error_with_trace(err, redact=None).model_dump()
        hook = self.redact
        if hook is not None and hook != getattr(err, "redact", None):
            payload["message"] = self.redacted_message(err)
            payload["trace"] = trace_as_json_data(payload["trace"], hook) if payload["trace"] else None
        return _bound({**payload, **self.trace_url(err)}, self.max_payload_bytes)

    def redacted_message(self, err: BaseException) -> str:
        message = run_error_message(err)
        message = message if isinstance(message, str) else GENERIC_MESSAGE
        return bound_text(message, MAX_DESCRIPTION_BYTES, self.redact)[0]

    def minimal(self, err: BaseException) -> dict[str, Any]:
        """The body when building the real one failed: still a valid ErrorWithTrace, with no trace."""
        try:
            message = self.redacted_message(err)
        except Exception:
            message = GENERIC_MESSAGE
        trace_id, span_id = run_error_ids(err)
        fallback = ErrorWithTrace(
            message=message,
            error_type=run_error_type(err),
            trace_id=trace_id,
            span_id=span_id,
            trace_complete=False,
        )
        return fallback.model_dump()

    def log(self, err: BaseException) -> None:
        """The stack stays on the server; the hook masks secrets in its text as it does in the body."""
        original = getattr(err, "original", None)
        original = original if isinstance(original, BaseException) else err
        stack, _ = bounded_stacktrace(original, DEFAULT_MAX_MESSAGE_BYTES, self.redact)
        message = self.redacted_message(err)
        trace_id, span_id = run_error_ids(err)
        logger.error(
            "kiln-otel: run failed (trace_id=%s span_id=%s): %s\n%s",
            trace_id,
            span_id,
            message,
            stack,
        )

    def respond(self, err: BaseException) -> JSONResponse:
        try:
            self.log(err)
        except Exception as exc:
            report_internal_error("kiln_otel.fastapi.log", exc)
        try:
            payload = self.payload(err)
        except Exception as exc:
            report_internal_error("kiln_otel.fastapi.error_response", exc)
            payload = self.minimal(err)
        return _CompactJSONResponse(payload, status_code=self.status_code, headers=_traceparent(err))


def error_response(
    err: BaseException,
    *,
    trace_url_template: str | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    redact: RedactSetting = "default",
    status_code: int = 500,
) -> JSONResponse:
    """The response `install_error_handler` sends, for apps that catch a run error themselves.

    ``err``: kiln-otel's `KilnRunError` or Kiln's own ``kiln_ai.adapters.errors.KilnRunError``.

    Same body, bound, header and server-side log as the installed handler (see the module docstring).
    Raises ValueError/TypeError only for bad arguments; a failure while building the body gives the
    minimal ErrorWithTrace instead.
    """
    options = _Options.create(trace_url_template, max_payload_bytes, redact, status_code)
    return options.respond(err)


def install_error_handler(
    app: Starlette,
    *,
    trace_url_template: str | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    redact: RedactSetting = "default",
    status_code: int = 500,
    error_classes: Iterable[type[Exception]] = (KilnRunError,),
) -> None:
    """Answer every run error a route raises with the ErrorWithTrace body (module docstring).

    ``error_classes``: the run error classes to answer. Kiln keeps raising its own class (its server,
    eval runner and MCP adapter check it): pass ``(kiln_ai.adapters.errors.KilnRunError,)``, after
    Kiln's ``connect_custom_errors(app)`` so this handler replaces Kiln's for that class. Errors are
    read by shape (``partial_trace``, ``original``, ``error_type``, ids when kiln-otel traced the run).

    ``trace_url_template``: e.g. ``http://localhost:16686/trace/{trace_id}`` (Jaeger) or a Grafana
    Explore link with ``{trace_id}``. ``redact``: the default `Redactor`, your hook, or None; it runs on
    top of the run's own redaction. On a FastAPI app every operation of its OpenAPI document also
    declares the response (routes added later too), so clients and fuzzers know the error shape.

    The handler is synchronous on purpose: Starlette runs it in its thread pool, so serializing and
    cutting a large trace does not stall the event loop.
    """
    options = _Options.create(trace_url_template, max_payload_bytes, redact, status_code)

    def handle(request: Request, exc: Exception) -> Response:
        return options.respond(exc)

    for error_class in error_classes:
        app.add_exception_handler(error_class, handle)
    _declare_in_openapi(app, status_code)


# --- OpenAPI ---------------------------------------------------------------------------------------
def openapi_error_responses(status_code: int = 500) -> dict[int | str, dict[str, Any]]:
    """For FastAPI's ``responses=``, on routes (or an APIRouter) of apps that answer errors themselves."""
    return {
        status_code: {
            "model": ErrorWithTraceResponse,
            "description": _DESCRIPTION,
            "headers": copy.deepcopy(_TRACEPARENT_HEADER),
        }
    }


def _add_error_schemas(components: dict[str, Any]) -> str:
    schema = ErrorWithTraceResponse.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault(ErrorWithTraceResponse.__name__, schema)
    return f"#/components/schemas/{ErrorWithTraceResponse.__name__}"


def _add_error_response(document: dict[str, Any], status_code: int) -> None:
    """Declare the error on every operation that does not already declare that status itself."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    ref = _add_error_schemas(components)
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in _HTTP_METHODS:
                operation.setdefault("responses", {}).setdefault(
                    str(status_code),
                    {
                        "description": _DESCRIPTION,
                        "headers": copy.deepcopy(_TRACEPARENT_HEADER),
                        "content": {"application/json": {"schema": {"$ref": ref}}},
                    },
                )


def _declare_in_openapi(app: Starlette, status_code: int) -> None:
    """Patch ``app.openapi`` rather than the routes: FastAPI freezes a route's responses when it is added."""
    try:
        from fastapi import FastAPI
    except ImportError:
        return
    if not isinstance(app, FastAPI):
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        _add_error_response(document, status_code)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
