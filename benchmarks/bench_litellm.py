"""A tool-calling agent run through real litellm: what each instrumentation costs it, and what it writes.

    pip install -e '.[bench]'    # the peers: OpenInference's and Traceloop's litellm instrumentors
    python benchmarks/bench_litellm.py [--rounds 3] [--runs 200] [--turns 10] [--bytes-turns 10,20,40]
                                       [--pin] [--metrics] [--json]
    python benchmarks/bench_litellm.py --breakdown   # kiln-otel's own code vs its spans' encoding

One run is ``--turns`` model calls (over loopback HTTP to the scripted server, which runs in this
parent process) and a tool call after each but the last. Configurations, each on the same loop:

- ``none``: the hand-written loop calling ``litellm.acompletion`` and the tool (the baseline);
- ``kiln-otel``: the same loop in a ``traced_run``, each call through ``traced_acompletion``;
- ``none-threaded``: the hand-written loop running its tools as ``run_agent`` runs a sync handler (a
  turn's calls gathered, each in ``asyncio.to_thread``);
- ``run_agent``: ``traced_run`` + ``run_agent`` (chat and ``execute_tool`` spans), against
  ``none-threaded``, the loop it stands for;
- ``openinference``, ``litellm-otel`` (litellm's own ``"otel"`` callback), ``traceloop``
  (``opentelemetry-instrumentation-litellm``): the hand-written loop under the peer, with its defaults.

How it measures: every configuration runs in a fresh process (``--worker``), with ``--pin`` pinned
to one CPU while the server gets the other (then the exporter's thread and run_agent's tool threads
share the app's one core: the harshest case for work moved off the caller's thread), with the same
SDK setup: a global TracerProvider with a BatchSpanProcessor
whose exporter encodes every batch to OTLP protobuf as the OTLP exporters do (and counts the bytes
instead of sending them); with ``--metrics`` also a global SDK MeterProvider (kiln-otel and Traceloop
then record the GenAI metrics; the issue's own table was measured without). A worker warms up, then times ``--runs``
runs: wall time per run (summed over runs) and the process's CPU time (all threads, so the
exporter's encoding counts), ending with a flush of the tracer provider so no deferred work escapes.
Each round starts every configuration once, in an order rotated round by round; each ratio is the
configuration's time over the baseline's in the same round, and the table shows the median and the
min-max over rounds.

It fails (exit status 1, with the reason) when a configuration records less than it claims: after
the timed runs each worker does one more run and checks what was exported: kiln-otel's spans must
rebuild (``reconstruct_trace``) to exactly the run's conversation, and a peer must have written a
span per model call holding the last tool result it was sent.

``--bytes-turns`` then runs each configuration a few times per conversation length and reports the
OTLP bytes per run: kiln-otel records each message once, so its bytes grow linearly with the turns.

``--breakdown`` says where kiln-otel's cost goes, with litellm's and the network's noise taken out:
one run's real responses are replayed, and the plain loop, the kiln-otel loop with an exporter that
only counts, and the kiln-otel loop with the encoding exporter alternate in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MODEL = "openai/scripted"
API_KEY = "sk-local"
DRAIN_SECONDS = 0.3
"""After the timed runs: litellm's deferred callbacks (its own "otel" logger) land inside the CPU window."""
WARMUP_RUNS = 5
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


def lookup(q: str) -> str:
    return f"found {q}"


def start_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a careful planner."},
        {"role": "user", "content": "Plan a trip, looking up everything you need."},
    ]


def last_tool_result(turns: int) -> str:
    return lookup(f"item {turns - 2}")


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    spans_per_run: Callable[[int], int] | None
    """Spans a run must export (None: the peer decides; at least one per model call is checked)."""
    baseline: str = "none"
    """The uninstrumented loop that does what this configuration does, timed in the same round."""


