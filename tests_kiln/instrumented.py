"""Run Kiln's own tests with kiln-otel on (``pytest -p tests_kiln.instrumented``), by either route.

``KILN_OTEL_ROUTE=instrumentor`` (the default) calls ``KilnInstrumentor().instrument()`` before any
test module is imported; ``KILN_OTEL_ROUTE=explicit`` expects Kiln's adapters to carry docs/kiln.md's
patch and only sets the global tracer provider they use. Either way every span is exported to memory
and kiln-otel is held to its promises while Kiln's tests run unchanged around it:

- no run span is left open (checked after every test, and for the whole session);
- every Kiln ``KilnRunError`` a run ends with rebuilds from the exported spans to the payload Kiln's
  own server would serve for it (``message``, ``error_type``, ``trace``);
- ``uninstrument`` at the end puts back the very attributes ``instrument`` replaced (instrumentor);
  the patched adapters are the ones imported (explicit).

A broken promise fails the session (exit status 1) after Kiln's own tests ran, with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import kiln as kiln_otel_kiln
from kiln_otel import reconstruct_error, wire

_RUN_PREFIX = wire.OPERATION_INVOKE_AGENT
ROUTE = os.environ.get("KILN_OTEL_ROUTE", "instrumentor")


class _OpenSpans(SpanProcessor):
    """Which kiln-otel run spans started and have not ended yet."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self.started = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.name.startswith(_RUN_PREFIX):
            self.started += 1
            self.open[span.get_span_context().span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None:
            self.open.pop(span.context.span_id, None)


def kiln_payload(error: Any) -> dict[str, Any]:
    """The body Kiln's server handler (``kiln_server.custom_errors``) builds from a KilnRunError."""
    from kiln_ai.adapters.errors import ErrorWithTrace

    body = ErrorWithTrace(message=str(error), error_type=error.error_type, trace=error.partial_trace)
    return body.model_dump(mode="json")  # type: ignore[no-any-return]


class _Promises:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.open_spans = _OpenSpans()
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.open_spans)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.instrumentor = kiln_otel_kiln.KilnInstrumentor()
        self.originals: dict[tuple[type, str], Any] = {}
        self.failures: list[BaseException] = []
        self.rebuilt_equal = 0
        self.problems: list[str] = []
        self.runs_failed = 0

    def start(self) -> None:
        if ROUTE == "explicit":
            from kiln_ai.adapters.model_adapters import base_adapter, mcp_adapter

            if not (hasattr(base_adapter, "AdapterRun") and hasattr(mcp_adapter, "AdapterRun")):
                self.problems.append(f"docs/kiln.md's patch is not in the imported {base_adapter.__file__}")
            trace.set_tracer_provider(self.provider)
        else:
            self.instrument()
        self.observe_failures()

    def instrument(self) -> None:
        from kiln_ai.adapters.model_adapters import adapter_stream, base_adapter, mcp_adapter

        watched = [
            (base_adapter.BaseAdapter, "invoke_returning_run_output"),
            (mcp_adapter.MCPAdapter, "invoke_returning_run_output"),
            (base_adapter.OpenAIStreamResult, "__aiter__"),
            (base_adapter.AiSdkStreamResult, "__aiter__"),
            (adapter_stream.AdapterStream, "__init__"),
        ]
        self.originals = {(cls, name): cls.__dict__[name] for cls, name in watched}
        self.instrumentor.instrument(tracer_provider=self.provider)
        replaced = [key for key, value in self.originals.items() if key[0].__dict__[key[1]] is value]
        if replaced:
            self.problems.append(f"instrument() left these unpatched: {replaced}")

    def observe_failures(self) -> None:
        fail = kiln_otel_kiln.AdapterRun.fail

        def observed_fail(run: kiln_otel_kiln.AdapterRun, exc: BaseException) -> None:
            fail(run, exc)
            self.runs_failed += 1
            if kiln_otel_kiln._is_run_error(exc):
                self.failures.append(exc)

        kiln_otel_kiln.AdapterRun.fail = observed_fail  # type: ignore[method-assign]
        self._fail = fail

    def check_test(self, nodeid: str) -> None:
        if self.open_spans.open:
            self.problems.append(f"{nodeid}: run spans left open: {sorted(self.open_spans.open.values())}")
            self.open_spans.open.clear()
        spans = self.exporter.get_finished_spans()
        seen: set[int] = set()
        for error in self.failures:
            if id(error) in seen:  # a nested run's error passes through its parents too
                continue
            seen.add(id(error))
            self._check_rebuild(nodeid, error, spans)
        self.failures.clear()
        self.exporter.clear()

    def _check_rebuild(self, nodeid: str, error: Any, spans: tuple[ReadableSpan, ...]) -> None:
        try:
            expected = kiln_payload(error)
        except Exception as exc:  # Kiln's own handler could not serve this error either
            self.problems.append(f"{nodeid}: Kiln's ErrorWithTrace rejects its own error ({exc!r})")
            return
        rebuilt = reconstruct_error(spans, error.trace_id, span_id=error.span_id)
        got = rebuilt.model_dump(mode="json", include={"message", "error_type", "trace"})
        if got != expected:
            self.problems.append(
                f"{nodeid}: rebuilt payload differs from Kiln's:\n  kiln:    {json.dumps(expected)[:2000]}"
                f"\n  rebuilt: {json.dumps(got)[:2000]}"
            )
            return
        self.rebuilt_equal += 1

    def finish(self) -> None:
        kiln_otel_kiln.AdapterRun.fail = self._fail  # type: ignore[method-assign]
        if ROUTE != "explicit":
            self.uninstrument()

    def uninstrument(self) -> None:
        self.instrumentor.uninstrument()
        changed = [key for key, value in self.originals.items() if key[0].__dict__[key[1]] is not value]
        if changed:
            self.problems.append(f"uninstrument() did not restore: {changed}")


_promises = _Promises()


def pytest_configure(config: pytest.Config) -> None:
    _promises.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    yield
    _promises.check_test(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _promises.finish()
    if _promises.open_spans.open:
        _promises.problems.append(f"run spans open at the end: {sorted(_promises.open_spans.open.values())}")
    if _promises.problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    p = _promises
    terminalreporter.write_line(
        f"kiln-otel ({ROUTE}): {p.open_spans.started} adapter runs traced, {p.runs_failed} failed, "
        f"{p.rebuilt_equal} Kiln errors rebuilt equal from telemetry, "
        f"{len(p.open_spans.open)} run spans left open"
    )
    for problem in p.problems:
        terminalreporter.write_line(f"kiln-otel PROBLEM: {problem}", red=True)
