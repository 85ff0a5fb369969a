"""Kiln: every adapter run a kiln-otel run, with Kiln's own behaviour left exactly as it was.

Two routes, one recording (docs/kiln.md shows both):

- Zero code: ``KilnInstrumentor().instrument()`` (also found by ``opentelemetry-instrument`` through
  the ``opentelemetry_instrumentor`` entry point).
- Explicit: Kiln's base adapter creates an `AdapterRun` where it creates its ``trace_ref`` list.

What "unchanged" means here, and why each choice:

- Kiln's errors stay Kiln's. Kiln's server, eval runner and MCP adapter check
  ``kiln_ai.adapters.errors.KilnRunError`` by class, and its retry logic unwraps ``.original``; so a
  failure is only *observed* (recorded on the run span) and re-raised as the very object Kiln raised,
  never wrapped, replaced or re-typed. Its message, ``error_type`` and ``partial_trace`` (built by
  Kiln's own ``_messages_to_trace``, None when nothing was recorded) are Kiln's, and so is the
  HTTP 500 body its server makes of them.
- The message list records itself. Kiln's ``_run`` gets a `TracedMessages` instead of the plain list
  (Kiln deep-copies it before each model call and assigns it to itself after each turn; both record
  nothing), and when ``_run`` leaves, Kiln's own list is given the same content, so the base
  adapter's error handling reads the list it always read.
- Telemetry ends as Kiln's error does. Messages are recorded as Kiln appends them; when a run fails,
  its list is set to the ``partial_trace`` Kiln built with its own ``_messages_to_trace`` (only the
  messages Kiln converted are re-recorded), so ``reconstruct_error`` rebuilds the payload Kiln's
  handler served, key for key, without kiln-otel ever calling Kiln's conversion itself.
- The only additions are on the side: ``trace_id`` / ``span_id`` attributes on Kiln's error object,
  which Kiln never reads, so an app that opts in (kiln-otel's FastAPI handler, `error_with_trace`)
  can link to the run.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from kiln_otel import wire
from kiln_otel._guard import logger, report_internal_error
from kiln_otel.error_messages import format_error_message, safe_text
from kiln_otel.messages import TracedMessages
from kiln_otel.run import TracedRun

try:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"kiln_otel.kiln needs opentelemetry-instrumentation: pip install 'kiln-otel[kiln]' ({exc})"
    ) from exc

__all__ = ["INSTALL_HINT", "AdapterRun", "KilnInstrumentor"]

INSTALL_HINT = "kiln_otel.kiln instruments Kiln's adapters: pip install kiln-ai 'kiln-otel[kiln]'"

_RUN_OPTIONS = ("capture_content", "max_message_bytes", "max_span_bytes", "redact")

_active: ContextVar[AdapterRun | None] = ContextVar("kiln_otel_kiln_adapter_run", default=None)


def _require_kiln() -> Any:
    """Kiln's adapter modules, imported only when asked for: importing kiln_otel must stay cheap.

    A ModuleNotFoundError, so that ``opentelemetry-instrument`` (which loads every registered
    instrumentor) skips this one quietly in an app without Kiln instead of logging a traceback.
    """
    try:
        from kiln_ai.adapters.model_adapters import adapter_stream, base_adapter
    except ImportError as missing:
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({missing})", name=missing.name) from missing
    return base_adapter, adapter_stream


# --- one adapter run -------------------------------------------------------------------------------
def _run_name(adapter: Any) -> str | None:
    name = getattr(getattr(adapter, "task", None), "name", None)
    return name if isinstance(name, str) and name else None


def _model_attributes(adapter: Any) -> tuple[str | None, dict[str, Any]]:
    run_config = getattr(adapter, "run_config", None)
    provider = getattr(run_config, "model_provider_name", None)
    provider = getattr(provider, "value", provider)  # Kiln's ModelProviderName is an Enum
    model = getattr(run_config, "model_name", None)
    attributes = {wire.ATTR_GEN_AI_REQUEST_MODEL: model} if isinstance(model, str) and model else {}
    return (provider if isinstance(provider, str) and provider else None), attributes


def _is_run_error(exc: BaseException) -> bool:
    """Kiln's ``KilnRunError`` or kiln-otel's: anything carrying a run's trace and the real exception."""
    return hasattr(exc, "partial_trace") and isinstance(getattr(exc, "original", None), BaseException)


