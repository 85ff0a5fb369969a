"""Live export in-process: messages reach an ended span within the delay, short runs stay one span.

The processes that really die (SIGKILL, SIGTERM, exit) are in test_crash_safety.py; here the SDK's
in-memory exporter shows what a backend would receive, span by span, while the run is still open.
"""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from kiln_otel import KilnRunError, _flusher, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel.reconstruct import NOT_ENDED_ISSUE
from tests.conftest import Tracing
from tests.test_limits import conversation

WAIT = 10.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def segments(tracing: Tracing) -> list[ReadableSpan]:
    return [s for s in tracing.spans() if s.attributes and wire.ATTR_SEGMENT_INDEX in s.attributes]


def test_a_short_run_is_one_span_holding_every_message(tracing: Tracing) -> None:
    messages = conversation(31)  # a 10-turn agent run against a fast model
    with traced_run("short", tracer_provider=tracing.provider) as run:
        for message in messages:
            run.messages.append(message)
    spans = tracing.spans()
    assert [s.name for s in spans] == ["invoke_agent short"]
    assert len(spans[0].events) == 31
    assert reconstruct_trace(spans) == messages


def test_a_hung_run_has_its_messages_on_an_ended_span_within_the_delay(tracing: Tracing) -> None:
    run = traced_run("hung", tracer_provider=tracing.provider, conversation_id="conv-7", live_export_delay=0.2)
    appended = time.monotonic()
    run.messages.extend(conversation(5))
    found = wait_for("a segment", lambda: segments(tracing))
    waited = time.monotonic() - appended
    assert 0.2 <= waited < 0.2 + 2.0, waited
    assert run._recorder is not None
    assert run._recorder._buffer == []  # nothing held in memory past the delay
    rebuilt = reconstruct_trace(tracing.spans())
    assert rebuilt == conversation(5)
    assert rebuilt.issues == [NOT_ENDED_ISSUE]
    assert rebuilt.span_id == run.span_id
    payload = reconstruct_error(tracing.spans())
    assert payload.error_type == "RunNotEndedError"
    assert payload.message == "The run did not end: the process died or the run is still going."
    assert (payload.trace, payload.trace_complete, payload.span_id) == (conversation(5), False, run.span_id)
    attributes = dict(found[0].attributes or {})
    assert attributes == {
        "kiln_otel.run.name": "hung",
        "gen_ai.conversation.id": "conv-7",
        "kiln_otel.segment.index": 1,
        "kiln_otel.segment.seq.first": 0,
        "kiln_otel.segment.seq.last": 4,
        "kiln_otel.messages.count": 5,
    }
    run.messages.append({"role": "user", "content": "still there?"})
    run.end()
    assert len(tracing.spans()) == 2
    final = reconstruct_trace(tracing.spans())
    assert final.complete, final.issues
    assert final == [*conversation(5), {"role": "user", "content": "still there?"}]
    assert len(tracing.span("invoke_agent hung").events) == 1  # the last message sits on the run span


def test_events_keep_the_time_they_were_recorded(tracing: Tracing) -> None:
    run = traced_run("times", tracer_provider=tracing.provider, live_export_delay=0.3)
    stamps = []
    for message in conversation(3):
        before = time.time_ns()
        run.messages.append(message)
        stamps.append((before, time.time_ns()))
        time.sleep(0.02)
    segment = wait_for("a segment", lambda: segments(tracing))[0]
    times = [event.timestamp for event in segment.events]
    assert all(low <= at <= high for at, (low, high) in zip(times, stamps, strict=True))
    assert segment.start_time == times[0]
    assert segment.end_time == times[-1]
    run.end()


def test_a_segment_names_the_runs_parent_so_nested_runs_nest(tracing: Tracing) -> None:
    with traced_run("outer", tracer_provider=tracing.provider) as outer:
        inner = traced_run("inner", tracer_provider=tracing.provider, live_export_delay=0.05)
        inner.messages.append({"role": "user", "content": "x"})
        segment = wait_for("a segment", lambda: segments(tracing))[0]
        assert segment.attributes is not None
        assert segment.attributes["kiln_otel.run.parent_span_id"] == outer.span_id
        inner.end()


def test_full_spans_are_written_at_once_without_waiting(tracing: Tracing) -> None:
    messages = conversation(300)
    run = traced_run("long", tracer_provider=tracing.provider, live_export_delay=3600)
    run.messages.extend(messages)
    written = segments(tracing)
    assert [len(s.events) for s in written] == [128, 128]  # the SDK's limit per span
    run.end()
    assert len(tracing.span("invoke_agent long").events) == 300 - 256
    assert reconstruct_trace(tracing.spans()) == messages


def test_the_run_span_keeps_room_for_the_exception(tracing: Tracing) -> None:
    messages = conversation(120)  # more than 128 - 16: they go to a segment, the run span keeps room
    with pytest.raises(KilnRunError), traced_run("full", tracer_provider=tracing.provider) as run:
        run.messages.extend(messages)
        raise ValueError("after 120 messages")
    assert [len(s.events) for s in segments(tracing)] == [120]
    assert [e.name for e in tracing.span("invoke_agent full").events] == ["exception"]
    assert reconstruct_error(tracing.spans()).trace == messages


