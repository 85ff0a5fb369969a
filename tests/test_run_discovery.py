"""Which run a trace id means: nested runs, several runs in one trace, runs whose span never ended."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace

from kiln_otel import AmbiguousTraceError, KilnRunError, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel.reconstruct import NOT_ENDED_ISSUE, find_run
from kiln_otel.sources import load_spans
from kiln_otel.spans import EventRecord, SpanRecord
from tests.conftest import Tracing

USER = {"role": "user", "content": "go"}


def failed(tracing: Tracing, name: str, exc: Exception, messages: list[Any]) -> KilnRunError:
    with pytest.raises(KilnRunError) as caught, traced_run(name, tracer_provider=tracing.provider) as run:
        run.messages.extend(messages)
        raise exc
    return caught.value


def test_several_failed_runs_in_one_trace_are_each_named(tracing: Tracing) -> None:
    with tracing.provider.get_tracer("app").start_as_current_span("POST /plan"):
        first = failed(tracing, "planner", ValueError("bad plan"), [USER])
        second = failed(tracing, "writer", TimeoutError(), [USER, USER])
    with pytest.raises(AmbiguousTraceError) as caught:
        reconstruct_error(tracing.spans(), first.trace_id)
    text = str(caught.value)
    assert f"{first.span_id} (invoke_agent planner, failed: ValueError: bad plan)" in text
    assert f"{second.span_id} (invoke_agent writer, failed: TimeoutError: " in text
    assert "2 separate runs, 2 of them failed" in text
    assert reconstruct_error(tracing.spans(), span_id=second.span_id) == second.to_error_with_trace()


def test_the_one_failed_run_among_several_is_the_one_meant(tracing: Tracing) -> None:
    with tracing.provider.get_tracer("app").start_as_current_span("POST /plan"):
        with traced_run("fine", tracer_provider=tracing.provider) as ok:
            ok.messages.append(USER)
        err = failed(tracing, "broken", ValueError("bad"), [USER, USER])
    assert reconstruct_error(tracing.spans()) == err.to_error_with_trace()


def test_runs_that_all_succeeded_are_listed_too(tracing: Tracing) -> None:
    with tracing.provider.get_tracer("app").start_as_current_span("batch"):
        for name in ("a", "b"):
            traced_run(name, tracer_provider=tracing.provider).end()
    with pytest.raises(AmbiguousTraceError, match=r"0 of them failed.*invoke_agent a, did not fail"):
        reconstruct_trace(tracing.spans())


def test_a_nested_error_passed_through_two_runs_rebuilds_as_the_innermost(tracing: Tracing) -> None:
    with pytest.raises(KilnRunError) as caught, traced_run("outer", tracer_provider=tracing.provider) as outer:
        outer.messages.append({"role": "user", "content": "outer"})
        with traced_run("middle", tracer_provider=tracing.provider) as middle:
            middle.messages.append({"role": "user", "content": "middle"})
            with traced_run("inner", tracer_provider=tracing.provider) as inner:
                inner.messages.append({"role": "user", "content": "inner"})
                raise ValueError("deep")
    assert reconstruct_error(tracing.spans()) == caught.value.to_error_with_trace()
    assert reconstruct_trace(tracing.spans()).span_id == inner.span_id
    assert reconstruct_trace(tracing.spans(), span_id=outer.span_id) == [{"role": "user", "content": "outer"}]


def test_a_nested_run_whose_error_was_handled_leaves_the_outer_run_the_story(tracing: Tracing) -> None:
    with traced_run("outer", tracer_provider=tracing.provider) as outer:
        outer.messages.append(USER)
        try:
            with traced_run("inner", tracer_provider=tracing.provider) as inner:
                inner.messages.append({"role": "user", "content": "inner"})
                raise ValueError("retried")
        except KilnRunError:
            pass
    assert reconstruct_trace(tracing.spans()).span_id == outer.span_id


def wait_for_segments(tracing: Tracing, count: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        found = [s for s in tracing.spans() if s.attributes and wire.ATTR_SEGMENT_INDEX in s.attributes]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} segments"
        time.sleep(0.01)


def test_nested_runs_that_never_ended_still_nest(tracing: Tracing) -> None:
    outer = traced_run("outer", tracer_provider=tracing.provider, live_export_delay=0.01)
    outer.messages.append({"role": "user", "content": "outer"})
    with trace.use_span(outer.span, end_on_exit=False):
        inner = traced_run("inner", tracer_provider=tracing.provider, live_export_delay=0.01)
    inner.messages.append({"role": "user", "content": "inner"})
    wait_for_segments(tracing, 2)
    spans = tracing.spans()
    assert not [s for s in spans if s.name.startswith("invoke_agent")]
    rebuilt = reconstruct_trace(spans)
    assert (rebuilt.span_id, rebuilt.run.name, rebuilt, rebuilt.issues) == (
        outer.span_id,
        "invoke_agent outer",
        [{"role": "user", "content": "outer"}],
        [NOT_ENDED_ISSUE],
    )
    assert reconstruct_trace(spans, span_id=inner.span_id) == [{"role": "user", "content": "inner"}]
    outer._finish(None, "", None)
    inner._finish(None, "", None)


def test_an_unended_run_notices_a_segment_lost_before_its_last(tracing: Tracing) -> None:
    run = traced_run("gappy", tracer_provider=tracing.provider, live_export_delay=0.01)
    for i in range(3):
        run.messages.append({"role": "user", "content": str(i)})
        wait_for_segments(tracing, i + 1)
    spans = [s for s in load_spans(list(tracing.spans())) if s.attributes.get(wire.ATTR_SEGMENT_INDEX) != 2]
    rebuilt = reconstruct_trace(spans)
    assert rebuilt.issues[0] == NOT_ENDED_ISSUE
    assert "2 of 3 continuation segment spans found" in rebuilt.issues
    assert any("1 of 3 list events are missing" in issue for issue in rebuilt.issues)
    run.end()


def test_an_unended_run_found_by_its_span_id_alone(tracing: Tracing) -> None:
    run = traced_run(None, tracer_provider=tracing.provider, live_export_delay=0.01)
    run.messages.append(USER)
    wait_for_segments(tracing, 1)
    found = find_run(load_spans(list(tracing.spans())), span_id=run.span_id)
    assert (found.name, found.status_code, found.parent_span_id) == ("invoke_agent", "ERROR", None)
    run.end()


VALUES = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
)


@given(index=VALUES.filter(lambda v: v is not None), last=VALUES, count=VALUES, name=VALUES, parent=VALUES)
def test_any_identity_on_a_segment_rebuilds_or_says_why(
    index: Any, last: Any, count: Any, name: Any, parent: Any
) -> None:
    attributes = {
        wire.ATTR_SEGMENT_INDEX: index,
        wire.ATTR_SEGMENT_LAST_SEQ: last,
        wire.ATTR_MESSAGES_COUNT: count,
        wire.ATTR_RUN_NAME: name,
        wire.ATTR_RUN_PARENT_SPAN_ID: parent,
    }
    event = EventRecord(
        "kiln_otel.message.user",
        1,
        {wire.ATTR_EVENT_SEQ: 0, wire.ATTR_MESSAGE_INDEX: 0, wire.ATTR_MESSAGE_JSON: '{"role": "user"}'},
    )
    segment = SpanRecord(
        "1" * 32,
        "2" * 16,
        "3" * 16,
        "kiln_otel.messages",
        attributes={k: v for k, v in attributes.items() if v is not None},
        events=(event,),
    )
    rebuilt = reconstruct_trace([segment])
    assert rebuilt == [{"role": "user"}]
    assert rebuilt.issues[0] == NOT_ENDED_ISSUE
    assert reconstruct_error([segment]).error_type == "RunNotEndedError"