CONFIGS = {
    c.name: c
    for c in (
        Config("none", "hand-written loop, no instrumentation (the baseline)", lambda turns: 0),
        Config(
            "none-threaded", "the same loop running its tools as run_agent does (gather + to_thread)", lambda turns: 0
        ),
        Config("kiln-otel", "traced_run + traced_acompletion per call", lambda turns: 1 + turns),
        Config("run_agent", "traced_run + run_agent", lambda turns: 1 + turns + (turns - 1), "none-threaded"),
        Config("openinference", "openinference-instrumentation-litellm", None),
        Config("litellm-otel", 'litellm\'s own "otel" callback', None),
        Config("traceloop", "Traceloop opentelemetry-instrumentation-litellm", None),
    )
}
PEERS = ("openinference", "litellm-otel", "traceloop")
BASELINES = ("none", "none-threaded")


# --- the worker: one configuration in a fresh process ----------------------------------------------


class FailedClaim(Exception):
    """A configuration recorded less than it claims."""


def worker(config: str, base_url: str, runs: int, turns: int, cpu: int | None, with_metrics: bool) -> dict[str, Any]:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import litellm
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    litellm.suppress_debug_info = True
    exporter = EncodingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    if with_metrics:
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    run = prepare(config, turns)

    async def measure() -> dict[str, Any]:
        for _ in range(WARMUP_RUNS):
            await run(base_url)
        await asyncio.sleep(DRAIN_SECONDS)
        tracer_provider.force_flush()
        exporter.reset()
        gc.collect()
        walls = []
        cpu_start = time.process_time()
        for _ in range(runs):
            start = time.perf_counter()
            await run(base_url)
            walls.append(time.perf_counter() - start)
        await asyncio.sleep(DRAIN_SECONDS)
        tracer_provider.force_flush()
        cpu_seconds = time.process_time() - cpu_start
        measured = {
            "wall_ms": sum(walls) / runs * 1000,
            "wall_median_ms": statistics.median(walls) * 1000,
            "cpu_ms": cpu_seconds / runs * 1000,
            "spans_per_run": exporter.spans / runs,
            "bytes_per_run": exporter.bytes / runs,
        }
        expected = CONFIGS[config].spans_per_run
        if expected is not None and exporter.spans != expected(turns) * runs:
            raise FailedClaim(f"{config}: {exporter.spans} spans exported in {runs} runs, not {expected(turns)} each")
        exporter.reset(keep=True)
        messages = await run(base_url)
        await asyncio.sleep(DRAIN_SECONDS)
        tracer_provider.force_flush()
        verify(config, turns, messages, exporter.kept)
        return measured

    return asyncio.run(measure())


def prepare(config: str, turns: int) -> Callable[[str], Awaitable[Sequence[Any]]]:
    """Instrument (for a peer) and return the run to time; it returns the run's final message list."""
    if config == "kiln-otel":
        return kiln_loop(turns)
    if config == "run_agent":
        return kiln_run_agent(turns)
    if config == "openinference":
        from openinference.instrumentation.litellm import LiteLLMInstrumentor

        LiteLLMInstrumentor().instrument()
    elif config == "traceloop":
        from opentelemetry.instrumentation.litellm import LiteLLMInstrumentor as TraceloopInstrumentor

        TraceloopInstrumentor().instrument()
    elif config == "litellm-otel":
        import litellm
        from litellm.integrations.opentelemetry import OpenTelemetry

        litellm.callbacks = [*litellm.callbacks, OpenTelemetry()]
    elif config == "none-threaded":
        return plain_loop(turns, threaded=True)
    elif config != "none":
        raise SystemExit(f"unknown configuration {config!r}")
    return plain_loop(turns)


