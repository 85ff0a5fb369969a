"""Issue 9's acceptance: every planted secret, in every place kiln-otel writes, with the default
redactor on. None survives: not in span events, the exception event, the span status, ErrorWithTrace,
``str(KilnRunError)``, ``reconstruct_error``, the FastAPI 500 body and its server log, ``run_agent``'s
tool spans, nor through the real collector into its file output and Jaeger. And everything kiln-otel
writes is bounded: a 3 MB exception and a 5 MB tool result are cut (after redaction) and marked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import litellm
import pytest
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import StatusCode

from kiln_otel import KilnRunError, format_error_message, reconstruct_error, reconstruct_trace, traced_run, wire
from kiln_otel.config import DEFAULT_MAX_MESSAGE_BYTES
from kiln_otel.error_messages import MAX_DESCRIPTION_BYTES
from kiln_otel.fastapi import install_error_handler
from kiln_otel.litellm import run_agent
from kiln_otel.otlp_json import encode_otlp_json
from kiln_otel.testing import ScriptedModelServer, ToolCall, Turn
from tests.backends import Pipeline
from tests.conftest import Tracing
from tests.secret_corpus import OPENAI_PROJECT, PLANTED, leaks
from tests.test_fastapi import serve as serve_app
from tests.test_litellm_completion import USER, Serve, call_kwargs, exported_text, serve

__all__ = ["serve"]  # the scripted-server fixture, imported so pytest finds it here

EXCEPTION_TEXT = "provider said:\n" + "\n".join(p.text for p in PLANTED)
GRPC_LIMIT = 4 * 1024 * 1024


def planted_messages() -> list[dict[str, Any]]:
    """Each planted text as a user turn, inside a tool result's JSON, and in an assistant's tool call."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are the ops assistant."}]
    for i, planted in enumerate(PLANTED):
        messages.append({"role": "user", "content": planted.text})
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "run", "arguments": json.dumps({"cmd": planted.text})},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"stdout": planted.text})})
    return messages


@dataclass
class FailedRun:
    error: KilnRunError
    spans: tuple[ReadableSpan, ...]

    def run_span(self) -> ReadableSpan:
        return next(s for s in self.spans if s.attributes and wire.ATTR_SCHEMA_VERSION in s.attributes)


def fail_with_secrets(provider: TracerProvider, messages: list[dict[str, Any]]) -> KilnRunError:
    with pytest.raises(KilnRunError) as caught, traced_run("ops", tracer_provider=provider) as run:
        run.messages.extend(messages)
        raise RuntimeError(EXCEPTION_TEXT)
    return caught.value


@pytest.fixture
def failed(tracing: Tracing) -> FailedRun:
    error = fail_with_secrets(tracing.provider, planted_messages())
    return FailedRun(error, tracing.spans())


def assert_clean(place: str, blob: str) -> None:
    found = leaks(blob)
    assert not found, f"{len(found)} planted secrets survive in {place}: {found}"


def test_span_events(failed: FailedRun) -> None:
    texts = [
        str(event.attributes[wire.ATTR_MESSAGE_JSON])
        for span in failed.spans
        for event in span.events
        if event.attributes and wire.ATTR_MESSAGE_JSON in event.attributes
    ]
    assert len(texts) == len(planted_messages())
    assert_clean("span events", "\n".join(texts))
    for text in texts:
        json.loads(text)


def test_the_exception_event_and_the_span_status(failed: FailedRun) -> None:
    run = failed.run_span()
    (exception,) = [e for e in run.events if e.name == wire.EVENT_EXCEPTION]
    assert exception.attributes is not None
    assert_clean("exception.message", str(exception.attributes["exception.message"]))
    assert_clean("exception.stacktrace", str(exception.attributes["exception.stacktrace"]))
    assert "RuntimeError: provider said:" in str(exception.attributes["exception.stacktrace"])
    assert run.status.status_code is StatusCode.ERROR
    assert_clean("status description", str(run.status.description))


def test_error_with_trace_and_the_error_itself(failed: FailedRun) -> None:
    assert_clean("ErrorWithTrace", failed.error.to_error_with_trace().model_dump_json())
    assert_clean("str(KilnRunError)", str(failed.error))
    assert_clean("KilnRunError.message", failed.error.message)
    assert failed.error.original.args[0] == EXCEPTION_TEXT  # the app's own exception is untouched


