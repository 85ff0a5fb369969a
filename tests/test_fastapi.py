"""kiln_otel.fastapi against a real uvicorn server and a real HTTP client: body, bound, logs, schema."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NoReturn

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import format_span_id, format_trace_id
from pydantic import BaseModel, Field
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import kiln_otel.fastapi as kiln_fastapi
from kiln_otel import ErrorWithTrace, KilnRunError, Redactor, _guard, reconstruct_error, traced_run
from kiln_otel.fastapi import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ErrorWithTraceResponse,
    error_response,
    install_error_handler,
    openapi_error_responses,
)
from tests.conftest import Tracing

SK_KEY = "sk-proj-Q7wErTy9uIoP4aSdFgH2jKl"
BEARER_TOKEN = "tok9f8e7d6c5b4a3210ZyXw"
API_KEY = "zz-acct-5c4b3a29f8e7"
SECRETS = (SK_KEY, BEARER_TOKEN, API_KEY)

BASE_KEYS = {"message", "error_type", "trace", "trace_id", "span_id", "trace_complete"}
JAEGER = "http://localhost:16686/trace/{trace_id}"


class ProviderError(Exception):
    """Shaped like a provider SDK error that is not one kiln-otel knows by name."""


# --- the agent the routes run ---------------------------------------------------------------------
def run_agent_until_it_fails(messages: list[Any], error: BaseException) -> NoReturn:
    messages.append({"role": "system", "content": "You are the account assistant."})
    messages.append({"role": "user", "content": f"Check my account, my key is {SK_KEY}"})
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "fetch_account",
                        "arguments": json.dumps({"account": "acme", "api_key": API_KEY}),
                    },
                }
            ],
        }
    )
    messages.append(
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": f"GET /account sent with Authorization: Bearer {BEARER_TOKEN}",
            "kiln_task_tool_data": {"api_key": API_KEY, "password": API_KEY},
        }
    )
    raise error


def secret_error() -> RuntimeError:
    return RuntimeError(f"provider rejected {SK_KEY} (Authorization: Bearer {BEARER_TOKEN})")


def big_trace(count: int = 200, size: int = 50_000) -> list[dict[str, Any]]:
    """About 10 MB: a system prompt, a user turn, then alternating assistant and tool messages."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are the archivist."},
        {"role": "user", "content": "Read every page."},
    ]
    for i in range(count - 2):
        filler = chr(ord("a") + i % 26) * size
        if i % 2 == 0:
            messages.append({"role": "assistant", "content": f"page {i}: {filler}"})
        else:
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": f"page {i}: {filler}"})
    return messages


def compact_size(message: Any) -> int:
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


