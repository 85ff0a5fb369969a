"""A litellm call outside any traced_run keeps its conversation on its chat span when it fails.

The zero-code route (``opentelemetry-instrument``, the LiteLLMInstrumentor and no kiln-otel code):
a failed call's span records the messages it was sent (and a broken stream's partial answer) as a
run's list events, so ``reconstruct_error`` rebuilds the payload from that span alone. Inside a run
nothing changes, and a successful call records no content unless asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import litellm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litellm import exceptions as lx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from kiln_otel import KilnRunError, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel import _flusher as flusher_module
from kiln_otel import config as kiln_config
from kiln_otel._guard import set_strict
from kiln_otel.encoding import to_jsonable
from kiln_otel.errors import NotKilnTelemetryError, ReconstructionError
from kiln_otel.litellm import LiteLLMInstrumentor, run_agent, traced_completion
from kiln_otel.litellm import call_messages as call_messages_module
from kiln_otel.payload import trace_as_json_data
from kiln_otel.testing import Fault, ToolCall, Turn
from tests.conftest import Tracing
from tests.test_litellm_completion import PLANTED_KEY, USER, Serve, call_kwargs, exported_text, serve
from tests.test_messages_replay import MESSAGE

__all__ = ["serve"]  # the fixture, imported so pytest finds it here

SYSTEM = {"role": "system", "content": "You plan trips."}
TEXT = "The scripted model starts a long answer about Paris and never gets to finish it."
MASK = "[REDACTED:openai_key]"
ENVIRONMENT = (
    kiln_config.ENV_RECORD_CALL_MESSAGES,
    kiln_config.ENV_CAPTURE_CONTENT,
    kiln_config.ENV_MAX_MESSAGE_BYTES,
    kiln_config.ENV_MAX_SPAN_BYTES,
)

Instrument = Callable[..., None]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def instrument(tracing: Tracing) -> Iterator[Instrument]:
    """``instrument(**kwargs)``: the LiteLLMInstrumentor on the test's provider, removed at the end."""
    instrumentor = LiteLLMInstrumentor()

    def start(**kwargs: Any) -> None:
        instrumentor.instrument(tracer_provider=tracing.provider, **kwargs)

    yield start
    instrumentor.uninstrument()


def conversation() -> list[dict[str, Any]]:
    return [
        SYSTEM,
        {"role": "user", "content": f"My key is {PLANTED_KEY}. Plan a weekend in Paris."},
        {"role": "assistant", "content": "Which month?"},
        {"role": "user", "content": "May."},
    ]


def redacted(messages: list[Any]) -> list[Any]:
    """What a reader must get back: the messages as JSON data, the planted key masked, nothing else touched."""
    return json.loads(json.dumps([to_jsonable(m) for m in messages]).replace(PLANTED_KEY, MASK))


def chat_spans(tracing: Tracing) -> list[ReadableSpan]:
    return [s for s in tracing.spans() if s.name.startswith("chat")]