class AdapterRun:
    """One Kiln adapter run as a kiln-otel run that observes Kiln's errors and never touches them.

    Explicit adoption in Kiln's base adapter (the full patch is in docs/kiln.md)::

        otel_run = AdapterRun(self)
        trace_ref: list[ChatCompletionMessageParam] = otel_run.messages
        try:
            ...                       # Kiln's code, unchanged
        except KilnRunError as e:
            otel_run.fail(e)
            raise
        ...
        finally:
            otel_run.end()

    The run span starts when the object is made and is the current span until `end` (so litellm's
    and the tools' spans nest under it); `end` must therefore run in the same task, as a ``finally``
    of the same function does (``make_current=False`` leaves the context alone). ``options`` are
    `TracedRun`'s (``redact``, ``capture_content``, ...). If kiln-otel itself fails to start the run,
    the failure is logged and `messages` is a list that records nothing: Kiln's run goes on.
    """

    def __init__(
        self,
        adapter: Any,
        *,
        tracer_provider: TracerProvider | None = None,
        make_current: bool = True,
        **options: Any,
    ) -> None:
        self.adapter = adapter
        self.bound = False
        """Whether Kiln's list has been swapped for `messages` (once per run: the first ``_run``)."""
        self.run: TracedRun | None = None
        self._token: object | None = None
        self._ended = False
        try:
            self.run = self._start(tracer_provider, options)
            if make_current:
                self._token = otel_context.attach(trace.set_span_in_context(self.run.span))
        except Exception as internal:
            report_internal_error("AdapterRun.__init__", internal)
        self._messages = self.run.messages if self.run is not None else TracedMessages()

    def _start(self, tracer_provider: TracerProvider | None, options: dict[str, Any]) -> TracedRun:
        provider_name, attributes = _model_attributes(self.adapter)
        return TracedRun(
            _run_name(self.adapter),
            provider_name=provider_name,
            attributes=attributes,
            tracer_provider=tracer_provider,
            **options,
        )

    @property
    def messages(self) -> TracedMessages:
        """The list Kiln's adapter appends to (its ``trace_ref``): a real list that records itself."""
        return self._messages

    @property
    def trace_id(self) -> str | None:
        return self.run.trace_id if self.run is not None else None

    @property
    def span_id(self) -> str | None:
        return self.run.span_id if self.run is not None else None

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` on the run span and end the run; ``exc`` itself is left as it is.

        For a run error (Kiln's ``KilnRunError``, or kiln-otel's) the span gets the error's own
        message, Kiln's user-facing text, and the exception it wraps, so ``reconstruct_error`` gives
        back Kiln's ``message`` and ``error_type``. The error object gains ``trace_id`` / ``span_id``
        (the innermost failed run's, when runs nest), which Kiln never reads; and that run's list
        ends as the error's ``partial_trace`` (see `_end_as_kilns_trace`).
        """
        if not self._ended and self.run is not None:
            try:
                self._record(self.run, exc)
            except Exception as internal:
                report_internal_error("AdapterRun.fail", internal)
        self.end()

    def _record(self, run: TracedRun, exc: BaseException) -> None:
        redact = run.settings.redact
        if _is_run_error(exc):
            original: BaseException = exc.original  # type: ignore[attr-defined]
            message = safe_text(exc)
            description = redact(message) if redact is not None else message
            if getattr(exc, "trace_id", None) is None and run.trace_id is not None:
                exc.trace_id = run.trace_id  # type: ignore[attr-defined]
                exc.span_id = run.span_id  # type: ignore[attr-defined]
                _end_as_kilns_trace(run, exc.partial_trace)  # type: ignore[attr-defined]
        else:
            original = exc
            description = format_error_message(exc, redact=redact)
        run._fail_as(original, description)

    def end(self) -> None:
        """End the run (successful unless `fail` came first). Later calls do nothing."""
        if self._ended:
            return
        self._ended = True
        if self.run is not None:
            self.run.end()
        if self._token is not None:
            try:
                otel_context.detach(self._token)  # type: ignore[arg-type]
            except Exception as internal:
                report_internal_error("AdapterRun.end", internal)
            self._token = None


def _end_as_kilns_trace(run: TracedRun, partial_trace: Any) -> None:
    """Make the recorded list end as the trace Kiln put in its error, so the rebuild equals Kiln's payload.

    Messages are recorded as Kiln appends them (litellm ``Message`` objects included: a run killed
    half-way keeps them). Kiln then builds its error's trace with the adapter's own
    ``_messages_to_trace``, which may convert some (litellm's assistant messages become Kiln's dicts)
    or fail (Kiln then serves no trace). Assigning that trace to the list records only what differs:
    a delete and an insert per converted message, or one delete when Kiln serves none. Every message
    event stays in the telemetry; the list's final state, what ``reconstruct_error`` rebuilds, is
    Kiln's. Nothing of Kiln's is called or changed: the list is no longer Kiln's to use.
    """
    if partial_trace is run.messages:  # Kiln's base adapter hands back the very list
        return
    is_trace = isinstance(partial_trace, Sequence) and not isinstance(partial_trace, (str, bytes))
    run.messages[:] = list(partial_trace) if is_trace else []


# --- what the instrumentor puts in Kiln's place ------------------------------------------------------
def _start(adapter: Any, options: dict[str, Any]) -> AdapterRun | None:
    """The run, or None when kiln-otel could not start one (logged): Kiln's own code then runs bare."""
    adapter_run = AdapterRun(adapter, **options)
    return adapter_run if adapter_run.run is not None else None


def _wrap_invoke(original: Callable[..., Any], patches: _Patches, options: dict[str, Any]) -> Callable[..., Any]:
    """``invoke_returning_run_output``: every non-streaming run, ``invoke`` included, passes here."""

    @functools.wraps(original)
    async def invoke_returning_run_output(self: Any, *args: Any, **kwargs: Any) -> Any:
        current = _active.get()
        if current is not None and current.adapter is self:  # an override calling super(): one run
            return await original(self, *args, **kwargs)
        patches.wrap_run_of(type(self))
        adapter_run = _start(self, options)
        if adapter_run is None:
            return await original(self, *args, **kwargs)
        token = _active.set(adapter_run)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            adapter_run.fail(exc)
            raise
        finally:
            _active.reset(token)
            adapter_run.end()
        return result

    return invoke_returning_run_output


def _wrap_run(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_run``: hand Kiln's adapter the recording list, and give Kiln's own list its content back."""

    @functools.wraps(original)
    async def _run(self: Any, input: Any, trace_ref: Any, *args: Any, **kwargs: Any) -> Any:
        adapter_run = _active.get()
        if adapter_run is None or adapter_run.adapter is not self or adapter_run.bound or type(trace_ref) is not list:
            return await original(self, input, trace_ref, *args, **kwargs)
        adapter_run.bound = True
        recording = adapter_run.messages
        recording.extend(trace_ref)
        try:
            return await original(self, input, recording, *args, **kwargs)
        finally:
            list.__setitem__(trace_ref, slice(None), recording)

    return _run


def _wrap_stream_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """``AdapterStream.__init__``: a stream's message list is handed in like ``trace_ref``."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        adapter_run = _active.get()
        if adapter_run is not None and not adapter_run.bound:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                bound = None
            initial = bound.arguments.get("initial_messages") if bound is not None else None
            if bound is not None and bound.arguments.get("adapter") is adapter_run.adapter and type(initial) is list:
                adapter_run.bound = True
                adapter_run.messages.extend(initial)
                bound.arguments["initial_messages"] = adapter_run.messages
                original(*bound.args, **bound.kwargs)
                return
        original(self, *args, **kwargs)

    return __init__


def _wrap_stream_iter(original: Callable[..., AsyncIterator[Any]], options: dict[str, Any]) -> Callable[..., Any]:
    """``OpenAIStreamResult.__aiter__`` / ``AiSdkStreamResult.__aiter__``: one run per iteration.

    The run is the current span only while Kiln's generator runs (one step at a time), never across a
    ``yield``: the consumer's code between chunks is not part of the run. Kiln's streams raise the
    provider's exception itself (no KilnRunError); it is recorded and re-raised as it is. A stream the
    consumer stops early ends the run unfailed, marked ``kiln_otel.stream.abandoned``.
    """

    @functools.wraps(original)
    async def __aiter__(self: Any) -> AsyncIterator[Any]:
        inner = original(self)
        adapter_run = _start(getattr(self, "_adapter", None), {**options, "make_current": False})
        try:
            while True:
                with _step(adapter_run):
                    try:
                        item = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                yield item
        except GeneratorExit:
            with _step(adapter_run):
                await inner.aclose()  # type: ignore[attr-defined]
            if adapter_run is not None:
                _abandoned(adapter_run)
            raise
        except BaseException as exc:
            if adapter_run is not None:
                adapter_run.fail(exc)
            raise
        finally:
            if adapter_run is not None:
                adapter_run.end()

    return __aiter__


@contextmanager
def _step(adapter_run: AdapterRun | None) -> Iterator[None]:
    """The run as the context's run and current span for one step of a stream."""
    if adapter_run is None:
        yield
        return
    token = _active.set(adapter_run)
    span = adapter_run.run.span if adapter_run.run is not None else trace.INVALID_SPAN
    span_token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(span_token)
        _active.reset(token)


def _abandoned(adapter_run: AdapterRun) -> None:
    try:
        if adapter_run.run is not None:
            adapter_run.run.span.set_attribute(wire.ATTR_STREAM_ABANDONED, True)
    except Exception as internal:
        report_internal_error("KilnInstrumentor.abandoned", internal)


# --- patching and restoring exactly ---------------------------------------------------------------
class _Patches:
    """Every attribute replaced on a Kiln class, with what was there, so `restore` puts it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replaced: list[tuple[type, str, Any, Any]] = []
        self._run_classes: set[type] = set()

    def replace(self, owner: type, name: str, wrapper: Any) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, wrapper)
        self._replaced.append((owner, name, original, wrapper))

    def wrap_run_of(self, cls: type) -> None:
        """Wrap the ``_run`` this adapter class uses, the first time one of its runs starts.

        Lazily, because adapter classes are defined after `instrument` (Kiln's own tests do this),
        and only a real function: a test's mock is left alone.
        """
        owner = next((klass for klass in cls.__mro__ if "_run" in klass.__dict__), None)
        if owner is None or owner in self._run_classes:
            return
        with self._lock:
            if owner in self._run_classes:
                return
            self._run_classes.add(owner)
            current = owner.__dict__["_run"]
            if inspect.iscoroutinefunction(current):
                self.replace(owner, "_run", _wrap_run(current))

    def restore(self) -> None:
        with self._lock:
            for owner, name, original, wrapper in reversed(self._replaced):
                if owner.__dict__.get(name) is wrapper:
                    setattr(owner, name, original)
                else:
                    logger.warning("kiln-otel: %s.%s was replaced after instrument(); left as it is", owner, name)
            self._replaced.clear()
            self._run_classes.clear()


def _adapter_classes(base: type) -> list[type]:
    """``base`` and every subclass defined so far, parents first."""
    found: list[type] = []
    pending = [base]
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def _import_adapters() -> None:
    """Kiln's adapter modules that override ``invoke_returning_run_output`` must exist to be wrapped."""
    for module in ("mcp_adapter", "jev_adapter", "litellm_adapter"):
        try:
            __import__(f"kiln_ai.adapters.model_adapters.{module}")
        except ImportError:
            continue


class KilnInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``KilnInstrumentor().instrument(tracer_provider=...)``: every Kiln adapter run is traced.

    Patches ``invoke_returning_run_output`` of Kiln's ``BaseAdapter`` and of every adapter class that
    overrides it (``invoke`` goes through it), the ``__aiter__`` of both stream results
    (``invoke_openai_stream`` / ``invoke_ai_sdk_stream``), ``AdapterStream.__init__`` (where a stream's
    message list is handed in), and, at an adapter class's first run, the ``_run`` it uses.
    `uninstrument` puts every one of those attributes back, the very objects that were there.

    Keyword arguments besides ``tracer_provider``: ``capture_content``, ``max_message_bytes``,
    ``max_span_bytes``, ``redact`` (as for `traced_run`).
    """

    _patches: _Patches | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("kiln-ai >= 1.1",)

    def _instrument(self, **kwargs: Any) -> None:
        base_adapter, adapter_stream = _require_kiln()
        _import_adapters()
        options = {name: kwargs[name] for name in ("tracer_provider", *_RUN_OPTIONS) if name in kwargs}
        patches = _Patches()
        for cls in _adapter_classes(base_adapter.BaseAdapter):
            if "invoke_returning_run_output" in cls.__dict__:
                original = cls.__dict__["invoke_returning_run_output"]
                patches.replace(cls, "invoke_returning_run_output", _wrap_invoke(original, patches, options))
        for result in (base_adapter.OpenAIStreamResult, base_adapter.AiSdkStreamResult):
            patches.replace(result, "__aiter__", _wrap_stream_iter(result.__dict__["__aiter__"], options))
        stream_cls = adapter_stream.AdapterStream
        patches.replace(stream_cls, "__init__", _wrap_stream_init(stream_cls.__dict__["__init__"]))
        self._patches = patches

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patches is not None:
            self._patches.restore()
            self._patches = None
