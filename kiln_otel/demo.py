"""``kiln-otel demo``: a real tool-using agent run fails, and its whole trace comes back from telemetry.

Everything is real except the model: litellm talks HTTP to a `ScriptedModelServer` on 127.0.0.1, so
its provider code, exception mapping and stream handling are the ones production runs, yet the demo
needs no network, no API key and no collector, and every run is the same. The run is recorded with
`traced_run`, exported through `configure_tracing`, and (with the embedded file default) rebuilt with
`reconstruct_error` from the file alone, which must give back exactly the payload the app got.

This module imports litellm when the demo runs; the CLI imports the module itself only then too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from kiln_otel.errors import KilnRunError
from kiln_otel.export import configure_tracing, traces_file_target
from kiln_otel.payload import ErrorWithTrace, trace_as_json_data
from kiln_otel.reconstruct import reconstruct_error, reconstruct_trace
from kiln_otel.run import traced_run
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn

__all__ = [
    "DEFAULT_FAILURE",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_TRACES_FILE",
    "FAILURES",
    "STREAMED_FAILURES",
    "DemoResult",
    "run_demo",
]

DEFAULT_TRACES_FILE = Path("kiln-otel-traces.jsonl")
DEFAULT_FAILURE = "rate-limit"
DEFAULT_TIMEOUT_SECONDS = 1.0
"""Every model call's timeout: loopback answers in milliseconds, and the ``timeout`` failure waits this long."""

_MODEL = "openai/scripted"
_SYSTEM = (
    "You are a trip planner. Check the weather at the destination and search for flights with your "
    "tools, then propose a short plan with one concrete flight."
)
_QUESTION = (
    "I'm in Berlin and want a long weekend somewhere warm next week. How about Lisbon? "
    "Check the weather and find me a flight."
)
_ANSWER = (
    "Lisbon looks great: sunny, around 24 °C all weekend. Take TP 543 on Friday at 18:05 from BER "
    "(2 h 55 min, €129) and come back Monday evening. Pack sunscreen and comfortable shoes for the hills."
)
_BAD_ARGUMENTS = '{"origin": "Berlin", "destination": "Lis'
"""Tool arguments cut off mid-string, as a model that ran out of output tokens sends them."""

_LAST_TURNS: Mapping[str, Callable[[], Turn]] = {
    "rate-limit": lambda: Turn.fault(Fault.RATE_LIMIT),
    "timeout": lambda: Turn.fault(Fault.NO_RESPONSE),
    "stream-cut": lambda: Turn.fault(Fault.STREAM_CUT, content=_ANSWER),
    "stream-error": lambda: Turn.fault(Fault.STREAM_ERROR, content=_ANSWER),
    "context-window": lambda: Turn.fault(Fault.CONTEXT_LENGTH_EXCEEDED),
    "auth": lambda: Turn.fault(Fault.AUTHENTICATION),
    "server-error": lambda: Turn.fault(Fault.SERVER_ERROR),
    "unavailable": lambda: Turn.fault(Fault.SERVICE_UNAVAILABLE),
    "malformed": lambda: Turn.fault(Fault.MALFORMED_JSON),
    "bad-tool-args": lambda: Turn.tool_calls([ToolCall("search_flights", _BAD_ARGUMENTS, id="call_flights_2")]),
    "none": lambda: Turn.text(_ANSWER),
}
FAILURES = tuple(_LAST_TURNS)
"""``--fail`` choices: what the third model call does (the first two always ask for a tool)."""
STREAMED_FAILURES = frozenset({"stream-cut", "stream-error"})
"""Failures that only exist on a streamed call, so choosing one turns streaming on."""

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Direct flights between two cities next week.",
            "parameters": {
                "type": "object",
                "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}},
                "required": ["origin", "destination"],
            },
        },
    },
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Outcome:
    trace_id: str | None
    messages: list[Any]
    payload: ErrorWithTrace | None
    answer: str | None


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for the CLI to print as text or as JSON."""

    payload: ErrorWithTrace | None
    """The app's ErrorWithTrace; None when the run succeeded (``--fail none``)."""
    answer: str | None
    messages: list[Any]
    """The run's messages as JSON data, failed or not."""
    trace_id: str | None
    export: str
    traces_file: Path | None
    reconstructed_equal: bool | None
    """None when spans went to OTLP: the demo cannot read them back from there."""

    def as_json(self) -> dict[str, Any]:
        return {
            "payload": self.payload.model_dump(mode="json") if self.payload is not None else None,
            "answer": self.answer,
            "reconstructed_equal": self.reconstructed_equal,
            "trace_id": self.trace_id,
            "export": self.export,
            "traces_file": str(self.traces_file) if self.traces_file is not None else None,
        }


