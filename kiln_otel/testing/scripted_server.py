"""A scripted OpenAI-compatible chat model on 127.0.0.1, for the demo, the tests and the benchmarks.

Why a real HTTP server rather than litellm's ``mock_response``: only real HTTP goes through litellm's
provider code, its exception mapping and its stream handling, which is exactly what kiln-otel observes.
Each request consumes the next :class:`Turn` of a script, so a test states up front what the "model"
answers and which fault it hits, and every run is deterministic.

Standard library only and no litellm import, so it starts in milliseconds and importing it stays cheap.

::

    script = [Turn.tool_calls([ToolCall("get_weather", {"city": "Paris"})]), Turn.text("Sunny.")]
    with ScriptedModelServer(script) as server:
        litellm.completion(model="openai/scripted", api_base=server.base_url, api_key="sk-local", ...)
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Fault", "Script", "ScriptedModelServer", "ToolCall", "Turn", "estimate_tokens"]

_JSON = dict[str, Any]

_HOST = "127.0.0.1"
_POLL_SECONDS = 0.05
_CLOSE_BUDGET_SECONDS = 1.0
_STREAM_FAULT_TEXT = "The scripted model starts this answer but never gets to finish it."


class Fault(Enum):
    """What can go wrong between litellm and a model provider, one member per failure mode.

    The HTTP-status faults answer with an OpenAI-shaped ``{"error": {...}}`` body. The stream faults
    (``STREAM_CUT``, ``STREAM_ERROR``) break a streamed answer part-way; on a non-streamed request
    ``STREAM_CUT`` truncates the JSON body mid-way and ``STREAM_ERROR`` answers 200 with an error
    object as the body.
    """

    RATE_LIMIT = "rate_limit"
    """HTTP 429, code ``rate_limit_exceeded``."""
    SERVER_ERROR = "server_error"
    """HTTP 500."""
    SERVICE_UNAVAILABLE = "service_unavailable"
    """HTTP 503."""
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    """HTTP 400, code ``context_length_exceeded``."""
    BAD_REQUEST = "bad_request"
    """HTTP 400 with no special code."""
    AUTHENTICATION = "authentication"
    """HTTP 401, code ``invalid_api_key``."""
    NOT_FOUND = "not_found"
    """HTTP 404, code ``model_not_found``."""
    CONTENT_POLICY = "content_policy"
    """HTTP 400, code ``content_policy_violation``, worded as OpenAI's safety-system rejection."""
    FLAGGED_PROMPT = "flagged_prompt"
    """HTTP 400, code ``invalid_prompt``, worded as OpenAI's usage-policy flag on a chat prompt."""
    NO_RESPONSE = "no_response"
    """Never answer: hold the request until the client hangs up or the server closes."""
    MALFORMED_JSON = "malformed_json"
    """HTTP 200 whose body (or first stream event) is not valid JSON."""
    EMPTY_JSON = "empty_json"
    """HTTP 200 whose body (or only stream event) is ``{}``."""
    STREAM_CUT = "stream_cut"
    """Send part of the answer, then drop the connection: no finish_reason, no ``[DONE]``."""
    STREAM_ERROR = "stream_error"
    """Send part of the answer, then ``data: {"error": {...}}`` and end the stream."""


