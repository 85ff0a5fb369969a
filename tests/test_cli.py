"""The real ``kiln-otel`` console script, run as a user runs it: a subprocess, a clean environment, its own cwd.

Each demo pays for importing litellm (seconds), so the demos every test needs run once per module,
a few at a time, and the tests read their results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from kiln_otel import reconstruct_error
from kiln_otel.cli import (
    DEMO_FAILURES,
    EXIT_BACKEND_UNREACHABLE,
    EXIT_CODES,
    EXIT_MALFORMED,
    EXIT_NOT_KILN,
    EXIT_OK,
    EXIT_TRACE_NOT_FOUND,
    EXIT_USAGE,
)
from kiln_otel.exporters import OtlpJsonFileExporter

KILN_OTEL = Path(sys.executable).parent / "kiln-otel"
DEMO_SECONDS = 180
"""Generous: on a loaded two-core machine importing litellm alone has taken ten seconds."""
QUICK_SECONDS = 60
PARALLEL_DEMOS = 3
ROOMY_TIMEOUT = "10"
"""Model-call timeout for demos that are not about timeouts, so a busy machine cannot fake one."""

EXPECTED_ERROR_TYPES = {
    "rate-limit": "RateLimitError",
    "timeout": "Timeout",
    "stream-cut": "MidStreamFallbackError",
    "stream-error": "MidStreamFallbackError",
    "context-window": "ContextWindowExceededError",
    "auth": "AuthenticationError",
    "server-error": "InternalServerError",
    "unavailable": "ServiceUnavailableError",
    "malformed": "InternalServerError",
    "bad-tool-args": "ValueError",
}
EXPECTED_MESSAGES = {
    "rate-limit": "Rate limit exceeded.",
    "timeout": "did not respond in time",
    "stream-cut": "stream failed part-way",
    "context-window": "context window",
    "auth": "Authentication with the model provider failed",
    "unavailable": "currently unavailable",
    "bad-tool-args": "not valid JSON",
}


def clean_env() -> dict[str, str]:
    """No OTLP endpoint (the demo would export there), no trace file override, no colour hints."""
    drop = ("OTEL_EXPORTER_OTLP_", "KILN_OTEL_", "NO_COLOR")
    return {key: value for key, value in os.environ.items() if not key.startswith(drop)}


def kiln_otel(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = QUICK_SECONDS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KILN_OTEL), *args],
        cwd=cwd,
        env=clean_env(),
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Demo:
    cwd: Path
    file: Path
    result: subprocess.CompletedProcess[str]

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.result.stdout)
        return value


OUTPUT_DEMO = "unavailable"
"""This one also shows ``--output``: a demo run costs seconds, so one run checks both."""


def _demo_args(name: str) -> list[str]:
    if name == "default":
        return []
    if name == "none-text":
        return ["--fail", "none", "--timeout", ROOMY_TIMEOUT]
    timeout = [] if name == "timeout" else ["--timeout", ROOMY_TIMEOUT]
    output = ["--output", "out/t.jsonl"] if name == OUTPUT_DEMO else []
    return ["--json", "--fail", name, *timeout, *output]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Demo]:
    """Every demo the tests read, each in its own directory, so each writes its own trace file."""
    names = ["default", *DEMO_FAILURES, "none-text"]

    def run(name: str) -> Demo:
        cwd = tmp_path_factory.mktemp(f"demo-{name}")
        file = cwd / ("out/t.jsonl" if name == OUTPUT_DEMO else "kiln-otel-traces.jsonl")
        return Demo(cwd, file, kiln_otel("demo", *_demo_args(name), cwd=cwd, timeout=DEMO_SECONDS))

    with ThreadPoolExecutor(PARALLEL_DEMOS) as pool:
        return dict(zip(names, pool.map(run, names)))


def _transcript_and_payload(stdout: str) -> tuple[str, dict[str, Any]]:
    """The demo prints the payload's JSON, then its transcript (last, so its end stays on screen)."""
    head, rest = stdout.split("ErrorWithTrace JSON, as the app got it:\n")
    assert head == ""
    payload_text, rest = rest.split("\n\nThe same run as a transcript:\n")
    transcript, _ = rest.split("\nspans exported:")
    payload: dict[str, Any] = json.loads(payload_text)
    return transcript, payload


# --- demo ----------------------------------------------------------------------------------------


