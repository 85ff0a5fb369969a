"""The scripted model server, driven by real litellm: the fault table here is what kiln-otel's error
classification is built on, so each fault pins the exact exception class litellm raises for it.

Every call uses ``num_retries=0`` and a short explicit timeout, so a broken server fails a test in
seconds instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm import exceptions as lx

from kiln_otel.testing import Fault, Script, ScriptedModelServer, ToolCall, Turn, estimate_tokens
from tests.conftest import close_implicit_event_loop

litellm.suppress_debug_info = True

TIMEOUT = 2.0
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})
T = TypeVar("T")
LONG_TEXT = "It is sunny in Paris today, with a light breeze and a high of twenty-one degrees."

Serve = Callable[..., ScriptedModelServer]


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """``asyncio.run`` with a bound, so a hung await fails the test instead of the suite."""
    close_implicit_event_loop()
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start servers on demand (turns, or one callable script); the stack closes every one of them."""
    with contextlib.ExitStack() as stack:
        yield lambda *turns: stack.enter_context(ScriptedModelServer(_script(turns)))


def _script(turns: tuple[Any, ...]) -> Script:
    return turns[0] if len(turns) == 1 and callable(turns[0]) else list(turns)


def _kwargs(server: ScriptedModelServer, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": "openai/scripted",
        "api_base": server.base_url,
        "api_key": "sk-local",
        "messages": MESSAGES,
        "num_retries": 0,
        "timeout": TIMEOUT,
    }
    kwargs.update(overrides)
    return kwargs


def complete(server: ScriptedModelServer, **overrides: Any) -> Any:
    return litellm.completion(**_kwargs(server, **overrides))


def stream(server: ScriptedModelServer, **overrides: Any) -> list[Any]:
    return list(litellm.completion(**_kwargs(server, stream=True, **overrides)))


def stream_until_error(server: ScriptedModelServer, **overrides: Any) -> tuple[list[Any], BaseException]:
    """The chunks a caller saw before a mid-stream failure, and the failure itself."""
    chunks: list[Any] = []
    try:
        for chunk in litellm.completion(**_kwargs(server, stream=True, **overrides)):
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    raise AssertionError(f"the stream ended without an error after {len(chunks)} chunks")