def test_reconstruct_error_and_every_exported_byte(failed: FailedRun) -> None:
    rebuilt = reconstruct_error(failed.spans)
    assert rebuilt == failed.error.to_error_with_trace()
    assert_clean("reconstruct_error", rebuilt.model_dump_json())
    assert_clean("OTLP JSON", json.dumps(encode_otlp_json(failed.spans), ensure_ascii=False))
    assert_clean("OTLP protobuf", encode_spans(failed.spans).SerializeToString().decode("utf-8", "replace"))
    masked = (failed.run_span().attributes or {})[wire.ATTR_REDACTION_MASKED]
    assert isinstance(masked, int)
    assert masked >= 3 * len(PLANTED)


def test_the_fastapi_500_body_and_the_server_log(tracing: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="kiln_otel")
    app = FastAPI()

    def run_route() -> None:
        with traced_run("ops", tracer_provider=tracing.provider) as run:
            run.messages.extend(planted_messages())
            raise RuntimeError(EXCEPTION_TEXT)

    app.add_api_route("/run", run_route, methods=["POST"])
    install_error_handler(app)
    with serve_app(app) as client:
        response = client.post("/run")
    assert response.status_code == 500
    assert_clean("FastAPI 500 body", response.content.decode())
    assert len(response.json()["trace"]) == len(planted_messages())
    logged = [r for r in caplog.records if r.name == "kiln_otel"]
    assert len(logged) == 1
    assert "Traceback (most recent call last)" in caplog.text
    assert_clean("server log", caplog.text)


def agent_run(tracing: Tracing, server: ScriptedModelServer, handlers: dict[str, Any]) -> list[Any]:
    """run_agent inside a traced run against the scripted server; the run's messages."""

    async def main() -> list[Any]:
        async with traced_run("agent", tracer_provider=tracing.provider) as run:
            run.messages.append(USER)
            kwargs = call_kwargs(server)
            await run_agent(
                kwargs.pop("model"),
                run.messages,
                tools=None,
                tool_handlers=handlers,
                max_tool_calls_per_turn=50,
                tracer_provider=tracing.provider,
                **kwargs,
            )
            return list(run.messages)

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_run_agent_tool_spans(tracing: Tracing, serve: Serve) -> None:
    """Secrets in the model's tool arguments, in a tool's result, and in a tool's exception."""
    calls = [ToolCall("echo", {"text": p.text}) for p in PLANTED[:40]] + [ToolCall("leak", {})]
    server = serve(Turn.tool_calls(calls[:20]), Turn.tool_calls(calls[20:]), Turn.text("Done."))

    def echo(text: str) -> str:
        return f"echo: {text}"

    def leak() -> str:
        raise PermissionError(EXCEPTION_TEXT)

    messages = agent_run(tracing, server, {"echo": echo, "leak": leak})
    tools = [s for s in tracing.spans() if s.name.startswith("execute_tool")]
    assert len(tools) == 41
    attributes = "\n".join(str(v) for s in tools for v in (s.attributes or {}).values())
    assert "[REDACTED:" in attributes
    assert_clean("tool span attributes", attributes)
    assert_clean("tool spans, exported", exported_text(tracing.spans()))
    failed_tool = next(s for s in tools if s.name == "execute_tool leak")
    assert failed_tool.status.status_code is StatusCode.ERROR
    assert_clean("the failed call's tool message", json.dumps(messages[-2]))


def test_provider_text_is_redacted_before_it_is_cut() -> None:
    """The issue's case: the 300-character cut used to leave ``sk-proj-...`` half a key long."""
    for padding in range(250, 300, 7):
        exc = litellm.BadRequestError(
            message="x" * padding + f" key {OPENAI_PROJECT} and {{'api_key': 'v-provider-api-key-value'}}",
            model="gpt-x",
            llm_provider="openai",
        )
        message = format_error_message(exc)
        assert message.startswith("The model provider rejected the request: ")
        assert OPENAI_PROJECT[:12] not in message
        assert "v-provider-api" not in message