def plain_loop(turns: int, threaded: bool = False) -> Callable[[str], Awaitable[Sequence[Any]]]:
    """The hand-written agent loop every other configuration is compared with; ``threaded``: its tools
    run as `run_agent` runs a sync handler (all of a turn's calls gathered, each in a thread), so that
    `run_agent` is compared with the loop it stands for."""
    import litellm

    answer = answer_tools_threaded if threaded else answer_tools

    async def run(base_url: str) -> Sequence[Any]:
        messages: list[Any] = start_messages()
        for _ in range(turns):
            response = await litellm.acompletion(
                model=MODEL, messages=messages, tools=TOOLS, api_base=base_url, api_key=API_KEY,
                num_retries=0, timeout=10,
            )  # fmt: skip
            message = response.choices[0].message
            messages.append(message)
            if not await answer(messages, message):
                return messages
        raise RuntimeError("Too many turns")

    return run


async def answer_tools(messages: list[Any], message: Any) -> bool:
    """One tool message per tool call of ``message``, as the loop's tool answers; False when it called none."""
    if not message.tool_calls:
        return False
    for call in message.tool_calls:
        result = lookup(**json.loads(call.function.arguments))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return True


async def answer_tools_threaded(messages: list[Any], message: Any) -> bool:
    """`answer_tools`, each call's handler in a thread, the turn's calls gathered."""
    if not message.tool_calls:
        return False
    calls = message.tool_calls
    results = await asyncio.gather(*(asyncio.to_thread(lookup, **json.loads(c.function.arguments)) for c in calls))
    messages.extend({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results))
    return True


def kiln_loop(turns: int) -> Callable[[str], Awaitable[Sequence[Any]]]:
    """The same loop recorded by kiln-otel: the run's list, each call a ``chat`` span."""
    from kiln_otel import traced_run
    from kiln_otel.litellm import traced_acompletion

    async def run(base_url: str) -> Sequence[Any]:
        async with traced_run("bench") as traced:
            messages = traced.messages
            messages.extend(start_messages())
            for _ in range(turns):
                response = await traced_acompletion(
                    messages, model=MODEL, tools=TOOLS, api_base=base_url, api_key=API_KEY, num_retries=0,
                    timeout=10,
                )  # fmt: skip
                if not await answer_tools(messages, response.choices[0].message):
                    return list(messages)
        raise RuntimeError("Too many turns")

    return run


def kiln_run_agent(turns: int) -> Callable[[str], Awaitable[Sequence[Any]]]:
    from kiln_otel import traced_run
    from kiln_otel.litellm import run_agent

    async def run(base_url: str) -> Sequence[Any]:
        async with traced_run("bench") as traced:
            traced.messages.extend(start_messages())
            await run_agent(
                MODEL, traced.messages, tools=TOOLS, tool_handlers={"lookup": lookup}, max_turns=turns,
                api_base=base_url, api_key=API_KEY, num_retries=0, timeout=10,
            )  # fmt: skip
            return list(traced.messages)

    return run


class EncodingExporter:
    """What an OTLP exporter does with a batch before the network: encode it to protobuf. Counts it."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        self._encode = encode_spans
        self.reset()

    def reset(self, keep: bool = False) -> None:
        self.bytes = 0
        self.spans = 0
        self.kept: list[Any] | None = [] if keep else None

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.bytes += len(self._encode(spans).SerializePartialToString())
        self.spans += len(spans)
        if self.kept is not None:
            self.kept.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def verify(config: str, turns: int, messages: Sequence[Any], spans: list[Any] | None) -> None:
    """Raise `FailedClaim` when the verification run's export is short of what the configuration claims."""
    assert spans is not None
    expected = CONFIGS[config].spans_per_run
    conversation = 2 + turns + (turns - 1)
    if len(messages) != conversation:
        raise FailedClaim(f"{config}: the run ended with {len(messages)} messages, expected {conversation}")
    if expected is not None and len(spans) != expected(turns):
        raise FailedClaim(f"{config}: exported {len(spans)} spans for one run, expected {expected(turns)}")
    if config in ("kiln-otel", "run_agent"):
        verify_rebuilt(config, messages, spans)
    elif config in PEERS:
        if len(spans) < turns:
            raise FailedClaim(f"{config}: exported {len(spans)} spans for a run of {turns} model calls")
        text = last_tool_result(turns)
        if not any(text in json.dumps(dict(span.attributes or {})) for span in spans):
            raise FailedClaim(f"{config}: no exported span holds the last tool result {text!r} the model was sent")


