"""traced_acompletion / traced_completion against real litellm and the scripted server.

This module also holds the helpers the other ``test_litellm_*`` modules import (servers, call
kwargs, metric reading, the exported-text dump), so each fact about driving litellm lives once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import litellm
import pytest
from litellm import exceptions as lx
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from kiln_otel import TracedMessages, traced_run, wire
from kiln_otel.litellm import traced_acompletion, traced_completion
from kiln_otel.litellm._lazy import require_litellm
from kiln_otel.litellm.attributes import provider_name, request_attributes, server_attributes, split_model
from kiln_otel.otlp_json import encode_otlp_json
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn
from tests.conftest import Tracing

litellm.suppress_debug_info = True

TIMEOUT = 2.0
USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER = ToolCall("get_weather", {"city": "Paris"})
PLANTED_KEY = "sk-planted0123456789abcdefSECRET"

Serve = Callable[..., ScriptedModelServer]


# --------------------------------------------------------------------------------------------------
# Shared helpers (imported by the other test_litellm_* modules)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start scripted servers on demand; every one is closed whatever the test did."""
    servers: list[ScriptedModelServer] = []

    def start(*turns: Turn) -> ScriptedModelServer:
        server = ScriptedModelServer(list(turns)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def call_kwargs(server: ScriptedModelServer, **overrides: Any) -> dict[str, Any]:
    """No retries and a short timeout: a broken server fails the test in seconds, never hangs it."""
    kwargs: dict[str, Any] = {
        "model": "openai/scripted",
        "api_base": server.base_url,
        "api_key": "sk-local",
        "num_retries": 0,
        "timeout": TIMEOUT,
    }
    kwargs.update(overrides)
    return kwargs


def exported_text(spans: tuple[ReadableSpan, ...]) -> str:
    """Every byte an OTLP exporter would send for these spans, as one searchable string."""
    return json.dumps(encode_otlp_json(spans))


@pytest.fixture
def meter() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def histogram_points(reader: InMemoryMetricReader, name: str) -> list[tuple[str, HistogramDataPoint]]:
    """(unit, point) for every data point of the named histogram."""
    data = reader.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points += [(metric.unit or "", p) for p in metric.data.data_points]  # type: ignore[union-attr]
    return points


def events_named(span: ReadableSpan, prefix: str) -> list[str]:
    return [e.name for e in span.events if e.name.startswith(prefix)]


# --------------------------------------------------------------------------------------------------
# Import cost and the missing extra


def test_importing_kiln_otel_and_its_litellm_package_does_not_import_litellm() -> None:
    code = "import sys, kiln_otel, kiln_otel.litellm;assert 'litellm' not in sys.modules, 'litellm was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_litellm_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)
    with pytest.raises(ImportError, match=r"pip install 'kiln-otel\[litellm\]'"):
        require_litellm()


# --------------------------------------------------------------------------------------------------
# Attributes (pure)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("openai/gpt-4o", "openai"),
        ("anthropic/claude-3-5-sonnet", "anthropic"),
        ("bedrock/anthropic.claude-v2", "aws.bedrock"),
        ("azure/my-deployment", "azure.ai.openai"),
        ("gemini/gemini-1.5-pro", "gcp.gemini"),
        ("vertex_ai/gemini-pro", "gcp.vertex_ai"),
        ("mistral/mistral-large", "mistral_ai"),
        ("groq/llama3-70b", "groq"),
        ("deepseek/deepseek-chat", "deepseek"),
        ("xai/grok-2", "x_ai"),
        ("cohere/command-r", "cohere"),
        ("perplexity/sonar", "perplexity"),
        ("watsonx/ibm/granite-13b", "ibm.watsonx.ai"),
        ("ollama/llama3", "ollama"),
    ],
)
def test_provider_prefix_maps_to_the_semconv_provider_name(model: str, expected: str) -> None:
    attributes = request_attributes({"model": model}, {"ollama"})
    assert attributes[wire.ATTR_GEN_AI_PROVIDER_NAME] == expected
    assert attributes[wire.ATTR_GEN_AI_REQUEST_MODEL] == model.split("/", 1)[1]