def test_the_default_demo_fails_on_the_third_call_and_rebuilds_identically(demos: Mapping[str, Demo]) -> None:
    demo = demos["default"]
    assert demo.result.returncode == EXIT_OK, demo.result.stderr
    transcript, payload = _transcript_and_payload(demo.result.stdout)
    for piece in (
        "[1] user",
        '→ get_weather({"city": "Lisbon"})  id call_weather_1',
        "[3] tool ↳ answers call_weather_1",
        "→ search_flights(",
        "[5] tool ↳ answers call_flights_1",
        "✗ RateLimitError: Rate limit exceeded.",
        f"trace id: {payload['trace_id']}",
    ):
        assert piece in transcript
    assert payload["error_type"] == "RateLimitError"
    assert payload == reconstruct_error(demo.file, payload["trace_id"]).model_dump(mode="json")
    assert "rebuilt from kiln-otel-traces.jsonl: identical" in demo.result.stdout
    assert "model call 3: fails (rate_limit)" in demo.result.stderr
    assert "tool search_flights('Berlin', 'Lisbon')" in demo.result.stderr


@pytest.mark.parametrize("failure", sorted(EXPECTED_ERROR_TYPES))
def test_each_failure_gives_its_litellm_error(demos: Mapping[str, Demo], failure: str) -> None:
    demo = demos[failure]
    assert demo.result.returncode == EXIT_OK, demo.result.stderr
    assert demo.result.stderr == ""
    output = demo.json()
    payload = output["payload"]
    assert payload["error_type"] == EXPECTED_ERROR_TYPES[failure]
    assert EXPECTED_MESSAGES.get(failure, "") in payload["message"]
    assert output["reconstructed_equal"] is True
    assert output["trace_id"] == payload["trace_id"]
    assert output["export"] == f"OTLP JSON lines in {demo.file.relative_to(demo.cwd)}"
    assert payload == reconstruct_error(demo.file, output["trace_id"]).model_dump(mode="json")
    tool_results = [m["tool_call_id"] for m in payload["trace"] if m.get("role") == "tool"]
    assert tool_results[:2] == ["call_weather_1", "call_flights_1"]


def test_a_cut_stream_keeps_what_arrived(demos: Mapping[str, Demo]) -> None:
    last = demos["stream-cut"].json()["payload"]["trace"][-1]
    assert last["role"] == "assistant"
    assert last["kiln_otel_partial"] is True
    assert last["content"].startswith("Lisbon looks great")


def test_bad_tool_arguments_are_answered_before_the_run_fails(demos: Mapping[str, Demo]) -> None:
    last = demos["bad-tool-args"].json()["payload"]["trace"][-1]
    assert last["role"] == "tool"
    assert last["tool_call_id"] == "call_flights_2"
    assert last["is_error"] is True


def test_a_successful_run_prints_its_answer_and_rebuilds(demos: Mapping[str, Demo]) -> None:
    demo = demos["none"]
    assert demo.result.returncode == EXIT_OK, demo.result.stderr
    output = demo.json()
    assert output["payload"] is None
    assert output["answer"].startswith("Lisbon looks great")
    assert output["reconstructed_equal"] is True


def test_a_successful_run_as_text(demos: Mapping[str, Demo]) -> None:
    demo = demos["none-text"]
    assert demo.result.returncode == EXIT_OK, demo.result.stderr
    out = demo.result.stdout
    assert "[6] assistant\n    Lisbon looks great" in out
    assert "✗" not in out
    assert "\nFinal answer: Lisbon looks great" in out
    assert out.endswith("rebuilt from kiln-otel-traces.jsonl: identical\n")


def test_the_demo_writes_where_it_is_told(demos: Mapping[str, Demo]) -> None:
    demo = demos[OUTPUT_DEMO]
    assert demo.json()["traces_file"] == "out/t.jsonl"
    assert demo.file.is_file()
    assert not (demo.cwd / "kiln-otel-traces.jsonl").exists()


# --- reconstruct and show ------------------------------------------------------------------------


def test_reconstruct_file_prints_the_demo_transcript(demos: Mapping[str, Demo]) -> None:
    demo = demos["default"]
    transcript, payload = _transcript_and_payload(demo.result.stdout)
    result = kiln_otel("reconstruct", "--file", "kiln-otel-traces.jsonl", cwd=demo.cwd)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == transcript
    as_json = kiln_otel(
        "reconstruct", "--file", str(demo.file), "--trace-id", payload["trace_id"], "--json", cwd=demo.cwd
    )
    assert json.loads(as_json.stdout) == payload


def test_reconstruct_from_stdin(demos: Mapping[str, Demo]) -> None:
    demo = demos["rate-limit"]
    result = kiln_otel("reconstruct", "-", "--json", cwd=demo.cwd, stdin=demo.file.read_bytes())
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == demo.json()["payload"]


