"""One tracer per (provider, scope): ``trace.get_tracer`` builds a scope and a tracer (~5-15 us) on
every call, which a run and each of its model calls would otherwise pay."""

from __future__ import annotations

import contextlib
import weakref

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from kiln_otel.version import __version__

__all__ = ["tracer_for"]

_tracers: weakref.WeakKeyDictionary[TracerProvider, dict[str, Tracer]] = weakref.WeakKeyDictionary()


def tracer_for(scope: str, provider: TracerProvider | None) -> Tracer:
    """kiln-otel's tracer named ``scope`` from ``provider`` (the global one when None)."""
    resolved = provider if provider is not None else trace.get_tracer_provider()
    try:
        return _tracers[resolved][scope]
    except (KeyError, TypeError):
        tracer = trace.get_tracer(scope, __version__, resolved)
        with contextlib.suppress(TypeError):  # a provider that cannot be weakly referenced: no cache
            _tracers.setdefault(resolved, {})[scope] = tracer
        return tracer