@dataclass(frozen=True)
class ToolCall:
    """One function call the scripted model makes.

    ``arguments`` as a string is sent verbatim, which is how a test feeds the client arguments that are
    not valid JSON. Without an ``id`` one is generated (``call_<request>_<index>``), so tests need not
    invent ids but can still pin one when they match a tool result against it.
    """

    name: str
    arguments: Mapping[str, Any] | str
    id: str | None = None

    def arguments_json(self) -> str:
        """OpenAI sends arguments as a JSON string, never as an object."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments))


@dataclass(frozen=True)
class Turn:
    """What the scripted model does for one request. Build with :meth:`text`, :meth:`tool_calls` or
    :meth:`fault` rather than by hand, so that a turn always means one coherent thing.

    ``delay`` holds the answer back (to exercise timeouts and latency) and ends early if the server
    closes. ``finish_reason``, ``prompt_tokens`` and ``completion_tokens`` override the derived values
    for tests that assert exact numbers.
    """

    content: str | None = None
    calls: tuple[ToolCall, ...] = ()
    failure: Fault | None = None
    delay: float = 0.0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")

    @classmethod
    def text(
        cls,
        content: str,
        *,
        delay: float = 0.0,
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Turn:
        """A plain assistant answer (finish_reason ``stop`` unless overridden)."""
        return cls(
            content=content,
            delay=delay,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    @classmethod
    def tool_calls(
        cls,
        calls: Iterable[ToolCall],
        *,
        content: str | None = None,
        delay: float = 0.0,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Turn:
        """An assistant message asking for one or more tool calls (finish_reason ``tool_calls``)."""
        frozen = tuple(calls)
        if not frozen:
            raise ValueError("Turn.tool_calls needs at least one ToolCall")
        return cls(
            content=content,
            calls=frozen,
            delay=delay,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    @classmethod
    def fault(
        cls,
        fault: Fault,
        *,
        content: str | None = None,
        calls: Iterable[ToolCall] = (),
        delay: float = 0.0,
    ) -> Turn:
        """A failing request. ``content`` / ``calls`` are the partial answer the stream faults send
        before breaking (a default sentence when neither is given); other faults ignore them."""
        frozen = tuple(calls)
        if content is None and not frozen:
            content = _STREAM_FAULT_TEXT
        return cls(content=content, calls=frozen, failure=fault, delay=delay)


Script = Sequence[Turn] | Callable[[_JSON], Turn | None]
"""Turns consumed in order, or a callable that sees each request body and returns the turn
(``None`` means the script is exhausted). The callable is called one request at a time."""


def estimate_tokens(text: str) -> int:
    """About four characters per token: deterministic, so usage numbers can be asserted exactly."""
    return max(1, -(-len(text) // 4))


# --------------------------------------------------------------------------------------------------
# Response bodies (pure functions of the turn and the request)


@dataclass(frozen=True)
class _HttpError:
    status: int
    type: str
    code: str | None
    message: str

    def body(self) -> _JSON:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}


_HTTP_ERRORS: dict[Fault, _HttpError] = {
    Fault.RATE_LIMIT: _HttpError(
        429, "requests", "rate_limit_exceeded", "Rate limit reached for the scripted model. Try again later."
    ),
    Fault.SERVER_ERROR: _HttpError(500, "server_error", None, "The server had an error while processing your request."),
    Fault.SERVICE_UNAVAILABLE: _HttpError(
        503, "server_error", "service_unavailable", "The engine is currently overloaded, try again later."
    ),
    Fault.CONTEXT_LENGTH_EXCEEDED: _HttpError(
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens. Please reduce the length of the messages.",
    ),
    Fault.BAD_REQUEST: _HttpError(
        400, "invalid_request_error", None, "Invalid value for 'messages': the scripted model refuses it."
    ),
    Fault.AUTHENTICATION: _HttpError(401, "invalid_request_error", "invalid_api_key", "Incorrect API key."),
    Fault.NOT_FOUND: _HttpError(
        404, "invalid_request_error", "model_not_found", "The model does not exist or you have no access."
    ),
    Fault.CONTENT_POLICY: _HttpError(
        400,
        "invalid_request_error",
        "content_policy_violation",
        "Your request was rejected as a result of our safety system.",
    ),
    Fault.FLAGGED_PROMPT: _HttpError(
        400,
        "invalid_request_error",
        "invalid_prompt",
        "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
    ),
}
_STREAM_ERROR = _HttpError(500, "server_error", None, "The server had an error while streaming the answer.")


def _invalid_request(message: str, code: str, status: int = 400) -> _HttpError:
    return _HttpError(status, "invalid_request_error", code, f"scripted server: {message}")


@dataclass(frozen=True)
class _Exchange:
    """The facts of one request that shape its answer."""

    number: int
    model: str
    stream: bool
    include_usage: bool
    prompt_chars: int
    created: int

    @classmethod
    def of(cls, body: _JSON, number: int) -> _Exchange:
        options = body.get("stream_options")
        messages = json.dumps(body.get("messages", []), sort_keys=True, separators=(",", ":"))
        return cls(
            number=number,
            model=str(body.get("model", "scripted")),
            stream=bool(body.get("stream")),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            prompt_chars=len(messages),
            created=int(time.time()),
        )

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-scripted-{self.number}"


def _call_id(ex: _Exchange, index: int, call: ToolCall) -> str:
    return call.id or f"call_{ex.number}_{index}"


def _finish_reason(turn: Turn) -> str:
    return turn.finish_reason or ("tool_calls" if turn.calls else "stop")


def _usage(turn: Turn, ex: _Exchange) -> _JSON:
    said = (turn.content or "") + "".join(c.name + c.arguments_json() for c in turn.calls)
    prompt = turn.prompt_tokens if turn.prompt_tokens is not None else max(1, -(-ex.prompt_chars // 4))
    completion = turn.completion_tokens if turn.completion_tokens is not None else estimate_tokens(said)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _message(turn: Turn, ex: _Exchange) -> _JSON:
    message: _JSON = {"role": "assistant", "content": turn.content}
    if turn.calls:
        message["tool_calls"] = [
            {
                "id": _call_id(ex, index, call),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for index, call in enumerate(turn.calls)
        ]
    return message


def _completion(turn: Turn, ex: _Exchange) -> _JSON:
    choice = {
        "index": 0,
        "message": _message(turn, ex),
        "logprobs": None,
        "finish_reason": _finish_reason(turn),
    }
    return {
        "id": ex.completion_id,
        "object": "chat.completion",
        "created": ex.created,
        "model": ex.model,
        "choices": [choice],
        "usage": _usage(turn, ex),
        "system_fingerprint": None,
    }


def _chunk(ex: _Exchange, delta: _JSON, finish_reason: str | None = None) -> _JSON:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    chunk: _JSON = {
        "id": ex.completion_id,
        "object": "chat.completion.chunk",
        "created": ex.created,
        "model": ex.model,
        "choices": [choice],
    }
    if ex.include_usage:
        chunk["usage"] = None  # as OpenAI does: only the last chunk carries usage
    return chunk


def _split_words(text: str) -> list[str]:
    """One piece per word, as token streams look, and at least two for any text of two characters or
    more, so a stream cut always has something before and after it."""
    pieces = re.findall(r"\s+|\S+\s*", text)
    return pieces if len(pieces) > 1 else _split_even(text, 2)


def _split_even(text: str, parts: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _stream_body(turn: Turn, ex: _Exchange) -> list[_JSON]:
    """Everything before the finish chunk: the role, the words, then each call's name and fragments."""
    chunks = [_chunk(ex, {"role": "assistant", "content": "" if turn.content else None})]
    chunks += [_chunk(ex, {"content": piece}) for piece in _split_words(turn.content or "")]
    for index, call in enumerate(turn.calls):
        head = {"index": index, "id": _call_id(ex, index, call), "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        chunks.append(_chunk(ex, {"tool_calls": [head]}))
        chunks += [
            _chunk(ex, {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            for fragment in _split_even(call.arguments_json(), 3)
        ]
    return chunks


def _stream_tail(turn: Turn, ex: _Exchange) -> list[_JSON]:
    tail = [_chunk(ex, {}, _finish_reason(turn))]
    if ex.include_usage:
        usage_chunk = _chunk(ex, {})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = _usage(turn, ex)
        tail.append(usage_chunk)
    return tail


def _first_half(chunks: list[_JSON]) -> list[_JSON]:
    """The role chunk and about half of the rest: enough that the client has received real content."""
    return chunks[: 1 + max(1, (len(chunks) - 1) // 2)]


def _encode(payload: _JSON) -> bytes:
    return json.dumps(payload).encode()


def _route(path: str) -> str:
    """Accept both ``/v1/chat/completions`` and ``/chat/completions``: clients differ on the prefix."""
    route = urlsplit(path).path.rstrip("/")
    return route[3:] if route.startswith("/v1/") else route


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Speaks HTTP/1.1 with keep-alive and chunked streams, like the real API, so that a cut stream is
    an incomplete chunked body to the client and not just an early end of a response."""

    protocol_version = "HTTP/1.1"
    server_version = "kiln-otel-scripted/1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without this, Nagle's algorithm meets the
        # client's delayed ACK and every response waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test run or a benchmark must not print a line per request."""

    def do_GET(self) -> None:
        if _route(self.path) == "/models":
            self._send_json(200, self.server.owner._models_payload())
        else:
            self._send_error(_invalid_request(f"no route GET {_route(self.path)}", "not_found", 404))

    def do_POST(self) -> None:
        body = self._read_json()
        if body is None:
            return
        if _route(self.path) != "/chat/completions":
            self._send_error(_invalid_request(f"no route POST {_route(self.path)}", "not_found", 404))
            return
        number, decision = self.server.owner._take_turn(body)
        if isinstance(decision, _HttpError):
            self._send_error(decision)
        elif decision.delay and self.server.closing.wait(decision.delay):
            self._abort()
        else:
            self._respond(decision, _Exchange.of(body, number))

    def _read_json(self) -> _JSON | None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send_error(_invalid_request("the request body is not a JSON object", "invalid_json"))
            return None
        return body

    def _respond(self, turn: Turn, ex: _Exchange) -> None:
        if turn.failure is None:
            self._answer(turn, ex)
        elif turn.failure in _HTTP_ERRORS:
            self._send_error(_HTTP_ERRORS[turn.failure])
        else:
            special: dict[Fault, Callable[[Turn, _Exchange], None]] = {
                Fault.NO_RESPONSE: self._hold,
                Fault.MALFORMED_JSON: self._malformed,
                Fault.EMPTY_JSON: self._empty,
                Fault.STREAM_CUT: self._cut,
                Fault.STREAM_ERROR: self._stream_error,
            }
            special[turn.failure](turn, ex)

    def _answer(self, turn: Turn, ex: _Exchange) -> None:
        if ex.stream:
            self._stream([*_stream_body(turn, ex), *_stream_tail(turn, ex), "[DONE]"])
        else:
            self._send_json(200, _completion(turn, ex))

    def _hold(self, turn: Turn, ex: _Exchange) -> None:
        """The timeout case. Polls instead of blocking so that the thread ends as soon as the client gives
        up, and never outlives the server."""
        while not self.server.closing.wait(_POLL_SECONDS):
            if _peer_closed(self.connection):
                break
        self._abort()

    def _malformed(self, turn: Turn, ex: _Exchange) -> None:
        broken = _encode(_completion(turn, ex))[:-7]
        if ex.stream:
            self._stream([_stream_body(turn, ex)[0], broken.decode(), "[DONE]"])
        else:
            self._send_bytes(200, broken)

    def _empty(self, turn: Turn, ex: _Exchange) -> None:
        if ex.stream:
            self._stream([{}, "[DONE]"])
        else:
            self._send_json(200, {})

    def _cut(self, turn: Turn, ex: _Exchange) -> None:
        if ex.stream:
            self._start_stream()
            for chunk in _first_half(_stream_body(turn, ex)):
                self._write_event(chunk)
        else:
            data = _encode(_completion(turn, ex))
            self._send_head(200, "application/json", len(data))
            self.wfile.write(data[: len(data) // 2])
        self._abort()

    def _stream_error(self, turn: Turn, ex: _Exchange) -> None:
        if ex.stream:
            self._stream([*_first_half(_stream_body(turn, ex)), _STREAM_ERROR.body()])
        else:
            self._send_json(200, _STREAM_ERROR.body())

    def _send_error(self, error: _HttpError) -> None:
        self._send_json(error.status, error.body())

    def _send_json(self, status: int, payload: _JSON) -> None:
        self._send_bytes(status, _encode(payload))

    def _send_bytes(self, status: int, data: bytes) -> None:
        self._send_head(status, "application/json", len(data))
        self.wfile.write(data)

    def _send_head(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _start_stream(self) -> None:
        self._send_head(200, "text/event-stream", None)

    def _stream(self, events: Iterable[_JSON | str]) -> None:
        self._start_stream()
        for event in events:
            self._write_event(event)
        self.wfile.write(b"0\r\n\r\n")

    def _write_event(self, event: _JSON | str) -> None:
        """One SSE event in one HTTP chunk, flushed at once, so the client sees it before what follows."""
        text = event if isinstance(event, str) else json.dumps(event)
        data = f"data: {text}\n\n".encode()
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _abort(self) -> None:
        """Hang up without finishing the response: what a crashed or cut-off upstream looks like."""
        self.close_connection = True
        _shutdown(self.connection)


def _peer_closed(conn: socket.socket) -> bool:
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone: the goal is reached either way
        conn.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    """Tracks its live connections so :meth:`close_connections` can end held and keep-alive requests;
    the stock server would either wait for them forever or leave them running."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: ScriptedModelServer) -> None:
        self.owner = owner
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        super().__init__((_HOST, 0), _Handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse DNS lookup of the host, which can stall start-up when offline."""
        TCPServer.server_bind(self)
        self.server_name = _HOST
        self.server_port = self.server_address[1]

    def track(self, conn: socket.socket) -> None:
        with self._lock:
            self._live[conn] = threading.current_thread()
        if self.closing.is_set():
            _shutdown(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._live.pop(conn, None)

    def close_connections(self, deadline: float) -> None:
        with self._lock:
            live = list(self._live.items())
        for conn, _ in live:
            _shutdown(conn)
        for _, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is normal here (timeouts, abandoned streams): stay quiet."""
        if self.closing.is_set() or isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------------------------------
# Public server


class ScriptedModelServer:
    """An OpenAI-compatible chat server on 127.0.0.1 (a free port) that answers from a script.

    Use as a context manager, or call :meth:`start` and :meth:`close`. ``close`` returns within about
    a second even while a request is held by ``Fault.NO_RESPONSE``, and frees the port.
    """

    def __init__(self, script: Script, *, models: Sequence[str] = ("scripted",)) -> None:
        self._turns: list[Turn] | None = None
        self._dynamic: Callable[[_JSON], Turn | None] | None = None
        if callable(script):
            self._dynamic = script
        else:
            self._turns = list(script)
        self._models = tuple(models)
        self._lock = threading.RLock()  # reentrant: a callable script may read self.requests
        self._requests: list[_JSON] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> ScriptedModelServer:
        """Bind and serve in a daemon thread; returns self so ``server = ScriptedModelServer(s).start()``."""
        if self._httpd is not None or self._closed:
            raise RuntimeError("a ScriptedModelServer can be started only once")
        httpd = _HTTPServer(self)
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"scripted-model-server:{httpd.server_port}",
            daemon=True,
        )
        thread.start()
        self._httpd, self._thread = httpd, thread
        return self

    def close(self) -> None:
        """Stop serving, hang up on every open connection and free the port. Idempotent."""
        httpd, thread = self._httpd, self._thread
        self._closed = True
        if httpd is None or thread is None:
            return
        self._httpd = self._thread = None
        deadline = time.monotonic() + _CLOSE_BUDGET_SECONDS
        httpd.closing.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections(deadline)
        thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running: use it as a context manager or call start()")
        return self._httpd.server_port

    @property
    def base_url(self) -> str:
        """What to pass as litellm's ``api_base`` (it already ends in ``/v1``)."""
        return f"http://{_HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[_JSON]:
        """A snapshot of every chat request body received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def remaining(self) -> int | None:
        """Turns not yet consumed (``None`` for a callable script), to assert a test used them all."""
        with self._lock:
            return None if self._turns is None else max(0, len(self._turns) - len(self._requests))

    def _models_payload(self) -> _JSON:
        """The ``GET /v1/models`` answer."""
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "kiln-otel"} for m in self._models]
        return {"object": "list", "data": data}

    def _take_turn(self, body: _JSON) -> tuple[int, Turn | _HttpError]:
        """Record the request and pick its turn under one lock, so concurrent requests get distinct
        turns in arrival order and a callable script never runs twice at once."""
        with self._lock:
            self._requests.append(body)
            number = len(self._requests)
            return number, self._pick(body, number)

    def _pick(self, body: _JSON, number: int) -> Turn | _HttpError:
        if self._dynamic is not None:
            try:
                turn = self._dynamic(body)
            except Exception as exc:
                return _HttpError(500, "server_error", "script_error", f"scripted server: the script raised {exc!r}")
        else:
            assert self._turns is not None
            turn = self._turns[number - 1] if number <= len(self._turns) else None
        if turn is None:
            return _invalid_request(f"script exhausted: no turn left for request {number}", "script_exhausted")
        return turn
