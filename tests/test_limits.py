"""Nothing silently lost: long runs, huge messages, capture off, secrets, and odd content."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from kiln_otel import KilnRunError, reconstruct_error, reconstruct_trace, traced_run
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.otlp_json import encode_otlp_json
from tests.conftest import Tracing

GRPC_LIMIT = 4 * 1024 * 1024


def conversation(n: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are the system prompt, keep me."}]
    for i in range(1, n):
        if i % 3 == 1:
            messages.append({"role": "user", "content": f"question {i} — ünïcödé ✓"})
        elif i % 3 == 2:
            call = {"id": f"call_{i}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": f"call_{i - 1}", "content": f"result {i}"})
    return messages


def test_ten_thousand_messages_reconstruct_completely_under_default_limits(tracing: Tracing) -> None:
    messages = conversation(10_000)
    with pytest.raises(KilnRunError) as caught, traced_run("long", tracer_provider=tracing.provider) as run:
        for message in messages:
            run.messages.append(message)
        raise ValueError("failed at the end")
    spans = tracing.spans()
    assert all(span.dropped_events == 0 for span in spans)
    assert len(spans) > 10_000 // 128
    for source in (spans, encode_spans(spans).SerializeToString(), json.dumps(encode_otlp_json(spans))):
        rebuilt = reconstruct_trace(source)
        assert rebuilt.complete, rebuilt.issues
        assert rebuilt == messages
    assert reconstruct_error(spans) == caught.value.to_error_with_trace()
    assert max(len(encode_spans([span]).SerializeToString()) for span in spans) < GRPC_LIMIT / 4


def test_huge_tool_result_is_truncated_valid_and_marked(tracing: Tracing) -> None:
    huge = {"role": "tool", "tool_call_id": "call_9", "content": "x" * 5_000_000}
    with traced_run("huge", tracer_provider=tracing.provider) as run:
        run.messages.extend([{"role": "user", "content": "go"}, huge, {"role": "assistant", "content": "done"}])
    spans = tracing.spans()
    assert max(len(encode_spans([span]).SerializeToString()) for span in spans) < GRPC_LIMIT / 4
    event = next(e for s in spans for e in s.events if e.name == "kiln_otel.message.tool")
    assert event.attributes is not None
    recorded = str(event.attributes["kiln_otel.message.json"])
    assert len(recorded.encode()) <= DEFAULT_MAX_MESSAGE_BYTES
    assert json.loads(recorded)["tool_call_id"] == "call_9"
    assert event.attributes["kiln_otel.message.truncated"] is True
    assert event.attributes["kiln_otel.message.size"] == len(json.dumps(huge, separators=(",", ":")))
    rebuilt = reconstruct_trace(spans)
    assert not rebuilt.complete
    assert any("truncated" in issue for issue in rebuilt.issues)
    assert rebuilt[1]["_kiln_otel"] == {
        "truncated": True,
        "original_size": event.attributes["kiln_otel.message.size"],
    }
    assert rebuilt[1]["content"].startswith("xxx")
    assert rebuilt[0] == {"role": "user", "content": "go"}
    assert rebuilt[2] == {"role": "assistant", "content": "done"}


def test_span_byte_budget_opens_segments(tracing: Tracing) -> None:
    big = [{"role": "user", "content": "y" * 60_000} for _ in range(30)]
    with traced_run("bytes", tracer_provider=tracing.provider) as run:
        run.messages.extend(big)
    spans = tracing.spans()
    assert len(spans) >= 4
    assert max(len(encode_spans([span]).SerializeToString()) for span in spans) < 600 * 1024
    assert reconstruct_trace(spans) == big


@pytest.mark.parametrize("setting", ["NO_CONTENT", "false", "no_content"])
def test_capture_off_keeps_structure_only(tracing: Tracing, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", setting)
    secret_text = "the patient's private diagnosis"
    messages = conversation(6)
    messages[1]["content"] = secret_text
    with traced_run("private", tracer_provider=tracing.provider) as run:
        run.messages.extend(messages)
    spans = tracing.spans()
    assert secret_text.encode() not in encode_spans(spans).SerializeToString()
    rebuilt = reconstruct_trace(spans)
    assert not rebuilt.complete
    assert [m["role"] for m in rebuilt] == [m["role"] for m in messages]
    assert rebuilt[2]["tool_calls"][0]["id"] == "call_2"
    assert rebuilt[2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert rebuilt[3]["tool_call_id"] == "call_2"
    assert all(m["content"] == "[content not captured]" for m in rebuilt)
    assert all(m["_kiln_otel"]["captured"] is False and m["_kiln_otel"]["size"] > 0 for m in rebuilt)


@pytest.mark.parametrize("setting", ["SPAN_ONLY", "EVENT_ONLY", "span_and_event", "true", "", "garbage"])
def test_capture_on_values(tracing: Tracing, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", setting)
    with traced_run("on", tracer_provider=tracing.provider) as run:
        run.messages.append({"role": "user", "content": "visible"})
    assert reconstruct_trace(tracing.spans()) == [{"role": "user", "content": "visible"}]


def test_argument_beats_environment(tracing: Tracing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "NO_CONTENT")
    with traced_run("arg", tracer_provider=tracing.provider, capture_content=True) as run:
        run.messages.append({"role": "user", "content": "visible"})
    assert reconstruct_trace(tracing.spans()) == [{"role": "user", "content": "visible"}]


SECRETS = [
    "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234",
    "Bearer eyJhbGciOiJIUzI1NiJ9.payload.signature",
    "hunter2-super-secret-value",
]


def test_planted_secrets_absent_from_every_exported_byte(tracing: Tracing) -> None:
    messages = [
        {"role": "user", "content": f"my key is {SECRETS[0]}, please use it"},
        {"role": "assistant", "content": None, "headers": {"Authorization": SECRETS[1]}},
        {"role": "tool", "tool_call_id": "c", "content": json.dumps({"api_key": SECRETS[2]})},
        {"role": "user", "content": "call with api_key=" + SECRETS[2]},
    ]
    with (
        pytest.raises(KilnRunError) as caught,
        traced_run("secrets", tracer_provider=tracing.provider) as run,
    ):
        run.messages.extend(messages)
        raise RuntimeError(f"provider said: invalid key {SECRETS[0]} (Authorization: {SECRETS[1]})")
    spans = tracing.spans()
    exported = [
        encode_spans(spans).SerializeToString().decode("utf-8", "replace"),
        json.dumps(encode_otlp_json(spans), ensure_ascii=False),
        caught.value.to_error_with_trace().model_dump_json(),
        str(caught.value),
    ]
    for blob in exported:
        assert "[REDACTED:" in blob
        for secret in SECRETS:
            assert secret not in blob
            assert secret.split()[-1] not in blob
    assert reconstruct_error(spans) == caught.value.to_error_with_trace()
    assert caught.value.partial_trace == messages  # the in-process list itself is untouched


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def test_content_json_cannot_carry_is_recorded_and_marked(tracing: Tracing) -> None:
    cyclic: dict[str, Any] = {"role": "user", "content": "loop"}
    cyclic["self"] = cyclic
    odd = [
        {"role": "user", "content": b"raw \xff bytes"},
        {"role": "user", "content": "lone \ud800 surrogate"},
        {"role": "user", "content": Opaque()},
        cyclic,
        {"role": "user", "content": datetime.datetime(2026, 1, 2, 3, 4, 5)},
        {"role": "assistant", "content": "nan", "score": math.nan},
        "not even a dict",
        None,
    ]
    with traced_run("odd", tracer_provider=tracing.provider) as run:
        run.messages.extend(odd)
    rebuilt = reconstruct_trace(tracing.spans())
    assert len(rebuilt) == len(odd)
    assert rebuilt[0]["content"] == "raw \\xff bytes"
    assert rebuilt[1]["content"] == "lone \ufffd surrogate"
    assert rebuilt[2]["content"] == "<Opaque thing>"
    assert rebuilt[3]["self"] == "[cycle]"
    assert rebuilt[4]["content"] == "2026-01-02T03:04:05"
    assert math.isnan(rebuilt[5]["score"])
    assert rebuilt[6:] == ["not even a dict", None]
    for index in range(4):
        assert rebuilt[index]["_kiln_otel"] == {"lossy": True}
    assert any("approximated" in issue for issue in rebuilt.issues)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_content_round_trips(tracing: Tracing, content: Any) -> None:
    tracing.exporter.clear()
    message = {"role": "user", "content": content, "unknown_key": content}
    with traced_run("any", tracer_provider=tracing.provider, redact=None) as run:
        run.messages.append(message)
    assert reconstruct_trace(tracing.spans()) == [message]
