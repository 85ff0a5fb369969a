"""Every lossy conversion is marked on its event and counted, and one bad message never empties the trace."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln_otel import KilnRunError, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel.encoding import message_role, serialize
from tests.conftest import Tracing


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class UnreadableRole:
    """A message object whose ``role`` property raises: today's recorder dropped the message."""

    content = "still here"

    @property
    def role(self) -> str:
        raise RuntimeError("role is broken")

    def __repr__(self) -> str:
        return "<UnreadableRole>"


class UnreadableToolCalls:
    role = "assistant"

    @property
    def tool_calls(self) -> list[Any]:
        raise RuntimeError("tool_calls is broken")

    def __repr__(self) -> str:
        return "<UnreadableToolCalls>"


HUGE = 10**5000
"""More digits than Python will turn into text (sys.get_int_max_str_digits() is 4300)."""


def run_messages(tracing: Tracing, messages: list[Any]) -> tuple[Any, KilnRunError]:
    with pytest.raises(KilnRunError) as caught, traced_run("lossy", tracer_provider=tracing.provider) as run:
        run.messages.extend(messages)
        raise ValueError("failed after the odd messages")
    return tracing.spans(), caught.value


def message_events(spans: Any) -> list[Any]:
    return [e for s in spans for e in s.events if e.name.startswith(wire.EVENT_MESSAGE_PREFIX)]


@pytest.mark.parametrize(
    ("message", "rebuilt"),
    [
        ({1: "a", "1": "b"}, {"1 (int)": "a", "1": "b"}),
        ({"role": "user", 2: "x"}, {"role": "user", "2": "x"}),
        ({"role": "user", None: 1, True: 2, 1.5: 3}, {"role": "user", "None": 1, "True": 2, "1.5": 3}),
        ({"role": "user", "content": Opaque()}, {"role": "user", "content": "<Opaque>"}),
        ({"role": "user", "n": HUGE}, {"role": "user", "n": "[an integer of about 5001 digits]"}),
        (
            {"role": "user", "deep": [{7: [HUGE]}]},
            {"role": "user", "deep": [{"7": ["[an integer of about 5001 digits]"]}]},
        ),
    ],
    ids=["colliding keys", "int key", "None/bool/float keys", "str() fallback", "huge int", "nested"],
)
def test_lossy_conversions_are_marked_on_the_event_and_counted(
    tracing: Tracing, message: dict[Any, Any], rebuilt: dict[str, Any]
) -> None:
    plain = {"role": "assistant", "content": "exact"}
    spans, error = run_messages(tracing, [plain, message, plain])
    events = message_events(spans)
    assert [e.attributes.get(wire.ATTR_MESSAGE_LOSSY) for e in events] == [None, True, None]
    [run] = spans
    assert run.attributes[wire.ATTR_MESSAGES_LOSSY] == 1
    trace = reconstruct_trace(spans)
    assert trace == [plain, {**rebuilt, "_kiln_otel": {"lossy": True}}, plain]
    assert not trace.complete
    payload = error.to_error_with_trace()
    assert payload.trace == list(trace)  # the app's payload marks the same message the same way
    assert payload == reconstruct_error(spans)


def test_a_message_whose_role_cannot_be_read_is_recorded_marked(tracing: Tracing) -> None:
    spans, error = run_messages(tracing, [{"role": "user", "content": "hi"}, UnreadableRole(), UnreadableToolCalls()])
    events = message_events(spans)
    assert len(events) == 3  # nothing dropped
    assert [e.name for e in events] == ["kiln_otel.message.user", "kiln_otel.message", "kiln_otel.message.assistant"]
    assert events[1].attributes[wire.ATTR_MESSAGE_LOSSY] is True
    assert events[2].attributes[wire.ATTR_MESSAGE_LOSSY] is True
    assert spans[0].attributes[wire.ATTR_MESSAGES_LOSSY] == 2
    trace = reconstruct_trace(spans)
    assert trace[0] == {"role": "user", "content": "hi"}
    assert trace[1:] == ["<UnreadableRole>", "<UnreadableToolCalls>"]
    assert any("approximated" in issue for issue in trace.issues)
    assert "rebuilt" not in " ".join(trace.issues)  # the count matches: no message was lost
    assert error.to_error_with_trace().trace is not None


def test_one_huge_int_never_empties_the_payload(tracing: Tracing) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "tool", "content": HUGE},
        {"role": "user", "content": "ok"},
    ]
    spans, error = run_messages(tracing, messages)
    payload = error.to_error_with_trace()
    assert payload.trace is not None
    assert payload.trace[0] == messages[0]
    assert payload.trace[2] == messages[2]
    assert payload.trace[1] == {
        "role": "tool",
        "content": "[an integer of about 5001 digits]",
        "_kiln_otel": {"lossy": True},
    }
    assert payload.trace_complete is False
    assert payload == reconstruct_error(spans)


def test_message_role_never_raises() -> None:
    assert message_role(UnreadableRole()) is None
    assert message_role({"role": 3}) is None
    assert message_role({"role": "tool"}) == "tool"


def test_plain_json_is_not_marked() -> None:
    assert serialize({"role": "user", "content": [{"type": "text", "text": "x"}], "n": 10**100}) == (
        json.dumps(
            {"role": "user", "content": [{"type": "text", "text": "x"}], "n": 10**100}, separators=(",", ":")
        ).encode(),
        False,
    )


KEYS = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.booleans(), st.none(), st.floats(allow_nan=False))


@given(st.dictionaries(KEYS, st.integers(), max_size=8))
def test_no_key_is_ever_lost_and_any_non_string_key_is_marked(message: dict[Any, int]) -> None:
    raw, lossy = serialize(message)
    back = json.loads(raw)
    assert len(back) == len(message)
    assert sorted(back.values()) == sorted(message.values())
    assert lossy == any(not isinstance(key, str) for key in message)


class Key(str):
    """A str subclass as a dict key: orjson refuses it, pydantic_core writes it as the string it is."""


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # across orjson's 64-bit limit
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
    | st.sampled_from(["null", "NaN", "Infinity", "nullable"])  # the words the NaN check looks for
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_plain_data_is_written_exactly_as_pydantic_core_writes_it(value: Any) -> None:
    """orjson's fast path writes the very bytes the slower path did, NaN and infinities included
    (orjson alone would write them as null), long ints too, and marks nothing."""
    import pydantic_core

    raw, lossy = serialize({"role": "user", "content": value})
    assert not lossy
    assert raw == pydantic_core.to_json({"role": "user", "content": value}, inf_nan_mode="constants")


def test_values_orjson_refuses_take_the_careful_path_and_are_only_marked_when_lossy() -> None:
    import dataclasses
    import datetime

    @dataclasses.dataclass
    class Point:
        x: int

    assert serialize({Key("role"): "user"}) == (b'{"role":"user"}', False)
    assert serialize({"n": 2**65}) == (b'{"n":36893488147419103232}', False)
    assert serialize({"at": datetime.datetime(2026, 1, 2, 3, 4, 5)}) == (b'{"at":"2026-01-02T03:04:05"}', False)
    assert serialize({"p": Point(1), "s": {3}}) == (b'{"p":{"x":1},"s":[3]}', False)
    assert serialize({"score": float("nan"), "note": "null"}) == (b'{"score":NaN,"note":"null"}', False)
    assert serialize({1: "a", "1": "b"})[1]
    assert serialize({"bad": "\ud800"})[1]
