"""An adapter shaped like Kiln's that adopts kiln-otel's own `traced_run` and `KilnRunError`.

For apps built like Kiln that take kiln-otel's error class as theirs. Kiln itself keeps its own class
(docs/kiln.md; its real adapters are tested in their own venv, tests_kiln/ via scripts/kiln-tests.sh).
The base class creates the message list and hands it to ``_run`` (Kiln's ``trace_ref``); the subclass
deep-copies it before every model call, appends pydantic messages shaped like litellm's ``Message``,
runs tools, and assigns the turn's messages back onto the list after every turn. None of that may
record anything beyond the messages themselves, and the failure must come out as Kiln expects it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id
from pydantic import BaseModel

from kiln_otel import KilnRunError, reconstruct_error, traced_run, wire
from tests.conftest import Tracing


# --- litellm-shaped messages (same fields as litellm.Message, without importing litellm) ----------
class Function(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: Function


class Message(BaseModel):
    role: str
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: Any = None
    reasoning_content: str | None = None
    provider_specific_fields: dict[str, Any] | None = None


class RateLimitError(Exception):
    """A provider error the eval runner retries on, found by looking at ``KilnRunError.original``."""


def call(call_id: str, name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, function=Function(name=name, arguments=json.dumps(arguments)))


@dataclass
class ScriptedModel:
    """Answers from a script; an exception in the script is raised instead, like a provider failure."""

    script: list[Message | BaseException]
    seen: list[list[Any]] = field(default_factory=list)

    def complete(self, messages: list[Any]) -> Message:
        self.seen.append(messages)
        reply = self.script[len(self.seen) - 1]
        if isinstance(reply, BaseException):
            raise reply
        return reply


@dataclass
class TurnResult:
    all_messages: list[Any]
    final_output: str | None


# --- the adapter, in Kiln's pattern -------------------------------------------------------------
class BaseAdapter:
    """Kiln's base adapter after adopting kiln-otel: the list comes from the run, the except clause
    hands the failure to the run."""

    name = "base"

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def invoke(self, task_input: str) -> str:
        run = traced_run(self.name, provider_name="scripted", tracer_provider=self.tracing.provider)
        trace_ref = run.messages
        try:
            output = self._run(task_input, trace_ref)
        except Exception as e:
            raise run.fail(e)  # noqa: B904 - its __cause__ is the original already
        run.end()
        return output

    def _run(self, task_input: str, trace_ref: list[Any]) -> str:
        raise NotImplementedError


class LiteLLMStyleAdapter(BaseAdapter):
    name = "support-agent"
    max_turns = 5

    def __init__(self, tracing: Tracing, model: ScriptedModel, tools: dict[str, Callable[..., Any]]) -> None:
        super().__init__(tracing)
        self.model = model
        self.tools = tools
        self.turns = 0

    def _run(self, task_input: str, trace_ref: list[Any]) -> str:
        trace_ref.append({"role": "system", "content": "You answer billing questions."})
        trace_ref.append({"role": "user", "content": task_input})
        for _ in range(self.max_turns):
            turn = self._run_turn(trace_ref)
            # Kiln assigns the turn's list back, sometimes the very object, sometimes a copy of it.
            trace_ref[:] = turn.all_messages if self.turns % 2 else copy.deepcopy(turn.all_messages)
            if turn.final_output is not None:
                return turn.final_output
        raise RuntimeError(f"Too many turns ({self.max_turns})")

    def _run_turn(self, messages: list[Any]) -> TurnResult:
        self.turns += 1
        request = copy.deepcopy(messages)
        reply = self.model.complete(request)
        messages.append(reply)
        for tool_call in reply.tool_calls or []:
            result = self.tools[tool_call.function.name](**json.loads(tool_call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": json.dumps(result)})
        return TurnResult(messages, None if reply.tool_calls else reply.content)


class ParentAdapter(BaseAdapter):
    """An outer layer that runs another adapter as a sub-task (Kiln's task-as-tool)."""

    name = "parent-agent"

    def __init__(self, tracing: Tracing, child: BaseAdapter) -> None:
        super().__init__(tracing)
        self.child = child

    def _run(self, task_input: str, trace_ref: list[Any]) -> str:
        trace_ref.append({"role": "user", "content": f"delegate: {task_input}"})
        return self.child.invoke(task_input)


# --- the scenario -------------------------------------------------------------------------------
TOOLS: dict[str, Callable[..., Any]] = {
    "lookup_invoice": lambda invoice: {"invoice": invoice, "amount": 42.5, "currency": "EUR"},
    "refund": lambda invoice, amount: {"refunded": amount},
}


def failing_model() -> tuple[ScriptedModel, RateLimitError]:
    error = RateLimitError("429: slow down")
    script: list[Message | BaseException] = [
        Message(
            role="assistant",
            content=None,
            reasoning_content="Need the invoice first.",
            tool_calls=[call("call_1", "lookup_invoice", invoice="INV-7")],
        ),
        Message(
            role="assistant",
            content=None,
            tool_calls=[call("call_2", "refund", invoice="INV-7", amount=42.5)],
        ),
        error,
    ]
    return ScriptedModel(script), error


def run_events(tracing: Tracing) -> list[str]:
    """List events of the run in recording order, across the run span and its segment spans."""
    spans: tuple[ReadableSpan, ...] = tracing.spans()
    events = [e for s in spans for e in s.events if e.attributes and wire.ATTR_EVENT_SEQ in e.attributes]
    events.sort(key=lambda e: int(e.attributes[wire.ATTR_EVENT_SEQ]))  # type: ignore[index, arg-type]
    return [e.name for e in events]


def span_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format_trace_id(span.context.trace_id), format_span_id(span.context.span_id)


def invoke_failing(tracing: Tracing) -> tuple[KilnRunError, RateLimitError, ScriptedModel]:
    model, error = failing_model()
    with pytest.raises(KilnRunError) as caught:
        LiteLLMStyleAdapter(tracing, model, TOOLS).invoke("Refund INV-7, it was charged twice.")
    return caught.value, error, model


def test_failure_keeps_the_original_for_retry_logic(tracing: Tracing) -> None:
    err, error, _ = invoke_failing(tracing)
    assert err.original is error
    assert err.__cause__ is error
    assert isinstance(err.original, RateLimitError)  # what an eval runner checks before retrying
    assert err.error_type == "RateLimitError"
    assert str(err) == "An unexpected error occurred."
    run = tracing.span("invoke_agent support-agent")
    assert run.status.status_code is StatusCode.ERROR
    assert (err.trace_id, err.span_id) == span_ids(run)


def test_payload_is_the_trace_so_far_and_equals_what_telemetry_rebuilds(tracing: Tracing) -> None:
    err, _, _ = invoke_failing(tracing)
    payload = err.to_error_with_trace()
    assert payload.trace is not None
    assert [m["role"] for m in payload.trace] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert payload.trace[2]["reasoning_content"] == "Need the invoice first."
    assert payload.trace[2]["tool_calls"][0]["function"] == {
        "name": "lookup_invoice",
        "arguments": '{"invoice": "INV-7"}',
    }
    assert json.loads(payload.trace[5]["content"]) == {"refunded": 42.5}
    assert payload.trace_complete is True
    assert reconstruct_error(tracing.spans()) == payload


def test_deep_copies_and_self_assignment_record_nothing(tracing: Tracing) -> None:
    err, _, model = invoke_failing(tracing)
    assert len(model.seen) == 3
    assert all(type(request) is list for request in model.seen)
    assert [len(request) for request in model.seen] == [2, 4, 6]
    messages = wire.EVENT_MESSAGE_PREFIX
    assert run_events(tracing) == [
        f"{messages}.system",
        f"{messages}.user",
        f"{messages}.assistant",
        f"{messages}.tool",
        f"{messages}.assistant",
        f"{messages}.tool",
    ]
    run = tracing.span("invoke_agent support-agent")
    assert run.attributes is not None
    assert run.attributes[wire.ATTR_MESSAGES_OPS] == 6
    assert [e.name for e in run.events if e.name == wire.EVENT_EXCEPTION] == [wire.EVENT_EXCEPTION]
    assert err.partial_trace is not None
    assert len(err.partial_trace) == 6


def test_not_wrapped_twice_through_an_outer_adapter(tracing: Tracing) -> None:
    model, error = failing_model()
    child = LiteLLMStyleAdapter(tracing, model, TOOLS)
    with pytest.raises(KilnRunError) as caught:
        ParentAdapter(tracing, child).invoke("Refund INV-7")
    err = caught.value
    assert err.original is error
    assert err.__cause__ is error
    assert not isinstance(err.original, KilnRunError)
    child_run = tracing.span("invoke_agent support-agent")
    parent_run = tracing.span("invoke_agent parent-agent")
    assert (err.trace_id, err.span_id) == span_ids(child_run)
    assert parent_run.status.status_code is StatusCode.ERROR
    assert parent_run.attributes is not None
    assert str(parent_run.attributes[wire.ATTR_ERROR_TYPE]).endswith("RateLimitError")
    rebuilt = reconstruct_error(tracing.spans(), err.trace_id, span_id=err.span_id)
    assert rebuilt == err.to_error_with_trace()


def test_success_ends_the_run_cleanly(tracing: Tracing) -> None:
    model = ScriptedModel([Message(role="assistant", content="Refund issued.")])
    output = LiteLLMStyleAdapter(tracing, model, TOOLS).invoke("Refund INV-7")
    assert output == "Refund issued."
    run = tracing.span("invoke_agent support-agent")
    assert run.status.status_code is StatusCode.UNSET
    assert run.attributes is not None
    assert run.attributes[wire.ATTR_MESSAGES_COUNT] == 3
