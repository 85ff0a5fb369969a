"""A failing run through Kiln's real LiteLlmAdapter, with and without kiln-otel, compared byte for byte.

Runs in the Kiln venv only (scripts/kiln-tests.sh): the published kiln-ai and kiln-server, real litellm
against the scripted OpenAI-compatible server on 127.0.0.1, Kiln's own FastAPI error handler, and the
real collector and Jaeger (tests/backends.py). The model asks for a tool, the tool answers, then the
provider rate-limits: the failure Kiln's eval runner retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kiln_ai.adapters.errors import ErrorWithTrace, KilnRunError
from kiln_ai.adapters.eval import eval_runner
from kiln_ai.adapters.ml_model_list import ModelProviderName
from kiln_ai.adapters.model_adapters.base_adapter import AdapterConfig
from kiln_ai.adapters.model_adapters.litellm_adapter import LiteLlmAdapter
from kiln_ai.adapters.model_adapters.litellm_config import LiteLlmConfig
from kiln_ai.datamodel import Project, Task
from kiln_ai.datamodel.run_config import KilnAgentRunConfigProperties
from kiln_ai.datamodel.tool_id import build_kiln_unmanaged_tool_id
from kiln_ai.tools.base_tool import ToolCallContext, ToolCallResult, UnmanagedKilnTool
from kiln_server.custom_errors import connect_custom_errors
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kiln_otel import reconstruct_error
from kiln_otel.fastapi import install_error_handler
from kiln_otel.kiln import KilnInstrumentor
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn
from tests.backends import Pipeline

KILN_KEYS = {"message", "error_type", "trace"}
# Kiln's eval runner decides retries with this function (renamed between releases).
is_retryable = getattr(eval_runner, "_is_retryable_error", None) or eval_runner.is_retryable_error


class LookupInvoice(UnmanagedKilnTool):
    """A tool the model calls before the provider fails: the trace then holds a tool round."""

    def __init__(self) -> None:
        super().__init__(
            build_kiln_unmanaged_tool_id("lookup_invoice"),
            "lookup_invoice",
            "Look an invoice up by its number.",
            {"type": "object", "properties": {"invoice": {"type": "string"}}, "required": ["invoice"]},
        )

    async def run(self, context: ToolCallContext | None = None, **kwargs: Any) -> ToolCallResult:
        return ToolCallResult(output=json.dumps({"invoice": kwargs["invoice"], "amount": 42.5, "currency": "EUR"}))


def tool_then_rate_limit(body: dict[str, Any]) -> Turn:
    """First request: call the tool. Every later one (litellm or the SDK may retry): HTTP 429."""
    if not any(m.get("role") == "tool" for m in body.get("messages", [])):
        return Turn.tool_calls([ToolCall("lookup_invoice", {"invoice": "INV-7"}, id="call_inv_7")])
    return Turn.fault(Fault.RATE_LIMIT)


@pytest.fixture
def task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Task:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-scripted")  # Kiln checks for a key before any call
    project = Project(name="Billing", path=str(tmp_path / "billing" / "project.kiln"))
    Path(project.path).parent.mkdir()
    project.save_to_file()
    task = Task(name="refunds", instruction="Refund double charges.", parent=project)
    task.save_to_file()
    return task


def adapter_for(task: Task, server: ScriptedModelServer) -> LiteLlmAdapter:
    config = LiteLlmConfig(
        base_url=server.base_url,
        run_config_properties=KilnAgentRunConfigProperties(
            model_name="gpt_4o_mini",
            model_provider_name=ModelProviderName.openai,
            prompt_id="simple_prompt_builder",
            structured_output_mode="default",
        ),
        additional_body_options={"api_key": "sk-local-scripted"},
    )
    return LiteLlmAdapter(
        config=config,
        kiln_task=task,
        base_adapter_config=AdapterConfig(allow_saving=False, unmanaged_tools=[LookupInvoice()]),
    )


@dataclass
class Served:
    status: int
    body: bytes
    error: KilnRunError


async def serve_failing_run(task: Task, app: FastAPI | None = None) -> Served:
    """One run behind a FastAPI route, answered by Kiln's own error handler (or ``app``'s)."""
    if app is None:
        app = FastAPI()
        connect_custom_errors(app)
    raised: list[KilnRunError] = []

    with ScriptedModelServer(tool_then_rate_limit) as server:
        adapter = adapter_for(task, server)

        @app.post("/run")
        async def run() -> None:
            try:
                await adapter.invoke("INV-7 was charged twice, refund it.")
            except KilnRunError as err:
                raised.append(err)
                raise

        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiln.local") as client:
            response = await client.post("/run")
    assert len(raised) == 1, f"the route did not fail with Kiln's KilnRunError: {response.status_code} {response.text}"
    return Served(response.status_code, response.content, raised[0])


@pytest.fixture
def exported(pipeline: Pipeline) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Spans to memory and, over OTLP/gRPC, to the real collector (file output, then Jaeger)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    otlp = OTLPSpanExporter(endpoint=pipeline.otlp_grpc_endpoint, insecure=True, timeout=10)
    provider.add_span_processor(SimpleSpanProcessor(otlp))
    yield provider, memory
    provider.shutdown()


@contextmanager
def instrumented(provider: TracerProvider) -> Iterator[None]:
    instrumentor = KilnInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()


def assert_kilns_own_error(err: KilnRunError) -> None:
    assert type(err) is KilnRunError  # Kiln's class, not kiln-otel's
    assert type(err.original).__name__ == "RateLimitError"
    assert err.__cause__ is err.original


async def test_kilns_payload_is_unchanged_and_rebuilds_from_the_collector_file_and_jaeger(
    task: Task, pipeline: Pipeline, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exported
    stock = await serve_failing_run(task)
    assert not memory.get_finished_spans(), "the stock run was traced"
    with instrumented(provider):
        traced = await serve_failing_run(task)

    assert stock.status == traced.status == 500
    assert traced.body == stock.body  # byte for byte, Kiln's handler on both sides
    assert_kilns_own_error(stock.error)
    assert_kilns_own_error(traced.error)
    assert str(traced.error) == str(stock.error) == "Rate limit exceeded. Wait a moment and try again."
    assert traced.error.error_type == stock.error.error_type == "RateLimitError"
    assert traced.error.partial_trace == stock.error.partial_trace
    assert is_retryable(stock.error) is True
    assert is_retryable(traced.error) is is_retryable(stock.error)

    served = json.loads(stock.body)
    assert set(served) == KILN_KEYS
    roles = [m["role"] for m in served["trace"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert served["trace"][2]["tool_calls"][0]["id"] == "call_inv_7"

    trace_id, span_id = traced.error.trace_id, traced.error.span_id  # type: ignore[attr-defined]
    run = next(s for s in memory.get_finished_spans() if s.name == "invoke_agent refunds")
    assert run.status.status_code is StatusCode.ERROR
    assert run.context is not None
    assert f"{run.context.span_id:016x}" == span_id
    assert run.attributes is not None
    assert run.attributes["gen_ai.provider.name"] == "openai"
    assert run.attributes["gen_ai.request.model"] == "gpt_4o_mini"

    in_memory = reconstruct_error(memory.get_finished_spans(), trace_id)
    assert in_memory.model_dump(mode="json", include=KILN_KEYS) == served
    spans = sum(1 for s in memory.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id)
    from_jaeger = reconstruct_error(pipeline.fetch_jaeger_v3(trace_id, min_spans=spans), trace_id)
    assert from_jaeger.model_dump(mode="json", include=KILN_KEYS) == served
    from_file = reconstruct_error(pipeline.read_file_lines(trace_id), trace_id)
    assert from_file.model_dump(mode="json", include=KILN_KEYS) == served
    assert from_jaeger == from_file == in_memory


async def test_kiln_otel_handler_serves_kilns_own_error_with_the_links(
    task: Task, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """An app that opts in (kiln-otel's handler for Kiln's class) gets Kiln's keys plus the ids."""
    provider, memory = exported
    kiln_body = json.loads((await serve_failing_run(task)).body)
    app = FastAPI()
    connect_custom_errors(app)
    install_error_handler(app, error_classes=(KilnRunError,), trace_url_template="http://jaeger/trace/{trace_id}")
    with instrumented(provider):
        served = await serve_failing_run(task, app)
    body = json.loads(served.body)
    assert served.status == 500
    assert {k: body[k] for k in KILN_KEYS} == kiln_body
    assert body["trace_id"] == served.error.trace_id  # type: ignore[attr-defined]
    assert body["span_id"] == served.error.span_id  # type: ignore[attr-defined]
    assert body["trace_url"] == f"http://jaeger/trace/{body['trace_id']}"
    rebuilt = reconstruct_error(memory.get_finished_spans(), body["trace_id"])
    assert rebuilt.model_dump(mode="json", include=KILN_KEYS) == kiln_body


