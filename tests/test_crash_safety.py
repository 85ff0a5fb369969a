"""Runs that die still leave their conversation: real processes, real signals, the real exporters.

Issue 8's table, row by row, with 60 messages. Each child (``python -m tests.crash_child``) sets up
tracing with `configure_tracing`, as the README says, and is ended the way its row says; the run is then
rebuilt from what reached the embedded file exporter (``KILN_OTEL_TRACES_FILE``), or the collector:
Jaeger's ``/api/v3`` behind it and the collector's own file. SIGKILL and ``os._exit`` come only after
the documented bound (live-export delay + batch schedule delay + one export). Run with ``-s`` for the
figures quoted in the closing note.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiln_otel import ReconstructedTrace, ReconstructionError, reconstruct_error, reconstruct_trace, wire
from kiln_otel.config import DEFAULT_LIVE_EXPORT_DELAY_SECONDS
from kiln_otel.export import DEFAULT_SCHEDULE_DELAY_MILLIS
from kiln_otel.reconstruct import NOT_ENDED_ISSUE, UnendedRun
from kiln_otel.sources import load_spans
from kiln_otel.spans import SpanRecord
from tests.backends import Pipeline
from tests.crash_child import message

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPORT_ALLOWANCE = 0.5
"""One export to a local file or collector, with room for a busy 2-core machine."""
BOUND = DEFAULT_LIVE_EXPORT_DELAY_SECONDS + DEFAULT_SCHEDULE_DELAY_MILLIS / 1000 + EXPORT_ALLOWANCE
"""What docs/telemetry.md promises a killed process loses at most: messages appended within this."""
READ_TIMEOUT = 30.0
MESSAGES = 60


# --- the child process ----------------------------------------------------------------------------
class Child:
    """One ``tests.crash_child`` process; its stdout reports arrive on a queue, every wait is bounded."""

    def __init__(self, args: list[str], env: dict[str, str], stderr: Path) -> None:
        self._stderr_path = stderr
        with stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_child", *args],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        started = self.expect("started")
        self.trace_id: str = started["trace_id"]
        self.span_id: str = started["span_id"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.reports.put(json.loads(line))

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.reports.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"child reported no {event!r} within {timeout} s: {self.stderr()}") from None
            if report["event"] == event:
                return report

    def send_line(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def signal(self, signum: int) -> float:
        sent = time.monotonic()
        self.proc.send_signal(signum)
        return sent

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KILN_OTEL_"))}
    return {**env, **extra}


# --- where the spans went -------------------------------------------------------------------------
@dataclass
class Sink:
    """Where a child exports (its environment) and every place the run can be read back from."""

    name: str
    env: dict[str, str]
    readers: dict[str, Callable[[str], list[SpanRecord]]]


def file_sink(tmp_path: Path) -> Sink:
    path = tmp_path / "traces.jsonl"

    def read(trace_id: str) -> list[SpanRecord]:
        try:
            return [s for s in load_spans(path) if s.trace_id == trace_id]
        except (FileNotFoundError, ReconstructionError):  # not written yet, or a line half-written
            return []

    return Sink("file", child_env(KILN_OTEL_TRACES_FILE=str(path)), {"embedded file exporter": read})


def collector_sink(pipeline: Pipeline) -> Sink:
    def jaeger(trace_id: str) -> list[SpanRecord]:
        try:
            return load_spans(pipeline.fetch_jaeger_v3(trace_id, timeout=1.0))
        except AssertionError:  # not there yet
            return []

    def collector_file(trace_id: str) -> list[SpanRecord]:
        try:
            text = pipeline.read_file_lines(trace_id, timeout=0.5)
        except AssertionError:
            return []
        return [s for s in load_spans(text) if s.trace_id == trace_id]

    env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=pipeline.otlp_grpc_endpoint)
    return Sink("collector", env, {"Jaeger /api/v3": jaeger, "collector file": collector_file})


@pytest.fixture(params=["file", pytest.param("collector", marks=pytest.mark.backends)])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Sink:
    if request.param == "file":
        return file_sink(tmp_path)
    return collector_sink(request.getfixturevalue("pipeline"))


@pytest.fixture
def start(sink: Sink, tmp_path: Path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def launch(*args: str) -> Child:
        children.append(Child(list(args), sink.env, tmp_path / f"child-{len(children)}.err"))
        return children[-1]

    yield launch
    for child in children:
        child.close()


def rebuilt(spans: list[SpanRecord], trace_id: str) -> ReconstructedTrace | None:
    try:
        return reconstruct_trace(spans, trace_id=trace_id)
    except ReconstructionError:
        return None


def read_back(sink: Sink, child: Child, count: int, *, ended: bool) -> dict[str, list[SpanRecord]]:
    """Every reader's spans of the child's run, once they hold ``count`` messages (and the run span
    itself when the run ``ended``); bounded."""
    found = {}
    for where, read in sink.readers.items():
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            spans = read(child.trace_id)
            trace = rebuilt(spans, child.trace_id)
            if trace is not None and len(trace) >= count and (not ended or not isinstance(trace.run, UnendedRun)):
                found[where] = spans
                break
            if time.monotonic() > deadline:
                seen = "nothing" if trace is None else f"{len(trace)} messages"
                raise AssertionError(f"{sink.name}: {where} shows {seen} of {count} within {READ_TIMEOUT} s")
            time.sleep(0.2)
    return found


def assert_rebuilt(
    found: dict[str, list[SpanRecord]],
    child: Child,
    count: int,
    *,
    complete: bool,
    error_type: str | None,
    status: str | None = None,
) -> None:
    for where, spans in found.items():
        trace = reconstruct_trace(spans, trace_id=child.trace_id)
        assert trace == [message(i) for i in range(count)], where
        assert trace.span_id == child.span_id, where
        assert trace.complete is complete, (where, trace.issues)
        if not complete:
            assert trace.issues == [NOT_ENDED_ISSUE], where
        if error_type is None:
            assert trace.run.status_code == "UNSET", where
            continue
        payload = reconstruct_error(spans, child.trace_id)
        assert (payload.error_type, payload.trace, payload.trace_complete) == (error_type, trace, complete), where
        assert status is None or payload.message == status, where


# --- issue 8's table ------------------------------------------------------------------------------
def test_sigterm_during_the_run(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("sigterm", "--messages", str(MESSAGES))
    child.expect("batch")
    sent = child.signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM  # the signal still ends the process, as it would have
    print(f"\n[{sink.name}] SIGTERM: process gone {time.monotonic() - sent:.2f} s after the signal")
    found = read_back(sink, child, MESSAGES, ended=True)
    stopped = "The process was stopped by SIGTERM while the run was in progress."
    assert_rebuilt(found, child, MESSAGES, complete=True, error_type="ProcessTerminatedError", status=stopped)


def test_hand_driven_run_with_an_uncaught_exception(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("uncaught", "--messages", str(MESSAGES))
    assert child.wait() == 1
    assert "ValueError: the tool returned garbage" in child.stderr()  # the app's own traceback, unchanged
    found = read_back(sink, child, MESSAGES, ended=True)
    exited = "The process exited while the run was in progress: the tool returned garbage"
    assert_rebuilt(found, child, MESSAGES, complete=True, error_type="ValueError", status=exited)


EXITED = "The process exited while the run was in progress."
ABANDONED = "The run was abandoned: it was dropped before it ended."


@pytest.mark.parametrize(
    ("scenario", "code", "error_type", "status"),
    [
        ("return", 0, "ProcessExitedError", EXITED),
        ("sys.exit", 2, "ProcessExitedError", EXITED),
        ("abandon", 0, "RunAbandonedError", ABANDONED),
    ],
)
def test_interpreter_exit_with_a_hand_driven_run_open(
    sink: Sink, start: Callable[..., Child], scenario: str, code: int, error_type: str, status: str
) -> None:
    child = start(scenario, "--messages", str(MESSAGES))
    assert child.wait() == code
    found = read_back(sink, child, MESSAGES, ended=True)
    assert_rebuilt(found, child, MESSAGES, complete=True, error_type=error_type, status=status)


def test_ctrl_c_during_a_hand_driven_run_is_a_cancellation(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("sigint", "--messages", str(MESSAGES))
    child.expect("batch")
    child.signal(signal.SIGINT)
    assert child.wait() == -signal.SIGINT  # Python still ends by SIGINT after an unhandled KeyboardInterrupt
    found = read_back(sink, child, MESSAGES, ended=True)
    cancelled = "The run was cancelled."
    assert_rebuilt(found, child, MESSAGES, complete=True, error_type="KeyboardInterrupt", status=cancelled)


def test_run_finished_normally_then_sigterm(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("finished", "--messages", str(MESSAGES))
    child.expect("ended")
    child.signal(signal.SIGTERM)
    assert child.wait() == -signal.SIGTERM
    found = read_back(sink, child, MESSAGES, ended=True)
    assert_rebuilt(found, child, MESSAGES, complete=True, error_type=None)


def test_sigkill_during_the_run_after_the_bound(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("hang", "--messages", str(MESSAGES))
    child.expect("batch")
    time.sleep(BOUND)
    child.signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    found = read_back(sink, child, MESSAGES, ended=False)
    assert_rebuilt(found, child, MESSAGES, complete=False, error_type="RunNotEndedError")


def test_os_exit_during_the_run_after_the_bound(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("exit", "--messages", str(MESSAGES), "--wait", str(BOUND))
    assert child.wait() == 3
    found = read_back(sink, child, MESSAGES, ended=False)
    assert_rebuilt(found, child, MESSAGES, complete=False, error_type="RunNotEndedError")


def kiln_otel_cli(sink: Sink, child: Child, pipeline: Pipeline | None) -> dict[str, Any]:
    if pipeline is not None:
        source = ["--jaeger", pipeline.jaeger_query_url, child.trace_id]
    else:
        source = ["--file", sink.env["KILN_OTEL_TRACES_FILE"], "--trace-id", child.trace_id]
    script = Path(sys.executable).with_name("kiln-otel")
    result = subprocess.run(
        [str(script), "reconstruct", *source, "--json"], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    assert "the run did not end" in result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_hung_run_is_readable_while_it_is_stuck(
    sink: Sink, start: Callable[..., Child], request: pytest.FixtureRequest
) -> None:
    pipeline = request.getfixturevalue("pipeline") if sink.name == "collector" else None
    child = start("hang", "--messages", str(MESSAGES), "--batches", "2")
    for batch, count in enumerate((MESSAGES // 2, MESSAGES)):
        if batch:
            child.send_line()
        child.expect("batch")
        time.sleep(BOUND)
        assert child.proc.poll() is None  # still stuck, not dead
        found = read_back(sink, child, count, ended=False)
        not_ended = "The run did not end: the process died or the run is still going."
        assert_rebuilt(found, child, count, complete=False, error_type="RunNotEndedError", status=not_ended)
        printed = kiln_otel_cli(sink, child, pipeline)
        assert (printed["error_type"], printed["trace"], printed["trace_complete"]) == (
            "RunNotEndedError",
            [message(i) for i in range(count)],
            False,
        )
        assert printed["message"] == not_ended


def test_a_thousand_and_fifty_messages_then_sigkill(sink: Sink, start: Callable[..., Child]) -> None:
    child = start("hang", "--messages", "1050")
    child.expect("batch")
    time.sleep(BOUND)
    child.signal(signal.SIGKILL)
    child.wait()
    found = read_back(sink, child, 1050, ended=False)
    assert_rebuilt(found, child, 1050, complete=False, error_type="RunNotEndedError")
    spans = next(iter(found.values()))
    print(f"\n[{sink.name}] 1,050 messages then SIGKILL: all rebuilt from {len(spans)} segment spans")
    assert all(wire.ATTR_SEGMENT_INDEX in s.attributes for s in spans)


# --- SIGKILL at random moments --------------------------------------------------------------------
KILLS = 20
KILL_MESSAGES = 300
PACE = 0.015
"""300 messages over about 4.5 s: several flush windows, kills land before, between and after them."""
AT_ONCE = 4


@dataclass
class Kill:
    trace_id: str
    killed_at: float
    appended: list[float]

    @property
    def guaranteed(self) -> int:
        """Messages appended more than the bound before the kill: the ones that must be rebuilt."""
        return sum(1 for at in self.appended if at < self.killed_at - BOUND)


def paced_kill(env: dict[str, str], stderr: Path, rng: random.Random) -> Kill:
    child = Child(["paced", "--messages", str(KILL_MESSAGES), "--pace", str(PACE)], env, stderr)
    try:
        first = child.expect("appended")["at"]
        time.sleep(max(first + rng.uniform(0, KILL_MESSAGES * PACE * 1.1) - time.monotonic(), 0))
        killed_at = child.signal(signal.SIGKILL)
        child.wait()
        appended = [first]
        while not child.reports.empty():
            report = child.reports.get()
            if report["event"] == "appended":
                appended.append(report["at"])
        return Kill(child.trace_id, killed_at, appended)
    finally:
        child.close()


@pytest.mark.backends
def test_twenty_sigkills_at_random_moments(pipeline: Pipeline, tmp_path: Path) -> None:
    seed = int(os.environ.get("KILN_OTEL_KILL_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    env = collector_sink(pipeline).env
    seeds = [rng.random() for _ in range(KILLS)]
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        kills = list(
            pool.map(lambda i: paced_kill(env, tmp_path / f"kill-{i}.err", random.Random(seeds[i])), range(KILLS))
        )
    sink = collector_sink(pipeline)
    time.sleep(3 * BOUND)  # the last kills' spans through the collector's batch and file flush
    print(f"\n{KILLS} SIGKILLs during a {KILL_MESSAGES}-message run (seed {seed}, bound {BOUND:.1f} s):")
    print("  killed after  appended  guaranteed  rebuilt  newest rebuilt message appended")
    for kill in sorted(kills, key=lambda k: k.killed_at - k.appended[0]):
        messages, seqs = rebuilt_after_kill(sink, kill)
        assert messages == [message(i) for i in range(len(messages))]  # in order
        assert sorted(seqs) == list(range(len(messages)))  # every event once
        assert len(messages) >= kill.guaranteed
        newest = f"{kill.killed_at - kill.appended[len(messages) - 1]:.2f} s before the kill" if messages else "-"
        print(
            f"  {kill.killed_at - kill.appended[0]:>10.2f} s  {len(kill.appended):>8}  {kill.guaranteed:>10}"
            f"  {len(messages):>7}  {newest}"
        )


def rebuilt_after_kill(sink: Sink, kill: Kill) -> tuple[list[Any], list[int]]:
    """The killed run's messages and event seqs, once Jaeger and the collector file agree (bounded)."""
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        found = {where: read(kill.trace_id) for where, read in sink.readers.items()}
        traces = [rebuilt(spans, kill.trace_id) for spans in found.values()]
        counts = [len(trace) if trace is not None else 0 for trace in traces]
        if len(set(counts)) == 1 and counts[0] >= kill.guaranteed:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"killed run {kill.trace_id}: readers show {counts}, {kill.guaranteed} guaranteed")
        time.sleep(0.5)
    spans, trace = next(iter(found.values())), traces[0]
    seqs = [
        int(e.attributes[wire.ATTR_EVENT_SEQ]) for s in spans for e in s.events if wire.ATTR_EVENT_SEQ in e.attributes
    ]  # type: ignore[call-overload]
    if trace is None:
        return [], seqs
    assert trace.issues == [NOT_ENDED_ISSUE]
    return list(trace), seqs
