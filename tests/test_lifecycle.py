"""kiln_otel.lifecycle in-process: which handlers get installed, and how open runs are ended and flushed.

The real endings (a process that exits, gets SIGTERM or SIGKILL) are in test_crash_safety.py.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kiln_otel import lifecycle, reconstruct_error, traced_run
from kiln_otel.export import configure_tracing
from tests.conftest import Tracing


@pytest.fixture
def default_sigterm() -> None:
    """SIGTERM at its OS default, as in a fresh process (the conftest fixture restores pytest's)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.usefixtures("default_sigterm")
def test_configure_tracing_handles_sigterm_where_nothing_else_does(tmp_path: Path) -> None:
    python_sigint = signal.getsignal(signal.SIGINT)
    provider, _ = configure_tracing(traces_file=tmp_path / "t.jsonl")
    try:
        assert signal.getsignal(signal.SIGTERM) == lifecycle._on_signal
        assert signal.getsignal(signal.SIGINT) is python_sigint  # Python's KeyboardInterrupt handler stays
    finally:
        provider.shutdown()


@pytest.mark.usefixtures("default_sigterm")
def test_a_default_sigint_is_handled_too(tmp_path: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    provider, _ = configure_tracing(traces_file=tmp_path / "t.jsonl")
    try:
        assert signal.getsignal(signal.SIGINT) == lifecycle._on_signal
    finally:
        provider.shutdown()


def test_an_apps_own_handler_is_never_replaced(tmp_path: Path) -> None:
    def apps_handler(signum: int, frame: FrameType | None) -> None:
        pass

    signal.signal(signal.SIGTERM, apps_handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    provider, _ = configure_tracing(traces_file=tmp_path / "t.jsonl")
    try:
        assert signal.getsignal(signal.SIGTERM) is apps_handler
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        provider.shutdown()


@pytest.mark.usefixtures("default_sigterm")
def test_handlers_can_be_declined_and_are_never_set_by_library_paths(tracing: Tracing, tmp_path: Path) -> None:
    provider, _ = configure_tracing(traces_file=tmp_path / "t.jsonl", handle_signals=False)
    try:
        with traced_run("library", tracer_provider=provider) as run:
            run.messages.append({"role": "user", "content": "x"})
        traced_run("by hand", tracer_provider=tracing.provider).end()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        provider.shutdown()


@pytest.mark.usefixtures("default_sigterm")
def test_handlers_are_installed_only_from_the_main_thread() -> None:
    installed: list[tuple[int, ...]] = []
    thread = threading.Thread(target=lambda: installed.append(lifecycle.install_signal_handlers()))
    thread.start()
    thread.join(10)
    assert installed == [()]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_open_runs_are_ended_nested_first_then_their_providers_flushed() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
    try:
        outer = traced_run("outer", tracer_provider=provider)
        outer.messages.append({"role": "user", "content": "plan"})
        with trace.use_span(outer.span, end_on_exit=False):  # the inner run is its child
            inner = traced_run("inner", tracer_provider=provider)
        inner.messages.append({"role": "user", "content": "search"})
        finished = traced_run("finished", tracer_provider=provider)
        finished.end()
        lifecycle.end_open_runs(lifecycle._exit_ending(None), bound=10)
        spans = {s.name: s for s in exporter.get_finished_spans()}  # there only because of the flush
        assert set(spans) == {"invoke_agent outer", "invoke_agent inner", "invoke_agent finished"}
        assert spans["invoke_agent inner"].end_time <= spans["invoke_agent outer"].end_time  # type: ignore[operator]
        for name in ("invoke_agent outer", "invoke_agent inner"):
            assert spans[name].status.status_code is StatusCode.ERROR
            assert spans[name].status.description == "The process exited while the run was in progress."
            assert spans[name].attributes is not None
            assert spans[name].attributes["error.type"] == "kiln_otel.errors.ProcessExitedError"
        payload = reconstruct_error(exporter.get_finished_spans(), span_id=inner.span_id)
        assert (payload.error_type, payload.trace) == ("ProcessExitedError", [{"role": "user", "content": "search"}])
        assert spans["invoke_agent finished"].status.status_code is StatusCode.UNSET
        assert reconstruct_error(exporter.get_finished_spans(), outer.trace_id).span_id == outer.span_id
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("uncaught", "error_type", "message"),
    [
        (
            ValueError("bad tool arguments"),
            "ValueError",
            "The process exited while the run was in progress: bad tool arguments",
        ),
        (KeyboardInterrupt(), "KeyboardInterrupt", "The run was cancelled."),
        (SystemExit(3), "SystemExit", "The process exited while the run was in progress."),
    ],
)
def test_at_exit_an_uncaught_exception_is_what_ended_the_run(
    tracing: Tracing, uncaught: BaseException, error_type: str, message: str
) -> None:
    run = traced_run("by hand", tracer_provider=tracing.provider)
    run.messages.append({"role": "user", "content": "x"})
    lifecycle.end_open_runs(lifecycle._exit_ending(uncaught), bound=5)
    payload = reconstruct_error(tracing.spans())
    assert (payload.error_type, payload.message) == (error_type, message)
    assert payload.trace == [{"role": "user", "content": "x"}]


def test_an_ended_run_is_no_longer_open(tracing: Tracing) -> None:
    run = traced_run("short", tracer_provider=tracing.provider)
    tracking = run._tracking
    assert tracking is not None
    assert lifecycle._open.get(tracking.key) is run
    run.end()
    assert tracking.key not in lifecycle._open
    assert not tracking.dropped.alive


def test_ending_an_open_run_does_not_wait_forever_for_a_stuck_lock(tracing: Tracing) -> None:
    run = traced_run("stuck", tracer_provider=tracing.provider)
    run.messages.append({"role": "user", "content": "x"})
    assert run._recorder is not None
    run._recorder.lock.acquire()  # as if the thread a signal interrupted were half-way in an append
    try:
        start = time.monotonic()
        lifecycle.end_open_runs(lifecycle._exit_ending(None), bound=5)
        assert time.monotonic() - start < lifecycle.LOCK_TIMEOUT_SECONDS + 2
    finally:
        run._recorder.lock.release()
    assert reconstruct_error(tracing.spans()).trace == [{"role": "user", "content": "x"}]


def drop_a_run(tracing: Tracing, name: str) -> str:
    """A hand-driven run whose code lost it before ending it (a CancelledError past ``except Exception``)."""
    run = traced_run(name, tracer_provider=tracing.provider, live_export_delay=3600)
    run.messages.append({"role": "user", "content": name})
    span_id = str(run.span_id)
    del run
    gc.collect()
    return span_id


def test_a_dropped_run_is_ended_as_abandoned_when_the_next_run_starts(tracing: Tracing) -> None:
    span_id = drop_a_run(tracing, "dropped")
    assert tracing.spans() == ()  # nothing holds the run any more, and nothing has ended it yet
    traced_run("next", tracer_provider=tracing.provider).end()
    payload = reconstruct_error(tracing.spans(), span_id=span_id)
    assert payload.error_type == "RunAbandonedError"
    assert payload.message == "The run was abandoned: it was dropped before it ended."
    assert (payload.trace, payload.trace_complete) == ([{"role": "user", "content": "dropped"}], True)


def test_a_dropped_run_is_ended_at_exit(tracing: Tracing) -> None:
    span_id = drop_a_run(tracing, "dropped at exit")
    lifecycle.end_open_runs(lifecycle._exit_ending(None), bound=5)
    payload = reconstruct_error(tracing.spans(), span_id=span_id)
    assert (payload.error_type, payload.trace) == (
        "RunAbandonedError",
        [{"role": "user", "content": "dropped at exit"}],
    )


def test_a_run_that_ended_is_not_abandoned_when_collected(tracing: Tracing) -> None:
    run = traced_run("ended", tracer_provider=tracing.provider)
    run.end()
    del run
    gc.collect()
    assert not lifecycle._dropped