# --- the server -------------------------------------------------------------------------------------
@contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """uvicorn in a thread on a socket bound to a free port; stopped even when the test fails."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


def failing_routes(tracing: Tracing) -> dict[str, Callable[[], None]]:
    """Route bodies by path; each runs a traced agent that fails its own way."""

    def traced(error: BaseException, fill: Callable[[list[Any]], None] | None = None) -> Callable[[], None]:
        def body() -> None:
            with traced_run("account-agent", tracer_provider=tracing.provider) as run:
                if fill is None:
                    run_agent_until_it_fails(run.messages, error)
                fill(run.messages)
                raise error

        return body

    def crash() -> None:
        raise KeyError("not a run failure")

    return {
        "/runs/secret": traced(secret_error()),
        "/runs/provider": traced(ProviderError("503 from upstream")),
        "/runs/nothing-recorded": traced(RuntimeError("failed before any message"), lambda m: None),
        "/runs/big": traced(RuntimeError("Too many turns (200)"), lambda m: m.extend(big_trace())),
        "/runs/crash": crash,
    }


def fastapi_app(tracing: Tracing, **options: Any) -> FastAPI:
    app = FastAPI()
    for path, body in failing_routes(tracing).items():
        app.add_api_route(path, body, methods=["POST"])
    install_error_handler(app, **options)
    return app


def starlette_app(tracing: Tracing, **options: Any) -> Starlette:
    def endpoint(body: Callable[[], None]) -> Callable[[Request], Response]:
        def handle(request: Request) -> Response:
            body()
            return Response("unreachable")

        return handle

    routes = [Route(path, endpoint(body), methods=["POST"]) for path, body in failing_routes(tracing).items()]
    app = Starlette(routes=routes)
    install_error_handler(app, **options)
    return app


def run_span_ids(tracing: Tracing) -> tuple[str, str]:
    span = tracing.span("invoke_agent account-agent")
    assert span.context is not None
    return format_trace_id(span.context.trace_id), format_span_id(span.context.span_id)


# --- the body ---------------------------------------------------------------------------------------
def test_failed_run_is_a_500_equal_to_what_telemetry_rebuilds(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing)) as client:
        response = client.post("/runs/secret")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == BASE_KEYS
    rebuilt = reconstruct_error(tracing.spans())
    assert body == rebuilt.model_dump()
    assert body["error_type"] == "RuntimeError"
    assert [m["role"] for m in body["trace"]] == ["system", "user", "assistant", "tool"]
    assert body["trace"][2]["tool_calls"][0]["function"]["name"] == "fetch_account"
    trace_id, span_id = run_span_ids(tracing)
    assert (body["trace_id"], body["span_id"]) == (trace_id, span_id)
    assert response.headers["traceparent"] == f"00-{trace_id}-{span_id}-01"


def test_secrets_leave_neither_in_the_body_nor_in_server_logs(
    tracing: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kiln_otel")
    with serve(fastapi_app(tracing)) as client:
        response = client.post("/runs/secret")
    raw = response.content.decode()
    assert "[REDACTED:" in raw
    logged = [r for r in caplog.records if r.name == "kiln_otel"]
    assert len(logged) == 1
    log_text = caplog.text
    assert "Traceback (most recent call last)" in log_text
    assert "RuntimeError: provider rejected [REDACTED:openai_key]" in log_text
    assert run_span_ids(tracing)[0] in log_text
    for secret in SECRETS:
        assert secret not in raw
        assert secret not in log_text
    assert "Traceback" not in raw


def test_run_that_recorded_nothing_gives_null_trace(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing)) as client:
        response = client.post("/runs/nothing-recorded")
    assert response.status_code == 500
    body = response.json()
    assert body["trace"] is None
    assert body["message"] == "failed before any message"
    assert body == reconstruct_error(tracing.spans()).model_dump()


def test_provider_like_error_keeps_its_short_type_and_a_safe_message(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing)) as client:
        body = client.post("/runs/provider").json()
    assert body["error_type"] == "ProviderError"
    assert body["message"] == "An unexpected error occurred."
    assert "503 from upstream" not in json.dumps(body)


def test_trace_url_only_with_a_template(tracing: Tracing) -> None:
    grafana = (
        'http://grafana:3000/explore?left={"queries":[{"datasource":"tempo","query":"{trace_id}"}]}&span={span_id}'
    )
    with serve(fastapi_app(tracing, trace_url_template=grafana)) as client:
        body = client.post("/runs/secret").json()
    trace_id, span_id = run_span_ids(tracing)
    assert set(body) == BASE_KEYS | {"trace_url"}
    assert body["trace_url"] == (
        f'http://grafana:3000/explore?left={{"queries":[{{"datasource":"tempo","query":"{trace_id}"}}]}}&span={span_id}'
    )


def test_jaeger_template(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing, trace_url_template=JAEGER)) as client:
        body = client.post("/runs/provider").json()
    assert body["trace_url"] == f"http://localhost:16686/trace/{run_span_ids(tracing)[0]}"


def test_own_redaction_hook_runs_on_top_of_the_runs(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing, redact=Redactor(patterns=[r"\bacme\b"]))) as client:
        raw = client.post("/runs/secret").content.decode()
    assert "acme" not in raw
    assert "acme" in json.dumps(reconstruct_error(tracing.spans()).model_dump())
    assert SK_KEY not in raw


def test_other_exceptions_take_starlettes_normal_500(tracing: Tracing) -> None:
    with serve(fastapi_app(tracing)) as client:
        response = client.post("/runs/crash")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert "traceparent" not in response.headers


def test_plain_starlette_app(tracing: Tracing) -> None:
    with serve(starlette_app(tracing, trace_url_template=JAEGER)) as client:
        response = client.post("/runs/secret")
        empty = client.post("/runs/nothing-recorded")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == BASE_KEYS | {"trace_url"}
    assert body["trace"][0]["role"] == "system"
    assert response.headers["traceparent"].startswith(f"00-{body['trace_id']}-")
    assert empty.json()["trace"] is None


def test_handler_that_cannot_build_the_body_still_answers(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _guard.set_strict(False)

    def broken(self: object, err: KilnRunError) -> dict[str, Any]:
        raise RecursionError("payload builder bug")

    monkeypatch.setattr(kiln_fastapi._Options, "payload", broken)
    with serve(fastapi_app(tracing, trace_url_template=JAEGER)) as client:
        response = client.post("/runs/secret")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == BASE_KEYS
    assert body["trace"] is None
    assert body["trace_complete"] is False
    assert body["message"].startswith("provider rejected [REDACTED:openai_key]")
    assert ErrorWithTrace.model_validate(body).error_type == "RuntimeError"
    assert "payload builder bug" in caplog.text


def test_hand_built_error_with_junk_fields_still_gets_a_valid_body(tracing: Tracing) -> None:
    _guard.set_strict(False)
    err = KilnRunError(None, [object()], ValueError("x"), trace_id=123, span_id=None)  # type: ignore[arg-type]
    response = error_response(err, trace_url_template=JAEGER)
    body = json.loads(bytes(response.body))
    assert body == {
        "message": "An unexpected error occurred.",
        "error_type": "ValueError",
        "trace": None,
        "trace_id": None,
        "span_id": None,
        "trace_complete": False,
    }
    assert "traceparent" not in response.headers


def test_error_response_for_apps_that_catch_it_themselves(tracing: Tracing) -> None:
    app = FastAPI()

    @app.post("/runs/caught", responses=openapi_error_responses())
    def caught() -> Response:
        try:
            with traced_run("account-agent", tracer_provider=tracing.provider) as run:
                run_agent_until_it_fails(run.messages, ProviderError("boom"))
        except KilnRunError as err:
            return error_response(err, trace_url_template=JAEGER, status_code=502)
        return Response("unreachable")

    with serve(app) as client:
        response = client.post("/runs/caught")
        document = client.get("/openapi.json").json()
    assert response.status_code == 502
    body = response.json()
    assert body["trace_url"].endswith(body["trace_id"])
    assert body["trace"] == reconstruct_error(tracing.spans()).trace
    declared = document["paths"]["/runs/caught"]["post"]["responses"]["500"]
    assert declared["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorWithTraceResponse")


def test_bad_arguments_fail_at_install_time() -> None:
    with pytest.raises(ValueError, match="trace_id"):
        install_error_handler(FastAPI(), trace_url_template="http://jaeger/trace/")
    with pytest.raises(ValueError, match="at least"):
        install_error_handler(FastAPI(), max_payload_bytes=100)
    with pytest.raises(TypeError, match="redact"):
        install_error_handler(FastAPI(), redact=42)  # type: ignore[arg-type]


# --- the payload bound ------------------------------------------------------------------------------
def test_ten_megabyte_trace_is_cut_in_the_middle(tracing: Tracing) -> None:
    original = big_trace()
    with serve(fastapi_app(tracing)) as client:
        response = client.post("/runs/big")
    assert response.status_code == 500
    assert len(response.content) <= DEFAULT_MAX_PAYLOAD_BYTES
    body = response.json()
    trace = body["trace"]
    assert trace[:2] == original[:2]
    assert trace[-1] == original[-1]
    marker, tail = trace[2], trace[3:]
    omitted = len(original) - 2 - len(tail)
    omitted_bytes = sum(compact_size(m) for m in original[2 : 2 + omitted])
    assert marker == {
        "role": "kiln_otel",
        "content": f"… {omitted} messages ({omitted_bytes} bytes) left out …",
        "_kiln_otel": {"omitted_messages": omitted, "omitted_bytes": omitted_bytes},
    }
    assert omitted > 150
    assert body["trace_complete"] is False
    truncated = body["trace_truncated"]
    assert truncated["omitted_messages"] == omitted
    assert truncated["omitted_bytes"] == omitted_bytes
    kept_tail = original[len(original) - len(tail) :]
    assert tail[1:] == kept_tail[1:]
    if truncated["truncated_messages"]:
        assert tail[0]["content"].endswith("…[truncated]")
        assert kept_tail[0]["content"].startswith(tail[0]["content"].removesuffix("…[truncated]"))
    else:
        assert tail[0] == kept_tail[0]
    assert set(body) == BASE_KEYS | {"trace_truncated"}
    rebuilt = reconstruct_error(tracing.spans())
    assert rebuilt.trace == original
    assert ErrorWithTraceResponse.model_validate(body).trace_truncated is not None


def failed_with(messages: list[Any], *, trace_id: str | None = "ab" * 16) -> KilnRunError:
    err = KilnRunError("it failed", messages, ProviderError("x"), trace_id=trace_id, span_id="cd" * 8)
    err.redact = None
    return err


def body_of(err: KilnRunError, limit: int) -> tuple[bytes, dict[str, Any]]:
    response = error_response(err, max_payload_bytes=limit, redact=None)
    raw = bytes(response.body)
    assert len(raw) <= limit
    return raw, json.loads(raw)


def test_single_message_over_the_budget_is_cut_not_dropped() -> None:
    huge_tool = {"role": "tool", "tool_call_id": "call_9", "content": "r" * 200_000, "is_error": True}
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, huge_tool]
    _, body = body_of(failed_with(messages), 16_384)
    assert body["trace"][:2] == messages[:2]
    last = body["trace"][-1]
    assert {k: last[k] for k in ("role", "tool_call_id", "is_error")} == {
        "role": "tool",
        "tool_call_id": "call_9",
        "is_error": True,
    }
    assert last["content"].endswith("…[truncated]")
    assert len(body["trace"]) == 3
    assert body["trace_truncated"] == {"omitted_messages": 0, "omitted_bytes": 0, "truncated_messages": 1}


def test_huge_system_prompt_is_cut_to_half_the_budget_and_the_end_kept() -> None:
    messages = [
        {"role": "system", "content": "S" * 100_000},
        {"role": "user", "content": "U" * 100_000},
        *({"role": "assistant", "content": f"turn {i} " + "a" * 3000} for i in range(30)),
    ]
    _, body = body_of(failed_with(messages), 32_768)
    trace = body["trace"]
    assert trace[0]["role"] == "system"
    assert trace[0]["content"].endswith("…[truncated]")
    assert trace[-1] == messages[-1]
    marker = next(m for m in trace if m["role"] == "kiln_otel")
    assert marker["_kiln_otel"]["omitted_messages"] == body["trace_truncated"]["omitted_messages"]
    assert len(trace) - 1 + marker["_kiln_otel"]["omitted_messages"] == len(messages)


def test_budget_too_small_for_any_message_drops_the_trace_but_stays_valid() -> None:
    message = "m" * 10_000
    err = KilnRunError(message, [{"role": "user", "content": "x" * 50_000}], ValueError(message))
    err.redact = None
    _, body = body_of(err, 4096)
    assert body["trace"] is None
    assert body["message"].endswith("…[truncated]")
    assert body["trace_truncated"]["omitted_messages"] == 1
    ErrorWithTraceResponse.model_validate(body)


def test_small_trace_is_untouched_and_unmarked() -> None:
    messages = [{"role": "user", "content": "hi"}]
    _, body = body_of(failed_with(messages, trace_id=None), 4096)
    assert body["trace"] == messages
    assert "trace_truncated" not in body
    assert body["trace_complete"] is True


# --- OpenAPI ----------------------------------------------------------------------------------------
def test_openapi_declares_the_500_error_with_trace_on_every_route(tracing: Tracing) -> None:
    app = fastapi_app(tracing)

    @app.get("/added-after-install")
    def later() -> dict[str, str]:
        return {}

    with serve(app) as client:
        document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    error_schema = schemas["ErrorWithTraceResponse"]
    assert set(error_schema["required"]) == {"message", "error_type"}
    assert set(error_schema["properties"]) == BASE_KEYS | {"trace_url", "trace_truncated"}
    assert "TraceTruncated" in schemas
    operations = [op for item in document["paths"].values() for op in item.values()]
    assert len(operations) == len(failing_routes(tracing)) + 1
    for operation in operations:
        declared = operation["responses"]["500"]
        assert declared["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorWithTraceResponse"
        }
        assert "traceparent" in declared["headers"]


# --- fuzzing ----------------------------------------------------------------------------------------
class RunRequest(BaseModel):
    prompt: str = Field(max_length=200)
    failure: Literal["none", "provider", "limit", "tool", "before_any_message", "nested"]
    turns: int = Field(ge=0, le=4)


def fuzz_app(tracing: Tracing) -> FastAPI:
    app = FastAPI()

    def fail_as(request: RunRequest) -> BaseException:
        errors: dict[str, BaseException] = {
            "provider": ProviderError(f"upstream: {request.prompt}"),
            "limit": RuntimeError(f"Too many turns ({request.turns})"),
            "tool": ValueError(f"tool could not parse {request.prompt!r}"),
            "before_any_message": RuntimeError(request.prompt),
        }
        return errors[request.failure]

    @app.post("/agent/runs")
    async def start_run(request: RunRequest) -> dict[str, str]:
        async with traced_run("fuzz-agent", tracer_provider=tracing.provider) as run:
            if request.failure == "before_any_message":
                raise fail_as(request)
            run.messages.append({"role": "user", "content": request.prompt})
            for turn in range(request.turns):
                run.messages.append({"role": "assistant", "content": f"turn {turn}: {request.prompt}"})
            if request.failure == "nested":
                with traced_run("sub-agent", tracer_provider=tracing.provider) as sub:
                    sub.messages.append({"role": "user", "content": request.prompt})
                    raise RuntimeError(request.prompt)
            if request.failure != "none":
                raise fail_as(request)
        return {"answer": request.prompt}

    @app.get("/agent/runs/{run_id}")
    def get_run(run_id: int) -> dict[str, int]:
        if run_id % 2:
            with traced_run("lookup", tracer_provider=tracing.provider):
                raise LookupError(f"run {run_id} is gone")
        return {"run_id": run_id}

    install_error_handler(app, trace_url_template=JAEGER)
    return app


def every_500_is_an_error_with_trace(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    """The property: a 500 always carries a body Kiln's UI can render, with a traceparent to follow."""
    if response.status_code != 500:
        return
    body = response.json()
    payload = ErrorWithTrace.model_validate(body)
    assert set(body) <= BASE_KEYS | {"trace_url", "trace_truncated"}
    assert body["trace"] is None or len(body["trace"]) > 0, "Kiln's UI wants null, never []"
    assert response.headers["traceparent"][0] == f"00-{payload.trace_id}-{payload.span_id}-01"


def test_fuzzed_requests_never_get_a_500_without_an_error_with_trace(tracing: Tracing) -> None:
    with serve(fuzz_app(tracing)) as client:
        base_url = str(client.base_url)
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        cases = st.one_of(schema.as_strategy(), schema.as_strategy(schemathesis.GenerationMode("negative")))
        statuses: set[int] = set()

        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=cases)
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(
                base_url=base_url, checks=[every_500_is_an_error_with_trace, response_schema_conformance]
            )
            statuses.add(response.status_code)

        check()
    assert 500 in statuses
