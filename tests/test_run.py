"""traced_run on failure: status, exception event, error.type, payload, pass-through, guarded internals."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from kiln_otel import ErrorWithTrace, KilnRunError, _guard, reconstruct_error, traced_run
from tests.conftest import Tracing

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "Weather in Paris?"}
ASSISTANT = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
}


class ProviderError(Exception):
    pass


def fail_run(tracing: Tracing, exc: BaseException, **options: object) -> KilnRunError:
    with (
        pytest.raises(KilnRunError) as caught,
        traced_run("agent", tracer_provider=tracing.provider, **options) as run,
    ):  # type: ignore[arg-type]
        run.messages.extend([SYSTEM, USER, ASSISTANT])
        raise exc
    return caught.value


def test_success_ends_span_unset_with_totals(tracing: Tracing) -> None:
    with traced_run("agent", conversation_id="conv-1", tracer_provider=tracing.provider) as run:
        run.messages.append(USER)
    span = tracing.span("invoke_agent agent")
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert span.attributes["gen_ai.agent.name"] == "agent"
    assert span.attributes["gen_ai.conversation.id"] == "conv-1"
    assert span.attributes["kiln_otel.messages.count"] == 1


def test_message_events_are_the_sdks_own_events_to_every_reader(tracing: Tracing) -> None:
    """The recorder hands the SDK span events it builds cheaply: they must still be ``Event`` objects
    that each exporter's way of reading them (attributes, ``to_json``, OTLP encoding) sees whole."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import Event

    with traced_run("agent", tracer_provider=tracing.provider) as run:
        run.messages.extend([SYSTEM, USER])
    span = tracing.span("invoke_agent agent")
    first, second = span.events
    assert isinstance(first, Event)
    assert isinstance(second, Event)
    assert (first.name, second.name) == ("kiln_otel.message.system", "kiln_otel.message.user")
    assert first.timestamp <= second.timestamp
    assert first.dropped_attributes == 0
    assert first.attributes["kiln_otel.message.json"] == '{"role":"system","content":"You are terse."}'
    assert json.loads(span.to_json())["events"][1]["attributes"]["kiln_otel.seq"] == 1
    (encoded,) = encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert [e.name for e in encoded.events] == ["kiln_otel.message.system", "kiln_otel.message.user"]
    assert encoded.events[1].time_unix_nano == second.timestamp


def test_failure_marks_span_and_wraps_original(tracing: Tracing) -> None:
    original = ProviderError("upstream exploded")
    err = fail_run(tracing, original)
    assert err.original is original
    assert err.__cause__ is original
    assert err.error_type == "ProviderError"
    assert str(err) == "An unexpected error occurred."
    assert err.partial_trace == [SYSTEM, USER, ASSISTANT]
    span = tracing.span("invoke_agent agent")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "An unexpected error occurred."
    assert span.attributes is not None
    assert span.attributes["error.type"] == "tests.test_run.ProviderError"
    exception = [e for e in span.events if e.name == "exception"]
    assert len(exception) == 1
    assert exception[0].attributes is not None
    assert exception[0].attributes["exception.message"] == "upstream exploded"
    assert "ProviderError" in str(exception[0].attributes["exception.stacktrace"])
    assert err.trace_id == f"{span.context.trace_id:032x}"
    assert err.span_id == f"{span.context.span_id:016x}"


def test_payload_equals_reconstruction(tracing: Tracing) -> None:
    err = fail_run(tracing, ValueError("bad tool arguments"))
    payload = err.to_error_with_trace()
    assert payload == ErrorWithTrace(
        message="bad tool arguments",
        error_type="ValueError",
        trace=[SYSTEM, USER, ASSISTANT],
        trace_id=err.trace_id,
        span_id=err.span_id,
    )
    assert reconstruct_error(tracing.spans()) == payload
    assert set(payload.model_dump()) >= {"message", "error_type", "trace"}


def test_nothing_recorded_gives_null_trace(tracing: Tracing) -> None:
    with pytest.raises(KilnRunError) as caught, traced_run("empty", tracer_provider=tracing.provider):
        raise RuntimeError("Too many turns (max 3)")
    payload = caught.value.to_error_with_trace()
    assert payload.trace is None
    assert payload.message == "The run exceeded the maximum number of turns."
    assert payload.model_dump(mode="json")["trace"] is None
    assert reconstruct_error(tracing.spans()) == payload


def test_kiln_run_error_is_never_wrapped_twice(tracing: Tracing) -> None:
    inner = KilnRunError("inner message", [USER], ValueError("x"))
    with pytest.raises(KilnRunError) as caught, traced_run("outer", tracer_provider=tracing.provider):
        raise inner
    assert caught.value is inner
    span = tracing.span("invoke_agent outer")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "inner message"


def test_nested_runs_pass_the_inner_error_through(tracing: Tracing) -> None:
    original = ProviderError("deep")
    outer_run = traced_run("outer", tracer_provider=tracing.provider)
    with pytest.raises(KilnRunError) as caught, outer_run as outer:
        outer.messages.append(USER)
        with traced_run("inner", tracer_provider=tracing.provider) as inner:
            inner.messages.append(SYSTEM)
            raise original
    assert caught.value.original is original
    assert caught.value.partial_trace == [SYSTEM]
    inner_span = tracing.span("invoke_agent inner")
    outer_span = tracing.span("invoke_agent outer")
    assert inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id
    assert outer_span.attributes is not None
    assert outer_span.attributes["kiln_otel.error.span_id"] == f"{inner_span.context.span_id:016x}"
    # By trace id alone: the payload the app got, the inner run's; each run by its own span id.
    assert reconstruct_error(tracing.spans()) == caught.value.to_error_with_trace()
    assert reconstruct_error(tracing.spans()).trace == [SYSTEM]
    assert reconstruct_error(tracing.spans(), span_id=inner_span.context.span_id).trace == [SYSTEM]
    assert reconstruct_error(tracing.spans(), span_id=outer_span.context.span_id).trace == [USER]


