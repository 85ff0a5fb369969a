"""Settings precedence: argument > environment > default; bad environment values warn and fall back."""

from __future__ import annotations

import logging

import pytest

from kiln_otel import config


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (config.ENV_CAPTURE_CONTENT, config.ENV_MAX_MESSAGE_BYTES, config.ENV_MAX_SPAN_BYTES):
        monkeypatch.delenv(name, raising=False)
    settings = config.resolve_settings()
    assert settings.capture_content is True
    assert settings.max_message_bytes == config.DEFAULT_MAX_MESSAGE_BYTES
    assert settings.max_span_bytes == config.DEFAULT_MAX_SPAN_BYTES
    assert settings.redact is not None


def test_environment_then_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_MAX_MESSAGE_BYTES, "2048")
    monkeypatch.setenv(config.ENV_MAX_SPAN_BYTES, "4096")
    assert config.resolve_settings().max_message_bytes == 2048
    assert config.resolve_settings().max_span_bytes == 4096
    assert config.resolve_settings(max_message_bytes=3000).max_message_bytes == 3000


def test_span_budget_never_below_message_budget() -> None:
    assert config.resolve_settings(max_message_bytes=10_000, max_span_bytes=2_000).max_span_bytes == 10_000


@pytest.mark.parametrize(
    ("name", "field", "default", "value"),
    [
        *[
            (config.ENV_MAX_MESSAGE_BYTES, "max_message_bytes", config.DEFAULT_MAX_MESSAGE_BYTES, v)
            for v in ("lots", "-5", "10")
        ],
        *[
            (config.ENV_LIVE_EXPORT_DELAY, "live_export_delay", config.DEFAULT_LIVE_EXPORT_DELAY_SECONDS, v)
            for v in ("soon", "-1", "inf", "nan")
        ],
    ],
)
def test_bad_environment_values_warn_once_and_fall_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, field: str, default: float, value: str
) -> None:
    config._warned.clear()
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        assert getattr(config.resolve_settings(), field) == default
        assert getattr(config.resolve_settings(), field) == default
    assert len([r for r in caplog.records if name in r.getMessage()]) == 1


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        config.resolve_settings(max_message_bytes=10)
    with pytest.raises(TypeError, match="redact"):
        config.resolve_settings(redact=42)  # type: ignore[arg-type]


def test_redaction_off_and_custom() -> None:
    assert config.resolve_settings(redact=None).redact is None
    hook = str.upper
    assert config.resolve_settings(redact=hook).redact is hook


def test_live_export_delay_argument_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_LIVE_EXPORT_DELAY, raising=False)
    assert config.resolve_settings().live_export_delay == config.DEFAULT_LIVE_EXPORT_DELAY_SECONDS == 1.0
    monkeypatch.setenv(config.ENV_LIVE_EXPORT_DELAY, "0.25")
    assert config.resolve_settings().live_export_delay == 0.25
    assert config.resolve_settings(live_export_delay=0).live_export_delay == 0.0


@pytest.mark.parametrize("value", [-0.5, float("inf"), float("nan")])
def test_a_bad_live_export_delay_argument_raises(value: float) -> None:
    with pytest.raises(ValueError, match="live_export_delay"):
        config.resolve_settings(live_export_delay=value)
