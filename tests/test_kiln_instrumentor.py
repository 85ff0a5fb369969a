"""kiln_otel.kiln without Kiln installed: the entry point, the refusal, and `AdapterRun`'s contract.

Kiln itself (its real adapters, error class and server) is exercised in its own venv by
scripts/kiln-tests.sh (tests_kiln/). Here the adapter and the error are stand-ins with exactly the
shape Kiln's have (kiln-compat.md): `AdapterRun` and the payload helpers read them by that shape only.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id

import kiln_otel.kiln as kiln_module
from kiln_otel import _guard, reconstruct_error, wire
from kiln_otel.fastapi import error_response, install_error_handler
from kiln_otel.kiln import AdapterRun, KilnInstrumentor
from kiln_otel.payload import error_with_trace
from tests.conftest import Tracing
from tests.test_fastapi import serve


class KilnShapedRunError(Exception):
    """Kiln's ``kiln_ai.adapters.errors.KilnRunError``: no ``message`` attribute, ``error_type`` set."""

    def __init__(self, message: str, partial_trace: list[Any] | None, original: Exception) -> None:
        super().__init__(message)
        self.partial_trace = partial_trace
        self.original = original
        self.error_type = type(original).__name__


class RateLimitError(Exception):
    pass


class RunConfig:
    model_provider_name = "openai"
    model_name = "gpt_4o_mini"


class Task:
    name = "refunds"


class Adapter:
    task = Task()
    run_config = RunConfig()


KILN_KEYS = {"message", "error_type", "trace"}


def kiln_body(err: KilnShapedRunError) -> dict[str, Any]:
    """What Kiln's handler serves: ``ErrorWithTrace(message=str(exc), error_type, trace).model_dump()``."""
    return {"message": str(err), "error_type": err.error_type, "trace": err.partial_trace}


def failed_run(tracing: Tracing, recorded: list[Any], partial_trace: list[Any] | None) -> KilnShapedRunError:
    run = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    run.messages.extend(recorded)
    err = KilnShapedRunError("Rate limit exceeded. Wait a moment and try again.", partial_trace, RateLimitError("429"))
    run.fail(err)
    return err


# --- installing --------------------------------------------------------------------------------------
def test_entry_point_names_the_instrumentor() -> None:
    found = [ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name == "kiln_kiln_otel"]
    assert [ep.load() for ep in found] == [KilnInstrumentor]


def test_without_kiln_instrument_patches_nothing_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    instrumentor = KilnInstrumentor()
    assert instrumentor.instrument() is None  # BaseInstrumentor's dependency check: kiln-ai is missing
    assert not instrumentor.is_instrumented_by_opentelemetry
    assert "kiln-ai" in caplog.text
    with pytest.raises(ImportError, match=r"pip install kiln-ai"):
        instrumentor.instrument(skip_dep_check=True)
    assert not instrumentor.is_instrumented_by_opentelemetry


# --- AdapterRun ----------------------------------------------------------------------------------------
def test_a_kiln_error_is_recorded_and_left_as_it_is(tracing: Tracing) -> None:
    recorded = [{"role": "system", "content": "Refund double charges."}, {"role": "user", "content": "INV-7"}]
    err = failed_run(tracing, recorded, list(recorded))
    span = tracing.span("invoke_agent refunds")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == str(err)
    assert span.attributes is not None
    assert span.attributes[wire.ATTR_ERROR_MESSAGE] == str(err)  # read like any failed run in Jaeger
    assert span.attributes[wire.ATTR_ERROR_TYPE] == f"{__name__}.RateLimitError"
    assert span.attributes[wire.ATTR_GEN_AI_PROVIDER_NAME] == "openai"
    assert span.attributes[wire.ATTR_GEN_AI_REQUEST_MODEL] == "gpt_4o_mini"
    assert span.context is not None
    assert (err.trace_id, err.span_id) == (  # type: ignore[attr-defined]
        format_trace_id(span.context.trace_id),
        format_span_id(span.context.span_id),
    )
    assert err.__cause__ is None  # nothing of Kiln's error was touched but the two ids
    assert err.partial_trace == recorded
    assert reconstruct_error(tracing.spans()).model_dump(include=KILN_KEYS) == kiln_body(err)


def test_the_list_ends_as_kilns_trace_with_every_message_still_in_the_telemetry(tracing: Tracing) -> None:
    raw_assistant = {"role": "assistant", "content": None, "tool_calls": [], "provider_specific_fields": {}}
    converted = {"role": "assistant", "content": None}
    user = {"role": "user", "content": "INV-7"}
    err = failed_run(tracing, [user, raw_assistant], [user, converted])
    assert reconstruct_error(tracing.spans()).trace == [user, converted]
    events = [e.name for s in tracing.spans() for e in s.events if e.name.startswith("kiln_otel.")]
    assert events == [
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
        wire.EVENT_MESSAGES_DELETE,
        "kiln_otel.message.assistant",
    ]
    assert err.partial_trace == [user, converted]


