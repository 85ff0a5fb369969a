"""What kiln-otel costs an app before and around its runs: import time and memory per recorded message.

    python benchmarks/bench_footprint.py [--repeats N] [--json]

1. ``import kiln_otel`` and ``import kiln_otel.litellm`` (litellm itself is not imported: checked),
   each in a fresh interpreter, the median of ``--repeats``; ``import opentelemetry.sdk.trace``
   (what any app that exports spans imports anyway) measured the same way, for scale.
2. memory per message: 10,000 messages appended to a recording run's list (an SDK provider with a
   BatchSpanProcessor whose exporter drops the spans) against the same messages in a plain list,
   measured with ``tracemalloc`` (Python allocations, so exact and repeatable):
   - while the run is open and none of its spans has been exported yet (the worst case: every
     message's event is held, in the buffer or in ended segment spans waiting in the batch queue);
   - after the run has ended and its spans were exported (what a finished run leaves behind).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tracemalloc
from typing import Any

MESSAGES = 10_000
IMPORTS = {
    "kiln_otel": "import kiln_otel",
    "kiln_otel.litellm": "import kiln_otel.litellm",
    "opentelemetry.sdk.trace (for scale)": "import opentelemetry.sdk.trace",
}
_TIMED_IMPORT = """
import sys, time
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
assert "litellm" not in sys.modules, "importing kiln-otel imported litellm"
print(elapsed)
"""


def import_ms(statement: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", _TIMED_IMPORT.format(statement=statement)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(done.stdout) * 1000)
    return statistics.median(times)


def message(i: int) -> dict[str, Any]:
    """A typical turn: a user question or an assistant answer with a tool call, ~300 bytes of JSON."""
    if i % 2:
        return {
            "role": "user",
            "content": f"Question {i}: what is the weather in Paris, and which flight should I take?",
        }
    return {
        "role": "assistant",
        "content": f"Answer {i}: let me check the weather, then I will look up flights for you.",
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }


class DropExporter:
    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def allocated(fill: Any) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = fill()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def memory_per_message() -> dict[str, float]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from kiln_otel import traced_run

    messages = [message(i) for i in range(MESSAGES)]
    provider = TracerProvider()
    # Export only when asked: the batch queue holds every ended segment until then (the worst case).
    processor = BatchSpanProcessor(DropExporter(), max_queue_size=100_000, schedule_delay_millis=3_600_000)  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    traced_run("warm-up", tracer_provider=provider).end()

    def plain() -> Any:
        kept: list[Any] = []
        for item in messages:
            kept.append(dict(item))
        return kept

    def open_run() -> Any:
        run = traced_run("footprint", tracer_provider=provider, live_export_delay=3600)
        for item in messages:
            run.messages.append(dict(item))
        return run

    def finished_run() -> Any:
        run = open_run()
        run.end()
        provider.force_flush()
        return run.messages

    base = allocated(plain)
    recording = allocated(open_run)
    provider.force_flush()
    finished = allocated(finished_run)
    provider.shutdown()
    return {
        "plain_list_bytes_per_message": base / MESSAGES,
        "open_run_extra_bytes_per_message": (recording - base) / MESSAGES,
        "finished_run_extra_bytes_per_message": (finished - base) / MESSAGES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "import_ms": {name: round(import_ms(statement, args.repeats), 1) for name, statement in IMPORTS.items()},
        "memory": {key: round(value, 1) for key, value in memory_per_message().items()},
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"import time, median of {args.repeats} fresh interpreters (litellm not imported):")
    for name, ms in results["import_ms"].items():
        print(f"  import {name:<38} {ms:>7} ms")
    memory = results["memory"]
    print(f"memory for {MESSAGES:,} recorded messages (tracemalloc):")
    print(f"  a plain list of the messages            {memory['plain_list_bytes_per_message']:>8} bytes/message")
    print(f"  a recording run, open, nothing exported +{memory['open_run_extra_bytes_per_message']:>7} bytes/message")
    print(
        f"  the same run ended and exported         +{memory['finished_run_extra_bytes_per_message']:>7} bytes/message"
    )


if __name__ == "__main__":
    main()