def run_demo(
    *,
    fail: str = DEFAULT_FAILURE,
    stream: bool = False,
    output: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    progress: Progress = lambda line: None,
) -> DemoResult:
    """Run the trip-planner agent against the scripted model, export its spans, read them back.

    ``output`` is the embedded default's trace file (it beats ``KILN_OTEL_TRACES_FILE``); an OTLP
    endpoint in the environment sends the spans there instead, and nothing is read back.
    """
    if fail not in _LAST_TURNS:
        raise ValueError(f"unknown failure {fail!r}; choose one of {', '.join(FAILURES)}")
    _import_litellm_offline()
    provider, where = configure_tracing(default_file=DEFAULT_TRACES_FILE, traces_file=output)
    traces_file = traces_file_target(default_file=DEFAULT_TRACES_FILE, traces_file=output)
    progress(f"spans go to {where}")
    try:
        with ScriptedModelServer(_script(fail, progress)) as server:
            progress(f"scripted model on {server.base_url} (no network, no API key)")
            request = _request(server.base_url, stream or fail in STREAMED_FAILURES, timeout)
            outcome = asyncio.run(_run(provider, request, progress))
    finally:
        provider.force_flush()
        provider.shutdown()
    return DemoResult(
        payload=outcome.payload,
        answer=outcome.answer,
        messages=outcome.messages,
        trace_id=outcome.trace_id,
        export=where,
        traces_file=traces_file,
        reconstructed_equal=None if traces_file is None else _rebuilt_equal(outcome, traces_file),
    )


def _import_litellm_offline() -> None:
    """litellm fetches a price map over the network at import unless these are set first."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_OFFLINE_MODE"] = "true"
    from kiln_otel.litellm._lazy import require_litellm

    litellm: Any = require_litellm()
    litellm.suppress_debug_info = True


def _request(base_url: str, stream: bool, timeout: float) -> dict[str, Any]:
    """litellm arguments: no retries (they would hide the failure) and a timeout that cannot hang."""
    request: dict[str, Any] = {"api_base": base_url, "api_key": "sk-local", "num_retries": 0, "timeout": timeout}
    if stream:
        request.update(stream=True, stream_options={"include_usage": True})
    return request


# --- The script and the tools --------------------------------------------------------------------


def _script(fail: str, progress: Progress) -> Callable[[dict[str, Any]], Turn | None]:
    """A callable script, so each model call can report itself as it arrives."""
    turns = [
        Turn.tool_calls([ToolCall("get_weather", {"city": "Lisbon"}, id="call_weather_1")]),
        Turn.tool_calls(
            [ToolCall("search_flights", {"origin": "Berlin", "destination": "Lisbon"}, id="call_flights_1")]
        ),
        _LAST_TURNS[fail](),
    ]
    calls = iter(range(1, len(turns) + 1))

    def next_turn(body: dict[str, Any]) -> Turn | None:
        number = next(calls, None)
        turn = turns[number - 1] if number is not None else None
        progress(f"model call {number or len(turns) + 1}: {_describe(turn)}")
        return turn

    return next_turn


def _describe(turn: Turn | None) -> str:
    if turn is None:
        return "the script is exhausted"
    if turn.failure is not None:
        return f"fails ({turn.failure.value})"
    if turn.calls:
        return "asks for " + ", ".join(f"{call.name}({call.arguments_json()})" for call in turn.calls)
    return "answers"


def _tool_handlers(progress: Progress) -> dict[str, Callable[..., Any]]:
    def get_weather(city: str) -> dict[str, Any]:
        progress(f"tool get_weather({city!r})")
        return {"city": city, "forecast": "sunny", "high_c": 24, "low_c": 16}

    def search_flights(origin: str, destination: str) -> list[dict[str, Any]]:
        progress(f"tool search_flights({origin!r}, {destination!r})")
        return [
            {"flight": "TP 543", "depart": "Fri 18:05", "duration": "2h55", "price_eur": 129},
            {"flight": "FR 1301", "depart": "Sat 06:40", "duration": "3h10", "price_eur": 74},
        ]

    return {"get_weather": get_weather, "search_flights": search_flights}


# --- The run -------------------------------------------------------------------------------------


async def _run(provider: TracerProvider, request: dict[str, Any], progress: Progress) -> _Outcome:
    from kiln_otel.litellm import run_agent

    run = traced_run("trip-planner", tracer_provider=provider, provider_name="openai")
    payload, answer = None, None
    try:
        with run:
            run.messages.extend([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _QUESTION}])
            message = await run_agent(
                _MODEL,
                run.messages,
                tools=_TOOLS,
                tool_handlers=_tool_handlers(progress),
                on_tool_error="fail_run",
                tracer_provider=provider,
                **request,
            )
        answer = str(getattr(message, "content", None) or "")
        progress("the run succeeded")
    except KilnRunError as error:
        payload = error.to_error_with_trace()
        progress(f"the run failed: {error.error_type}")
    messages = trace_as_json_data(run.messages, run.settings.redact)
    return _Outcome(run.trace_id, messages, payload, answer)


def _rebuilt_equal(outcome: _Outcome, traces_file: Path) -> bool:
    """From the file alone: a failure must rebuild as the very payload, a success as its messages."""
    if outcome.payload is not None:
        return reconstruct_error(traces_file, outcome.trace_id) == outcome.payload
    return list(reconstruct_trace(traces_file, trace_id=outcome.trace_id)) == outcome.messages