def test_kiln_serving_no_trace_rebuilds_to_no_trace(tracing: Tracing) -> None:
    """Kiln's conversion failed (or nothing was recorded): Kiln serves null, and so does the rebuild."""
    err = failed_run(tracing, [{"role": "user", "content": "u"}], None)
    assert reconstruct_error(tracing.spans()).model_dump(include=KILN_KEYS) == kiln_body(err)


jsonish = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text(max_size=30)},
        optional={"extra": jsonish},
    ),
    max_size=8,
)


@given(recorded=messages, kiln_trace=st.none() | messages)
def test_rebuild_equals_kilns_payload_whatever_was_recorded(
    tracing: Tracing, recorded: list[Any], kiln_trace: list[Any] | None
) -> None:
    tracing.exporter.clear()
    err = failed_run(tracing, recorded, kiln_trace)
    rebuilt = reconstruct_error(tracing.spans(), err.trace_id)  # type: ignore[attr-defined]
    assert rebuilt.model_dump(include=KILN_KEYS) == {**kiln_body(err), "trace": kiln_trace or None}


def test_a_nested_runs_error_keeps_the_inner_ids_and_the_outer_list(tracing: Tracing) -> None:
    outer = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    outer.messages.append({"role": "user", "content": "delegate"})
    inner = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    inner.messages.append({"role": "user", "content": "sub-task"})
    err = KilnShapedRunError("boom", list(inner.messages), RateLimitError("429"))
    inner.fail(err)
    outer.fail(err)
    assert (err.trace_id, err.span_id) == (inner.trace_id, inner.span_id)  # type: ignore[attr-defined]
    assert inner.trace_id == outer.trace_id
    outer_rebuilt = reconstruct_error(tracing.spans(), outer.trace_id, span_id=outer.span_id)
    assert outer_rebuilt.trace == [{"role": "user", "content": "delegate"}]
    assert outer_rebuilt.message == "boom"


def test_success_ends_the_run_and_other_failures_get_kiln_otels_message(tracing: Tracing) -> None:
    ok = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    ok.messages.append({"role": "user", "content": "hi"})
    ok.end()
    ok.end()
    plain = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    plain.fail(ValueError("input does not match the schema"))
    ok_span, failed = tracing.spans()
    assert ok_span.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "input does not match the schema"
    assert failed.attributes is not None
    assert failed.attributes[wire.ATTR_ERROR_MESSAGE] == "input does not match the schema"


def test_a_run_kiln_otel_cannot_start_leaves_kiln_a_plain_list(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    _guard.set_strict(False)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kiln-otel bug")

    monkeypatch.setattr(kiln_module, "TracedRun", broken)
    run = AdapterRun(Adapter(), tracer_provider=tracing.provider)
    run.messages.append({"role": "user", "content": "hi"})
    run.fail(KilnShapedRunError("boom", None, RateLimitError("429")))
    assert run.run is None
    assert run.messages == [{"role": "user", "content": "hi"}]
    assert run.trace_id is None
    assert tracing.spans() == ()


# --- serving Kiln's error by its shape ---------------------------------------------------------------------
def test_payload_helpers_read_kilns_error_by_shape(tracing: Tracing) -> None:
    err = failed_run(tracing, [{"role": "user", "content": "u"}], [{"role": "user", "content": "u"}])
    payload = error_with_trace(err, redact=None)
    assert payload.model_dump(include=KILN_KEYS) == kiln_body(err)
    assert (payload.trace_id, payload.span_id) == (err.trace_id, err.span_id)  # type: ignore[attr-defined]
    response = error_response(err, trace_url_template="http://jaeger/trace/{trace_id}")
    body = json.loads(bytes(response.body))
    assert {k: body[k] for k in KILN_KEYS} == kiln_body(err)
    assert body["trace_url"] == f"http://jaeger/trace/{err.trace_id}"  # type: ignore[attr-defined]
    assert response.headers["traceparent"] == f"00-{err.trace_id}-{err.span_id}-01"  # type: ignore[attr-defined]


def test_installed_handler_answers_kilns_class_when_asked(tracing: Tracing) -> None:
    from fastapi import FastAPI

    app = FastAPI()
    raised: list[KilnShapedRunError] = []

    @app.post("/run")
    def run() -> None:
        raised.append(failed_run(tracing, [{"role": "user", "content": "u"}], [{"role": "user", "content": "u"}]))
        raise raised[-1]

    install_error_handler(app, error_classes=(KilnShapedRunError,))
    with serve(app) as client:
        response = client.post("/run")
    assert response.status_code == 500
    body = response.json()
    assert {k: body[k] for k in KILN_KEYS} == kiln_body(raised[0])
    assert body["trace_id"] == raised[0].trace_id  # type: ignore[attr-defined]
