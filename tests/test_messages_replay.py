"""TracedMessages: any sequence of list operations replays from exported telemetry to the same list."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from kiln_otel import TracedMessages, reconstruct_trace, traced_run
from kiln_otel.otlp_json import encode_otlp_json
from tests.conftest import Tracing

TEXT = st.text(max_size=40)
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"call_[a-z0-9]{4}", fullmatch=True),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": st.sampled_from(["search", "calc"]), "arguments": TEXT}),
    }
)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "developer"]), "content": TEXT}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.none() | TEXT},
        optional={"tool_calls": st.lists(TOOL_CALL, min_size=1, max_size=3), "x_app_field": st.integers()},
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "tool_call_id": st.text(min_size=1, max_size=8), "content": TEXT},
        optional={"is_error": st.booleans(), "kiln_task_tool_data": st.none() | TEXT},
    ),
    st.fixed_dictionaries({"role": st.text(max_size=10), "content": TEXT}),
)
INDEX = st.integers(min_value=-6, max_value=6)
OPERATION = st.one_of(
    st.tuples(st.just("append"), MESSAGE),
    st.tuples(st.just("extend"), st.lists(MESSAGE, max_size=3)),
    st.tuples(st.just("iadd"), st.lists(MESSAGE, max_size=3)),
    st.tuples(st.just("insert"), INDEX, MESSAGE),
    st.tuples(st.just("setitem"), INDEX, MESSAGE),
    st.tuples(st.just("setslice"), INDEX, INDEX, st.lists(MESSAGE, max_size=3)),
    st.tuples(st.just("setstep"), INDEX, INDEX, st.just(2)),
    st.tuples(st.just("selfassign")),
    st.tuples(st.just("pop"), INDEX),
    st.tuples(st.just("remove"), INDEX),
    st.tuples(st.just("delitem"), INDEX),
    st.tuples(st.just("delslice"), INDEX, INDEX, st.sampled_from([None, 1, 2, -1])),
    st.tuples(st.just("clear")),
    st.tuples(st.just("sort"), st.booleans()),
    st.tuples(st.just("reverse")),
    st.tuples(st.just("imul"), st.integers(min_value=0, max_value=2)),
)


def apply(target: list[Any], op: tuple[Any, ...]) -> None:
    """The same operation on a TracedMessages and on a plain list; errors must match too."""
    name, *args = op
    if name == "append":
        target.append(args[0])
    elif name == "extend":
        target.extend(args[0])
    elif name == "iadd":
        target += args[0]
    elif name == "insert":
        target.insert(args[0], args[1])
    elif name == "setitem":
        target[args[0]] = args[1]
    elif name == "setslice":
        target[args[0] : args[1]] = args[2]
    elif name == "setstep":
        target[args[0] : args[1] : 2] = list(reversed(target[args[0] : args[1] : 2]))
    elif name == "selfassign":
        target[:] = copy.deepcopy(target)
    elif name == "pop":
        target.pop(args[0])
    elif name == "remove":
        target.remove(target[args[0]])
    elif name == "delitem":
        del target[args[0]]
    elif name == "delslice":
        del target[args[0] : args[1] : args[2]]
    elif name == "clear":
        target.clear()
    elif name == "sort":
        target.sort(key=lambda m: str(m.get("role")), reverse=args[0])
    elif name == "reverse":
        target.reverse()
    elif name == "imul":
        target *= args[0]


def run_ops(tracing: Tracing, ops: list[tuple[Any, ...]]) -> list[Any]:
    plain: list[Any] = []
    with traced_run("prop", tracer_provider=tracing.provider, redact=None) as run:
        for op in ops:
            outcomes = []
            for target in (run.messages, plain):
                try:
                    apply(target, op)
                    outcomes.append(None)
                except (IndexError, ValueError) as exc:
                    outcomes.append(type(exc))
            assert outcomes[0] == outcomes[1], op
            assert run.messages == plain
    return plain


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPERATION, max_size=25))
def test_replay_equals_final_list_in_every_format(tracing: Tracing, ops: list[tuple[Any, ...]]) -> None:
    tracing.exporter.clear()
    final = run_ops(tracing, ops)
    spans = tracing.spans()
    expected = json.loads(json.dumps(final))
    for source in (
        spans,
        encode_spans(spans).SerializeToString(),
        encode_otlp_json(spans),
        json.dumps(encode_otlp_json(spans)),
    ):
        rebuilt = reconstruct_trace(source)
        assert rebuilt == expected
        assert rebuilt.complete, rebuilt.issues


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(MESSAGE, min_size=1, max_size=400), per_span=st.sampled_from([None, 16, 128]))
def test_replay_across_segments(tracing: Tracing, messages: list[Any], per_span: int | None) -> None:
    """Runs longer than one span's event limit spill into segment spans and still replay whole."""
    tracing.exporter.clear()
    tracing.provider._span_limits.max_events = per_span if per_span else 128  # type: ignore[attr-defined]
    with traced_run("long", tracer_provider=tracing.provider, redact=None) as run:
        run.messages.extend(messages)
        del run.messages[0]
    assert all(span.dropped_events == 0 for span in tracing.spans())
    assert reconstruct_trace(tracing.spans()) == messages[1:]


def test_copies_are_plain_lists_and_record_nothing(tracing: Tracing) -> None:
    with traced_run("copies", tracer_provider=tracing.provider) as run:
        run.messages.append({"role": "user", "content": "hi"})
        copies = [
            copy.deepcopy(run.messages),
            copy.copy(run.messages),
            pickle.loads(pickle.dumps(run.messages)),
            run.messages.copy(),
            run.messages[:],
            [*run.messages],
        ]
        for duplicate in copies:
            assert type(duplicate) is list
            assert duplicate == [{"role": "user", "content": "hi"}]
            duplicate.append({"role": "user", "content": "phantom"})
    events = tracing.span("invoke_agent copies").events
    assert [e.name for e in events] == ["kiln_otel.message.user"]


def test_self_assignment_of_same_content_records_nothing(tracing: Tracing) -> None:
    with traced_run("kiln", tracer_provider=tracing.provider) as run:
        messages = run.messages
        messages.extend([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        messages[:] = messages
        messages[:] = copy.deepcopy(messages)
        messages[:] = [*copy.deepcopy(messages), {"role": "assistant", "content": "a"}]
    names = [e.name for e in tracing.span("invoke_agent kiln").events]
    assert names == ["kiln_otel.message.system", "kiln_otel.message.user", "kiln_otel.message.assistant"]


def test_pydantic_messages_serialize_and_list_validates(tracing: Tracing) -> None:
    """Kiln appends litellm Message objects and puts the list itself into pydantic models."""
    from pydantic import BaseModel

    class Message(BaseModel):
        role: str
        content: str | None = None

    class Holder(BaseModel):
        trace: list[Any]

    with traced_run("models", tracer_provider=tracing.provider) as run:
        run.messages.append(Message(role="assistant", content="hello"))
        holder = Holder(trace=run.messages)
    assert json.loads(holder.model_dump_json()) == {"trace": [{"role": "assistant", "content": "hello"}]}
    assert json.dumps(run.messages, default=lambda m: m.model_dump())
    assert reconstruct_trace(tracing.spans()) == [{"role": "assistant", "content": "hello"}]


def test_outside_a_recording_run_it_is_just_a_list() -> None:
    messages = TracedMessages([{"role": "user"}])
    messages.append({"role": "assistant"})
    messages[:] = messages[::-1]
    assert messages == [{"role": "assistant"}, {"role": "user"}]
    assert isinstance(messages, list)
