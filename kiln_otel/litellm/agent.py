"""`run_agent`: the reference tool-calling loop, traced the way kiln-otel expects a run to look.

Every model call is a ``chat`` span, every tool call an ``execute_tool`` span, every message an
event on the run. The loop keeps the trace honest when it fails: each tool call gets an answer
(a result or an error message) before anything is raised, so a failed run's partial trace never
ends on tool calls nobody answered.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel._guard import report_internal_error
from kiln_otel._tracers import tracer_for
from kiln_otel.bounded import bound_text
from kiln_otel.config import Settings, resolve_settings
from kiln_otel.encoding import _field, serialize
from kiln_otel.error_messages import safe_text
from kiln_otel.litellm._lazy import require_litellm
from kiln_otel.litellm.chat_span import INSTRUMENTATION_SCOPE, Telemetry, assistant_message
from kiln_otel.litellm.completion import call_async
from kiln_otel.litellm.stream import AsyncTracedStream
from kiln_otel.run import current_run
from kiln_otel.span_errors import record_failure

__all__ = ["OnToolError", "ToolHandler", "run_agent"]

ToolHandler = Callable[..., Any]
"""Called with the tool call's parsed JSON arguments as keyword arguments; sync or async."""
OnToolError = Literal["return_to_model", "fail_run"]

_PRIVATE_KEYS = frozenset({wire.TOOL_ERROR_KEY, wire.TOOL_ERROR_MESSAGE_KEY, wire.PARTIAL_MESSAGE_KEY})
"""Keys this loop writes into messages for the trace; providers that validate messages reject them."""


async def run_agent(
    model: str,
    messages: MutableSequence[Any],
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_handlers: Mapping[str, ToolHandler],
    max_turns: int = 10,
    max_tool_calls_per_turn: int = 30,
    on_tool_error: OnToolError = "return_to_model",
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    **litellm_kwargs: Any,
) -> Any:
    """Call the model, run the tools it asks for, repeat; return its final assistant message.

    ``messages`` is used in place (pass ``run.messages`` inside a `traced_run`; this does not start a
    run itself): each assistant message and one ``tool`` message per tool call, in tool-call order,
    are appended as they happen. Tools of one turn run concurrently; sync handlers in threads.
    ``stream=True`` in ``litellm_kwargs`` streams each model call (a broken stream leaves its partial
    message in ``messages``).

    ``on_tool_error`` decides what an unknown tool, arguments that are not a JSON object, or a
    handler that raises does to the run. Either way the failed call is answered with a tool message
    ``{"role": "tool", "tool_call_id", "content": <error text>, "is_error": true, "error_message"}``
    (the text redacted like the run's events), and its ``execute_tool`` span is marked ERROR:

    - ``"return_to_model"`` (default): the model reads the error next turn and can recover.
    - ``"fail_run"``: after the whole turn's tool messages are appended, the first failure is raised
      (a handler's own exception object; ValueError for an unknown tool or bad arguments).

    Raises RuntimeError past ``max_turns`` model calls or ``max_tool_calls_per_turn`` calls in one turn.
    ``tracer_provider`` / ``meter_provider`` default to the current run's, then the global ones.
    """
    if on_tool_error not in ("return_to_model", "fail_run"):
        raise ValueError(f"on_tool_error must be 'return_to_model' or 'fail_run', got {on_tool_error!r}")
    telemetry = Telemetry(tracer_provider, meter_provider)
    tools_runner = _ToolRunner(tool_handlers, telemetry, _settings())
    request = {**litellm_kwargs, "model": model, **({"tools": list(tools)} if tools else {})}
    for _ in range(max_turns):
        message = await _model_turn(messages, request, telemetry)
        calls = list(_field(message, "tool_calls") or ())
        if not calls:
            return message
        if len(calls) > max_tool_calls_per_turn:
            raise RuntimeError(
                f"Too many tool calls in one turn ({len(calls)} > max {max_tool_calls_per_turn}). "
                "Stopping so the run does not use too many tokens."
            )
        outcomes = await asyncio.gather(*(tools_runner.run(call) for call in calls))
        messages.extend(outcome.message for outcome in outcomes)
        failure = next((o.error for o in outcomes if o.error is not None), None)
        if failure is not None and on_tool_error == "fail_run":
            raise failure
    raise RuntimeError(f"Too many turns (max {max_turns}). Stopping so the run does not use too many tokens.")


def _settings() -> Settings:
    """The run's capture and redaction settings; outside a run, the environment's."""
    run = current_run()
    return run.settings if run is not None else resolve_settings()


def _for_model(messages: Sequence[Any]) -> list[Any]:
    """What the provider is sent: the history without the keys kiln-otel adds for the trace."""
    return [
        {k: v for k, v in m.items() if k not in _PRIVATE_KEYS}
        if isinstance(m, dict) and not _PRIVATE_KEYS.isdisjoint(m)
        else m
        for m in messages
    ]