async def stream_until_it_fails(task: Task) -> tuple[list[Any], BaseException]:
    """``invoke_openai_stream`` through the tool round, then the 429: the chunks seen and what it raised."""
    chunks: list[Any] = []
    with ScriptedModelServer(tool_then_rate_limit) as server:
        adapter = adapter_for(task, server)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - comparing whatever Kiln raises, stock vs traced
            async for chunk in adapter.invoke_openai_stream("INV-7 was charged twice, refund it."):
                chunks.append(chunk)
    return chunks, caught.value


async def test_a_failed_stream_raises_what_it_raised_and_its_run_keeps_the_messages(
    task: Task, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exported
    stock_chunks, stock_error = await stream_until_it_fails(task)
    with instrumented(provider):
        traced_chunks, traced_error = await stream_until_it_fails(task)

    assert type(traced_error) is type(stock_error)  # Kiln's streams raise the provider's error itself
    assert type(traced_error).__name__ == "RateLimitError"
    assert str(traced_error) == str(stock_error)
    assert len(traced_chunks) == len(stock_chunks) > 0
    assert is_retryable(traced_error) is is_retryable(stock_error) is True
    run = next(s for s in memory.get_finished_spans() if s.name == "invoke_agent refunds")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "Rate limit exceeded. Wait a moment and try again."
    assert run.context is not None
    rebuilt = reconstruct_error(memory.get_finished_spans(), f"{run.context.trace_id:032x}")
    assert rebuilt.trace is not None
    assert [m["role"] for m in rebuilt.trace] == ["system", "user", "assistant", "tool"]
    assert rebuilt.trace[2]["tool_calls"][0]["id"] == "call_inv_7"


async def test_a_stream_the_caller_stops_ends_its_run_unfailed(
    task: Task, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exported
    with instrumented(provider), ScriptedModelServer([Turn.text("Refund issued for INV-7.")]) as server:
        stream = adapter_for(task, server).invoke_openai_stream("Refund INV-7.")
        iterator = stream.__aiter__()
        first = await iterator.__anext__()
        await iterator.aclose()
    assert first is not None
    run = next(s for s in memory.get_finished_spans() if s.name == "invoke_agent refunds")
    assert run.status.status_code is StatusCode.UNSET
    assert run.attributes is not None
    assert run.attributes["kiln_otel.stream.abandoned"] is True


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    """docs/kiln.md section 1 is a copy-paste that works: run it as a user would."""
    doc = (Path(__file__).parents[1] / "docs" / "kiln.md").read_text()
    script = tmp_path / "kiln_otel_example.py"
    script.write_text(re.findall(r"```python\n(.*?)```", doc, re.S)[0])
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"message": "Rate limit exceeded. Wait a moment and try again."' in done.stdout
    assert "rebuilt from" in done.stdout


async def test_concurrent_runs_on_one_adapter_each_rebuild_to_their_own_payload(
    task: Task, exported: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Kiln's eval runner invokes one adapter many times at once: runs must not share a list or a span."""
    provider, memory = exported
    with instrumented(provider), ScriptedModelServer(tool_then_rate_limit) as server:
        adapter = adapter_for(task, server)
        outcomes = await asyncio.gather(
            *(adapter.invoke(f"Refund INV-{n}, charged twice.") for n in range(6)), return_exceptions=True
        )
    assert all(type(err) is KilnRunError for err in outcomes)
    errors: list[Any] = list(outcomes)
    assert len({err.trace_id for err in errors}) == len(errors)
    spans = memory.get_finished_spans()
    for n, err in enumerate(errors):
        served = ErrorWithTrace(message=str(err), error_type=err.error_type, trace=err.partial_trace)
        rebuilt = reconstruct_error(spans, err.trace_id)
        assert rebuilt.model_dump(mode="json", include=KILN_KEYS) == served.model_dump(mode="json")
        assert rebuilt.trace is not None
        assert rebuilt.trace[1]["content"] == f"Refund INV-{n}, charged twice."
