"""Reconstruction and the CLI never trust their input: a corpus of hostile files, and a fuzzer.

The corpus runs the real command in a child process under RLIMIT_AS / RLIMIT_CPU and asserts, for
every file: a documented exit code (the one the case calls for), no traceback, every stderr line a
one-line ``kiln-otel: ...`` message, and bounded memory and time (measured peak RSS, wall clock).
The in-process tests pin the exact diagnostics; the hypothesis fuzzer throws OTLP JSON of every
shape, valid and not, at ``kiln_otel.cli.main``.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln_otel import reconstruct_error, reconstruct_trace, wire
from kiln_otel.cli import EXIT_CODES, EXIT_MALFORMED, EXIT_NOT_KILN, EXIT_OK, EXIT_TRACE_NOT_FOUND, EXIT_USAGE, main
from kiln_otel.errors import MalformedTelemetryError
from kiln_otel.json_input import JSONInputError, loads, nesting_depth
from kiln_otel.sources import load_spans
from tests.measured import MIB, run_cli

TRACE = "0af7651916cd43dd8448eb211c80319c"
RUN_SPAN = "b7ad6b7169203331"
MEMORY_LIMIT = 512 * MIB
"""RLIMIT_AS of each child: the interpreter and its imports take well under half of it."""
PEAK_RSS_BOUND = 100 * MIB
"""A child reading any file of the corpus (all under 2 MB) stays under this: measured 37-41 MiB for all
but the 1.7 MB file of 10,000 events, 62 MiB (the interpreter and its imports alone are ~35 MiB)."""
SECONDS_BOUND = 15.0


# --- OTLP JSON by hand ------------------------------------------------------------------------------


def s(value: str) -> dict[str, Any]:
    return {"stringValue": value}


def i(value: int) -> dict[str, Any]:
    return {"intValue": str(value)}


def d(value: float | str) -> dict[str, Any]:
    return {"doubleValue": value}


def array(*values: dict[str, Any]) -> dict[str, Any]:
    return {"arrayValue": {"values": list(values)}}


def attributes(pairs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": value} for key, value in pairs.items()]


def request(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}


def run_span(events: list[dict[str, Any]], **totals: Any) -> dict[str, Any]:
    """A failed run span; ``totals`` override or add run attributes (``None`` removes one)."""
    pairs: dict[str, Any] = {
        wire.ATTR_SCHEMA_VERSION: i(1),
        wire.ATTR_MESSAGES_OPS: i(len(events)),
        wire.ATTR_MESSAGES_COUNT: i(sum(e["name"].startswith("kiln_otel.message.") for e in events)),
        wire.ATTR_SEGMENTS: i(0),
    }
    pairs.update({key.replace("__", "."): value for key, value in totals.items()})
    pairs = {key: value for key, value in pairs.items() if value is not None}
    return {
        "traceId": TRACE,
        "spanId": RUN_SPAN,
        "name": "invoke_agent hostile",
        "attributes": attributes(pairs),
        "events": events,
        "status": {"code": 2, "message": "it failed"},
    }


def message(seq: Any, index: Any = None, content: Any = "hi", json_text: str | None = None) -> dict[str, Any]:
    text = json.dumps({"role": "user", "content": content}) if json_text is None else json_text
    return {
        "name": "kiln_otel.message.user",
        "timeUnixNano": "1",
        "attributes": attributes(
            {
                wire.ATTR_EVENT_SEQ: seq if isinstance(seq, dict) else i(seq),
                wire.ATTR_MESSAGE_INDEX: i(0) if index is None else (index if isinstance(index, dict) else i(index)),
                wire.ATTR_MESSAGE_JSON: s(text),
            }
        ),
    }


def event(name: str, seq: int, **pairs: Any) -> dict[str, Any]:
    values = {wire.ATTR_EVENT_SEQ: i(seq), **{key.replace("__", "."): value for key, value in pairs.items()}}
    return {"name": name, "timeUnixNano": "1", "attributes": attributes(values)}


def one_run(events: list[dict[str, Any]], **totals: Any) -> bytes:
    return json.dumps(request(run_span(events, **totals))).encode()


def deep(levels: int, inner: str = "1") -> str:
    return '{"a":' * levels + inner + "}" * levels


def nested_array_value(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = i(1)
    for _ in range(levels):
        value = array(value)
    return value


# --- The corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    content: bytes
    exit_code: int
    says: tuple[str, ...] = ()
    """Words stderr must contain (the diagnostic names the problem)."""
    command: str = "reconstruct"


GOOD_LINE = one_run([message(0)])
OK_MESSAGES = [message(0), message(1, 1, "second")]

CORPUS: dict[str, Case] = {
    # The issue's cases, one by one.
    "100k-deep array": Case(b"[" * 100_000 + b"]" * 100_000, EXIT_MALFORMED, ("nested deeper than 512",)),
    "100k-deep object": Case(deep(100_000).encode(), EXIT_MALFORMED, ("nested deeper than 512",)),
    "100k-deep show": Case(deep(100_000).encode(), EXIT_MALFORMED, ("nested deeper",), command="show"),
    "100k-deep message json": Case(one_run([message(0, json_text=deep(100_000))]), EXIT_OK, ("no longer parses",)),
    "5000-digit number": Case(
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "'
        + TRACE.encode()
        + b'", "spanId": "'
        + RUN_SPAN.encode()
        + b'", "startTimeUnixNano": '
        + b"9" * 5000
        + b"}]}]}]}",
        EXIT_MALFORMED,
        ("4300 digits",),
    ),
    "5000-digit show": Case(
        b'{"message": "m", "error_type": "E", "x": ' + b"7" * 5000 + b"}",
        EXIT_MALFORMED,
        ("4300 digits",),
        command="show",
    ),
    "5000-digit intValue": Case(one_run([message({"intValue": "9" * 5000})]), EXIT_MALFORMED, ("64-bit integer",)),
    "5000-digit number in a message": Case(
        one_run([message(0, json_text='{"role": "user", "n": ' + "8" * 5000 + "}")]), EXIT_OK, ("no longer parses",)
    ),
    "seq Infinity": Case(one_run([message(d("Infinity"))]), EXIT_OK, ("unusable kiln_otel.seq", "inf")),
    "seq abc": Case(one_run([message(s("abc"))]), EXIT_OK, ("unusable kiln_otel.seq", "'abc'")),
    "seq [1]": Case(one_run([message(array(i(1)))]), EXIT_OK, ("unusable kiln_otel.seq", "[1]")),
    "index 1e30": Case(one_run([message(0), message(1, d(1e30))]), EXIT_OK, ("kiln_otel.message.index 1e+30",)),
    "ops 1e12": Case(one_run(OK_MESSAGES, kiln_otel__messages__ops=i(10**12)), EXIT_OK, ("of 1000000000000",)),
    "ops 1e8": Case(one_run(OK_MESSAGES, kiln_otel__messages__ops=i(10**8)), EXIT_OK, ("of 100000000 list",)),
    "ops 1e12 as a double": Case(one_run(OK_MESSAGES, kiln_otel__messages__ops=d(1e12)), EXIT_OK, ("missing",)),
    "duplicate seq": Case(one_run([message(0), message(0, 0, "other")]), EXIT_OK, ("duplicate kiln_otel.seq 0",)),
    "negative seq": Case(one_run([message(-1), message(0)]), EXIT_OK, ("negative kiln_otel.seq (-1)",)),
    "huge seq": Case(one_run([message(0), message(2**62)]), EXIT_OK, ("seq past the run's 2",)),
    "negative index": Case(one_run([message(0), message(1, -1)]), EXIT_OK, ("insertion index -1 is negative",)),
    # More of our own.
    "ops not a count": Case(one_run(OK_MESSAGES, kiln_otel__messages__ops=s("many")), EXIT_OK, ("not a count",)),
    "negative count": Case(one_run(OK_MESSAGES, kiln_otel__messages__count=i(-3)), EXIT_OK, ("negative (-3)",)),
    "segments NaN": Case(one_run(OK_MESSAGES, kiln_otel__segments=d("NaN")), EXIT_OK, ("kiln_otel.segments",)),
    "delete 1e12": Case(
        one_run(
            [
                message(0),
                event(
                    "kiln_otel.messages.delete",
                    1,
                    kiln_otel__message__index=i(0),
                    kiln_otel__messages__removed=i(10**12),
                ),
            ]
        ),
        EXIT_OK,
        ("only 1 follow",),
    ),
    "delete at -5": Case(
        one_run(
            [
                message(0),
                event(
                    "kiln_otel.messages.delete", 1, kiln_otel__message__index=i(-5), kiln_otel__messages__removed=i(1)
                ),
            ]
        ),
        EXIT_OK,
        ("nothing removed",),
    ),
    "reorder of the wrong length": Case(
        one_run([message(0), event("kiln_otel.messages.reorder", 1, kiln_otel__messages__order=array(i(0), i(0)))]),
        EXIT_OK,
        ("order does not cover",),
    ),
    "reorder not a permutation": Case(
        one_run([*OK_MESSAGES, event("kiln_otel.messages.reorder", 2, kiln_otel__messages__order=array(i(1), i(1)))]),
        EXIT_OK,
        ("not a permutation",),
    ),
    "reorder of text": Case(
        one_run([message(0), event("kiln_otel.messages.reorder", 1, kiln_otel__messages__order=s("[0]"))]),
        EXIT_OK,
        ("order does not cover",),
    ),
    "message without an index": Case(
        one_run([event("kiln_otel.message.user", 0, kiln_otel__message__json=s('{"role": "user"}'))]),
        EXIT_OK,
        ("lacks 'kiln_otel.message.index'",),
    ),
    "seq on a foreign event": Case(one_run([message(0), event("app.event", 1)]), EXIT_OK, ("no list event",)),
    "20,000 events claiming seq 0": Case(
        one_run([message(0, 0, f"claim {n}") for n in range(20_000)]), EXIT_OK, ("20000 different events",)
    ),
    "10,000 bad seqs": Case(one_run([message(s(f"x{n}")) for n in range(10_000)]), EXIT_OK, ("... and 9982 more",)),
    "array nested 40 deep": Case(
        one_run([message(0)], app__value=nested_array_value(40)), EXIT_MALFORMED, ("nested at most 32",)
    ),
    "list of lists": Case(b"[[[[{}]]]]", EXIT_MALFORMED, ("expected a JSON object",)),
    "NaN time": Case(GOOD_LINE.replace(b'"timeUnixNano": "1"', b'"timeUnixNano": NaN'), EXIT_MALFORMED, ("64-bit",)),
    "time 1e30": Case(GOOD_LINE.replace(b'"timeUnixNano": "1"', b'"timeUnixNano": 1e30'), EXIT_MALFORMED, ("64-bit",)),
    "key not a string": Case(GOOD_LINE.replace(b'"key": "kiln_otel.seq"', b'"key": 7'), EXIT_MALFORMED, ("key",)),
    "status code of 5000 digits": Case(
        json.dumps(request({**run_span([message(0)]), "status": {"code": "1" * 5000}})).encode(),
        EXIT_MALFORMED,
        ("status code",),
    ),
    "torn last line": Case(GOOD_LINE + b"\n" + GOOD_LINE[: len(GOOD_LINE) // 2], EXIT_OK, ("skipped line 2",)),
    "torn first line": Case(GOOD_LINE[:40] + b"\n" + GOOD_LINE + b"\n", EXIT_OK, ("skipped line 1",)),
    "raw U+2028 U+2029 U+0085": Case(
        json.dumps(request(run_span([message(0, content="a\u2028b\u2029c\x85d")])), ensure_ascii=False).encode(),
        EXIT_OK,
    ),
    "invalid UTF-8 line beside a good one": Case(
        GOOD_LINE + b"\n" + b'{"resourceSpans": "\xff"}\n', EXIT_OK, ("skipped line 2", "UTF-8")
    ),
    "only invalid UTF-8": Case(b'{"resourceSpans": "\xff\xfe"}', EXIT_MALFORMED, ("UTF-8",)),
    "empty": Case(b"", EXIT_TRACE_NOT_FOUND, ("no spans",)),
    "binary garbage": Case(bytes(range(256)) * 8, EXIT_MALFORMED, ("protobuf",)),
    "not kiln telemetry": Case(
        json.dumps(request({"traceId": TRACE, "spanId": RUN_SPAN, "name": "x"})).encode(),
        EXIT_NOT_KILN,
        ("no kiln-otel run",),
    ),
    "two runs, no trace id": Case(
        GOOD_LINE + b"\n" + GOOD_LINE.replace(TRACE.encode(), b"1" * 32) + b"\n", EXIT_USAGE, ("--trace-id",)
    ),
    "show a trace nested 400 deep": Case(
        json.dumps({"message": "m", "error_type": "E", "trace": [json.loads(deep(400))]}).encode(),
        EXIT_OK,
        command="show",
    ),
    "show of a list": Case(b"[1, 2]", EXIT_MALFORMED, ("not an ErrorWithTrace",), command="show"),
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    for number, case in enumerate(CORPUS.values()):
        (directory / f"{number}.json").write_bytes(case.content)
    return directory


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_cli_answers_every_hostile_file_with_its_documented_code(name: str, corpus_dir: Path) -> None:
    case = CORPUS[name]
    path = corpus_dir / f"{list(CORPUS).index(name)}.json"
    args = ["show", str(path)] if case.command == "show" else ["reconstruct", "--file", str(path), "--json"]
    result = run_cli(args, cwd=corpus_dir, memory_bytes=MEMORY_LIMIT, cpu_seconds=int(SECONDS_BOUND))
    assert result.returncode == case.exit_code, result.stderr[-2000:]
    assert result.returncode in EXIT_CODES
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("kiln-otel: ") for line in lines), lines[:5]
    assert len(lines) <= 41  # skipped lines and issues are capped at 20 each, plus "... and N more"
    for word in case.says:
        assert word in result.stderr, result.stderr[-2000:]
    assert 0 < result.peak_rss < PEAK_RSS_BOUND, f"{result.peak_rss / MIB:.0f} MiB"
    print(f"{name}: exit {result.returncode}, peak RSS {result.peak_rss / MIB:.0f} MiB, {result.seconds:.2f} s")
    assert result.seconds < SECONDS_BOUND, f"{result.seconds:.1f} s"
    if case.exit_code == EXIT_OK and case.command == "reconstruct" and case.says:
        assert json.loads(result.stdout)["trace_complete"] is False


# --- The same inconsistencies, diagnosed exactly, in-process ----------------------------------------


def rebuilt(content: bytes) -> Any:
    return reconstruct_trace(content)


def test_a_duplicate_seq_is_named_not_counted_as_missing() -> None:
    trace = rebuilt(one_run([message(0), message(0, 0, "other"), message(1, 1)], kiln_otel__messages__ops=i(2)))
    assert trace.issues == [
        "duplicate kiln_otel.seq 0: 2 different events (kiln_otel.message.user, kiln_otel.message.user); "
        "replayed the first",
        "rebuilt 2 messages, the run ended with 3",
    ]
    assert [m["content"] for m in trace] == ["hi", "hi"]


def test_the_same_event_delivered_twice_counts_once() -> None:
    line = one_run(OK_MESSAGES)
    trace = rebuilt(line + b"\n" + line + b"\n")
    assert trace.complete, trace.issues
    assert [m["content"] for m in trace] == ["hi", "second"]


def test_a_negative_index_is_named_and_not_clamped_silently() -> None:
    trace = rebuilt(one_run([message(0, 0, "first"), message(1, -1, "second")]))
    assert trace.issues == [
        "list event 1 (kiln_otel.message.user): insertion index -1 is negative; the message was appended"
    ]
    assert [m["content"] for m in trace] == ["first", "second"]
    assert not trace.complete


def test_a_huge_claimed_total_costs_nothing_and_names_the_gap() -> None:
    started = time.perf_counter()
    trace = rebuilt(one_run(OK_MESSAGES, kiln_otel__messages__ops=i(10**12)))
    assert time.perf_counter() - started < 1.0
    assert trace.issues == [
        f"{10**12 - 2} of {10**12} list events are missing (seq 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ...)"
    ]


def test_a_replay_that_would_move_too_much_stops_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """n inserts at index 0 cost n²/2 moves; past the budget the replay stops, named, never grinds on."""
    from kiln_otel import reconstruct

    monkeypatch.setattr(reconstruct, "_MOVE_BUDGET", 1_000)
    trace = rebuilt(one_run([message(n, 0, f"m{n}") for n in range(100)]))
    assert len(trace) < 100
    assert any(issue.startswith("replay stopped before list event") for issue in trace.issues)
    appended = rebuilt(one_run([message(n, n, f"m{n}") for n in range(100)]))
    assert appended.complete  # appending moves nothing: a long real run never comes near the budget


def test_missing_events_are_named_by_seq() -> None:
    trace = rebuilt(one_run([message(0), message(2, 1), message(5, 2)], kiln_otel__messages__ops=i(6)))
    assert trace.issues[0] == "3 of 6 list events are missing (seq 1, 3, 4)"


def test_seqs_that_are_not_numbers_are_named_as_such() -> None:
    for value, shown in ((d("Infinity"), "inf"), (s("abc"), "'abc'"), (array(i(1)), "[1]"), (d(1e30), "1e+30")):
        trace = rebuilt(one_run([message(value)]))
        assert trace.issues[0].startswith("a kiln_otel.message.user event has an unusable kiln_otel.seq: ")
        assert shown in trace.issues[0]
        assert trace == []


def test_reconstruct_error_of_hostile_totals_is_an_incomplete_payload() -> None:
    payload = reconstruct_error(one_run(OK_MESSAGES, kiln_otel__messages__count=s("x"), kiln_otel__segments=i(-1)))
    assert payload.trace_complete is False
    assert [m["content"] for m in payload.trace or []] == ["hi", "second"]


# --- Bounded JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('{"a": "[[[["}', 1),
        ('["\\\\", "[["]', 1),  # an escaped backslash does not escape the closing quote
        ('["\\"[[", "]"]', 1),  # an escaped quote does not end the string
        ("[" * 512 + "]" * 512, 512),
        ("[" * 3 + '"' + "]" * 3, 3),
    ],
)
def test_nesting_depth_reads_strings_and_escapes(text: str, depth: int) -> None:
    assert nesting_depth(text.encode(), depth) <= depth
    assert nesting_depth(text.encode(), depth - 1) > depth - 1


BRACKETY = '[]{}"\\ab'
"""Strings full of what a depth scanner could mistake for structure."""


def bracketed_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.text(alphabet=BRACKETY, max_size=4), children, max_size=3
    )


def true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(true_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(true_depth, value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet=BRACKETY), bracketed_containers),
    st.integers(0, 8),
)
def test_nesting_depth_is_over_the_limit_exactly_when_the_json_is(value: Any, limit: int) -> None:
    data = json.dumps(value).encode()
    assert (nesting_depth(data, limit) > limit) == (true_depth(value) > limit)


def test_a_hundred_thousand_levels_stop_early() -> None:
    assert nesting_depth(b"[" * 100_000 + b"]" * 100_000, 512) == 513


def test_bounded_json_errors_are_one_kind() -> None:
    for bad in (b"[" * 600 + b"]" * 600, b"9" * 5000, b"\xff", b"{", "[\ud800]"):
        with pytest.raises(JSONInputError):
            loads(bad)


# --- The fuzzer: OTLP JSON of every shape, valid and not -------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)


ANY_JSON = st.recursive(SCALARS, json_containers, max_leaves=8)
KILN_KEYS = [
    wire.ATTR_EVENT_SEQ,
    wire.ATTR_MESSAGE_INDEX,
    wire.ATTR_MESSAGE_JSON,
    wire.ATTR_MESSAGES_REMOVED,
    wire.ATTR_MESSAGES_ORDER,
    wire.ATTR_MESSAGES_OPS,
    wire.ATTR_MESSAGES_COUNT,
    wire.ATTR_SEGMENTS,
    wire.ATTR_SCHEMA_VERSION,
    wire.ATTR_MESSAGE_TRUNCATED,
    wire.ATTR_MESSAGE_SIZE,
    wire.ATTR_EXPORT_CUT,
    wire.ATTR_MESSAGE_TOOL_CALL_IDS,
    wire.ATTR_MESSAGE_CAPTURED,
]
EVENT_NAMES = [
    "kiln_otel.message.user",
    "kiln_otel.message",
    "kiln_otel.messages.delete",
    "kiln_otel.messages.reorder",
    "exception",
    "other",
]
IDS = st.sampled_from([TRACE, "1" * 32, "", "xyz", "AAECAwQFBgcICQoLDA0ODw=="])


def typed_value(depth: int = 2) -> st.SearchStrategy[Any]:
    """A well-formed OTLP AnyValue holding anything: text, huge or odd numbers, arrays of those."""
    leaves = st.one_of(
        st.builds(lambda v: {"stringValue": v}, st.text(max_size=10) | st.sampled_from(['{"role": "user"}', "[]"])),
        st.builds(lambda v: {"intValue": str(v)}, st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: {"doubleValue": v}, st.floats() | st.sampled_from(["NaN", "Infinity", "-Infinity"])),
        st.builds(lambda v: {"boolValue": v}, st.booleans()),
    )
    if depth == 0:
        return leaves
    return st.one_of(leaves, st.builds(lambda vs: array(*vs), st.lists(typed_value(depth - 1), max_size=3)))


def any_value(depth: int = 2) -> st.SearchStrategy[Any]:
    """An AnyValue, or something in its place that is not one."""
    wrong = st.one_of(
        st.builds(lambda v: {"intValue": v}, st.integers(-(2**66), 2**66) | st.text(max_size=5)),
        st.builds(lambda v: {"doubleValue": v}, st.sampled_from(["x", ""])),
        st.builds(lambda v: {"boolValue": v}, SCALARS),
        ANY_JSON,
    )
    return typed_value(depth) | wrong


ATTRIBUTE = st.one_of(
    st.builds(lambda k, v: {"key": k, "value": v}, st.sampled_from(KILN_KEYS) | st.text(max_size=5), any_value()),
    ANY_JSON,
)
EVENT = st.one_of(
    st.fixed_dictionaries(
        {"name": st.sampled_from(EVENT_NAMES), "attributes": st.lists(ATTRIBUTE, max_size=5)},
        optional={"timeUnixNano": st.integers(-5, 2**65) | st.text(max_size=3)},
    ),
    ANY_JSON,
)
SPAN = st.one_of(
    st.fixed_dictionaries(
        {"traceId": IDS, "spanId": st.sampled_from([RUN_SPAN, "2" * 16, "0" * 16, "zz"])},
        optional={
            "parentSpanId": st.sampled_from(["", RUN_SPAN, "3" * 16]),
            "name": st.sampled_from(["invoke_agent x", wire.SPAN_SEGMENT, "x"]) | SCALARS,
            "attributes": st.lists(ATTRIBUTE, max_size=6),
            "events": st.lists(EVENT, max_size=6),
            "status": st.fixed_dictionaries({}, optional={"code": SCALARS, "message": SCALARS}) | ANY_JSON,
            "droppedEventsCount": SCALARS,
            "startTimeUnixNano": SCALARS,
        },
    ),
    ANY_JSON,
)
SMALL_INTS = st.integers(-2, 6).map(i)
MESSAGE_TEXTS = st.sampled_from(
    ['{"role": "user", "content": "x"}', '"just text"', "not json", deep(600), "[]", "null"]
)
LIST_EVENT = st.one_of(
    st.builds(message, SMALL_INTS | typed_value(1), SMALL_INTS | typed_value(1), json_text=MESSAGE_TEXTS),
    st.builds(
        lambda seq, start, removed: event(
            "kiln_otel.messages.delete",
            0,
            kiln_otel__seq=seq,
            kiln_otel__message__index=start,
            kiln_otel__messages__removed=removed,
        ),
        SMALL_INTS,
        SMALL_INTS | typed_value(0),
        SMALL_INTS | typed_value(0),
    ),
    st.builds(
        lambda seq, order: event("kiln_otel.messages.reorder", 0, kiln_otel__seq=seq, kiln_otel__messages__order=order),
        SMALL_INTS,
        st.lists(SMALL_INTS, max_size=4).map(lambda vs: array(*vs)) | typed_value(1),
    ),
)
TOTALS = st.fixed_dictionaries(
    {},
    optional={
        "kiln_otel__messages__ops": SMALL_INTS | typed_value(0) | st.just(i(10**15)),
        "kiln_otel__messages__count": SMALL_INTS | typed_value(0),
        "kiln_otel__segments": SMALL_INTS | typed_value(0),
        "kiln_otel__export__cut": SMALL_INTS | typed_value(0),
    },
)
RUN_BODY = st.builds(
    lambda events, totals: request(run_span(events, **totals)), st.lists(LIST_EVENT, max_size=8), TOTALS
)
"""A well-formed kiln-otel run whose list events and totals are not: reaches the replay every time."""
BODY = st.one_of(
    RUN_BODY,
    st.builds(lambda spans: {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}, st.lists(SPAN, max_size=4)),
    st.builds(lambda result: {"result": result}, ANY_JSON),
    st.builds(lambda data: {"data": data}, st.lists(st.fixed_dictionaries({"spans": st.lists(ANY_JSON, max_size=3)}))),
    ANY_JSON,
)
RECONSTRUCT_CODES = {EXIT_OK, EXIT_USAGE, EXIT_TRACE_NOT_FOUND, EXIT_NOT_KILN, EXIT_MALFORMED}


def call_main(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def rss_at_start() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@settings(max_examples=300)
@given(lines=st.lists(BODY, min_size=1, max_size=3), torn=st.booleans(), with_trace_id=st.booleans())
def test_fuzzed_otlp_json_always_gets_a_documented_code(
    lines: list[Any], torn: bool, with_trace_id: bool, tmp_path_factory: pytest.TempPathFactory, rss_at_start: int
) -> None:
    text = "\n".join(json.dumps(line, allow_nan=True) for line in lines)
    if torn:
        text = text[: len(text) * 2 // 3]
    path = tmp_path_factory.mktemp("fuzz") / "t.jsonl"
    path.write_text(text)
    args = ["reconstruct", "--file", str(path), "--json"] + (["--trace-id", TRACE] if with_trace_id else [])
    started = time.perf_counter()
    code, stderr = call_main(args)
    assert code in RECONSTRUCT_CODES, stderr
    assert time.perf_counter() - started < 5.0
    assert all(line.startswith("kiln-otel: ") for line in stderr.splitlines())
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_at_start) * 1024
    assert growth < 300 * MIB


@settings(max_examples=300)
@given(body=RUN_BODY, with_trace_id=st.booleans())
def test_a_wellformed_run_with_any_list_events_and_totals_is_always_rebuilt(body: Any, with_trace_id: bool) -> None:
    """Whatever its events and totals say, a run that parses is rebuilt, and says so when it is not whole."""
    data = json.dumps(body, allow_nan=True)
    started = time.perf_counter()
    trace = reconstruct_trace(data, trace_id=TRACE if with_trace_id else None)
    assert time.perf_counter() - started < 2.0
    assert trace.run.span_id == RUN_SPAN
    payload = reconstruct_error(data)
    assert payload.trace_complete is trace.complete
    assert (payload.trace or []) == json.loads(json.dumps(list(trace), allow_nan=True)) or not trace.complete


@settings(max_examples=150)
@given(value=ANY_JSON | st.fixed_dictionaries({"message": SCALARS, "error_type": SCALARS, "trace": ANY_JSON}))
def test_fuzzed_show_input_always_gets_a_documented_code(value: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("show") / "payload.json"
    path.write_text(json.dumps(value, allow_nan=True))
    code, stderr = call_main(["show", str(path), "--json"])
    assert code in {EXIT_OK, EXIT_MALFORMED}, stderr


def test_load_spans_raises_only_its_own_error_on_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "only.jsonl"
    path.write_bytes(b"[" * 600 + b"\n")
    with pytest.raises(MalformedTelemetryError, match="nested deeper than 512"):
        load_spans(path)
    path.write_bytes(b"[" * 600 + b"\n" + b"{" * 600 + b"\n")
    with pytest.raises(MalformedTelemetryError, match="line 1 is not readable: JSON nested deeper than 512"):
        load_spans(path)
