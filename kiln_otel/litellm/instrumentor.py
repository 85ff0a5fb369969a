"""`LiteLLMInstrumentor`: the same ``chat`` spans for code that calls litellm directly.

It replaces the module attributes ``litellm.completion`` and ``litellm.acompletion`` (code that did
``from litellm import completion`` before `instrument` keeps the original). Direct calls get a span
but nothing is appended to any message list: only the caller knows which list is the run's. Inside
`traced_acompletion` / `run_agent` the wrappers step aside, so no call is traced twice.

This is also the zero-code route (``opentelemetry-instrument python app.py`` loads it through the
``opentelemetry_instrumentor`` entry point): a call made outside any `traced_run` that fails records
on its chat span the messages it was sent, so its conversation can be rebuilt from the telemetry
(`kiln_otel.litellm.call_messages`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from kiln_otel.litellm._lazy import INSTALL_HINT, require_litellm
from kiln_otel.litellm.call_messages import resolve_call_messages
from kiln_otel.litellm.chat_span import Telemetry, inside_traced_call
from kiln_otel.litellm.completion import call_async, call_sync

try:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - part of the same extra as litellm
    raise ImportError(f"{INSTALL_HINT} ({exc})") from exc

__all__ = ["LiteLLMInstrumentor"]

_WRAPPED = ("completion", "acompletion")


def _wrap_sync(original: Callable[..., Any], telemetry: Telemetry) -> Callable[..., Any]:
    @functools.wraps(original)
    def completion(*args: Any, **kwargs: Any) -> Any:
        if inside_traced_call():
            return original(*args, **kwargs)
        return call_sync(original, args, kwargs, None, telemetry)

    return completion


_AsyncFunc = Callable[..., Awaitable[Any]]


def _wrap_async(original: _AsyncFunc, telemetry: Telemetry) -> _AsyncFunc:
    @functools.wraps(original)
    async def acompletion(*args: Any, **kwargs: Any) -> Any:
        if inside_traced_call():
            return await original(*args, **kwargs)
        return await call_async(original, args, kwargs, None, telemetry)

    return acompletion


class LiteLLMInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``LiteLLMInstrumentor().instrument(tracer_provider=..., meter_provider=..., record_call_messages=...)``.

    A provider not given is, for each call, the current `traced_run`'s (so a run's spans stay with
    its provider), else the global one.

    ``record_call_messages`` decides what a call outside any run records of its messages:
    ``"on_failure"`` (a failed call: what it was sent, and a broken stream's partial answer),
    ``"always"`` (successful calls too, with their answer) or ``"never"``. Not given:
    ``KILN_OTEL_RECORD_CALL_MESSAGES``, read here, else ``"on_failure"``. Inside a run nothing is
    recorded on the chat span: the run's list holds the messages.

    Honours the standard ``suppress_instrumentation`` context key. `uninstrument` puts back the very
    function objects it replaced.
    """

    _originals: dict[str, Callable[..., Any]] = {}

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("litellm >= 1.60",)

    def _instrument(self, **kwargs: Any) -> None:
        record = resolve_call_messages(kwargs.get("record_call_messages"))
        litellm = require_litellm()
        telemetry = Telemetry(kwargs.get("tracer_provider"), kwargs.get("meter_provider"), record)
        originals = {name: getattr(litellm, name) for name in _WRAPPED}
        self._originals = originals
        setattr(litellm, "completion", _wrap_sync(originals["completion"], telemetry))  # noqa: B010
        setattr(litellm, "acompletion", _wrap_async(originals["acompletion"], telemetry))  # noqa: B010

    def _uninstrument(self, **kwargs: Any) -> None:
        litellm = require_litellm()
        for name, original in self._originals.items():
            setattr(litellm, name, original)
        self._originals = {}