def test_async_with(tracing: Tracing) -> None:
    async def main() -> KilnRunError:
        try:
            async with traced_run("async", tracer_provider=tracing.provider) as run:
                run.messages.append(USER)
                await asyncio.sleep(0)
                raise TimeoutError
        except KilnRunError as err:
            return err
        raise AssertionError("not raised")

    err = asyncio.run(main())
    assert isinstance(err.original, TimeoutError)
    assert reconstruct_error(tracing.spans()) == err.to_error_with_trace()


def test_manual_fail_for_code_that_owns_its_except(tracing: Tracing) -> None:
    run = traced_run("manual", tracer_provider=tracing.provider)
    trace_ref = run.messages
    original = ProviderError("kaput")
    try:
        trace_ref.append(USER)
        raise original
    except ProviderError as exc:
        err = run.fail(exc)
    assert err.original is original
    assert run.fail(original).original is original  # idempotent: span already ended, still a payload
    assert reconstruct_error(tracing.spans()) == err.to_error_with_trace()
    assert len(tracing.spans()) == 1


def assert_cancelled(tracing: Tracing, name: str, error_type: str, trace: list[object]) -> None:
    span = tracing.span(f"invoke_agent {name}")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "The run was cancelled."
    assert span.attributes is not None
    assert span.attributes["error.type"] == error_type
    payload = reconstruct_error(tracing.spans())
    assert (payload.message, payload.error_type, payload.trace) == (
        "The run was cancelled.",
        error_type.rsplit(".", 1)[-1],
        trace,
    )


def test_keyboard_interrupt_is_recorded_as_cancellation_and_propagates(tracing: Tracing) -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught, traced_run("interrupted", tracer_provider=tracing.provider) as run:
        run.messages.append(USER)
        raise interrupt
    assert caught.value is interrupt
    assert_cancelled(tracing, "interrupted", "KeyboardInterrupt", [USER])


def test_cancelled_task_is_recorded_as_cancellation_and_propagates(tracing: Tracing) -> None:
    started = asyncio.Event()

    async def agent() -> None:
        async with traced_run("cancelled", tracer_provider=tracing.provider) as run:
            run.messages.extend([SYSTEM, USER])
            started.set()
            await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(agent())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_cancelled(tracing, "cancelled", "asyncio.exceptions.CancelledError", [SYSTEM, USER])


def test_hand_driven_cancellation_payload_equals_reconstruction(tracing: Tracing) -> None:
    run = traced_run("by hand", tracer_provider=tracing.provider)
    run.messages.append(USER)
    err = run.fail(asyncio.CancelledError())
    assert str(err) == "The run was cancelled."
    assert reconstruct_error(tracing.spans()) == err.to_error_with_trace()


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


def test_exception_whose_str_raises(tracing: Tracing) -> None:
    original = UnprintableError()
    err = fail_run(tracing, original)
    assert err.original is original
    assert str(err) == "An unexpected error occurred."
    assert reconstruct_error(tracing.spans()) == err.to_error_with_trace()


def test_empty_message_exception_uses_class_name(tracing: Tracing) -> None:
    err = fail_run(tracing, ValueError())
    assert str(err) == "ValueError"


def test_internal_failure_never_hides_the_original(tracing: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    """A redaction hook that explodes breaks our recording, never the app's run or its error."""
    _guard.set_strict(False)

    def broken_hook(text: str) -> str:
        raise RuntimeError("hook bug")

    original = ProviderError("real failure")
    with caplog.at_level(logging.DEBUG, logger="kiln_otel"):
        err = fail_run(tracing, original, redact=broken_hook)
    assert err.original is original
    assert err.__cause__ is original
    assert err.partial_trace == [SYSTEM, USER, ASSISTANT]
    assert err.to_error_with_trace().trace is None  # building the trace failed: None, not a crash
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len({r.getMessage() for r in warnings})  # each place logged once
    assert any("internal error" in r.getMessage() for r in warnings)


def test_no_provider_costs_no_recording() -> None:
    with pytest.raises(KilnRunError) as caught, traced_run("unconfigured") as run:
        run.messages.append(USER)
        raise ValueError("x")
    assert caught.value.trace_id is None
    assert caught.value.partial_trace == [USER]
    assert run.messages._recorder is None


def test_raise_fail_keeps_the_original_as_cause_even_when_passing_through(tracing: Tracing) -> None:
    original = ProviderError("root cause")
    inner = traced_run("inner", tracer_provider=tracing.provider)
    outer = traced_run("outer", tracer_provider=tracing.provider)
    with pytest.raises(KilnRunError) as caught:
        try:
            try:
                raise original
            except Exception as exc:
                raise inner.fail(exc)  # noqa: B904 - the cause is set by KilnRunError itself
        except Exception as exc:
            raise outer.fail(exc)  # noqa: B904
    assert caught.value.original is original
    assert caught.value.__cause__ is original
    assert tracing.span("invoke_agent outer").status.status_code is StatusCode.ERROR
