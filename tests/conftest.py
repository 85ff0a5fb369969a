"""Fixtures every test module shares: a private tracer provider per test, strict internal errors."""

from __future__ import annotations

import asyncio
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import _guard

pytest_plugins = ["tests.backends"]

# Two cores shared with builds and backends: generation speed and timing are not what we test.
settings.register_profile(
    "kiln-otel", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("kiln-otel")

# litellm fetches a price map over the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def span(self, name: str) -> ReadableSpan:
        matches = [s for s in self.spans() if s.name == name]
        assert len(matches) == 1, f"expected one span named {name!r}, got {[s.name for s in self.spans()]}"
        return matches[0]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """Never the global provider: each test reads only its own spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture(autouse=True)
def _strict_internal_errors() -> Iterator[None]:
    """kiln-otel swallows its own errors in apps; in its tests they must fail loudly."""
    _guard.set_strict(True)
    yield
    _guard.set_strict(False)
    _guard._reported.clear()


def close_implicit_event_loop() -> None:
    """litellm's sync path calls ``asyncio.get_event_loop()``, which leaves an implicit, never-closed
    loop on the main thread; the next ``asyncio.run`` drops it and its ResourceWarning then fails
    whichever test the garbage collector happens to run in. Close it while we still know whose it is."""
    policy = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = policy.get_event_loop()
    except RuntimeError:
        return
    if not loop.is_running():
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """configure_tracing handles SIGTERM (and a default SIGINT): what one test installs stays in it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _no_leftover_event_loop() -> Iterator[None]:
    yield
    close_implicit_event_loop()
