"""How any kiln-otel span records a failure: ERROR status, ``error.type``, a redacted exception event.

One place for it because the run span, the chat span and the tool span must agree, and because the
SDK's own ``span.record_exception`` would write the exception text and stack unredacted and uncut:
litellm's exceptions embed the request (messages, api_base, sometimes a key), and a 3 MB exception
message would otherwise be stored three times (message, stack, status).

One failure, one stack: a model call or a tool call that fails inside a run records the exception
(with its frames) on its own span first; when the same exception then fails the run, the run span's
event keeps only the frames the first record does not have (the run's own code) and names the span
that holds the rest (`FailureLog`). The run span also says, in words, where the failure came from.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import FrameType, TracebackType

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from kiln_otel import wire
from kiln_otel.bounded import bound_text, utf8_size
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.error_messages import MAX_DESCRIPTION_BYTES, safe_text
from kiln_otel.redaction import RedactHook

__all__ = [
    "FailureLog",
    "RecordedFailure",
    "bounded_stacktrace",
    "collect_failures",
    "error_type_name",
    "record_failure",
    "record_run_failure",
    "stop_collecting",
]

_KEEP_FAILURES = 8
"""Failures a run remembers: a run whose tools keep failing (and recovering) must not hold them all."""


@dataclass(frozen=True)
class RecordedFailure:
    """An exception a span inside a run has recorded, stack included."""

    exception: BaseException
    span_id: str
    tool: str | None
    """The tool's name when the span is a tool call."""
    traceback: TracebackType | None
    """``exception.__traceback__`` when it was recorded: that event holds this frame and the ones below."""


class FailureLog:
    """The failures recorded on other spans while a run is current, newest last (at most a few).

    Held by the run and alive only as long as it is, so the exceptions (and their frames) it keeps
    are released with the run.
    """

    def __init__(self) -> None:
        self._failures: list[RecordedFailure] = []

    def add(self, failure: RecordedFailure) -> None:
        self._failures.append(failure)
        del self._failures[:-_KEEP_FAILURES]

    def find(self, exc: BaseException) -> RecordedFailure | None:
        """The earliest record of ``exc`` itself (identity, not equality): the deepest span that saw it."""
        return next((failure for failure in self._failures if failure.exception is exc), None)


_current_log: ContextVar[FailureLog | None] = ContextVar("kiln_otel_failure_log", default=None)


def collect_failures(log: FailureLog | None) -> Token[FailureLog | None]:
    """Make ``log`` the one failures are noted in (a run entering); reset with the returned token."""
    return _current_log.set(log)


def stop_collecting(token: Token[FailureLog | None]) -> None:
    _current_log.reset(token)


def error_type_name(exc: BaseException) -> str:
    """``error.type`` per the semantic conventions: the fully qualified class name (builtins bare)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def bounded_stacktrace(
    exc: BaseException, max_bytes: int, redact: RedactHook | None, *, elsewhere: RecordedFailure | None = None
) -> tuple[str, bool]:
    """The formatted traceback, redacted and cut; the frames and the final exception line each keep
    a share, so a huge message cannot push the frames out (nor the frames the exception type).

    ``elsewhere``: the frames from its traceback down are already recorded there, so they are left
    out and the text says where they are (the chained exceptions too).
    """
    outer = _outer_frames(exc, elsewhere) if elsewhere is not None else None
    if outer is not None and elsewhere is not None:
        frames_list, hidden = outer
        frames = "Traceback (most recent call last):\n" if frames_list else ""
        frames += "".join(traceback.StackSummary.extract(frames_list).format())
        frames += f"  [{hidden} more frame{'s' * (hidden != 1)}: see the exception event of span {elsewhere.span_id}]\n"
        final = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
        tail = len(traceback.format_exception_only(type(exc), exc))
        frames, final = "".join(parts[:-tail]), "".join(parts[-tail:])
    whole, cut = bound_text(frames + final, max_bytes, redact)
    if cut is None:
        return whole, False
    frames, _ = bound_text(frames, max_bytes // 2, redact)
    final, _ = bound_text(final, max_bytes - utf8_size(frames), redact)
    return frames + final, True


def _outer_frames(exc: BaseException, elsewhere: RecordedFailure) -> tuple[list[tuple[FrameType, int]], int] | None:
    """(frame, line) pairs of ``exc``'s traceback above the frames ``elsewhere`` recorded, and how many
    it leaves out; None when none of them is in it any more (re-raised with another traceback).

    Frames are compared, not traceback entries: a context manager the exception passed through
    (``contextlib``) puts back the traceback it had before, dropping the entry of its own frame.
    """
    recorded = set()
    tb = elsewhere.traceback
    while tb is not None:
        recorded.add(id(tb.tb_frame))
        tb = tb.tb_next
    outer: list[tuple[FrameType, int]] = []
    tb = exc.__traceback__
    while tb is not None and id(tb.tb_frame) not in recorded:
        outer.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    if tb is None:
        return None
    hidden = 0
    while tb is not None:
        hidden += 1
        tb = tb.tb_next
    return outer, hidden


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
    event lists them in ``kiln_otel.truncated``. Inside a run, the run is told (`FailureLog`).
    """
    _record(span, exc, redact, description, max_bytes, None)
    log = _current_log.get()
    if log is not None:
        log.add(_recorded(span, exc))