def raw_post(server: ScriptedModelServer, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    """Bypass litellm to check the wire format itself."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sse_events(data: bytes) -> list[Any]:
    payloads = [line[len("data: ") :] for line in data.decode().splitlines() if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def calls_of(message: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------------------------------------
# Answers


def test_importing_the_testing_package_does_not_import_litellm() -> None:
    code = "import sys, kiln_otel.testing; assert 'litellm' not in sys.modules, 'litellm was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_text_answer_is_an_openai_completion(serve: Serve) -> None:
    server = serve(Turn.text("Sunny and warm."))
    response = complete(server)
    assert response.choices[0].message.content == "Sunny and warm."
    assert response.choices[0].finish_reason == "stop"
    assert response.model.endswith("scripted")
    assert response.id == "chatcmpl-scripted-1"
    usage = response.usage
    assert usage.completion_tokens == estimate_tokens("Sunny and warm.")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_prompt_tokens_grow_with_the_prompt_and_are_deterministic(serve: Serve) -> None:
    server = serve(Turn.text("a"), Turn.text("b"), Turn.text("c"))
    short = complete(server).usage.prompt_tokens
    again = complete(server).usage.prompt_tokens
    longer = complete(server, messages=[*MESSAGES, {"role": "user", "content": "x" * 400}]).usage
    assert short == again
    assert longer.prompt_tokens >= short + 100


def test_usage_overrides_are_reported_exactly(serve: Serve) -> None:
    server = serve(Turn.text("ok", prompt_tokens=1234, completion_tokens=56, finish_reason="length"))
    response = complete(server)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (1234, 56)
    assert response.choices[0].finish_reason == "length"


def test_tool_calls_come_back_parsed_with_generated_and_pinned_ids(serve: Serve) -> None:
    pinned = ToolCall("get_time", {"tz": "Europe/Paris"}, id="call_pinned")
    server = serve(Turn.tool_calls([WEATHER, pinned]))
    message = complete(server).choices[0].message
    assert calls_of(message) == [
        ("call_1_0", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("call_pinned", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert message.content is None


def test_string_arguments_are_sent_verbatim(serve: Serve) -> None:
    server = serve(Turn.tool_calls([ToolCall("broken", '{"city": "Par')]))
    message = complete(server).choices[0].message
    assert message.tool_calls[0].function.arguments == '{"city": "Par'


def test_delay_holds_the_answer_back(serve: Serve) -> None:
    server = serve(Turn.text("late", delay=0.3))
    started = time.monotonic()
    assert complete(server).choices[0].message.content == "late"
    assert time.monotonic() - started >= 0.3


def test_server_records_every_request_body(serve: Serve) -> None:
    server = serve(Turn.text("one"), Turn.fault(Fault.RATE_LIMIT))
    complete(server, temperature=0.5)
    with pytest.raises(lx.RateLimitError):
        complete(server, messages=[{"role": "user", "content": "second"}])
    first, second = server.requests
    assert first["messages"] == MESSAGES
    assert first["model"] == "scripted"
    assert first["temperature"] == 0.5
    assert second["messages"] == [{"role": "user", "content": "second"}]
    assert server.remaining == 0


def test_exhausted_script_answers_400_instead_of_hanging(serve: Serve) -> None:
    server = serve(Turn.text("only one"))
    complete(server)
    with pytest.raises(lx.BadRequestError, match="script exhausted"):
        complete(server)
    assert len(server.requests) == 2


# ---------------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize(
    "turn",
    [
        Turn.text(LONG_TEXT),
        Turn.tool_calls([WEATHER, ToolCall("get_time", {"tz": "Europe/Paris"})]),
        Turn.tool_calls([WEATHER], content="Let me check."),
    ],
    ids=["text", "tool_calls", "text_and_tool_call"],
)
def test_stream_reassembles_to_the_non_streamed_message(serve: Serve, turn: Turn) -> None:
    server = serve(turn, turn)
    plain = complete(server).choices[0]
    chunks = stream(server)
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES).choices[0]
    assert len(chunks) > 3
    assert (rebuilt.message.content or None) == plain.message.content
    assert [c[1:] for c in calls_of(rebuilt.message)] == [c[1:] for c in calls_of(plain.message)]
    assert [c[0] for c in calls_of(rebuilt.message)] == ["call_2_" + c[0][-1] for c in calls_of(plain.message)]
    assert rebuilt.finish_reason == plain.finish_reason


def test_stream_wire_format_matches_openai(serve: Serve) -> None:
    server = serve(Turn.tool_calls([WEATHER], content="Checking the weather now."))
    status, data = raw_post(server, "/v1/chat/completions", {"model": "m", "messages": [], "stream": True})
    events = sse_events(data)
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert len([d for d in deltas if d.get("content")]) >= 3
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    head, *fragments = tool_deltas
    assert (head["id"], head["type"], head["function"]["name"]) == ("call_1_0", "function", "get_weather")
    assert len(fragments) >= 2
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments)
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == WEATHER.arguments
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_usage_chunk_only_with_include_usage(serve: Serve, include_usage: bool) -> None:
    server = serve(Turn.text(LONG_TEXT))
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": include_usage}}
    events = sse_events(raw_post(server, "/chat/completions", body)[1])
    usage_chunks = [e for e in events[:-1] if e.get("usage")]
    if include_usage:
        assert len(usage_chunks) == 1
        assert usage_chunks[0]["choices"] == []
        assert events[-2] is usage_chunks[0]
        assert usage_chunks[0]["usage"]["completion_tokens"] == estimate_tokens(LONG_TEXT)
    else:
        assert usage_chunks == []


def test_litellm_reports_the_streamed_usage_when_asked(serve: Serve) -> None:
    turn = Turn.text(LONG_TEXT, prompt_tokens=321, completion_tokens=45)
    server = serve(turn, turn)
    chunks = stream(server, stream_options={"include_usage": True})
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert (rebuilt.usage.prompt_tokens, rebuilt.usage.completion_tokens) == (321, 45)
    assert server.requests[0]["stream_options"] == {"include_usage": True}
    estimated = litellm.stream_chunk_builder(stream(server), messages=MESSAGES)
    assert estimated.usage.prompt_tokens != 321


# ---------------------------------------------------------------------------------------------------
# Faults: the exact litellm exception for each


HTTP_FAULTS = [
    (Fault.RATE_LIMIT, lx.RateLimitError, 429),
    (Fault.SERVER_ERROR, lx.InternalServerError, 500),
    (Fault.SERVICE_UNAVAILABLE, lx.ServiceUnavailableError, 503),
    (Fault.CONTEXT_LENGTH_EXCEEDED, lx.ContextWindowExceededError, 400),
    (Fault.BAD_REQUEST, lx.BadRequestError, 400),
    (Fault.AUTHENTICATION, lx.AuthenticationError, 401),
    (Fault.NOT_FOUND, lx.NotFoundError, 404),
    # litellm recognises OpenAI's safety-system wording only as "the safety system", so the
    # content_policy_violation code alone stays a plain BadRequestError (the code is in .body).
    (Fault.CONTENT_POLICY, lx.BadRequestError, 400),
    (Fault.FLAGGED_PROMPT, lx.ContentPolicyViolationError, 400),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("fault", "expected", "status"), HTTP_FAULTS, ids=[f[0].name for f in HTTP_FAULTS])
def test_http_fault_raises_the_mapped_exception(
    serve: Serve, fault: Fault, expected: type[Exception], status: int, streamed: bool
) -> None:
    server = serve(Turn.fault(fault))
    with pytest.raises(expected) as caught:
        stream(server) if streamed else complete(server)
    assert type(caught.value) is expected
    assert caught.value.status_code == status  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fault", "expected", "status"), HTTP_FAULTS, ids=[f[0].name for f in HTTP_FAULTS])
def test_http_fault_body_has_openai_error_shape(
    serve: Serve, fault: Fault, expected: type[Exception], status: int
) -> None:
    server = serve(Turn.fault(fault))
    wire_status, data = raw_post(server, "/v1/chat/completions", {"model": "m", "messages": []})
    error = json.loads(data)["error"]
    assert wire_status == status
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == _expected_code(fault)


def _expected_code(fault: Fault) -> str | None:
    codes = {
        Fault.RATE_LIMIT: "rate_limit_exceeded",
        Fault.SERVICE_UNAVAILABLE: "service_unavailable",
        Fault.CONTEXT_LENGTH_EXCEEDED: "context_length_exceeded",
        Fault.AUTHENTICATION: "invalid_api_key",
        Fault.NOT_FOUND: "model_not_found",
        Fault.CONTENT_POLICY: "content_policy_violation",
        Fault.FLAGGED_PROMPT: "invalid_prompt",
    }
    return codes.get(fault)


@pytest.mark.parametrize("fault", [Fault.MALFORMED_JSON, Fault.EMPTY_JSON, Fault.STREAM_CUT])
def test_broken_200_body_raises_internal_server_error(serve: Serve, fault: Fault) -> None:
    server = serve(Turn.fault(fault))
    with pytest.raises(lx.InternalServerError) as caught:
        complete(server)
    assert type(caught.value) is lx.InternalServerError
    assert caught.value.status_code == 500


def test_error_object_as_a_200_body_raises_a_bare_api_error(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.STREAM_ERROR))
    with pytest.raises(lx.APIError) as caught:
        complete(server)
    assert type(caught.value) is lx.APIError
    assert caught.value.status_code is None


@pytest.mark.parametrize("fault", [Fault.MALFORMED_JSON, Fault.EMPTY_JSON])
def test_broken_stream_event_raises_mid_stream_fallback(serve: Serve, fault: Fault) -> None:
    server = serve(Turn.fault(fault))
    _, error = stream_until_error(server)
    assert type(error) is lx.MidStreamFallbackError
    assert error.status_code == 500


def test_stream_cut_delivers_the_chunks_sent_before_it(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.STREAM_CUT, content=LONG_TEXT))
    chunks, error = stream_until_error(server)
    received = content_of(chunks)
    assert type(error) is lx.MidStreamFallbackError
    assert isinstance(error, lx.ServiceUnavailableError)
    assert 0 < len(received) < len(LONG_TEXT)
    assert LONG_TEXT.startswith(received)
    assert error.generated_content == received
    assert error.is_pre_first_chunk is False
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)


def test_stream_cut_inside_tool_call_arguments(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.STREAM_CUT, calls=[WEATHER]))
    chunks, error = stream_until_error(server)
    assert type(error) is lx.MidStreamFallbackError
    names = [t.function.name for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert "get_weather" in names


def test_error_object_inside_the_stream(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.STREAM_ERROR, content=LONG_TEXT))
    chunks, error = stream_until_error(server)
    assert type(error) is lx.MidStreamFallbackError
    assert "error while streaming" in str(error)
    assert error.generated_content == content_of(chunks)
    assert 0 < len(error.generated_content) < len(LONG_TEXT)


def test_no_response_times_out_within_the_bound_and_close_is_fast(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.NO_RESPONSE))
    started = time.monotonic()
    with pytest.raises(lx.Timeout) as caught:
        complete(server, timeout=0.5)
    assert type(caught.value) is lx.Timeout
    assert caught.value.status_code == 408
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2.0


def test_close_is_bounded_while_a_request_is_held(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.NO_RESPONSE))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            complete(server, timeout=30)
        except Exception as exc:
            outcome.append(exc)

    client = threading.Thread(target=call, daemon=True)
    client.start()
    _wait_for(lambda: len(server.requests) == 1)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2.0
    client.join(5)
    assert not client.is_alive()
    assert len(outcome) == 1


def test_close_releases_the_port_and_is_idempotent() -> None:
    server = ScriptedModelServer([Turn.text("hi")]).start()
    port = server.port
    complete(server)  # leaves a keep-alive connection open in litellm's client pool
    started = time.monotonic()
    server.close()
    server.close()
    assert time.monotonic() - started < 2.0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------------
# Lifecycle, routes and dynamic scripts


def test_lifecycle_misuse_is_refused() -> None:
    server = ScriptedModelServer([])
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with pytest.raises(RuntimeError):
            server.start()
    with pytest.raises(RuntimeError):
        server.start()


def test_turn_constructors_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Turn.tool_calls([])
    with pytest.raises(ValueError, match="delay"):
        Turn.text("x", delay=-1)


def test_models_route_and_unknown_routes(serve: Serve) -> None:
    server = serve()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/v1/models")
        models = json.loads(conn.getresponse().read())
        conn.request("GET", "/v1/nowhere")
        missing = conn.getresponse()
        missing_body = json.loads(missing.read())
    finally:
        conn.close()
    assert [m["id"] for m in models["data"]] == ["scripted"]
    assert missing.status == 404
    assert set(missing_body["error"]) == {"message", "type", "param", "code"}
    assert raw_post(server, "/v1/embeddings", {})[0] == 404
    assert server.requests == []


def test_unprefixed_route_and_invalid_body(serve: Serve) -> None:
    server = serve(Turn.text("no prefix"))
    status, data = raw_post(server, "/chat/completions", {"model": "m", "messages": []})
    assert status == 200
    assert json.loads(data)["choices"][0]["message"]["content"] == "no prefix"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v1/chat/completions", b"[not json")
        response = conn.getresponse()
        assert response.status == 400
        assert json.loads(response.read())["error"]["code"] == "invalid_json"
    finally:
        conn.close()


def weather_agent(body: dict[str, Any]) -> Turn:
    """Calls the tool until a tool result is in the conversation, then answers from it."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    return Turn.text(f"The tool said: {results[-1]}") if results else Turn.tool_calls([WEATHER])


def test_callable_script_drives_an_async_agent_loop(serve: Serve) -> None:
    server = serve(weather_agent)

    async def run() -> str:
        messages: list[dict[str, Any]] = list(MESSAGES)
        first = (await litellm.acompletion(**_kwargs(server, messages=messages))).choices[0].message
        call = first.tool_calls[0]
        messages.append(first.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "21C and sunny"})
        second = await litellm.acompletion(**_kwargs(server, messages=messages))
        return str(second.choices[0].message.content)

    assert run_async(run()) == "The tool said: 21C and sunny"
    assert server.remaining is None
    second_request = server.requests[1]["messages"]
    assert second_request[1]["tool_calls"][0]["id"] == "call_1_0"
    assert second_request[2] == {"role": "tool", "tool_call_id": "call_1_0", "content": "21C and sunny"}


