"""The collector's redaction step, measured through the real binary: CPU per span and per MB.

    python benchmarks/bench_collector_redaction.py [--rounds N] [--requests N] [--json]

Each variant is the collector from scripts/backends.sh running one pipeline, OTLP/HTTP in, a
``debug`` exporter (one log line per batch) out, with a different redaction step:

- ``none``: no redaction (the baseline every other figure is measured against);
- ``transform``: ``transform/redact`` exactly as collector-config/otelcol.yaml has it;
- ``transform-shapes``: only its credential-shape statements (those that replace the whole match);
- ``redaction-shapes``: the redaction processor with the same credential-shape regexes as
  ``blocked_values`` (what it can do without breaking JSON: it masks whole matches and has no
  capture groups);
- ``redaction-all``: the redaction processor with ALL of transform/redact's regexes (masks keys
  too, so JSON breaks: a like-for-like CPU comparison of the two engines, not a usable config).

The redaction variants need a collector built with the redaction processor (it is not in
kiln-otel's distribution; add ``redactionprocessor.NewFactory()`` to backends/collector/main.go
to measure them); without it they are skipped.

The payload is a real kiln-otel run (300 messages of a trip-planning conversation, one in ten
holding a planted secret), exported once with the SDK's own OTLP encoder and posted ``--requests``
times per round. The collector's CPU time (utime + stime from /proc) is read before and after, once
its ``otelcol_exporter_sent_spans`` metric says every span went out. Variants run side by side
and take turns round by round; the figure is the median over rounds, minus the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import KilnRunError, traced_run

ROOT = Path(__file__).resolve().parent.parent
OTELCOL = ROOT / "collector-config" / "otelcol.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRETS = [
    "sk-proj-Zq8vN3xT5rW1yB7kL2mP9sD4fG6hJ0aQ",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Df3Gh5",
    "postgres://app:hunter2-pass@db.internal:5432/prod",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN",
    '{"api_key": "plain-text-secret-42"}',
]


def payload() -> tuple[bytes, int, int]:
    """(OTLP protobuf request, spans in it, events in it) of one realistic failed run."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        with traced_run("bench", tracer_provider=provider, redact=None) as run:
            run.messages.append({"role": "system", "content": "You plan trips. Use the tools, then answer."})
            for i in range(1, 300):
                secret = SECRETS[i % len(SECRETS)] if i % 10 == 0 else ""
                if i % 3 == 1:
                    run.messages.append(
                        {"role": "user", "content": f"Step {i}: which trains leave Lyon after 18:00? {secret}"}
                    )
                elif i % 3 == 2:
                    args = json.dumps({"origin": "Lyon", "destination": "Turin", "after": "18:00", "note": secret})
                    call = {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": args}}
                    run.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                else:
                    result = json.dumps([{"train": f"TGV {6600 + i}", "departs": "18:14", "seats": 12, "memo": secret}])
                    run.messages.append({"role": "tool", "tool_call_id": f"call_{i - 1}", "content": result})
            raise RuntimeError("Too many tool calls in one turn (31 > 30)")
    except KilnRunError:
        pass
    spans = memory.get_finished_spans()
    events = sum(len(s.events) for s in spans)
    return encode_spans(spans).SerializeToString(), len(spans), events


def transform_statements() -> list[str]:
    cfg = yaml.safe_load(OTELCOL.read_text())
    groups = cfg["processors"]["transform/redact"]["trace_statements"]
    return [s for g in groups if g["context"] == "spanevent" for s in g["statements"]]


def ottl_regexes(statements: list[str]) -> list[str]:
    """The regex argument of each replace_all_patterns statement, unquoted as OTTL does."""
    out = []
    for statement in statements:
        literal = re.findall(r'"((?:[^"\\]|\\.)*)"', statement)[1]
        out.append(re.sub(r"\\(.)", r"\1", literal))
    return out


def variants(has_redaction: bool) -> dict[str, dict[str, Any]]:
    base = yaml.safe_load(OTELCOL.read_text())
    transform = base["processors"]["transform/redact"]
    statements = transform_statements()
    whole = [s for s in statements if s.endswith('"[REDACTED]")')]
    shapes = {
        "error_mode": "ignore",
        "trace_statements": [{"context": c, "statements": whole} for c in ("resource", "span", "spanevent")],
    }
    out: dict[str, dict[str, Any]] = {
        "none": {},
        "transform": {"transform/redact": transform},
        "transform-shapes": {"transform/redact": shapes},
    }
    if has_redaction:
        common = {"allow_all_keys": True, "summary": "silent"}
        regexes = ottl_regexes(statements)
        out["redaction-shapes"] = {"redaction": {**common, "blocked_values": ottl_regexes(whole)}}
        out["redaction-all"] = {"redaction": {**common, "blocked_values": regexes}}
    return out


def config(processors: dict[str, Any], port: int, metrics: int) -> str:
    cfg = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {**processors, "batch": {"timeout": "200ms"}},
        "exporters": {"debug": {"verbosity": "basic"}},
        "service": {
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": [*processors, "batch"], "exporters": ["debug"]}
            },
            "telemetry": {
                "logs": {"level": "warn"},
                "metrics": {
                    "level": "normal",
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": metrics}}}}],
                },
            },
        },
    }
    return yaml.safe_dump(cfg, width=10_000)