def trace_id(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def event_names(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


def message_events(spans: Any) -> list[Any]:
    return [e for s in spans for e in s.events if e.name.startswith(wire.EVENT_MESSAGE_PREFIX)]


def assert_records_nothing(span: ReadableSpan) -> None:
    attributes = dict(span.attributes or {})
    assert wire.ATTR_SCHEMA_VERSION not in attributes
    assert not [key for key in attributes if key.startswith("kiln_otel.messages")]
    assert not message_events([span])


# --------------------------------------------------------------------------------------------------
# Failed calls: sync, async, streamed, cut


def test_a_failed_sync_call_records_what_it_was_sent_and_rebuilds(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    sent = conversation()
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=sent, **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    names = event_names(chat)
    assert names == [
        "kiln_otel.message.system",
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
        "kiln_otel.message.user",
        "exception",
    ]
    assert [e.attributes[wire.ATTR_EVENT_SEQ] for e in chat.events[:-1]] == [0, 1, 2, 3]  # type: ignore[index]
    attributes = dict(chat.attributes or {})
    assert attributes[wire.ATTR_SCHEMA_VERSION] == wire.SCHEMA_VERSION
    assert attributes[wire.ATTR_MESSAGES_COUNT] == 4
    assert attributes[wire.ATTR_MESSAGES_OPS] == 4
    assert attributes[wire.ATTR_REDACTION_MASKED] >= 1
    assert chat.status.description == "Rate limit exceeded. Wait a moment and try again."
    assert PLANTED_KEY not in exported_text(tracing.spans())

    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace == redacted(sent)
    assert payload.error_type == "RateLimitError"
    assert payload.message == chat.status.description
    assert payload.span_id == f"{chat.context.span_id:016x}"
    assert payload.trace_complete


def test_a_failed_call_leaves_nothing_for_the_live_export_thread(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its messages are complete when it fails and go out with its span: no wake-up is asked for."""
    asked: list[object] = []
    monkeypatch.setattr(flusher_module, "schedule", lambda deadline, target: asked.append(target))
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT), Turn.fault(Fault.RATE_LIMIT))
    for _ in range(2):
        with pytest.raises(lx.RateLimitError):
            litellm.completion(messages=conversation(), **call_kwargs(server))
    assert [len(event_names(chat)) for chat in chat_spans(tracing)] == [5, 5]
    assert asked == []
    with traced_run("control", tracer_provider=tracing.provider) as run:  # a run does ask, once
        run.messages.append(SYSTEM)
    assert len(asked) == 1


def test_a_failed_async_call_records_what_it_was_sent(tracing: Tracing, serve: Serve, instrument: Instrument) -> None:
    instrument()
    server = serve(Turn.fault(Fault.SERVICE_UNAVAILABLE))
    sent = conversation()
    with pytest.raises(lx.ServiceUnavailableError):
        asyncio.run(litellm.acompletion(messages=sent, **call_kwargs(server)))
    (chat,) = chat_spans(tracing)
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace == redacted(sent)
    assert payload.error_type == "ServiceUnavailableError"


def test_a_streamed_call_refused_before_its_first_chunk_records_what_it_was_sent(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    sent = conversation()
    with pytest.raises(lx.RateLimitError):
        for _ in litellm.completion(messages=sent, stream=True, **call_kwargs(server)):
            pass
    (chat,) = chat_spans(tracing)
    assert reconstruct_error(tracing.spans(), trace_id(chat)).trace == redacted(sent)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("fault", [Fault.STREAM_CUT, Fault.STREAM_ERROR])
def test_a_stream_broken_part_way_records_the_request_and_the_partial_answer(
    tracing: Tracing, serve: Serve, instrument: Instrument, mode: str, fault: Fault
) -> None:
    instrument()
    server = serve(Turn.fault(fault, content=TEXT))
    sent = conversation()
    received: list[str] = []

    async def stream_async() -> None:
        async for chunk in await litellm.acompletion(messages=sent, stream=True, **call_kwargs(server)):
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(lx.MidStreamFallbackError) as caught:
        if mode == "async":
            asyncio.run(stream_async())
        else:
            for chunk in litellm.completion(messages=sent, stream=True, **call_kwargs(server)):
                received.append(chunk.choices[0].delta.content or "")
    partial_text = "".join(received)
    assert 0 < len(partial_text) < len(TEXT)
    assert caught.value.generated_content == partial_text

    (chat,) = chat_spans(tracing)
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.error_type == "MidStreamFallbackError"
    assert payload.message == "The model's response stream failed part-way through. Try again."
    assert payload.trace is not None
    assert payload.trace[:-1] == redacted(sent)
    partial = payload.trace[-1]
    assert partial["role"] == "assistant"
    assert partial["content"] == partial_text
    assert partial[wire.PARTIAL_MESSAGE_KEY] is True
    assert payload.trace_complete


def test_the_stream_records_the_list_it_was_sent_not_what_the_caller_appended_since(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.fault(Fault.STREAM_CUT, content=TEXT))
    sent = conversation()
    expected = redacted(sent)
    with pytest.raises(lx.MidStreamFallbackError):
        for chunk in litellm.completion(messages=sent, stream=True, **call_kwargs(server)):
            sent.append({"role": "assistant", "content": chunk.choices[0].delta.content})  # a UI's placeholder
    (chat,) = chat_spans(tracing)
    rebuilt = reconstruct_trace(tracing.spans(), trace_id=trace_id(chat))
    assert rebuilt[:-1] == expected
    assert rebuilt[-1][wire.PARTIAL_MESSAGE_KEY] is True


def test_pydantic_messages_and_positional_arguments_are_recorded_as_the_run_would(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.text("Which month?"), Turn.fault(Fault.RATE_LIMIT))
    kwargs = call_kwargs(server)
    model = kwargs.pop("model")
    sent: list[Any] = [SYSTEM, USER]
    answer = litellm.completion(model, sent, **kwargs).choices[0].message  # a litellm Message object
    sent += [answer, {"role": "user", "content": "May."}]
    with pytest.raises(lx.RateLimitError):
        litellm.completion(model, sent, **kwargs)
    failed = chat_spans(tracing)[-1]
    assert reconstruct_error(tracing.spans(), trace_id(failed)).trace == redacted(sent)


# --------------------------------------------------------------------------------------------------
# The same wire contract as a run: budgets, segments, capture switch


def test_a_history_longer_than_the_event_limit_is_split_into_segments_and_rebuilds_whole(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    sent: list[Any] = [SYSTEM]
    for i in range(150):
        sent += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=sent, **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    segments = [s for s in tracing.spans() if wire.ATTR_SEGMENT_INDEX in (s.attributes or {})]
    assert len(segments) >= 2  # 301 messages: no span holds more than the SDK's 128 events
    assert all(s.parent is not None and s.parent.span_id == chat.context.span_id for s in segments)
    assert all(len(s.events) <= 128 and s.dropped_events == 0 for s in (chat, *segments))
    assert dict(chat.attributes or {})[wire.ATTR_SEGMENTS] == len(segments)
    assert event_names(chat)[-1] == "exception"
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace == redacted(sent)
    assert payload.trace_complete


def test_the_per_message_and_per_span_budgets_apply(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kiln_config.ENV_MAX_MESSAGE_BYTES, "2048")
    monkeypatch.setenv(kiln_config.ENV_MAX_SPAN_BYTES, "4096")
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    sent = [SYSTEM, {"role": "user", "content": "x" * 20_000}] + [
        {"role": "user", "content": f"{i} " + "y" * 1500} for i in range(6)
    ]
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=sent, **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    segments = [s for s in tracing.spans() if wire.ATTR_SEGMENT_INDEX in (s.attributes or {})]
    assert segments  # 8 messages, far below the event limit, still split by bytes
    for span in (chat, *segments):
        recorded = sum(len(str((e.attributes or {}).get(wire.ATTR_MESSAGE_JSON, ""))) for e in span.events)
        assert recorded <= 4096
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace == trace_as_json_data(sent, "default", 2048)
    assert payload.trace[1]["_kiln_otel"]["truncated"] is True  # type: ignore[index]
    assert not payload.trace_complete
    assert dict(chat.attributes or {})[wire.ATTR_MESSAGES_TRUNCATED] == 1


def test_with_capture_off_only_the_structure_is_recorded(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kiln_config.ENV_CAPTURE_CONTENT, "NO_CONTENT")
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    sent = conversation()
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=sent, **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    events = message_events([chat])
    assert len(events) == 4
    assert all(e.attributes[wire.ATTR_MESSAGE_CAPTURED] is False for e in events)
    assert all(wire.ATTR_MESSAGE_JSON not in e.attributes for e in events)
    assert "Paris" not in exported_text(tracing.spans())
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace is not None
    assert [m["role"] for m in payload.trace] == ["system", "user", "assistant", "user"]
    assert all(m["content"] == wire.NOT_CAPTURED for m in payload.trace)
    assert not payload.trace_complete


@settings(max_examples=40)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=300))
def test_any_history_of_a_failed_call_rebuilds_to_what_it_was_sent(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch, messages: list[Any]
) -> None:
    planted = lx.RateLimitError("Rate limit reached.", llm_provider="openai", model="scripted")

    def fake_completion(**kwargs: Any) -> Any:
        raise planted

    tracing.exporter.clear()
    monkeypatch.setattr(litellm, "completion", fake_completion)
    instrumentor = LiteLLMInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider)
    try:
        with pytest.raises(lx.RateLimitError) as caught:
            litellm.completion(model="openai/scripted", messages=messages)
    finally:
        instrumentor.uninstrument()
    assert caught.value is planted
    (chat,) = chat_spans(tracing)
    payload = reconstruct_error(tracing.spans(), trace_id(chat))
    assert payload.trace == trace_as_json_data(messages, "default", kiln_config.DEFAULT_MAX_MESSAGE_BYTES)
    assert all(s.dropped_events == 0 for s in tracing.spans())


# --------------------------------------------------------------------------------------------------
# Inside a run nothing changes; outside one, every entry point behaves alike


def test_inside_a_run_the_chat_span_records_no_message_and_nothing_twice(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.text("Which month?"), Turn.fault(Fault.STREAM_CUT, content=TEXT))
    with pytest.raises(KilnRunError) as caught, traced_run("inside", tracer_provider=tracing.provider) as run:
        run.messages.extend(conversation()[:2])
        answer = litellm.completion(messages=list(run.messages), **call_kwargs(server))
        run.messages.append(answer.choices[0].message)
        for _ in litellm.completion(messages=list(run.messages), stream=True, **call_kwargs(server)):
            pass
    answered, cut = chat_spans(tracing)
    assert_records_nothing(answered)
    assert_records_nothing(cut)
    assert event_names(cut) == ["exception"]
    assert cut.status.description != "The model's response stream failed part-way through. Try again."
    assert len(message_events(tracing.spans())) == len(run.messages) == 3
    rebuilt = reconstruct_error(tracing.spans(), caught.value.trace_id)
    assert rebuilt == caught.value.to_error_with_trace()
    assert rebuilt.span_id == run.span_id


def test_traced_completion_outside_a_run_records_the_request_and_the_partial_once(
    tracing: Tracing, serve: Serve
) -> None:
    server = serve(Turn.fault(Fault.STREAM_CUT, content=TEXT))
    messages = conversation()
    stream = traced_completion(messages, tracer_provider=tracing.provider, stream=True, **call_kwargs(server))
    with pytest.raises(lx.MidStreamFallbackError):
        for _ in stream:
            pass
    assert messages[-1][wire.PARTIAL_MESSAGE_KEY] is True  # the caller's list got it, as before
    (chat,) = chat_spans(tracing)
    assert reconstruct_error(tracing.spans(), trace_id(chat)).trace == redacted(messages)


def test_run_agent_outside_a_run_leaves_the_failed_turns_request_on_its_chat_span(
    tracing: Tracing, serve: Serve
) -> None:
    server = serve(Turn.tool_calls([ToolCall("lookup", {"q": "Paris"}, id="call_1")]), Turn.fault(Fault.RATE_LIMIT))
    messages: list[Any] = [SYSTEM, USER]
    kwargs = call_kwargs(server)
    with pytest.raises(lx.RateLimitError):
        asyncio.run(
            run_agent(
                kwargs.pop("model"),
                messages,
                tools=None,
                tool_handlers={"lookup": lambda q: f"found {q}"},
                tracer_provider=tracing.provider,
                **kwargs,
            )
        )
    first, failed = chat_spans(tracing)
    assert_records_nothing(first)
    payload = reconstruct_error(tracing.spans(), trace_id(failed))
    assert payload.trace == redacted(messages)
    assert [m["role"] for m in payload.trace or ()] == ["system", "user", "assistant", "tool"]


# --------------------------------------------------------------------------------------------------
# Successful calls: nothing by default, everything on request


def test_a_successful_call_records_no_content_by_default(
    tracing: Tracing, serve: Serve, instrument: Instrument
) -> None:
    instrument()
    server = serve(Turn.text("Sunny."), Turn.text("Sunny and warm."))
    litellm.completion(messages=conversation(), **call_kwargs(server))
    list(litellm.completion(messages=conversation(), stream=True, **call_kwargs(server)))
    for chat in chat_spans(tracing):
        assert_records_nothing(chat)
        assert chat.events == ()
        with pytest.raises(NotKilnTelemetryError, match="KILN_OTEL_RECORD_CALL_MESSAGES=always"):
            reconstruct_trace(tracing.spans(), trace_id=trace_id(chat))
    assert "Paris" not in exported_text(tracing.spans())


@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_recording_every_call_is_opt_in(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv(kiln_config.ENV_RECORD_CALL_MESSAGES, "Always")
        instrument()
    else:
        instrument(record_call_messages="always")
    server = serve(Turn.text("Which month?"), Turn.text("May it is."))
    sent = conversation()[:2]
    answer = litellm.completion(messages=sent, **call_kwargs(server)).choices[0].message
    streamed = litellm.completion(messages=[*sent, answer], stream=True, **call_kwargs(server))
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "May it is."
    first, second = chat_spans(tracing)
    assert first.status.status_code is StatusCode.UNSET
    rebuilt = reconstruct_trace(tracing.spans(), trace_id=trace_id(first))
    assert rebuilt == redacted([*sent, answer])
    assert rebuilt.complete
    rebuilt = reconstruct_trace(tracing.spans(), trace_id=trace_id(second))
    assert rebuilt[:-1] == redacted([*sent, answer])
    assert rebuilt[-1]["content"] == "May it is."
    with pytest.raises(ReconstructionError, match="did not fail"):
        reconstruct_error(tracing.spans(), trace_id(first))


def test_the_kwarg_beats_the_environment_and_never_records_nothing(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kiln_config.ENV_RECORD_CALL_MESSAGES, "always")
    instrument(record_call_messages="never")
    server = serve(Turn.text("Sunny."), Turn.fault(Fault.RATE_LIMIT))
    litellm.completion(messages=conversation(), **call_kwargs(server))
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=conversation(), **call_kwargs(server))
    answered, failed = chat_spans(tracing)
    assert_records_nothing(answered)
    assert_records_nothing(failed)
    assert event_names(failed) == ["exception"]
    assert "Rate limit reached" in str(failed.status.description)  # the raw text, as before


def test_a_value_not_understood_is_refused_as_an_argument_and_warned_about_in_the_environment(
    tracing: Tracing,
    serve: Serve,
    instrument: Instrument,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = litellm.completion
    with pytest.raises(ValueError, match="record_call_messages must be one of on_failure, always, never"):
        instrument(record_call_messages="sometimes")
    assert litellm.completion is original
    monkeypatch.setenv(kiln_config.ENV_RECORD_CALL_MESSAGES, "sometimes")
    monkeypatch.setattr(kiln_config, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="kiln_otel"):
        instrument()
    assert "KILN_OTEL_RECORD_CALL_MESSAGES" in caplog.text
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=conversation(), **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    assert reconstruct_error(tracing.spans(), trace_id(chat)).trace == redacted(conversation())


def test_if_recording_the_messages_fails_the_callers_error_and_the_span_are_unaffected(
    tracing: Tracing, serve: Serve, instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    class BrokenRecorder:
        def __init__(self, *args: Any) -> None:
            raise RuntimeError("kiln-otel bug")

    monkeypatch.setattr(call_messages_module, "Recorder", BrokenRecorder)
    set_strict(False)  # as in an app: our bug is logged, the user's call is not affected
    instrument()
    server = serve(Turn.fault(Fault.RATE_LIMIT))
    with pytest.raises(lx.RateLimitError):
        litellm.completion(messages=conversation(), **call_kwargs(server))
    (chat,) = chat_spans(tracing)
    assert chat.status.status_code is StatusCode.ERROR
    assert event_names(chat) == ["exception"]
    assert wire.ATTR_SCHEMA_VERSION not in (chat.attributes or {})