async def _model_turn(messages: MutableSequence[Any], request: dict[str, Any], telemetry: Telemetry) -> Any:
    litellm = require_litellm()
    kwargs = {**request, "messages": _for_model(messages)}
    answer = await call_async(litellm.acompletion, (), kwargs, messages, telemetry)
    if isinstance(answer, AsyncTracedStream):
        async for _ in answer:
            pass
        answer = answer.response
    message = assistant_message(answer)
    if message is None:
        raise RuntimeError("The model returned no message.")
    return message


@dataclass(frozen=True)
class _Outcome:
    message: dict[str, Any]
    error: Exception | None = None


class _ToolRunner:
    """Runs one tool call in its ``execute_tool`` span and turns any failure into a tool message."""

    def __init__(self, handlers: Mapping[str, ToolHandler], telemetry: Telemetry, settings: Settings) -> None:
        self._handlers = handlers
        provider = telemetry.in_run().tracer_provider
        self._tracer: Tracer = tracer_for(INSTRUMENTATION_SCOPE, provider)
        self._settings = settings

    async def run(self, call: Any) -> _Outcome:
        call_id = str(_field(call, "id") or "")
        function = _field(call, "function")
        name = str(_field(function, "name") or "")
        arguments = _field(function, "arguments")
        span = self._start_span(call_id, name)
        token = otel_context.attach(trace.set_span_in_context(span))
        cut: list[str] = []
        try:
            self._capture(span, wire.ATTR_GEN_AI_TOOL_CALL_ARGUMENTS, arguments, cut)
            try:
                handler, parsed = self._resolve(name, arguments)
            except ValueError as exc:
                return self._failure(span, call_id, exc, safe_text(exc))
            try:
                result = await _invoke(handler, parsed)
            except Exception as exc:
                return self._failure(span, call_id, exc, f"Tool {name!r} raised {type(exc).__name__}: {safe_text(exc)}")
            content = result if isinstance(result, str) else serialize(result)[0].decode()
            self._capture(span, wire.ATTR_GEN_AI_TOOL_CALL_RESULT, content, cut)
            return _Outcome({"role": "tool", "tool_call_id": call_id, "content": content})
        finally:
            otel_context.detach(token)
            if cut:
                span.set_attribute(wire.ATTR_TRUNCATED, tuple(cut))
            span.end()

    def _start_span(self, call_id: str, name: str) -> Span:
        attributes: dict[str, AttributeValue] = {
            wire.ATTR_GEN_AI_OPERATION_NAME: wire.OPERATION_EXECUTE_TOOL,
            wire.ATTR_GEN_AI_TOOL_NAME: name,
            wire.ATTR_GEN_AI_TOOL_CALL_ID: call_id,
            wire.ATTR_GEN_AI_TOOL_TYPE: wire.TOOL_TYPE_FUNCTION,
        }
        return self._tracer.start_span(wire.tool_span_name(name), kind=SpanKind.INTERNAL, attributes=attributes)

    def _resolve(self, name: str, arguments: object) -> tuple[ToolHandler, dict[str, Any]]:
        """The handler and its keyword arguments; ValueError (the model's mistake) when there are none."""
        handler = self._handlers.get(name)
        if handler is None:
            available = ", ".join(sorted(self._handlers)) or "none"
            raise ValueError(f"Unknown tool {name!r}. Available tools: {available}.")
        return handler, _parse_arguments(name, arguments)

    def _capture(self, span: Span, key: str, value: object, cut: list[str]) -> None:
        """Opt-in content: only when the run captures content; redacted, then cut to the message budget
        (a 5 MB tool result must not make the span too large to export)."""
        if not self._settings.capture_content or not isinstance(value, str):
            return
        try:
            text, size = bound_text(value, self._settings.max_message_bytes, self._settings.redact)
            span.set_attribute(key, text)
            if size is not None:
                cut.append(key)
        except Exception as exc:
            report_internal_error("run_agent tool capture", exc)

    def _failure(self, span: Span, call_id: str, exc: Exception, text: str) -> _Outcome:
        """The tool message that answers a failed call, so the model (or the trace reader) sees why."""
        settings = self._settings
        try:
            record_failure(span, exc, settings.redact, max_bytes=settings.max_message_bytes)
        except Exception as internal:
            report_internal_error("run_agent tool failure", internal)
        text, _ = bound_text(text, settings.max_message_bytes, settings.redact)
        message = {
            "role": "tool",
            "tool_call_id": call_id,
            "content": f"Error: {text}",
            wire.TOOL_ERROR_KEY: True,
            wire.TOOL_ERROR_MESSAGE_KEY: text,
        }
        return _Outcome(message, exc)


async def _invoke(handler: ToolHandler, arguments: dict[str, Any]) -> Any:
    """Async handlers are awaited, sync ones run in a thread so a slow tool cannot stall the others."""
    if inspect.iscoroutinefunction(handler):
        return await handler(**arguments)
    result = await asyncio.to_thread(handler, **arguments)
    return await result if inspect.isawaitable(result) else result


def _parse_arguments(name: str, arguments: object) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = json.loads(arguments) if isinstance(arguments, (str, bytes)) else arguments
    except ValueError as exc:
        raise ValueError(f"The arguments for tool {name!r} are not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"The arguments for tool {name!r} must be a JSON object, got {type(parsed).__name__}.")
    return parsed
