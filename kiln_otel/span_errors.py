"""How any kiln-otel span records a failure: ERROR status, ``error.type``, a redacted exception event.

One place for it because the run span, the chat span and the tool span must agree, and because the
SDK's own ``span.record_exception`` would write the exception text and stack unredacted and uncut:
litellm's exceptions embed the request (messages, api_base, sometimes a key), and a 3 MB exception
message would otherwise be stored three times (message, stack, status).
"""

from __future__ import annotations

import traceback

from opentelemetry.trace import Span, Status, StatusCode

from kiln_otel import wire
from kiln_otel.bounded import bound_text, utf8_size
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.error_messages import MAX_DESCRIPTION_BYTES, safe_text
from kiln_otel.redaction import RedactHook

__all__ = ["bounded_stacktrace", "error_type_name", "record_failure"]


def error_type_name(exc: BaseException) -> str:
    """``error.type`` per the semantic conventions: the fully qualified class name (builtins bare)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def bounded_stacktrace(exc: BaseException, max_bytes: int, redact: RedactHook | None) -> tuple[str, bool]:
    """The formatted traceback, redacted and cut; the frames and the final exception line each keep
    a share, so a huge message cannot push the frames out (nor the frames the exception type)."""
    parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = len(traceback.format_exception_only(type(exc), exc))
    frames, final = "".join(parts[:-tail]), "".join(parts[-tail:])
    whole, cut = bound_text(frames + final, max_bytes, redact)
    if cut is None:
        return whole, False
    frames, _ = bound_text(frames, max_bytes // 2, redact)
    final, _ = bound_text(final, max_bytes - utf8_size(frames), redact)
    return frames + final, True


def record_failure(
    span: Span,
    exc: BaseException,
    redact: RedactHook | None,
    description: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Mark ``span`` failed by ``exc``; ``description`` (default: the exception text) is the status's.

    Every text is redacted, then cut: the message and the stack to ``max_bytes`` each, the status
    description to `MAX_DESCRIPTION_BYTES`. Cut values end with ``…[truncated, N bytes]`` and the
    event lists them in ``kiln_otel.truncated``.
    """
    message, message_size = bound_text(safe_text(exc), max_bytes, redact)
    stack, stack_cut = bounded_stacktrace(exc, max_bytes, redact)
    attributes: dict[str, str | tuple[str, ...]] = {
        "exception.type": error_type_name(exc),
        "exception.message": message,
        "exception.stacktrace": stack,
    }
    cut = ("exception.message",) * (message_size is not None) + ("exception.stacktrace",) * stack_cut
    if cut:
        attributes[wire.ATTR_TRUNCATED] = cut
    span.add_event(wire.EVENT_EXCEPTION, attributes)
    span.set_attribute(wire.ATTR_ERROR_TYPE, error_type_name(exc))
    status, _ = bound_text(description or message, MAX_DESCRIPTION_BYTES, redact)
    span.set_status(Status(StatusCode.ERROR, status))
