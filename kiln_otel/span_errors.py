"""How any kiln-otel span records a failure: ERROR status, ``error.type``, a redacted exception event.

One place for it because the run span, the chat span and the tool span must agree, and because the
SDK's own ``span.record_exception`` would write the exception text and stack unredacted: litellm's
exceptions embed the request (messages, api_base, sometimes a key).
"""

from __future__ import annotations

import traceback

from opentelemetry.trace import Span, Status, StatusCode

from kiln_otel import wire
from kiln_otel.error_messages import safe_text
from kiln_otel.redaction import RedactHook

__all__ = ["error_type_name", "record_failure"]


def error_type_name(exc: BaseException) -> str:
    """``error.type`` per the semantic conventions: the fully qualified class name (builtins bare)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def record_failure(span: Span, exc: BaseException, redact: RedactHook | None, description: str | None = None) -> None:
    """Mark ``span`` failed by ``exc``; ``description`` (default: the redacted exception text) is the status's."""
    hook = redact or str
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = hook(safe_text(exc))
    span.add_event(
        wire.EVENT_EXCEPTION,
        {
            "exception.type": error_type_name(exc),
            "exception.message": message,
            "exception.stacktrace": hook(stack),
        },
    )
    span.set_attribute(wire.ATTR_ERROR_TYPE, error_type_name(exc))
    span.set_status(Status(StatusCode.ERROR, description or message))