def test_a_prefix_litellm_does_not_know_is_part_of_the_model_name() -> None:
    assert split_model("meta-llama/Llama-3-8b", None, {"openai"}) == (None, "meta-llama/Llama-3-8b")
    assert split_model("meta-llama/Llama-3-8b", "together_ai", {"openai"}) == ("together_ai", "meta-llama/Llama-3-8b")
    assert provider_name("together_ai") == "together_ai"


def test_request_attributes_read_named_parameters_only() -> None:
    attributes = request_attributes(
        {
            "model": "openai/gpt-4o",
            "api_base": "https://user:pw@api.example.com/v1?api-key=sk-zzzzzzzzzzzzzzzzzzzzzz",
            "api_key": PLANTED_KEY,
            "extra_headers": {"Authorization": f"Bearer {PLANTED_KEY}"},
            "temperature": 0.2,
            "max_completion_tokens": 64,
            "top_p": 0.9,
            "top_k": 40,
            "frequency_penalty": 0.1,
            "presence_penalty": 0,
            "seed": 7,
            "stop": "END",
            "n": 2,
            "stream": True,
        }
    )
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "server.address": "api.example.com",
        "server.port": 443,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.top_k": 40,
        "gen_ai.request.frequency_penalty": 0.1,
        "gen_ai.request.presence_penalty": 0.0,
        "gen_ai.request.seed": 7,
        "gen_ai.request.stop_sequences": ("END",),
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.stream": True,
    }


@pytest.mark.parametrize(
    ("api_base", "expected"),
    [
        ("http://127.0.0.1:8080/v1", {"server.address": "127.0.0.1", "server.port": 8080}),
        ("http://localhost/v1", {"server.address": "localhost", "server.port": 80}),
        ("not a url", {}),
        ("http://[::1", {}),
        (None, {}),
    ],
)
def test_server_attributes(api_base: str | None, expected: dict[str, Any]) -> None:
    assert server_attributes(api_base) == expected


# --------------------------------------------------------------------------------------------------
# A traced call inside a run