def test_async_streaming_and_async_faults(serve: Serve) -> None:
    server = serve(Turn.text(LONG_TEXT), Turn.fault(Fault.SERVICE_UNAVAILABLE), Turn.fault(Fault.STREAM_CUT))

    async def run() -> tuple[str, type[BaseException], str, BaseException]:
        chunks = [c async for c in await litellm.acompletion(**_kwargs(server, stream=True))]
        try:
            await litellm.acompletion(**_kwargs(server))
        except Exception as exc:
            unavailable: type[BaseException] = type(exc)
        partial: list[Any] = []
        try:
            async for chunk in await litellm.acompletion(**_kwargs(server, stream=True)):
                partial.append(chunk)
        except Exception as exc:
            return content_of(chunks), unavailable, content_of(partial), exc
        raise AssertionError("the cut stream ended without an error")

    text, unavailable, partial, cut = run_async(run())
    assert text == LONG_TEXT
    assert unavailable is lx.ServiceUnavailableError
    assert type(cut) is lx.MidStreamFallbackError
    assert cut.generated_content == partial != ""


def test_async_timeout(serve: Serve) -> None:
    server = serve(Turn.fault(Fault.NO_RESPONSE))

    async def run() -> BaseException:
        try:
            await litellm.acompletion(**_kwargs(server, timeout=0.5))
        except Exception as exc:
            return exc
        raise AssertionError("no timeout")

    started = time.monotonic()
    error = run_async(run(), 5)
    assert type(error) is lx.Timeout
    assert time.monotonic() - started < 2.0


def test_concurrent_requests_each_get_their_own_turn(serve: Serve) -> None:
    def numbered(body: dict[str, Any]) -> Turn:
        return Turn.text(body["messages"][0]["content"].upper())

    server = serve(numbered)
    prompts = [f"prompt {i}" for i in range(8)]
    complete(server, messages=[{"role": "user", "content": "warm up"}])
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda p: complete(server, messages=[{"role": "user", "content": p}]), prompts))
    assert [a.choices[0].message.content for a in answers] == [p.upper() for p in prompts]
    assert sorted(r["messages"][0]["content"] for r in server.requests[1:]) == prompts
    assert sorted(a.id for a in answers) == sorted(f"chatcmpl-scripted-{i}" for i in range(2, 10))


def test_a_raising_script_answers_500(serve: Serve) -> None:
    def broken(body: dict[str, Any]) -> Turn:
        raise KeyError("oops")

    server = serve(broken)
    with pytest.raises(lx.InternalServerError, match="script raised"):
        complete(server)