def verify_rebuilt(config: str, messages: Sequence[Any], spans: list[Any]) -> None:
    from kiln_otel import reconstruct_trace
    from kiln_otel.encoding import to_jsonable
    from kiln_otel.otlp_json import encode_otlp_json

    rebuilt = list(reconstruct_trace(json.dumps(encode_otlp_json(spans)).encode()))
    original = [to_jsonable(m) for m in messages]
    if rebuilt != original:
        raise FailedClaim(f"{config}: the exported run rebuilds to {len(rebuilt)} messages that differ from the run's")


def breakdown(base_url: str, turns: int, runs: int, blocks: int = 20) -> dict[str, Any]:
    """Where kiln-otel's cost goes, without litellm's or the network's noise: one real run's responses
    are recorded, then replayed by a stand-in for ``litellm.acompletion``, and blocks of the plain loop,
    the kiln-otel loop with an exporter that only counts, and the kiln-otel loop with the encoding
    exporter alternate in this one process (and ``run_agent`` with it). Medians of CPU time per run
    over the blocks; then one run's OTLP bytes, attribute by attribute."""
    import litellm
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    litellm.suppress_debug_info = True
    real, recorded = litellm.acompletion, []

    async def record(*args: Any, **kwargs: Any) -> Any:
        recorded.append(await real(*args, **kwargs))
        return recorded[-1]

    litellm.acompletion = record
    asyncio.run(plain_loop(turns)(base_url))
    calls = iter(range(1 << 62))

    async def replay(*args: Any, **kwargs: Any) -> Any:
        return recorded[next(calls) % len(recorded)]

    litellm.acompletion = replay
    exporter = EncodingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    encode = exporter.export
    plain, threaded = plain_loop(turns), plain_loop(turns, threaded=True)
    kiln, agent = kiln_loop(turns), kiln_run_agent(turns)

    def counting(spans: Sequence[Any]) -> Any:
        exporter.spans += len(spans)
        return SpanExportResult.SUCCESS

    variants: list[tuple[str, Any, Any]] = [
        ("none", plain, encode),
        ("kiln", kiln, counting),
        ("kiln+encode", kiln, encode),
        ("none-threaded", threaded, encode),
        ("run_agent+encode", agent, encode),
    ]

    async def measure() -> dict[str, Any]:
        samples: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for block in range(blocks + 2):  # the first two blocks warm up
            for name, run, export in variants:
                exporter.export = export  # type: ignore[method-assign]
                gc.collect()
                start = time.process_time()
                for _ in range(runs):
                    await run(base_url)  # replayed: the address only names the server in the attributes
                tracer_provider.force_flush()
                if block >= 2:
                    samples[name].append((time.process_time() - start) / runs * 1e6)
        none, kiln_only, kiln_encoding, none_threaded, agent = (statistics.median(samples[n]) for n, _, _ in variants)
        exporter.export = encode  # type: ignore[method-assign]
        exporter.reset(keep=True)
        await kiln(base_url)
        tracer_provider.force_flush()
        return {
            "plain loop, replayed responses (us/run)": round(none, 1),
            "kiln-otel's own code (us/run)": round(kiln_only - none, 1),
            "OTLP protobuf encoding of its spans (us/run)": round(kiln_encoding - kiln_only, 1),
            "the loop with its tools in threads, over the plain loop (us/run)": round(none_threaded - none, 1),
            "run_agent over that loop, own code and encoding (us/run)": round(agent - none_threaded, 1),
            "bytes per run by attribute": bytes_by_attribute(exporter.kept or []),
        }

    return asyncio.run(measure())