def test_traced_acompletion_records_one_chat_span_under_the_run(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny.", prompt_tokens=321, completion_tokens=45))

    async def main() -> tuple[Any, list[Any]]:
        async with traced_run("weather", tracer_provider=tracing.provider) as run:
            run.messages.append(USER)
            response = await traced_acompletion(
                run.messages,
                tracer_provider=tracing.provider,
                **call_kwargs(server, temperature=0.3, max_tokens=100, top_p=0.5, stop=["END"], seed=3),
            )
            return response, list(run.messages)

    response, messages = asyncio.run(main())
    assert type(response).__name__ == "ModelResponse"
    assert messages == [USER, response.choices[0].message]
    assert messages[1] is response.choices[0].message
    run_span, chat = tracing.span("invoke_agent weather"), tracing.span("chat scripted")
    assert chat.kind is SpanKind.CLIENT
    assert chat.parent is not None
    assert chat.parent.span_id == run_span.context.span_id
    assert chat.status.status_code is StatusCode.UNSET
    assert dict(chat.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "scripted",
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "gen_ai.request.temperature": 0.3,
        "gen_ai.request.max_tokens": 100,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.request.stop_sequences": ("END",),
        "gen_ai.request.seed": 3,
        "gen_ai.response.id": "chatcmpl-scripted-1",
        "gen_ai.response.model": "scripted",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 321,
        "gen_ai.usage.output_tokens": 45,
    }
    assert chat.events == ()  # the message is the run's event, never re-recorded per call
    assert events_named(run_span, wire.EVENT_MESSAGE_PREFIX) == [
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
    ]


def test_traced_completion_is_the_same_call_synchronously(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny.", prompt_tokens=3, completion_tokens=2))
    with traced_run("sync", tracer_provider=tracing.provider) as run:
        run.messages.append(USER)
        response = traced_completion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
    assert run.messages[-1] is response.choices[0].message
    chat = tracing.span("chat scripted")
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.usage.input_tokens"] == 3
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_outside_a_run_it_appends_to_any_list_and_the_span_is_a_root(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny."))
    messages: list[Any] = [USER]
    response = traced_completion(messages, tracer_provider=tracing.provider, **call_kwargs(server))
    assert messages == [USER, response.choices[0].message]
    assert tracing.span("chat scripted").parent is None


def test_a_bare_model_name_learns_its_provider_from_the_response(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny."))
    traced_completion([USER], tracer_provider=tracing.provider, **call_kwargs(server, model="gpt-4o"))
    attributes = tracing.span("chat gpt-4o").attributes or {}
    assert attributes["gen_ai.provider.name"] == "openai"


@pytest.fixture
def sent_to_litellm(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The kwargs ``litellm.completion`` receives (litellm replaced at its edge, answering empty)."""
    seen: dict[str, Any] = {}

    def fake_completion(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return litellm.ModelResponse()

    monkeypatch.setattr(litellm, "completion", fake_completion)
    return seen


def test_user_metadata_is_kept_and_the_chat_span_is_litellms_parent(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch, sent_to_litellm: dict[str, Any]
) -> None:
    seen = sent_to_litellm
    monkeypatch.setattr(litellm, "success_callback", [*litellm.success_callback, "otel"])
    metadata = {"tenant": "acme"}
    traced_completion([USER], tracer_provider=tracing.provider, model="openai/x", metadata=metadata)
    assert metadata == {"tenant": "acme"}  # the caller's dict is not mutated
    assert seen["metadata"]["tenant"] == "acme"
    parent = seen["metadata"]["litellm_parent_otel_span"]
    assert parent.get_span_context().span_id == tracing.span("chat x").context.span_id


def test_without_litellms_otel_callback_no_parent_span_is_passed(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch, sent_to_litellm: dict[str, Any]
) -> None:
    """litellm copies and inspects metadata on every call: a span nobody reads is pure overhead."""
    seen = sent_to_litellm
    for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback"):
        monkeypatch.setattr(litellm, name, [c for c in getattr(litellm, name) if c != "otel"])
    traced_completion([USER], tracer_provider=tracing.provider, model="openai/x", metadata={"tenant": "acme"})
    assert seen["metadata"] == {"tenant": "acme"}


# --------------------------------------------------------------------------------------------------
# Errors


def test_the_error_propagates_unchanged_and_the_span_records_it_redacted(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = lx.RateLimitError(f"quota exceeded for key {PLANTED_KEY}", llm_provider="openai", model="x")

    async def fake_acompletion(**kwargs: Any) -> Any:
        raise planted

    monkeypatch.setattr(litellm, "acompletion", fake_acompletion)
    messages: list[Any] = [USER]
    with pytest.raises(lx.RateLimitError) as caught:
        asyncio.run(traced_acompletion(messages, tracer_provider=tracing.provider, model="openai/x"))
    assert caught.value is planted
    assert messages == [USER]
    chat = tracing.span("chat x")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None
    assert chat.attributes["error.type"] == "litellm.exceptions.RateLimitError"
    message, event = chat.events  # outside a run the failed call records what it was sent
    assert message.name == "kiln_otel.message.user"
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "litellm.exceptions.RateLimitError"
    assert "[REDACTED:" in str(event.attributes["exception.message"])
    assert PLANTED_KEY not in exported_text(tracing.spans())


def test_the_runs_own_redaction_hook_is_used_on_the_chat_span(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_completion(**kwargs: Any) -> Any:
        raise ValueError("customer cust_4711 not allowed")

    monkeypatch.setattr(litellm, "completion", fake_completion)
    # A token no timestamp or hex id can contain by chance (a bare "4711" sometimes did).
    redact = lambda text: text.replace("cust_4711", "####")  # noqa: E731
    with pytest.raises(Exception), traced_run("r", tracer_provider=tracing.provider, redact=redact) as run:  # noqa: B017, PT011
        traced_completion(run.messages, tracer_provider=tracing.provider, model="openai/x")
    (event,) = tracing.span("chat x").events
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "customer #### not allowed"
    assert "cust_4711" not in exported_text(tracing.spans())


def test_a_real_provider_error_marks_the_chat_span(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.fault(Fault.AUTHENTICATION))
    with pytest.raises(lx.AuthenticationError):
        traced_completion([USER], tracer_provider=tracing.provider, **call_kwargs(server))
    chat = tracing.span("chat scripted")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None
    assert chat.attributes["error.type"] == "litellm.exceptions.AuthenticationError"


# --------------------------------------------------------------------------------------------------
# Secrets, suppression, metrics


def test_a_planted_key_never_reaches_exported_telemetry(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny."), Turn.fault(Fault.BAD_REQUEST))
    leaky = {"role": "user", "content": f"my key is {PLANTED_KEY}, api_key='{PLANTED_KEY}'"}
    kwargs = call_kwargs(server, api_key=PLANTED_KEY, extra_headers={"Authorization": f"Bearer {PLANTED_KEY}"})
    with pytest.raises(Exception), traced_run("leak", tracer_provider=tracing.provider) as run:  # noqa: B017, PT011
        run.messages.append(leaky)
        traced_completion(run.messages, tracer_provider=tracing.provider, **kwargs)
        traced_completion(run.messages, tracer_provider=tracing.provider, **kwargs)
    text = exported_text(tracing.spans())
    assert "[REDACTED:" in text
    assert PLANTED_KEY not in text
    assert "sk-planted" not in text


def test_suppressed_instrumentation_still_appends_but_records_no_span(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("Sunny."))
    messages: list[Any] = [USER]
    with suppress_instrumentation():
        response = traced_completion(messages, tracer_provider=tracing.provider, **call_kwargs(server))
    assert messages[-1] is response.choices[0].message
    assert tracing.spans() == ()


def test_metrics_record_token_usage_and_duration_with_the_advised_buckets(
    tracing: Tracing, serve: Serve, meter: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    provider, reader = meter
    server = serve(Turn.text("Sunny.", prompt_tokens=321, completion_tokens=45), Turn.fault(Fault.RATE_LIMIT))
    kwargs = call_kwargs(server)
    traced_completion([USER], tracer_provider=tracing.provider, meter_provider=provider, **kwargs)
    with pytest.raises(lx.RateLimitError):
        traced_completion([USER], tracer_provider=tracing.provider, meter_provider=provider, **kwargs)

    tokens = histogram_points(reader, "gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: (unit, p) for unit, p in tokens}  # type: ignore[index]
    assert set(by_type) == {"input", "output"}
    assert (by_type["input"][1].sum, by_type["output"][1].sum) == (321, 45)
    unit, point = by_type["input"]
    assert unit == "{token}"
    assert tuple(point.explicit_bounds) == tuple(float(b) for b in wire.TOKEN_USAGE_BUCKETS)
    assert dict(point.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "scripted",
        "gen_ai.response.model": "scripted",
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "gen_ai.token.type": "input",
    }

    durations = histogram_points(reader, "gen_ai.client.operation.duration")
    assert {unit for unit, _ in durations} == {"s"}
    assert all(tuple(p.explicit_bounds) == wire.DURATION_BUCKETS for _, p in durations)
    failed = [p for _, p in durations if (p.attributes or {}).get("error.type")]
    assert [p.attributes["error.type"] for p in failed] == ["litellm.exceptions.RateLimitError"]  # type: ignore[index]
    assert sum(p.count for _, p in durations) == 2


# --------------------------------------------------------------------------------------------------
# Next to litellm's own "otel" callback


@pytest.fixture
def litellm_otel_callback(tracing: Tracing) -> Iterator[Any]:
    """litellm's built-in OpenTelemetry logger, on the test's provider (never a global one)."""
    from litellm.integrations.opentelemetry import OpenTelemetry, OpenTelemetryConfig
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    logger = OpenTelemetry(
        config=OpenTelemetryConfig(exporter=InMemorySpanExporter()), tracer_provider=tracing.provider
    )
    litellm.logging_callback_manager.add_litellm_callback(logger)
    yield logger
    litellm.logging_callback_manager.remove_callback_from_all_lists(logger)


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """litellm's callbacks run after the call returns, in the background: wait for them, boundedly."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), seconds)


def _litellm_spans(tracing: Tracing, trace_id: int | None = None) -> list[ReadableSpan]:
    """litellm's logging worker carries pending callbacks across event loops, so an earlier test's
    late callback can land in this test's exporter: only spans of the given trace count."""
    spans = [s for s in tracing.spans() if s.name == "litellm_request"]
    return [s for s in spans if trace_id is None or s.context.trace_id == trace_id]


def _litellm_statuses(tracing: Tracing, trace_id: int) -> set[StatusCode]:
    """A set: litellm 1.110 sometimes logs one success twice (its sync and async handlers both fire)."""
    return {s.status.status_code for s in _litellm_spans(tracing, trace_id)}


def test_litellms_otel_callback_never_writes_onto_the_run_span(
    tracing: Tracing, serve: Serve, litellm_otel_callback: Any
) -> None:
    server = serve(Turn.text("Sunny."), Turn.fault(Fault.RATE_LIMIT))

    async def main() -> None:
        async with traced_run("clean", tracer_provider=tracing.provider) as run:
            run.messages.append(USER)
            await traced_acompletion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
            with pytest.raises(lx.RateLimitError):
                await traced_acompletion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
            trace_id = run.span.get_span_context().trace_id
            await until(lambda: _litellm_statuses(tracing, trace_id) >= {StatusCode.OK, StatusCode.ERROR})

    asyncio.run(main())
    run_span = tracing.span("invoke_agent clean")
    assert set(run_span.attributes or {}) <= {
        "gen_ai.operation.name",
        "gen_ai.agent.name",
        *(
            v
            for k, v in vars(wire).items()
            if k.startswith("ATTR_") and isinstance(v, str) and v.startswith("kiln_otel.")
        ),
    }
    assert [e.name for e in run_span.events if not e.name.startswith(wire.EVENT_MESSAGE_PREFIX)] == []
    assert run_span.status.status_code is StatusCode.UNSET
    chat_ids = {s.context.span_id for s in tracing.spans() if s.name == "chat scripted"}
    ours = _litellm_spans(tracing, run_span.context.trace_id)
    assert ours
    assert {s.parent.span_id for s in ours if s.parent} == chat_ids


def test_without_the_parent_key_litellms_callback_pollutes_the_current_span(
    tracing: Tracing, serve: Serve, litellm_otel_callback: Any
) -> None:
    """The control for the test above: the callback is live, and this is what it does unguided."""
    server = serve(Turn.text("Sunny."))
    tracer = tracing.provider.get_tracer("control")

    async def main() -> None:
        with tracer.start_as_current_span("caller") as caller:
            await litellm.acompletion(messages=[USER], **call_kwargs(server))
            await until(lambda: len(caller.attributes or {}) > 10)  # type: ignore[attr-defined]

    asyncio.run(main())


def test_the_traced_list_still_records_each_message_once(tracing: Tracing, serve: Serve) -> None:
    server = serve(Turn.text("One."), Turn.text("Two."))
    with traced_run("twice", tracer_provider=tracing.provider) as run:
        assert isinstance(run.messages, TracedMessages)
        run.messages.append(USER)
        traced_completion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
        run.messages.append({"role": "user", "content": "And tomorrow?"})
        traced_completion(run.messages, tracer_provider=tracing.provider, **call_kwargs(server))
    names = events_named(tracing.span("invoke_agent twice"), wire.EVENT_MESSAGE_PREFIX)
    assert names == [
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
        "kiln_otel.message.user",
        "kiln_otel.message.assistant",
    ]
    assert [len(s.events) for s in tracing.spans() if s.name.startswith("chat")] == [0, 0]


def test_request_attributes_are_a_fresh_dict_per_call_though_routing_is_worked_out_once() -> None:
    """The provider, model and server part is shared between calls to one model: a caller that adds
    the answer's attributes to its dict must not change what the next call starts with."""
    kwargs = {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1"}
    first = request_attributes(kwargs, frozenset({"openai"}))
    first[wire.ATTR_GEN_AI_RESPONSE_ID] = "chatcmpl-1"
    second = request_attributes({**kwargs, "temperature": 0.5}, frozenset({"openai"}))
    assert second == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "server.address": "127.0.0.1",
        "server.port": 9,
        "gen_ai.request.temperature": 0.5,
    }
    assert request_attributes({"model": ["not", "hashable"]}) == {"gen_ai.operation.name": "chat"}
