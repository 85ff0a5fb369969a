"""Streams that end their chat span however the caller leaves them.

The wrappers yield litellm's chunks unchanged and watch them go by. At the end of the stream the
assembled assistant message (tool calls included, via ``litellm.stream_chunk_builder``) is appended
to the caller's list. If the stream breaks part-way, what did arrive is appended first, as an
assistant message marked ``"kiln_otel_partial": true`` (`wire.PARTIAL_MESSAGE_KEY`), so the trace a
failed run leaves behind shows how far the model got. A stream the caller closes, leaves with
``break`` or drops ends its span as abandoned: nothing is appended then, since the caller chose to
stop reading and a garbage collector must not edit their list at some arbitrary later moment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableSequence
from types import TracebackType
from typing import Any

from kiln_otel import wire
from kiln_otel._guard import report_internal_error
from kiln_otel.encoding import _field, to_jsonable
from kiln_otel.litellm._lazy import require_litellm
from kiln_otel.litellm.chat_span import ChatCall, assistant_message

__all__ = ["AsyncTracedStream", "StreamState", "TracedStream"]


def _reports_usage(chunk: Any) -> bool:
    """Did the provider itself count tokens in this chunk?

    Only a chunk's own ``usage`` field says so. Without ``stream_options={"include_usage": True}``
    litellm (1.110) still puts a plain ``Usage`` in the last chunk's ``_hidden_params["usage"]``: its
    local tokenizer estimate, indistinguishable by type from a real count.
    """
    return getattr(chunk, "usage", None) is not None


def _has_content(message: Any) -> bool:
    return bool(_field(message, "content") or _field(message, "tool_calls"))


class StreamState:
    """The chunks seen so far and the one place a stream's ending is decided (first ending wins)."""

    def __init__(self, call: ChatCall, record_to: MutableSequence[Any] | None) -> None:
        self.call = call
        self.record_to = record_to
        self.chunks: list[Any] = []
        self.response: Any = None
        self.done = False

    def received(self, chunk: Any) -> None:
        if not self.chunks:
            self.call.first_chunk()
        self.chunks.append(chunk)

    def finished(self) -> None:
        if self._claim():
            self.response = self._assemble()
            estimated = not any(_reports_usage(chunk) for chunk in self.chunks)
            self.call.answered(self.response, self.record_to, estimated=estimated)

    def failed(self, exc: BaseException) -> None:
        """Append what arrived BEFORE the error propagates: the caller's list is the run's trace.

        Outside a run the chat span records it too, after the messages the call was sent.
        """
        if self._claim():
            partial = self._partial_message(exc)
            if partial is not None and self.record_to is not None:
                self.record_to.append(partial)
            self.call.failed(exc, partial)

    def abandoned(self) -> None:
        if self._claim():
            self.call.abandoned()

    def stopped(self, exc: BaseException) -> None:
        """What iteration raising ``exc`` means: the end, a failure, or (cancelled, interrupted) a caller gone."""
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.finished()
        elif isinstance(exc, Exception):
            self.failed(exc)
        else:
            self.abandoned()

    def _claim(self) -> bool:
        if self.done:
            return False
        self.done = True
        return True

    def _assemble(self) -> Any:
        if not self.chunks:
            return None
        try:
            return require_litellm().stream_chunk_builder(self.chunks)
        except Exception as exc:
            report_internal_error("StreamState._assemble", exc)
            return None

    def _partial_message(self, exc: BaseException) -> dict[str, Any] | None:
        message = assistant_message(self._assemble())
        if message is not None and _has_content(message):
            partial = to_jsonable(message)
        else:
            text = getattr(exc, "generated_content", None)
            if not isinstance(text, str) or not text:
                return None
            partial = {"role": "assistant", "content": text}
        if not isinstance(partial, dict):
            return None
        partial[wire.PARTIAL_MESSAGE_KEY] = True
        return partial


class _StreamWrapper:
    """What the sync and async wrappers share: the state, the finalizer and attribute pass-through."""

    def __init__(self, inner: Any, state: StreamState) -> None:
        self._inner = inner
        self._state = state

    @property
    def response(self) -> Any:
        """The assembled ``ModelResponse`` once the stream has ended normally, else None."""
        return self._state.response

    def __getattr__(self, name: str) -> Any:
        """Anything else is litellm's ``CustomStreamWrapper``'s, so code that pokes at it keeps working."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __del__(self) -> None:
        state = self.__dict__.get("_state")
        if state is not None and not state.done:
            state.abandoned()


class TracedStream(_StreamWrapper):
    """A litellm stream (``completion(stream=True)``) whose chat span ends however iteration ends."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._inner)
        except BaseException as exc:
            self._state.stopped(exc)
            raise
        self._state.received(chunk)
        return chunk

    def close(self) -> None:
        """End the span as abandoned (if still open) and release litellm's HTTP stream."""
        self._state.abandoned()
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncTracedStream(_StreamWrapper):
    """A litellm stream (``acompletion(stream=True)``) whose chat span ends however iteration ends."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._inner.__anext__()
        except BaseException as exc:
            self._state.stopped(exc)
            raise
        self._state.received(chunk)
        return chunk

    async def aclose(self) -> None:
        """End the span as abandoned (if still open) and release litellm's HTTP stream."""
        self._state.abandoned()
        close = getattr(self._inner, "aclose", None)
        if callable(close):
            await close()

    async def __aenter__(self) -> AsyncTracedStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
