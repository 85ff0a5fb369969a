"""Fixtures every test module shares: a private tracer provider per test, strict internal errors."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import _guard

# TEMP until tests/backends.py lands
pytest_plugins = ["tests.backends"] if importlib.util.find_spec("tests.backends") else []

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
