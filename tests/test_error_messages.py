"""format_error_message: Kiln's table, the cases Kiln left generic, and safety of the text itself."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import litellm
import pytest

from kiln_otel import KilnRunError, format_error_message

REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def response(status: int) -> httpx.Response:
    return httpx.Response(status, request=REQUEST)


def provider_error(cls: type[Exception], message: str = "upstream said no", **extra: Any) -> Exception:
    kwargs: dict[str, Any] = {"message": message, "llm_provider": "openai", "model": "gpt-x", **extra}
    try:
        return cls(**kwargs)
    except TypeError:
        kwargs.pop("llm_provider"), kwargs.pop("model")
        return cls(**kwargs)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (provider_error(litellm.RateLimitError), "Rate limit exceeded. Wait a moment and try again."),
        (
            provider_error(litellm.AuthenticationError),
            "Authentication with the model provider failed. Check your API key.",
        ),
        (
            provider_error(litellm.APIConnectionError),
            "Could not connect to the model provider. Check your network connection.",
        ),
        (
            provider_error(litellm.ServiceUnavailableError),
            "The model provider is currently unavailable. Try again in a moment.",
        ),
        (
            provider_error(litellm.InternalServerError),
            "The model provider is currently unavailable. Try again in a moment.",
        ),
        (
            provider_error(litellm.InternalServerError, message="Connection error."),
            "Could not connect to the model provider. Check your network connection.",
        ),
        (
            provider_error(litellm.ContextWindowExceededError),
            "The conversation is too long for the model's context window. "
            "Shorten the input or use a model with a larger context window.",
        ),
        (
            provider_error(litellm.ContentPolicyViolationError),
            "The model provider refused the request under its content policy.",
        ),
        (
            provider_error(litellm.Timeout),
            "The model provider did not respond in time. Try again, or allow a longer timeout.",
        ),
        (RuntimeError("Too many turns (max 5)"), "The run exceeded the maximum number of turns."),
        (
            RuntimeError("Too many tool calls in one turn"),
            "The run exceeded the maximum number of tool calls in one turn.",
        ),
        (RuntimeError("tool exploded"), "tool exploded"),
        (ValueError("bad input"), "bad input"),
        (TimeoutError(), "A step of the run did not finish in time. Try again, or allow a longer timeout."),
        (KeyError("x"), "An unexpected error occurred."),
        (KilnRunError("already friendly", None, KeyError("x")), "already friendly"),
    ],
)
def test_table(exc: BaseException, expected: str) -> None:
    assert format_error_message(exc) == expected


def test_bad_request_and_not_found_show_redacted_provider_text() -> None:
    exc = provider_error(litellm.BadRequestError, message="Invalid 'tools[0]': key sk-proj-ABCDEFGHIJKLMNOPQRSTUV used")
    message = format_error_message(exc)
    assert message.startswith("The model provider rejected the request: ")
    assert "Invalid 'tools[0]'" in message
    assert "sk-proj-ABCDEFGHIJKLMNOPQRSTUV" not in message
    assert "[REDACTED:openai_key]" in message
    not_found = format_error_message(provider_error(litellm.NotFoundError, message="model gpt-9 does not exist"))
    assert not_found.startswith("The model or endpoint was not found.")
    assert "gpt-9" in not_found


def test_mid_stream_failure() -> None:
    from litellm.exceptions import MidStreamFallbackError

    exc = MidStreamFallbackError(
        message="stream cut", model="gpt-x", llm_provider="openai", generated_content="partial"
    )
    assert format_error_message(exc) == "The model's response stream failed part-way through. Try again."


def test_long_provider_text_is_bounded() -> None:
    message = format_error_message(provider_error(litellm.BadRequestError, message="x" * 5000))
    assert len(message) < 400


def test_own_text_is_redacted_too() -> None:
    assert format_error_message(ValueError("api_key=supersecretvalue")) == "api_key=[REDACTED:api_key]"
    assert format_error_message(ValueError("api_key=supersecretvalue"), redact=None) == "api_key=supersecretvalue"


def test_works_without_litellm_installed() -> None:
    """Classes are matched by name, so the table needs no litellm import; simulate its absence."""
    code = (
        "import sys; sys.modules['litellm'] = None\n"
        "from kiln_otel import format_error_message\n"
        "RateLimitError = type('RateLimitError', (Exception,), {'__module__': 'openai'})\n"
        "print(format_error_message(RateLimitError('429')))\n"
        "print(format_error_message(RuntimeError('Too many turns')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == [
        "Rate limit exceeded. Wait a moment and try again.",
        "The run exceeded the maximum number of turns.",
    ]


def test_same_named_class_outside_providers_is_not_trusted() -> None:
    RateLimitError = type("RateLimitError", (Exception,), {"__module__": "myapp.errors"})
    assert format_error_message(RateLimitError("x")) == "An unexpected error occurred."