def record_run_failure(
    span: Span,
    exc: BaseException,
    redact: RedactHook | None,
    message: str,
    *,
    failures: FailureLog | None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """`record_failure` for a run span: ``message`` (the user-facing one) as its status description
    and as ``kiln_otel.error.message``, and the stack only where no span below already holds it."""
    elsewhere = failures.find(exc) if failures is not None else None
    status = _record(span, exc, redact, message, max_bytes, elsewhere)
    # The status is ``message`` redacted and cut, unless ``message`` is empty (then it is the exception's).
    span.set_attribute(wire.ATTR_ERROR_MESSAGE, status if message else "")
    log = _current_log.get()
    if log is not None and log is not failures:  # an enclosing run's: this run's record is its inner one
        log.add(_recorded(span, exc))


def _record(
    span: Span,
    exc: BaseException,
    redact: RedactHook | None,
    description: str | None,
    max_bytes: int,
    elsewhere: RecordedFailure | None,
) -> str:
    """Records the exception event and the status; returns the status description as set."""
    if elsewhere is not None and _outer_frames(exc, elsewhere) is None:
        elsewhere = None
    message, message_size = bound_text(safe_text(exc), max_bytes, redact)
    stack, stack_cut = bounded_stacktrace(exc, max_bytes, redact, elsewhere=elsewhere)
    attributes: dict[str, str | tuple[str, ...]] = {
        "exception.type": error_type_name(exc),
        "exception.message": message,
        "exception.stacktrace": stack,
    }
    if elsewhere is not None:
        attributes[wire.ATTR_EXCEPTION_SPAN_ID] = elsewhere.span_id
    cut = ("exception.message",) * (message_size is not None) + ("exception.stacktrace",) * stack_cut
    if cut:
        attributes[wire.ATTR_TRUNCATED] = cut
    span.add_event(wire.EVENT_EXCEPTION, attributes)
    span.set_attribute(wire.ATTR_ERROR_TYPE, error_type_name(exc))
    status, _ = bound_text(description or message, MAX_DESCRIPTION_BYTES, redact)
    span.set_status(Status(StatusCode.ERROR, status))
    return status


def _recorded(span: Span, exc: BaseException) -> RecordedFailure:
    attributes = getattr(span, "attributes", None)
    attributes = attributes if isinstance(attributes, Mapping) else {}
    operation, tool = attributes.get(wire.ATTR_GEN_AI_OPERATION_NAME), attributes.get(wire.ATTR_GEN_AI_TOOL_NAME)
    return RecordedFailure(
        exception=exc,
        span_id=trace.format_span_id(span.get_span_context().span_id),
        tool=tool if isinstance(tool, str) and operation == wire.OPERATION_EXECUTE_TOOL else None,
        traceback=exc.__traceback__,
    )
