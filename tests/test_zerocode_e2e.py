"""The zero-code route, end to end: ``opentelemetry-instrument`` on an app with no kiln-otel code.

A real app (tests/zerocode_app.py: plain litellm) runs under the real ``opentelemetry-instrument``
command, configured by the standard ``OTEL_*`` variables only, against the scripted model server on
127.0.0.1, and exports over OTLP to the real collector and Jaeger. Its rate-limited third call and its
stream cut half-way each rebuild, from Jaeger's /api/v3, from the collector's file and through the
CLI, to the messages that call was sent (plus the partial text for the cut), with the key the user
pasted masked by the client; its successful calls record no content.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from kiln_otel import ErrorWithTrace, reconstruct_error, wire
from kiln_otel.errors import NotKilnTelemetryError
from kiln_otel.export import SizeLimitedOtlpSpanExporter
from kiln_otel.exporters import SizeLimitedSpanExporter
from kiln_otel.sources import load_spans
from kiln_otel.testing import Fault, ScriptedModelServer, Turn
from tests.backends import Pipeline, otlp_spans
from tests.zerocode_app import PLANTED_KEY

APP = Path(__file__).with_name("zerocode_app.py")
CLIENT_MASK = "[REDACTED:openai_key]"
STREAMED = "Lyon's old town climbs the hill of Fourvière in narrow lanes and hidden traboules."
INSTRUMENTOR = "litellm_kiln_otel"
APP_TIMEOUT_SECONDS = 120


def executable(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def app_environment(pipeline: Pipeline, protocol: str, service: str) -> dict[str, str]:
    """Only the standard variables, as a user sets them; every other instrumentation installed is disabled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KILN_OTEL_"))}
    others = sorted({e.name for e in entry_points(group="opentelemetry_instrumentor")} - {INSTRUMENTOR})
    endpoint = pipeline.otlp_grpc_endpoint if protocol == "grpc" else pipeline.otlp_http_endpoint
    env |= {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",  # the collector's pipeline takes traces only
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(others),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    return env


def run_app(
    env: dict[str, str], script: list[Turn], tmp_path: Path, *app_args: str
) -> subprocess.CompletedProcess[str]:
    """The app under ``opentelemetry-instrument``, against a scripted server it must use up."""
    with ScriptedModelServer(script) as server:
        done = subprocess.run(
            [executable("opentelemetry-instrument"), sys.executable, str(APP), server.base_url, *app_args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=APP_TIMEOUT_SECONDS,
        )
        assert server.remaining == 0, f"the app made {len(server.requests)} calls; stderr:\n{done.stderr}"
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def run_conversation_app(
    pipeline: Pipeline, protocol: str, exporter: str, service: str, tmp_path: Path
) -> list[dict[str, Any]]:
    script = [
        Turn.text("Day one: the old town and the traboules."),
        Turn.text("Day two: the Presqu'île and the Saône."),
        Turn.fault(Fault.RATE_LIMIT),
        Turn.fault(Fault.STREAM_CUT, content=STREAMED),
    ]
    env = app_environment(pipeline, protocol, service) | {"OTEL_TRACES_EXPORTER": exporter}
    done = run_app(env, script, tmp_path)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_opentelemetry_instrument_loads_the_litellm_instrumentor_and_nothing_else_complains(tmp_path: Path) -> None:
    """Every registered instrumentor is loaded: kiln-otel's Kiln one, in an app without Kiln, steps aside quietly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KILN_OTEL_"))}
    env |= {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    code = "import litellm; print(*(hasattr(f, '__wrapped__') for f in (litellm.completion, litellm.acompletion)))"
    done = subprocess.run(
        [executable("opentelemetry-instrument"), sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=APP_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
    assert done.stderr == ""


@pytest.mark.parametrize(("protocol", "module"), [("grpc", "grpc"), ("http/protobuf", "http")])
def test_kiln_otel_otlp_is_a_traces_exporter_the_sdk_configurator_can_build(
    monkeypatch: pytest.MonkeyPatch, protocol: str, module: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("KILN_OTEL_MAX_REQUEST_BYTES", "65536")
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name="kiln_otel_otlp")
    exporter_class = entry.load()
    assert exporter_class is SizeLimitedOtlpSpanExporter
    exporter = exporter_class()  # as the configurator builds it: no arguments, the environment decides
    try:
        assert isinstance(exporter, SizeLimitedSpanExporter)
        assert exporter.max_request_bytes == 65536
        assert type(exporter.exporter).__module__ == f"opentelemetry.exporter.otlp.proto.{module}.trace_exporter"
    finally:
        exporter.shutdown()


def client_masked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The oracle: the messages as sent, with the planted key replaced by the client-side mask only."""
    return json.loads(json.dumps(messages).replace(PLANTED_KEY, CLIENT_MASK))


def chat_span(body: dict[str, Any]) -> dict[str, Any]:
    (span,) = [s for s in otlp_spans(body["result"]) if s["name"].startswith("chat ")]
    return span


def attribute_keys(span: dict[str, Any]) -> set[str]:
    return {attribute["key"] for attribute in span.get("attributes", [])}


def kiln_otel_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [executable("kiln-otel"), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


@pytest.mark.parametrize(("protocol", "exporter"), [("grpc", "kiln_otel_otlp"), ("http/protobuf", "otlp")])
def test_opentelemetry_instrument_alone_keeps_the_failed_calls_conversations(
    pipeline: Pipeline, tmp_path: Path, protocol: str, exporter: str
) -> None:
    """With the README's settings (kiln-otel's size-limited OTLP exporter), and with the SDK's own."""
    service = f"zerocode-{uuid.uuid4().hex[:12]}"
    calls = run_conversation_app(pipeline, protocol, exporter, service, tmp_path)
    assert [(c["call"], c["error"]) for c in calls] == [
        (1, None),
        (2, None),
        (3, "RateLimitError"),
        (4, "MidStreamFallbackError"),
    ]
    assert PLANTED_KEY in json.dumps(calls[2]["sent"])  # the oracle holds the key; telemetry must not
    cut = calls[3]
    assert 0 < len(cut["partial"]) < len(STREAMED)

    # Each call is a root span, so each is its own trace; find them as a user would, by service.
    trace_ids = pipeline.find_traces_v3(service, min_traces=4)
    assert len(trace_ids) == 4
    bodies = {trace_id: pipeline.fetch_jaeger_v3(trace_id) for trace_id in trace_ids}
    by_error: dict[str | None, list[str]] = {}
    for trace_id, body in bodies.items():
        attributes = {a["key"]: a["value"] for a in chat_span(body).get("attributes", [])}
        error = attributes.get("error.type", {}).get("stringValue")
        by_error.setdefault(error.rsplit(".", 1)[-1] if error else None, []).append(trace_id)
    assert set(by_error) == {None, "RateLimitError", "MidStreamFallbackError"}
    assert len(by_error[None]) == 2

    # Successful calls: a chat span with no message content and nothing to rebuild.
    for trace_id in by_error[None]:
        span = chat_span(bodies[trace_id])
        assert not span.get("events")
        assert wire.ATTR_SCHEMA_VERSION not in attribute_keys(span)
        with pytest.raises(NotKilnTelemetryError):
            reconstruct_error(bodies[trace_id], trace_id)

    (rate_limited,) = by_error["RateLimitError"]
    (stream_cut,) = by_error["MidStreamFallbackError"]
    expected_rate_limited = client_masked(calls[2]["sent"])
    assert len(expected_rate_limited) == 6  # system, user, then two turns of assistant + user
    expected_cut = [*client_masked(cut["sent"]), {"role": "assistant", "content": cut["partial"]}]

    for trace_id, expected, error_type in (
        (rate_limited, expected_rate_limited, "RateLimitError"),
        (stream_cut, expected_cut, "MidStreamFallbackError"),
    ):
        from_jaeger = reconstruct_error(bodies[trace_id], trace_id)
        assert from_jaeger.error_type == error_type
        assert from_jaeger.trace_complete
        assert from_jaeger.trace is not None
        rebuilt = [
            {k: v for k, v in m.items() if v is not None and k != wire.PARTIAL_MESSAGE_KEY} for m in from_jaeger.trace
        ]
        assert rebuilt == expected
        file_lines = pipeline.read_file_lines(trace_id)
        assert sum(1 for s in load_spans(file_lines) if s.trace_id == trace_id) >= 1
        assert reconstruct_error(file_lines, trace_id) == from_jaeger
        assert PLANTED_KEY not in json.dumps(bodies[trace_id])
        assert PLANTED_KEY not in file_lines

    cut_trace = reconstruct_error(bodies[stream_cut], stream_cut).trace
    assert cut_trace is not None
    assert cut_trace[-1][wire.PARTIAL_MESSAGE_KEY] is True
    assert CLIENT_MASK in json.dumps(reconstruct_error(bodies[rate_limited], rate_limited).trace)

    # The CLI, as the README shows it.
    cli = kiln_otel_cli("reconstruct", "--jaeger", pipeline.jaeger_query_url, rate_limited, "--json", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    from_cli = ErrorWithTrace.model_validate(json.loads(cli.stdout))
    assert from_cli == reconstruct_error(bodies[rate_limited], rate_limited)
    transcript = kiln_otel_cli("reconstruct", "--jaeger", pipeline.jaeger_query_url, stream_cut, cwd=tmp_path)
    assert transcript.returncode == 0, transcript.stderr
    assert "Describe Lyon's old town" in transcript.stdout
    assert cut["partial"].split()[0] in transcript.stdout


BURST_CALLS = 40
BURST_MESSAGES = 450
"""40 failed calls, each with a 450-message history of about 1 KiB a message: about 18 MB of spans that
leave the app in one batch, more than the collector accepts in one request (16 MiB)."""


def test_a_burst_of_failed_calls_larger_than_the_receiver_accepts_arrives_whole_through_kiln_otel_otlp(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """``OTEL_TRACES_EXPORTER=kiln_otel_otlp`` keeps every request under the limit; the SDK's own
    exporter, sending the batch as one request, has it refused and loses every conversation in it."""
    script = [Turn.fault(Fault.RATE_LIMIT)] * BURST_CALLS
    services = {exporter: f"zerocode-burst-{uuid.uuid4().hex[:8]}" for exporter in ("otlp", "kiln_otel_otlp")}
    for exporter, service in services.items():
        env = app_environment(pipeline, "grpc", service) | {
            "OTEL_TRACES_EXPORTER": exporter,
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # one batch, sent at exit
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
        }
        done = run_app(env, script, tmp_path, "burst", str(BURST_CALLS), str(BURST_MESSAGES))
        assert json.loads(done.stdout) == {"failed": BURST_CALLS}

    trace_ids = pipeline.find_traces_v3(services["kiln_otel_otlp"], min_traces=BURST_CALLS, timeout=60)
    assert len(trace_ids) == BURST_CALLS
    for trace_id in trace_ids[:3]:
        body = pipeline.fetch_jaeger_v3(trace_id, min_spans=4)  # the chat span and its 3 segments
        payload = reconstruct_error(body, trace_id)
        assert payload.error_type == "RateLimitError"
        assert payload.trace is not None
        assert len(payload.trace) == BURST_MESSAGES
        assert payload.trace_complete
    # Everything of the second run has arrived; nothing of the first, sent earlier, ever will.
    with urllib.request.urlopen(f"{pipeline.jaeger_query_url}/api/services", timeout=10) as response:
        known = json.loads(response.read())["data"]
    assert services["kiln_otel_otlp"] in known
    assert services["otlp"] not in known
    assert services["otlp"] not in pipeline.file_path.read_text(encoding="utf-8", errors="replace")