def test_a_3mb_exception_is_bounded_in_all_three_places(tracing: Tracing) -> None:
    huge = "y" * 1_000_000 + f" {OPENAI_PROJECT} " + "z" * 2_000_000
    with pytest.raises(KilnRunError) as caught, traced_run("huge", tracer_provider=tracing.provider):
        raise ValueError(huge)
    run = tracing.span("invoke_agent huge")
    (exception,) = [e for e in run.events if e.name == wire.EVENT_EXCEPTION]
    attributes = dict(exception.attributes or {})
    size = len(huge.encode())
    assert len(str(attributes["exception.message"]).encode()) <= DEFAULT_MAX_MESSAGE_BYTES
    assert str(attributes["exception.message"]).endswith(f"…[truncated, {size} bytes]")
    assert len(str(attributes["exception.stacktrace"]).encode()) <= DEFAULT_MAX_MESSAGE_BYTES
    assert "Traceback (most recent call last)" in str(attributes["exception.stacktrace"])
    assert "ValueError: yyy" in str(attributes["exception.stacktrace"])
    assert attributes[wire.ATTR_TRUNCATED] == ("exception.message", "exception.stacktrace")
    assert len(str(run.status.description).encode()) <= MAX_DESCRIPTION_BYTES
    assert len(str(caught.value).encode()) <= MAX_DESCRIPTION_BYTES
    assert len(encode_spans([run]).SerializeToString()) < 200_000
    assert caught.value.original.args[0] is huge


@pytest.mark.filterwarnings("ignore:Sending a large body directly")  # httpx, as litellm sends 5 MB back
def test_a_5mb_tool_result_is_bounded_and_marked(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.tool_calls([ToolCall("dump", {})]), Turn.text("Done."))
    result = "r" * 5_000_000

    agent_run(tracing, server, {"dump": lambda: result})
    tool = tracing.span("execute_tool dump")
    attributes = dict(tool.attributes or {})
    recorded = str(attributes[wire.ATTR_GEN_AI_TOOL_CALL_RESULT])
    assert len(recorded.encode()) <= DEFAULT_MAX_MESSAGE_BYTES
    assert recorded.endswith("…[truncated, 5000000 bytes]")
    assert attributes[wire.ATTR_TRUNCATED] == (wire.ATTR_GEN_AI_TOOL_CALL_RESULT,)
    assert max(len(encode_spans([s]).SerializeToString()) for s in tracing.spans()) < GRPC_LIMIT / 8
    rebuilt = reconstruct_trace(tracing.spans())
    assert rebuilt[2]["role"] == "tool"
    assert rebuilt[2]["_kiln_otel"]["truncated"] is True
    assert rebuilt[2]["_kiln_otel"]["original_size"] > 5_000_000


# --- through the real pipeline -----------------------------------------------------------------------
@pytest.fixture
def otlp(pipeline: Pipeline) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=pipeline.otlp_grpc_endpoint, insecure=True))
    )
    yield provider
    provider.shutdown()


@pytest.mark.backends
def test_nothing_planted_reaches_the_collector_file_or_jaeger(pipeline: Pipeline, otlp: TracerProvider) -> None:
    """Client redaction on (the default): the collector's second line has nothing left to catch."""
    messages = planted_messages()
    error = fail_with_secrets(otlp, messages)
    assert otlp.force_flush(10_000)
    trace_id = str(error.trace_id)
    jaeger = pipeline.fetch_jaeger_v3(trace_id, min_spans=2)
    assert_clean("Jaeger", json.dumps(jaeger, ensure_ascii=False))
    file_text = pipeline.read_file_lines(trace_id)
    assert_clean("the collector's file output", file_text)
    rebuilt = reconstruct_error(jaeger, trace_id)
    assert rebuilt.trace is not None
    assert len(rebuilt.trace) == len(messages)
    assert_clean("reconstruct_error from Jaeger", rebuilt.model_dump_json())


def test_the_payload_cuts_a_huge_message_as_its_event_was_cut(tracing: Tracing) -> None:
    """ErrorWithTrace redacts then cuts like the events, so the app's payload equals the rebuilt one."""
    huge = {"role": "tool", "tool_call_id": "c1", "content": "w" * 200_000 + f" {OPENAI_PROJECT} " + "v" * 10}
    with pytest.raises(KilnRunError) as caught, traced_run("big", tracer_provider=tracing.provider) as run:
        run.messages.extend([{"role": "user", "content": "go"}, huge])
        raise RuntimeError("failed after the dump")
    payload = caught.value.to_error_with_trace()
    assert payload == reconstruct_error(tracing.spans())
    assert payload.trace_complete is False
    assert payload.trace is not None
    assert payload.trace[1]["_kiln_otel"]["truncated"] is True
    assert len(json.dumps(payload.trace[1])) < DEFAULT_MAX_MESSAGE_BYTES + 200
    assert_clean("the payload", payload.model_dump_json())