def test_reconstruct_a_run_that_did_not_fail(demos: Mapping[str, Demo]) -> None:
    demo = demos["none"]
    text = kiln_otel("reconstruct", "--file", str(demo.file), cwd=demo.cwd)
    assert text.returncode == EXIT_OK, text.stderr
    assert "did not fail" in text.stdout
    assert "Lisbon looks great" in text.stdout
    as_json = json.loads(kiln_otel("reconstruct", "--file", str(demo.file), "--json", cwd=demo.cwd).stdout)
    assert as_json["failed"] is False
    assert as_json["trace"][-1]["content"].startswith("Lisbon looks great")


def test_show_a_saved_payload(demos: Mapping[str, Demo], tmp_path: Path) -> None:
    transcript, payload = _transcript_and_payload(demos["default"].result.stdout)
    saved = tmp_path / "error.json"
    saved.write_text(json.dumps(payload))
    result = kiln_otel("show", str(saved), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == transcript
    assert json.loads(kiln_otel("show", str(saved), "--json", cwd=tmp_path).stdout) == payload
    demo_output = tmp_path / "demo.json"
    demo_output.write_text(demos["auth"].result.stdout)
    assert "✗ AuthenticationError" in kiln_otel("show", str(demo_output), cwd=tmp_path).stdout


def test_colour_on_request(demos: Mapping[str, Demo]) -> None:
    demo = demos["default"]
    assert "\x1b[" in kiln_otel("reconstruct", "--file", str(demo.file), "--color", "always", cwd=demo.cwd).stdout


# --- Jaeger --------------------------------------------------------------------------------------


class _Jaeger(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]]

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b'{"error": {"message": "not found"}}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def jaeger() -> Iterator[tuple[str, dict[str, tuple[int, bytes]]]]:
    """A stand-in for Jaeger's query API on 127.0.0.1: routes map a path to (status, body)."""
    routes: dict[str, tuple[int, bytes]] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Jaeger", (_Jaeger,), {"routes": routes}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def _v3_body(file: Path) -> bytes:
    """What Jaeger v2 serves at /api/v3/traces/{id}: the trace as one OTLP TracesData under "result"."""
    lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return json.dumps({"result": {"resourceSpans": [rs for line in lines for rs in line["resourceSpans"]]}}).encode()