def bytes_by_attribute(spans: list[Any]) -> dict[str, int]:
    """What each attribute key costs one run's OTLP protobuf: the bytes saved were it left out, on spans
    and on events alike (the largest first), and the run's total."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import Event, ReadableSpan

    def size(batch: list[Any]) -> int:
        return len(encode_spans(batch).SerializePartialToString())

    def without(span: Any, key: str) -> ReadableSpan:
        return ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes={k: v for k, v in (span.attributes or {}).items() if k != key},
            events=[Event(e.name, {k: v for k, v in e.attributes.items() if k != key}, e.timestamp)
                    for e in span.events],
            links=span.links, kind=span.kind, status=span.status, start_time=span.start_time,
            end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
        )  # fmt: skip

    total = size(spans)
    keys = {key for span in spans for key in (span.attributes or {})}
    keys |= {key for span in spans for event in span.events for key in event.attributes}
    saved = {key: total - size([without(span, key) for span in spans]) for key in keys}
    return {"total": total, **dict(sorted(saved.items(), key=lambda item: -item[1]))}


# --- the parent: rounds of fresh workers ------------------------------------------------------------


def script_for(turns: int) -> Callable[[dict[str, Any]], Any]:
    from kiln_otel.testing import ToolCall, Turn

    def script(request: dict[str, Any]) -> Any:
        """Tool calls until the conversation holds turns - 1 answers, then a final text answer."""
        done = sum(1 for m in request["messages"] if m.get("role") == "tool")
        if done < turns - 1:
            return Turn.tool_calls([ToolCall("lookup", {"q": f"item {done}"})])
        return Turn.text("All done: here is the plan.")

    return script


@dataclass(frozen=True)
class Setup:
    pin: bool
    with_metrics: bool


def spawn(config: str, runs: int, turns: int, setup: Setup) -> dict[str, Any]:
    """One configuration in a fresh process, against a fresh server in this one (its own CPU)."""
    from kiln_otel.testing import ScriptedModelServer

    with ScriptedModelServer(script_for(turns)) as server:
        command = [sys.executable, __file__, "--worker", config, "--base-url", server.base_url,
                   "--runs", str(runs), "--turns", str(turns)]  # fmt: skip
        if setup.pin:
            command += ["--cpu", "1"]
        if setup.with_metrics:
            command.append("--metrics")
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise FailedClaim(f"{config} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PEER_MODULES = {
    "openinference": "openinference.instrumentation.litellm",
    "traceloop": "opentelemetry.instrumentation.litellm",
}


def available(configs: list[str]) -> list[str]:
    """The configurations asked for; a peer that is not installed stops the benchmark (never skipped)."""
    import importlib.util

    for name in configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}: choose from {', '.join(CONFIGS)}")
        module = PEER_MODULES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            raise SystemExit(f"{name} is not installed: pip install -e '.[bench]'")
    return configs


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def table(configs: list[str], rounds: int, runs: int, turns: int, setup: Setup) -> list[dict[str, Any]]:
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for round_number in range(rounds):
        shift = round_number % len(configs)
        for name in configs[shift:] + configs[:shift]:
            samples[name].append(spawn(name, runs, turns, setup))
            print(f"  round {round_number + 1}/{rounds}: {name} {samples[name][-1]}", file=sys.stderr)
    rows = []
    for name in configs:
        mine, base = samples[name], samples[CONFIGS[name].baseline]
        rows.append(
            {
                "configuration": name,
                "description": CONFIGS[name].description,
                "baseline": CONFIGS[name].baseline,
                "wall_ms": round(statistics.median(s["wall_ms"] for s in mine), 2),
                "cpu_ms": round(statistics.median(s["cpu_ms"] for s in mine), 2),
                "wall_ratio": spread([s["wall_ms"] / b["wall_ms"] for s, b in zip(mine, base)]),
                "cpu_ratio": spread([s["cpu_ms"] / b["cpu_ms"] for s, b in zip(mine, base)]),
                "spans_per_run": round(statistics.median(s["spans_per_run"] for s in mine), 1),
                "bytes_per_run": round(statistics.median(s["bytes_per_run"] for s in mine)),
            }
        )
    return rows


def bytes_by_length(configs: list[str], lengths: list[int], setup: Setup) -> list[dict[str, Any]]:
    rows = []
    for name in configs:
        if name in BASELINES:
            continue
        row: dict[str, Any] = {"configuration": name}
        for turns in lengths:
            row[f"{turns} turns"] = round(spawn(name, 3, turns, setup)["bytes_per_run"])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per worker")
    parser.add_argument("--turns", type=int, default=10, help="model calls per run")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated; 'none' is always run")
    parser.add_argument("--bytes-turns", default="10,20,40", help="conversation lengths for bytes per run ('' skips)")
    parser.add_argument("--pin", action="store_true", help="pin the server to CPU 0 and each worker to CPU 1")
    parser.add_argument("--metrics", action="store_true", help="workers also set a global SDK MeterProvider")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="only where kiln-otel's cost goes (its own code, its spans' encoding), from replayed responses",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "breakdown":
        print(json.dumps(breakdown(args.base_url, args.turns, runs=max(1, args.runs // 4))))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.base_url, args.runs, args.turns, args.cpu, args.metrics)))
        return
    pin = args.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {0})  # the scripted server; workers get CPU 1
    if args.breakdown:
        print(json.dumps(spawn("breakdown", args.runs, args.turns, Setup(pin, False)), indent=2))
        return
    names = [name for name in args.configs.split(",") if name and name != "none"]
    baselines = [CONFIGS[name].baseline for name in names if name in CONFIGS]
    configs = available(list(dict.fromkeys(["none", *baselines, *names])))
    try:
        setup = Setup(pin, args.metrics)
        rows = table(configs, args.rounds, args.runs, args.turns, setup)
        lengths = [int(n) for n in args.bytes_turns.split(",") if n]
        by_length = bytes_by_length(configs, lengths, setup) if lengths else []
    except FailedClaim as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps({"turns": args.turns, "rounds": args.rounds, "runs": args.runs, "metrics": args.metrics,
                          "pinned": pin, "table": rows, "bytes_by_length": by_length}, indent=2))  # fmt: skip
        return
    print_report(rows, by_length, args)


def print_report(rows: list[dict[str, Any]], by_length: list[dict[str, Any]], args: argparse.Namespace) -> None:
    sdk = "tracing and an SDK MeterProvider" if args.metrics else "tracing only (no MeterProvider)"
    cpus = "worker pinned to one CPU" if args.pin else "2 CPUs shared with the server"
    print(f"{args.turns}-turn tool-calling run, {args.rounds} rounds x {args.runs} runs, a fresh process each")
    print(f"{sdk}; {cpus}")
    print("| configuration | wall vs baseline (min-max) | CPU vs baseline (min-max) | baseline | wall ms/run "
          "| spans/run | bytes/run |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        wall, cpu = r["wall_ratio"], r["cpu_ratio"]
        print(
            f"| {r['configuration']} | {wall['median']:.3f} ({wall['min']:.3f}-{wall['max']:.3f}) "
            f"| {cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f}) | {r['baseline']} | {r['wall_ms']} "
            f"| {r['spans_per_run']} | {r['bytes_per_run']} |"
        )
    if by_length:
        lengths = [key for key in by_length[0] if key != "configuration"]
        print("\nOTLP bytes per run by conversation length")
        print("| configuration | " + " | ".join(lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for row in by_length:
            print(f"| {row['configuration']} | " + " | ".join(str(row[key]) for key in lengths) + " |")


if __name__ == "__main__":
    main()
