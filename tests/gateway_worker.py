"""One sending process of the gateway end-to-end test (tests/test_gateway_e2e.py).

    python -m tests.gateway_worker ENDPOINT PLAN.json RESULTS.jsonl

Runs every run of the plan through kiln-otel, exporting over OTLP/gRPC to ENDPOINT with the
BatchSpanProcessor settings the README recommends, and writes one JSON line per run: its trace id,
its span ids and their OTLP bytes, when it started and ended, and (for a failed run) the
``ErrorWithTrace`` the app got, which the test compares with what Jaeger and the archive rebuild.

Run kinds (``kind`` in the plan):
- ``plain``: ``traced_run`` with ``messages`` messages;
- ``agent``: a tool-using agent (``run_agent``, real litellm against a scripted model server on
  127.0.0.1): run span, chat spans, tool spans; a failing one ends on a rate limit;
- ``slow``: ``messages`` messages appended at once, then one more every ``step`` seconds until
  ``duration`` seconds have passed, then the end. The first 112 messages fill the run span and
  the next 128 a segment span that is ended (and exported) when message 241 arrives; with live
  export, segments are ended about every second. Either way the early spans of the run reach the
  sampler long before its root. Slow runs run in threads, side by side with the rest.
A failing run raises inside ``traced_run`` after its last message; ``pause`` (seconds) waits before
a run starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiln_otel import KilnRunError, traced_run
from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn

BATCH = {"max_queue_size": 8192, "max_export_batch_size": 256, "schedule_delay_millis": 500}
FAILURE = "Too many tool calls in one turn (31 > 30)"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    for name in ("get_weather", "search_hotels")
]


def message(i: int, tag: str) -> dict[str, Any]:
    kind = i % 3
    if i == 0:
        return {"role": "system", "content": f"You plan trips. {tag}"}
    if kind == 1:
        return {"role": "user", "content": f"{tag} step {i}: café ☕ à 東京, hotels under €150?"}
    if kind == 2:
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": '{"q": "€"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "tool", "tool_call_id": f"call_{i - 1}", "content": f"result {i}: 3 hotels ✓"}


class Worker:
    def __init__(self, endpoint: str) -> None:
        self.memory = InMemorySpanExporter()
        resource = Resource.create({"service.name": "kiln-otel-gateway-e2e", "worker.pid": os.getpid()})
        self.provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, **BATCH))  # type: ignore[arg-type]
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: ScriptedModelServer | None = None

    def record(self, spec: dict[str, Any], run: Any, started: float, error: KilnRunError | None) -> None:
        result = {
            **spec,
            "trace_id": str(run.trace_id),
            "started": started,
            "ended": time.time(),
            "messages": len(run.messages),
            "payload": error.to_error_with_trace().model_dump(mode="json") if error is not None else None,
        }
        with self.lock:
            self.results.append(result)

    def run(self, spec: dict[str, Any]) -> None:
        time.sleep(spec.get("pause", 0.0))
        tag = f"run-{spec['index']}"
        started = time.time()
        run = traced_run(tag, tracer_provider=self.provider)
        error: KilnRunError | None = None
        try:
            with run:
                if spec["kind"] == "agent":
                    self.agent(run, spec, tag)
                else:
                    run.messages.extend(message(i, tag) for i in range(spec["messages"]))
                    if spec["kind"] == "slow":
                        i = spec["messages"]
                        while time.time() - started < spec["duration"]:
                            time.sleep(spec["step"])
                            run.messages.append(message(i, tag))
                            i += 1
                    if spec["fail"]:
                        raise RuntimeError(FAILURE)
        except KilnRunError as exc:
            error = exc
        self.record(spec, run, started, error)

    def agent(self, run: Any, spec: dict[str, Any], tag: str) -> None:
        from kiln_otel.litellm import run_agent

        assert self.server is not None
        run.messages.extend([message(0, tag), {"role": "user", "content": f"{tag}: plan Lisbon. fail={spec['fail']}"}])
        asyncio.run(
            run_agent(
                "openai/scripted",
                run.messages,
                tools=TOOLS,
                tool_handlers={
                    "get_weather": lambda city: {"city": city, "forecast": "sunny"},
                    "search_hotels": lambda city: [{"hotel": "Lumiares", "eur": 140}],
                },
                on_tool_error="fail_run",
                tracer_provider=self.provider,
                api_base=self.server.base_url,
                api_key="sk-local",
                num_retries=0,
                timeout=5,
            )
        )

    def finish(self) -> list[dict[str, Any]]:
        """Flush, then add each run's span ids and OTLP bytes (from the in-memory copy)."""
        assert self.provider.force_flush(60_000), "spans not exported within 60 s"
        by_trace: dict[str, list[Any]] = {}
        for span in self.memory.get_finished_spans():
            by_trace.setdefault(f"{span.context.trace_id:032x}", []).append(span)
        for result in self.results:
            spans = by_trace.get(result["trace_id"], [])
            result["spans"] = sorted(f"{s.context.span_id:016x}" for s in spans)
            result["bytes"] = encode_spans(spans).ByteSize()
        self.provider.shutdown()
        return self.results


def script(body: dict[str, Any]) -> Turn:
    """Two tool rounds, then the answer, or a rate limit when the user asked for a failure."""
    messages = body["messages"]
    rounds = sum(1 for m in messages if m.get("role") == "assistant")
    if rounds == 0:
        return Turn.tool_calls([ToolCall("get_weather", {"city": "Lisbon"})])
    if rounds == 1:
        return Turn.tool_calls([ToolCall("search_hotels", {"city": "Lisbon"})])
    if "fail=True" in str(messages[1].get("content")):
        return Turn.fault(Fault.RATE_LIMIT)
    return Turn.text("Lisbon: sunny; stay at Lumiares (€140).")


def main() -> None:
    endpoint, plan_path, out_path = sys.argv[1:4]
    plan = json.loads(Path(plan_path).read_text())
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_OFFLINE_MODE"] = "true"
    worker = Worker(endpoint)
    threads = [threading.Thread(target=worker.run, args=(s,)) for s in plan if s["kind"] == "slow"]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    with ScriptedModelServer(script) as server:
        worker.server = server
        for spec in plan:
            if spec["kind"] != "slow":
                worker.run(spec)
    for thread in threads:
        thread.join()
    results = worker.finish()
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
