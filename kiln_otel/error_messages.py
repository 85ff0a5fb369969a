"""What to tell a user when a run fails: Kiln's table, extended to the cases Kiln left generic.

Classes are matched by name along the exception's MRO (most specific first), restricted to the
litellm and openai modules, so this works without importing litellm and keeps working when litellm
moves a class between its modules. Provider text is only ever shown after redaction, and redacted
before it is cut (a cut can leave half a key no pattern recognises): litellm puts the request
(messages, api_base, sometimes keys) into its exception text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kiln_otel._guard import report_internal_error
from kiln_otel.bounded import bound_text
from kiln_otel.errors import KilnRunError
from kiln_otel.redaction import RedactHook, RedactSetting, resolve_redactor

__all__ = ["GENERIC_MESSAGE", "MAX_DESCRIPTION_BYTES", "format_error_message", "safe_text"]

GENERIC_MESSAGE = "An unexpected error occurred."
MAX_DESCRIPTION_BYTES = 2048
"""The user-facing message (and a span's status description) is cut to this: it is a summary."""
_PROVIDER_TEXT_LIMIT = 300
_UNAVAILABLE = "The model provider is currently unavailable. Try again in a moment."
_CONNECTION = "Could not connect to the model provider. Check your network connection."
_TIMEOUT = "The model provider did not respond in time. Try again, or allow a longer timeout."
_RUN_TIMEOUT = "A step of the run did not finish in time. Try again, or allow a longer timeout."
"""A bare ``TimeoutError`` nothing attributes: litellm reports its own timeouts as its ``Timeout``."""
_TOOL_TIMEOUT = "The tool {tool!r} did not finish in time. Try again, or allow the tool a longer timeout."
_TOOL_FAILED = "The tool {tool!r} failed: {text}"
_TOOL_UNEXPECTED = "The tool {tool!r} failed with an unexpected error ({kind})."

_Rule = Callable[[BaseException, str], str]

_PROVIDER_RULES: dict[str, _Rule] = {
    "MidStreamFallbackError": lambda e, t: "The model's response stream failed part-way through. Try again.",
    "ContextWindowExceededError": lambda e, t: (
        "The conversation is too long for the model's context window. "
        "Shorten the input or use a model with a larger context window."
    ),
    "ContentPolicyViolationError": lambda e, t: "The model provider refused the request under its content policy.",
    "RateLimitError": lambda e, t: "Rate limit exceeded. Wait a moment and try again.",
    "AuthenticationError": lambda e, t: "Authentication with the model provider failed. Check your API key.",
    "PermissionDeniedError": lambda e, t: (
        "The model provider denied access to this model. Check your API key's permissions."
    ),
    "Timeout": lambda e, t: _TIMEOUT,
    "APITimeoutError": lambda e, t: _TIMEOUT,
    "APIConnectionError": lambda e, t: _CONNECTION,
    "ServiceUnavailableError": lambda e, t: _UNAVAILABLE,
    "BadGatewayError": lambda e, t: _UNAVAILABLE,
    # litellm reports a refused connection as InternalServerError("Connection error.").
    "InternalServerError": lambda e, t: _CONNECTION if "connection error" in t.lower() else _UNAVAILABLE,
    "JSONSchemaValidationError": lambda e, t: "The model's output didn't match the expected format.",
    "NotFoundError": lambda e, t: f"The model or endpoint was not found. Check the model name. ({t})",
    "UnprocessableEntityError": lambda e, t: f"The model provider rejected the request: {t}",
    "BadRequestError": lambda e, t: f"The model provider rejected the request: {t}",
}
_PROVIDER_MODULES = ("litellm", "openai")
_PROVIDER_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+Exception\s+-\s+)?")


def safe_text(exc: BaseException) -> str:
    """``str(exc)`` that cannot fail: some exceptions' ``__str__`` raises or returns a non-string."""
    try:
        text = str(exc)
    except Exception:
        return GENERIC_MESSAGE
    if not isinstance(text, str):
        return GENERIC_MESSAGE
    return text or type(exc).__name__


def _provider_text(exc: BaseException, redact: RedactHook | None) -> str:
    text = _PROVIDER_PREFIX.sub("", safe_text(exc).strip(), count=1)
    return bound_text(text, _PROVIDER_TEXT_LIMIT, redact)[0]


def _builtin_message(cls: type, exc: BaseException) -> str | None:
    if cls is TimeoutError:
        return _RUN_TIMEOUT
    if cls is RuntimeError:
        text = safe_text(exc)
        if text.startswith("Too many turns"):
            return "The run exceeded the maximum number of turns."
        if text.startswith("Too many tool calls"):
            return "The run exceeded the maximum number of tool calls in one turn."
        return text
    if cls is ValueError:
        return safe_text(exc)
    return None


def _tool_message(exc: BaseException, tool: str) -> str:
    """A tool's exception, named as the tool's: its own text for the kinds Kiln shows (ValueError,
    RuntimeError), never a model provider's wording."""
    if isinstance(exc, TimeoutError):
        return _TOOL_TIMEOUT.format(tool=tool)
    if isinstance(exc, (ValueError, RuntimeError)):
        text = safe_text(exc)
        return text if tool in text else _TOOL_FAILED.format(tool=tool, text=text)
    return _TOOL_UNEXPECTED.format(tool=tool, kind=type(exc).__name__)


def _message(exc: BaseException, redact: RedactHook | None, tool: str | None) -> str:
    if isinstance(exc, KilnRunError):
        return exc.message
    if tool is not None:
        return _tool_message(exc, tool)
    for cls in type(exc).__mro__:
        rule = _PROVIDER_RULES.get(cls.__name__)
        if rule is not None and cls.__module__.startswith(_PROVIDER_MODULES):
            return rule(exc, _provider_text(exc, redact))
        builtin = _builtin_message(cls, exc)
        if builtin is not None:
            return builtin
    return GENERIC_MESSAGE


def format_error_message(exc: BaseException, *, redact: RedactSetting = "default", tool: str | None = None) -> str:
    """The user-facing message for a failed run; never raises, never shows an unredacted secret.

    ``tool``: the name of the tool whose call raised ``exc`` (a run learns it from the tool's span),
    so the message blames the tool, not the model provider. At most `MAX_DESCRIPTION_BYTES`: a 3 MB
    exception message is cut (after redaction), marked.
    """
    hook = resolve_redactor(redact)
    try:
        return bound_text(_message(exc, hook, tool), MAX_DESCRIPTION_BYTES, hook)[0]
    except Exception as internal:
        report_internal_error("format_error_message", internal)
        return GENERIC_MESSAGE