def test_the_flusher_is_asked_once_per_flush_window(tracing: Tracing, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = _flusher.schedule

    def counting(deadline: float, target: _flusher.Flushable) -> None:
        calls.append(deadline)
        real(deadline, target)

    monkeypatch.setattr(_flusher, "schedule", counting)
    run = traced_run("quiet", tracer_provider=tracing.provider, live_export_delay=3600)
    run.messages.extend(conversation(100))
    assert len(calls) == 1
    run.end()


def test_concurrent_appends_and_flushes_lose_and_repeat_nothing(tracing: Tracing) -> None:
    run = traced_run("busy", tracer_provider=tracing.provider, live_export_delay=0.001)

    def writer(n: int) -> None:
        for i in range(150):
            run.messages.append({"role": "user", "content": f"{n}-{i}"})
            if i % 25 == 0:
                time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    run.end()
    spans = tracing.spans()
    seqs = [e.attributes["kiln_otel.seq"] for s in spans for e in s.events if e.attributes]
    assert sorted(seqs) == list(range(900))
    rebuilt = reconstruct_trace(spans)
    assert rebuilt.complete, rebuilt.issues
    assert rebuilt == list(run.messages)
    assert len(spans) > 2  # the flusher really ran while the writers did


def test_the_flusher_survives_a_failing_flush(tracing: Tracing, monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_value))

    class Broken:
        def flush_due(self) -> None:
            raise RuntimeError("flush bug")

        def flush_now(self, lock_timeout: float) -> None:
            raise AssertionError("not at exit")

    _flusher.schedule(time.monotonic(), Broken())
    wait_for("the failure reported", lambda: reported)
    assert isinstance(reported[0], RuntimeError)
    run = traced_run("after", tracer_provider=tracing.provider, live_export_delay=0.01)
    run.messages.append({"role": "user", "content": "x"})
    wait_for("a segment after the failure", lambda: segments(tracing))
    run.end()


def test_no_thread_starts_while_nothing_records() -> None:
    code = """
import threading
from kiln_otel import traced_run
from opentelemetry.sdk.trace import TracerProvider
names = lambda: sorted(t.name for t in threading.enumerate() if t.name.startswith("kiln-otel"))
with traced_run("unconfigured", live_export_delay=0) as run:
    run.messages.append({"role": "user", "content": "x"})
print(names())
with traced_run("configured", tracer_provider=TracerProvider(), live_export_delay=0) as run:
    run.messages.append({"role": "user", "content": "x"})
print(names())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split("\n")[:2] == ["[]", "['kiln-otel-live-export']"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_repeats_the_parents_messages_nor_loses_its_own(tracing: Tracing) -> None:
    parent_run = traced_run("parent", tracer_provider=tracing.provider, live_export_delay=0.3)
    parent_run.messages.append({"role": "user", "content": "pending at fork time"})
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running
        pid = os.fork()
    if pid == 0:  # the child: report what it exported, then leave without running any exit code
        code = 1
        try:
            time.sleep(0.6)
            inherited = len(segments(tracing))
            del parent_run  # the child's copy, dropped: the parent's run is not the child's to end
            gc.collect()
            child_run = traced_run("child", tracer_provider=tracing.provider, live_export_delay=0.05)
            child_run.messages.append({"role": "user", "content": "from the child"})
            deadline = time.monotonic() + WAIT
            while len(segments(tracing)) == inherited and time.monotonic() < deadline:
                time.sleep(0.01)
            ended_here = [s.name for s in tracing.spans() if s.name == "invoke_agent parent"]
            os.write(write_end, f"{inherited} {len(segments(tracing))} {len(ended_here)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "0 1 0"  # the parent's run was neither written nor ended in the child; its own was
    wait_for("the parent's segment", lambda: segments(tracing))
    assert [s.attributes["kiln_otel.run.name"] for s in segments(tracing) if s.attributes] == ["parent"]
    parent_run.end()


def test_no_provider_keeps_the_no_op_path() -> None:
    assert not trace.get_tracer("probe").start_span("probe").is_recording()
    run = traced_run("nothing")
    run.messages.append({"role": "user", "content": "x"})
    assert run._recorder is None
    assert run._tracking is None


def test_spans_per_run_stay_bounded(tracing: Tracing) -> None:
    with traced_run("ten thousand", tracer_provider=tracing.provider) as run:
        for message in conversation(10_000):
            run.messages.append(message)
    assert len(tracing.spans()) == 79  # 78 full segments of 128 events, the last 16 on the run span


def test_segments_written_by_age_are_at_least_a_delay_apart(tracing: Tracing) -> None:
    """A run whose turns are slower than the delay gets about one segment per turn, never more."""
    delay = 0.05
    run = traced_run("slow turns", tracer_provider=tracing.provider, live_export_delay=delay)
    for _ in range(10):
        run.messages.extend(conversation(3))
        time.sleep(delay * 1.6)
    run.end()
    starts = sorted(s.start_time or 0 for s in segments(tracing))
    assert 1 <= len(starts) <= 10
    assert all(later - earlier >= delay * 1e9 for earlier, later in itertools.pairwise(starts))
    assert reconstruct_trace(tracing.spans()) == conversation(3) * 10