def test_reconstruct_from_jaeger(
    demos: Mapping[str, Demo], jaeger: tuple[str, dict[str, tuple[int, bytes]]], tmp_path: Path
) -> None:
    demo = demos["rate-limit"]
    url, routes = jaeger
    trace_id = demo.json()["trace_id"]
    routes[f"/api/v3/traces/{trace_id}"] = (200, _v3_body(demo.file))
    result = kiln_otel("reconstruct", "--jaeger", url, trace_id, "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == demo.json()["payload"]


def test_jaeger_without_the_trace(jaeger: tuple[str, dict[str, tuple[int, bytes]]], tmp_path: Path) -> None:
    url, _ = jaeger
    result = kiln_otel("reconstruct", "--jaeger", url, "ab" * 16, cwd=tmp_path)
    assert result.returncode == EXIT_TRACE_NOT_FOUND
    assert result.stderr.count("\n") == 1


def test_jaeger_answering_an_error(jaeger: tuple[str, dict[str, tuple[int, bytes]]], tmp_path: Path) -> None:
    url, routes = jaeger
    trace_id = "cd" * 16
    for path in (f"/api/v3/traces/{trace_id}", f"/api/traces/{trace_id}"):
        routes[path] = (500, b"{}")
    result = kiln_otel("reconstruct", "--jaeger", url, trace_id, cwd=tmp_path)
    assert result.returncode == EXIT_BACKEND_UNREACHABLE
    assert "HTTP 500" in result.stderr


def test_jaeger_unreachable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result = kiln_otel("reconstruct", "--jaeger", f"http://127.0.0.1:{closed}", "ab" * 16, cwd=tmp_path)
    assert result.returncode == EXIT_BACKEND_UNREACHABLE
    assert result.stderr.startswith("kiln-otel: could not reach")
    assert result.stderr.count("\n") == 1


@pytest.fixture
def trickle() -> Iterator[str]:
    """A Jaeger that accepts, reads the request, then answers one byte a second, forever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b"{" * 100
            ):
                if stop.wait(1.0):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_jaeger_timeout_is_a_total_deadline(trickle: str, tmp_path: Path) -> None:
    """A byte a second never trips a per-read timeout; the deadline covers the whole fetch."""
    started = time.monotonic()
    result = kiln_otel("reconstruct", "--jaeger", trickle, "ab" * 16, "--timeout", "2", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == EXIT_BACKEND_UNREACHABLE
    assert "did not answer in full within 2 s" in result.stderr
    assert result.stderr.count("\n") == 1
    assert elapsed < 2 + 3.0, f"took {elapsed:.1f} s"  # the deadline, plus the interpreter's start


def test_stdin_is_streamed_by_trace_id_and_a_torn_line_reported(demos: Mapping[str, Demo], tmp_path: Path) -> None:
    demo = demos["auth"]
    trace_id = demo.json()["trace_id"]
    data = demo.file.read_bytes()
    torn = data + data[: data.rindex(b",", 0, len(data) // 3)]  # cut between two ASCII bytes
    result = kiln_otel("reconstruct", "-", "--json", cwd=tmp_path, stdin=torn)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == {**demo.json()["payload"], "trace_complete": False}
    assert "skipped line" in result.stderr
    chosen = kiln_otel("reconstruct", "-", "--json", "--trace-id", trace_id, cwd=tmp_path, stdin=torn)
    assert chosen.returncode == EXIT_OK, chosen.stderr
    assert json.loads(chosen.stdout)["trace"] == demo.json()["payload"]["trace"]


# --- Exit codes ----------------------------------------------------------------------------------


def _foreign_spans(path: Path) -> None:
    """Real OTLP JSON, just not from kiln-otel: some other app's HTTP spans."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    provider.get_tracer("other-app").start_span("GET /health").end()
    provider.shutdown()


def test_unknown_trace_id(demos: Mapping[str, Demo]) -> None:
    demo = demos["default"]
    result = kiln_otel("reconstruct", "--file", str(demo.file), "--trace-id", "f" * 32, cwd=demo.cwd)
    assert result.returncode == EXIT_TRACE_NOT_FOUND
    assert "f" * 32 in result.stderr


def test_several_runs_need_a_trace_id(demos: Mapping[str, Demo], tmp_path: Path) -> None:
    both = tmp_path / "both.jsonl"
    both.write_bytes(demos["auth"].file.read_bytes() + demos["timeout"].file.read_bytes())
    result = kiln_otel("reconstruct", "--file", str(both), cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert "--trace-id" in result.stderr
    trace_id = demos["timeout"].json()["trace_id"]
    chosen = kiln_otel("reconstruct", "--file", str(both), "--trace-id", trace_id.upper(), "--json", cwd=tmp_path)
    assert json.loads(chosen.stdout)["error_type"] == "Timeout"


def test_telemetry_not_from_kiln_otel(tmp_path: Path) -> None:
    _foreign_spans(tmp_path / "other.jsonl")
    result = kiln_otel("reconstruct", "--file", "other.jsonl", cwd=tmp_path)
    assert result.returncode == EXIT_NOT_KILN
    assert "no kiln-otel run" in result.stderr


@pytest.mark.parametrize("command", ["reconstruct --file", "show"])
def test_garbage_input(tmp_path: Path, command: str) -> None:
    (tmp_path / "garbage.txt").write_text("this is not telemetry {")
    result = kiln_otel(*command.split(), "garbage.txt", cwd=tmp_path)
    assert result.returncode == EXIT_MALFORMED
    assert result.stderr.startswith("kiln-otel: ")
    assert result.stderr.count("\n") == 1


def test_show_json_that_is_not_a_payload(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"message": 3}')
    result = kiln_otel("show", "other.json", cwd=tmp_path)
    assert result.returncode == EXIT_MALFORMED
    assert "error_type" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["reconstruct"],
        ["reconstruct", "--file", "a.jsonl", "-"],
        ["reconstruct", "--file", "missing.jsonl"],
        ["reconstruct", "--jaeger", "http://127.0.0.1:1", "not-hex"],
        ["reconstruct", "--jaeger", "file:///etc", "ab"],
        ["demo", "--fail", "meteor"],
        ["show", "missing.json"],
    ],
    ids=lambda args: " ".join(args) or "no-command",
)
def test_usage_errors(tmp_path: Path, args: Sequence[str]) -> None:
    result = kiln_otel(*args, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stdout == ""


def test_help_documents_every_exit_code(tmp_path: Path) -> None:
    result = kiln_otel("--help", cwd=tmp_path)
    assert result.returncode == EXIT_OK
    for code, meaning in EXIT_CODES.items():
        assert f"  {code}  {meaning}" in result.stdout
    assert "exit codes:" in kiln_otel("reconstruct", "--help", cwd=tmp_path).stdout


def test_the_cli_imports_neither_litellm_nor_the_demo() -> None:
    code = (
        "import sys, kiln_otel.cli as cli, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print(sorted(m for m in sys.modules if m == 'litellm' or m == 'kiln_otel.demo'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=QUICK_SECONDS, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_cli_offers_exactly_the_demo_failures() -> None:
    from kiln_otel.demo import FAILURES

    assert DEMO_FAILURES == FAILURES
