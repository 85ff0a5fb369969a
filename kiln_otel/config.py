"""Settings for a traced run: argument > environment variable > default, resolved once per run.

Every environment variable is a documented constant here; a value that does not parse is warned about
(once) and the default is used, as the OpenTelemetry SDK does: a typo in an env var must not stop an app.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from kiln_otel._guard import logger
from kiln_otel.redaction import RedactHook, Redactor, RedactSetting, resolve_redactor

__all__ = [
    "DEFAULT_EXPORT_TIMEOUT_SECONDS",
    "DEFAULT_LIVE_EXPORT_DELAY_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_SPAN_BYTES",
    "ENV_CAPTURE_CONTENT",
    "ENV_LIVE_EXPORT_DELAY",
    "ENV_MAX_MESSAGE_BYTES",
    "ENV_MAX_SPAN_BYTES",
    "ENV_RECORD_CALL_MESSAGES",
    "ENV_TIMEOUT",
    "ENV_TRACES_TIMEOUT",
    "SHUTDOWN_SLACK_SECONDS",
    "Settings",
    "export_timeout",
    "resolve_settings",
]

ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The GenAI instrumentations' switch. Unlike them kiln-otel defaults to capturing: content is its purpose."""
ENV_MAX_MESSAGE_BYTES = "KILN_OTEL_MAX_MESSAGE_BYTES"
ENV_MAX_SPAN_BYTES = "KILN_OTEL_MAX_SPAN_BYTES"
ENV_LIVE_EXPORT_DELAY = "KILN_OTEL_LIVE_EXPORT_DELAY"
"""Seconds a recorded message may wait before it is on an ended (exportable) span."""
ENV_RECORD_CALL_MESSAGES = "KILN_OTEL_RECORD_CALL_MESSAGES"
"""What a litellm call outside any run records of its messages: ``on_failure`` (default), ``always``,
``never`` (read by `kiln_otel.litellm.call_messages`)."""
ENV_TIMEOUT = "OTEL_EXPORTER_OTLP_TIMEOUT"
ENV_TRACES_TIMEOUT = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
"""The exporter's timeout (seconds, as the Python SDK reads it): also what exit and SIGTERM wait for."""

DEFAULT_EXPORT_TIMEOUT_SECONDS = 10.0
"""The SDK's own default, so an app moving to `configure_tracing` keeps its behaviour."""
SHUTDOWN_SLACK_SECONDS = 0.5
"""What a bounded flush or shutdown may add to the export timeout: aborting an export is not instant."""
_SUSPICIOUS_TIMEOUT_SECONDS = 300.0
"""Larger values are probably milliseconds (the OpenTelemetry spec's unit; the Python SDK reads seconds)."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
"""Above this a message's JSON is cut (kept valid, marked): one tool result cannot flood a span."""
DEFAULT_MAX_SPAN_BYTES = 512 * 1024
"""Message bytes per span before a new segment span opens: keeps each span far below OTLP/gRPC's 4 MiB."""
MIN_BUDGET_BYTES = 1024
DEFAULT_LIVE_EXPORT_DELAY_SECONDS = 1.0
"""Short enough that a killed or hung run loses at most about a second of its conversation, long
enough that a run finishing within it (a 10-turn run against a fast model) stays one span."""

_CAPTURE_VALUES = {
    "true": True,
    "span_only": True,
    "event_only": True,
    "span_and_event": True,
    "false": False,
    "no_content": False,
}

_warned: set[str] = set()
_Number = TypeVar("_Number", int, float)
_Choice = TypeVar("_Choice")


@dataclass(frozen=True)
class Settings:
    capture_content: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_span_bytes: int = DEFAULT_MAX_SPAN_BYTES
    redact: RedactHook | None = None
    live_export_delay: float = DEFAULT_LIVE_EXPORT_DELAY_SECONDS


def _warn_once(name: str, value: str, default: object) -> None:
    if name not in _warned:
        _warned.add(name)
        logger.warning("kiln-otel: ignoring %s=%r (not understood); using %r", name, value, default)


def _choice_from_env(name: str, choices: Mapping[str, _Choice], default: _Choice) -> _Choice:
    """A case-insensitive word from ``choices``; unset is ``default``, anything else warns once and is too."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = choices.get(raw.lower())
    if value is None:
        _warn_once(name, raw, default)
        return default
    return value


def _capture_from_env() -> bool:
    return _choice_from_env(ENV_CAPTURE_CONTENT, _CAPTURE_VALUES, True)


def _number_from_env(
    name: str, default: _Number, parse: Callable[[str], _Number], valid: Callable[[_Number], bool]
) -> _Number:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not valid(value):
        _warn_once(name, raw, default)
        return default
    return value


def _bytes_from_env(name: str, default: int) -> int:
    return _number_from_env(name, default, int, lambda value: value >= MIN_BUDGET_BYTES)


def _delay_from_env() -> float:
    return _number_from_env(
        ENV_LIVE_EXPORT_DELAY, DEFAULT_LIVE_EXPORT_DELAY_SECONDS, float, lambda value: 0 <= value < math.inf
    )


def resolve_settings(
    *,
    capture_content: bool | None = None,
    max_message_bytes: int | None = None,
    max_span_bytes: int | None = None,
    redact: RedactSetting = "default",
    live_export_delay: float | None = None,
) -> Settings:
    """The one place precedence is decided, so every entry point (run, litellm, CLI) agrees."""
    for name, budget in (("max_message_bytes", max_message_bytes), ("max_span_bytes", max_span_bytes)):
        if budget is not None and budget < MIN_BUDGET_BYTES:
            raise ValueError(f"{name} must be at least {MIN_BUDGET_BYTES} bytes, got {budget}")
    if live_export_delay is not None and not 0 <= live_export_delay < math.inf:
        raise ValueError(f"live_export_delay must be a finite number of seconds >= 0, got {live_export_delay}")
    message_bytes = max_message_bytes or _bytes_from_env(ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES)
    span_bytes = max_span_bytes or _bytes_from_env(ENV_MAX_SPAN_BYTES, DEFAULT_MAX_SPAN_BYTES)
    hook = resolve_redactor(redact)
    return Settings(
        capture_content=_capture_from_env() if capture_content is None else capture_content,
        max_message_bytes=message_bytes,
        max_span_bytes=max(span_bytes, message_bytes),
        # Each run counts what it masked, even when the app shares one Redactor between runs.
        redact=hook.fork() if isinstance(hook, Redactor) else hook,
        live_export_delay=_delay_from_env() if live_export_delay is None else float(live_export_delay),
    )


def export_timeout() -> float:
    """Seconds one export may take, and so the most `force_flush` or `shutdown` waits (plus slack)."""
    for name in (ENV_TRACES_TIMEOUT, ENV_TIMEOUT):
        if not os.environ.get(name, "").strip():
            continue
        value = _number_from_env(name, DEFAULT_EXPORT_TIMEOUT_SECONDS, float, lambda value: 0 < value < math.inf)
        if value > _SUSPICIOUS_TIMEOUT_SECONDS:
            logger.warning(
                "kiln-otel: %s=%s is read in seconds, as the Python SDK does; process exit may wait that long",
                name,
                value,
            )
        return value
    return DEFAULT_EXPORT_TIMEOUT_SECONDS
