"""`traced_acompletion` / `traced_completion`: one litellm call as a ``chat`` span of the current run.

The logic lives once in `ChatCall` and `StreamState`; the sync and async entry points below differ
only in ``await``. The same two functions serve the instrumentor (``record_to=None``: a direct
``litellm.completion`` call has no message list to append to).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableSequence
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from kiln_otel._guard import report_internal_error
from kiln_otel.litellm._lazy import require_litellm
from kiln_otel.litellm.chat_span import ChatCall, Telemetry
from kiln_otel.litellm.stream import AsyncTracedStream, StreamState, TracedStream

__all__ = ["call_async", "call_sync", "traced_acompletion", "traced_completion"]


async def traced_acompletion(
    messages: MutableSequence[Any],
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **litellm_kwargs: Any,
) -> Any:
    """``litellm.acompletion(messages=messages, **litellm_kwargs)`` as a ``chat {model}`` span.

    The answer's assistant message is appended to ``messages`` (a run's `TracedMessages`, where it
    becomes the run's event, or any list) and litellm's response is returned unchanged. With
    ``stream=True`` an `AsyncTracedStream` is returned instead: it yields litellm's chunks unchanged and
    appends the assembled message when the stream ends. A failure propagates as the very exception
    litellm raised, after the span records it (redacted). Providers not given are the current
    `traced_run`'s, else the global ones.
    """
    litellm = require_litellm()
    kwargs = {**litellm_kwargs, "messages": messages}
    return await call_async(litellm.acompletion, (), kwargs, messages, Telemetry(tracer_provider, meter_provider))


def traced_completion(
    messages: MutableSequence[Any],
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **litellm_kwargs: Any,
) -> Any:
    """The synchronous `traced_acompletion` (``stream=True`` returns a `TracedStream`)."""
    litellm = require_litellm()
    kwargs = {**litellm_kwargs, "messages": messages}
    return call_sync(litellm.completion, (), kwargs, messages, Telemetry(tracer_provider, meter_provider))


def call_sync(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    record_to: MutableSequence[Any] | None,
    telemetry: Telemetry,
) -> Any:
    call, kwargs = _begin(func, args, kwargs, telemetry)
    with call.active():
        response = func(*args, **kwargs)
    return _complete(call, response, record_to, TracedStream)


async def call_async(
    func: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    record_to: MutableSequence[Any] | None,
    telemetry: Telemetry,
) -> Any:
    call, kwargs = _begin(func, args, kwargs, telemetry)
    with call.active():
        response = await func(*args, **kwargs)
    return _complete(call, response, record_to, AsyncTracedStream)


@functools.lru_cache(maxsize=16)
def _parameter_names(func: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(func).parameters)


def _request_view(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (``litellm.completion("gpt-4o", msgs)`` passes model positionally)."""
    if not args:
        return dict(kwargs)
    return {**dict(zip(_parameter_names(func), args)), **kwargs}


def _begin(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], telemetry: Telemetry
) -> tuple[ChatCall, dict[str, Any]]:
    """Start the span and point litellm's callbacks at it; if that fails, the call goes ahead untouched."""
    try:
        view = _request_view(func, args, kwargs)
        call = ChatCall.start(view, telemetry)
        if "metadata" in _parameter_names(func)[: len(args)]:
            return call, kwargs
        return call, call.litellm_kwargs(kwargs)
    except Exception as exc:
        report_internal_error("litellm call setup", exc)
        return ChatCall.inactive(), kwargs


def _is_stream(response: Any) -> bool:
    """Iterators, as their type says (the ABCs cache it per type): asking a pydantic response for an
    attribute it lacks goes through its ``__getattr__`` and an exception (~2 us)."""
    return isinstance(response, _STREAMS)


_STREAMS = (Iterator, AsyncIterator)


def _complete(
    call: ChatCall,
    response: Any,
    record_to: MutableSequence[Any] | None,
    stream_type: type[TracedStream] | type[AsyncTracedStream],
) -> Any:
    """A direct call we are not recording gets litellm's object back as-is, stream or not."""
    if not call.recording and record_to is None:
        return response
    if _is_stream(response):
        call.streaming()
        return stream_type(response, StreamState(call, record_to))
    call.answered(response, record_to)
    return response
