"""A model call outside any `traced_run` keeps its own conversation: recorded on its chat span when it fails.

Inside a run the run's list already holds every message, so a chat span records none (each message
once). Outside one (``opentelemetry-instrument`` with no kiln-otel code, or `traced_completion` on a
plain list) nothing else would: a failed call's span would say that it failed and not what it was
sent. So when such a call FAILS its span records the messages the call was sent, and the partial
answer of a broken stream, exactly as a run records its list (`kiln_otel.recorder`, whose events
`kiln_otel.encoding` writes: ``seq``, the per-message and per-span budgets, segment spans past the
event limit, redaction, the capture switch), then the exception, and becomes a run for
`reconstruct_trace`: it carries ``kiln_otel.schema_version``, the totals, and the user-facing message
as its status.

The messages are the call's own arguments: the success path only keeps a reference to them (a
stream, a shallow copy of the list when it starts), and all the encoding happens when the call has
failed. A successful call records no content unless asked (`RECORD_ALWAYS`): every call of a
conversation re-sends its whole history, so recording each one grows storage with the square of the
conversation's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

from opentelemetry import trace
from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel._guard import guarded
from kiln_otel.config import ENV_RECORD_CALL_MESSAGES, Settings, _choice_from_env, resolve_settings
from kiln_otel.error_messages import format_error_message
from kiln_otel.recorder import Recorder
from kiln_otel.redaction import masked_count
from kiln_otel.run import CANCELLED_MESSAGE, is_cancellation
from kiln_otel.span_errors import record_failure

__all__ = [
    "CALL_MESSAGES_VALUES",
    "ENV_RECORD_CALL_MESSAGES",
    "RECORD_ALWAYS",
    "RECORD_NEVER",
    "RECORD_ON_FAILURE",
    "CallMessages",
    "StandaloneCall",
    "call_messages_from_env",
    "resolve_call_messages",
]

CallMessages = Literal["on_failure", "always", "never"]
RECORD_ON_FAILURE: Final = "on_failure"
"""The default: a failed call records what it was sent (and a broken stream's partial answer)."""
RECORD_ALWAYS: Final = "always"
"""Successful calls too (the request and the answer): every conversation, at a quadratic byte cost."""
RECORD_NEVER: Final = "never"
"""No message content on any chat span."""
CALL_MESSAGES_VALUES: Final = (RECORD_ON_FAILURE, RECORD_ALWAYS, RECORD_NEVER)
_BY_NAME: Final[dict[str, CallMessages]] = {value: value for value in CALL_MESSAGES_VALUES}


def resolve_call_messages(value: str | None = None) -> CallMessages:
    """The argument when given (a value not understood raises), else the environment's."""
    if value is None:
        return call_messages_from_env()
    normalized = _BY_NAME.get(value.strip().lower())
    if normalized is None:
        raise ValueError(f"record_call_messages must be one of {', '.join(CALL_MESSAGES_VALUES)}; got {value!r}")
    return normalized


def call_messages_from_env() -> CallMessages:
    """``KILN_OTEL_RECORD_CALL_MESSAGES``, case-insensitive; anything else warns once and is the default."""
    return _choice_from_env(ENV_RECORD_CALL_MESSAGES, _BY_NAME, RECORD_ON_FAILURE)


def _as_messages(request: object) -> Sequence[Any]:
    """The request's ``messages`` if it is a sequence of messages; anything else records nothing."""
    if isinstance(request, Sequence) and not isinstance(request, (str, bytes, bytearray)):
        return request
    return ()


class StandaloneCall:
    """How a chat span outside any run ends: its own settings, resolved at the end, and maybe its messages.

    ``messages`` is the request's ``messages`` argument (None when the policy is `RECORD_NEVER`): a
    reference, or a copy from `freeze`, never encoded before the call has ended.
    """

    __slots__ = ("messages", "policy", "tracer")

    def __init__(self, tracer: Tracer, messages: object, policy: CallMessages) -> None:
        self.tracer = tracer
        self.policy = policy
        self.messages = messages if policy != RECORD_NEVER else None
        if policy == RECORD_ALWAYS:
            self.freeze()

    def freeze(self) -> None:
        """Keep the list as it is now, what was sent: the caller may append to it while a stream runs."""
        if isinstance(self.messages, list):
            self.messages = tuple(self.messages)

    def failed(self, span: Span, exc: BaseException, partial: Any) -> None:
        """The conversation, then the failure: the exception is the span's last event, as on a run.

        A span that recorded messages is a run to its readers, so its status carries the user-facing
        message (`format_error_message`) as a run's does; the exception event keeps the raw text.
        """
        settings = resolve_settings()
        if not self._record(span, settings, partial):
            record_failure(span, exc, settings.redact, max_bytes=settings.max_message_bytes)
            return
        message = CANCELLED_MESSAGE if is_cancellation(exc) else format_error_message(exc, redact=settings.redact)
        record_failure(span, exc, settings.redact, message, max_bytes=settings.max_message_bytes)
        masked = masked_count(settings.redact)  # the run's total: messages and exception text
        if masked is not None:
            span.set_attribute(wire.ATTR_REDACTION_MASKED, masked)

    def answered(self, span: Span, answer: Any) -> None:
        """Only with `RECORD_ALWAYS`: the request and the answer, as a run would have them."""
        if self.policy == RECORD_ALWAYS:
            self._record(span, resolve_settings(), answer)

    @guarded(False)
    def _record(self, span: Span, settings: Settings, answer: Any) -> bool:
        """The messages (and ``answer`` unless None) as a run's list events, and the run's marks.

        False when nothing was recorded: nothing to record, or kiln-otel failed (the failure is then
        recorded as if the call had no messages, and the span still ends).
        """
        if self.messages is None or not span.is_recording():
            return False
        items = list(_as_messages(self.messages))
        if answer is not None:
            items.append(answer)
        if not items:
            return False
        Recorder(span, self.tracer, settings, _identity(span)).record_all(items)
        span.set_attribute(wire.ATTR_SCHEMA_VERSION, wire.SCHEMA_VERSION)
        return True


def _identity(span: Span) -> dict[str, AttributeValue]:
    """What segment spans repeat (as a run's do): the chat span's parent, so nesting survives a lost span."""
    parent = getattr(span, "parent", None)
    if parent is not None and parent.is_valid:
        return {wire.ATTR_RUN_PARENT_SPAN_ID: trace.format_span_id(parent.span_id)}
    return {}