class Collector:
    def __init__(self, binary: str, name: str, processors: dict[str, Any], workdir: Path) -> None:
        from tests.backends import free_ports

        self.name = name
        self.port, self.metrics = free_ports(2)
        path = workdir / f"{name}.yaml"
        path.write_text(config(processors, self.port, self.metrics))
        self.log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen([binary, "--config", str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        self.sent = 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: collector exited {self.proc.returncode}, see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name}: not ready")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def exported(self) -> int:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5).read().decode()
        return int(sum(float(m) for m in re.findall(r"^otelcol_exporter_sent_spans\S*\s+(\S+)$", body, re.M)))

    def post(self, body: bytes) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        urllib.request.urlopen(request, timeout=30).read()

    def run(self, body: bytes, spans: int, requests: int) -> float:
        """CPU seconds the collector spent on ``requests`` posts of ``body``."""
        before = self.cpu_seconds()
        for _ in range(requests):
            self.post(body)
        self.sent += spans * requests
        deadline = time.monotonic() + 120
        while self.exported() < self.sent:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: spans not exported in time")
            time.sleep(0.1)
        return self.cpu_seconds() - before

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--collector", help="collector binary (default: scripts/backends.sh paths collector)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    binary = (
        args.collector
        or subprocess.run(
            ["bash", str(ROOT / "scripts" / "backends.sh"), "paths", "collector"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    components = yaml.safe_load(subprocess.run([binary, "components"], capture_output=True, text=True).stdout)
    has_redaction = any(c["name"] == "redaction" for c in components.get("processors") or [])
    body, spans, events = payload()
    mb = len(body) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        running = [Collector(binary, n, p, Path(tmp)) for n, p in variants(has_redaction).items()]
        try:
            for c in running:
                c.wait_ready()
                c.run(body, spans, 3)  # warm up: connections, regex compilation, allocator
            samples: dict[str, list[float]] = {c.name: [] for c in running}
            for r in range(args.rounds):
                for c in running[r % len(running) :] + running[: r % len(running)]:
                    samples[c.name].append(c.run(body, spans, args.requests))
        finally:
            for c in running:
                c.stop()
    per_request = {name: statistics.median(v) / args.requests for name, v in samples.items()}
    base = per_request["none"]
    result = {
        "payload": {"bytes": len(body), "spans": spans, "events": events},
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "cpu_ms_per_request": {n: round(v * 1e3, 2) for n, v in per_request.items()},
        "redaction_cpu_us_per_event": {
            n: round((v - base) / events * 1e6, 2) for n, v in per_request.items() if n != "none"
        },
        "redaction_cpu_ms_per_mb": {n: round((v - base) / mb * 1e3, 2) for n, v in per_request.items() if n != "none"},
        "redaction_mb_per_cpu_second": {
            n: round(mb / (v - base), 1) for n, v in per_request.items() if n != "none" and v > base
        },
    }
    if not has_redaction:
        result["skipped"] = "redaction-* (this collector has no redaction processor)"
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"payload: {spans} spans, {events} events, {len(body) / 1e3:.0f} kB per request")
    for name, ms in result["cpu_ms_per_request"].items():
        extra = (
            ""
            if name == "none"
            else (
                f"  redaction {result['redaction_cpu_us_per_event'][name]:6.2f} us/message event"
                f"  {result['redaction_cpu_ms_per_mb'][name]:7.2f} ms/MB"
            )
        )
        print(f"{name:18s} {ms:8.2f} ms CPU per request{extra}")
    if "skipped" in result:
        print("skipped:", result["skipped"])


if __name__ == "__main__":
    main()
