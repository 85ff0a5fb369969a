"""A process for test_crash_safety.py to end in every way a process ends: ``python -m tests.crash_child``.

It sets up tracing the way the README tells an app to (`configure_tracing`, so the environment says
where spans go), records a run, and reports on stdout, one JSON object per line, what it did and
when (``time.monotonic``, which the parent shares on Linux). What happens next is the scenario's:

    sigterm    a ``with traced_run`` block appends, then waits to be stopped
    uncaught   a hand-driven run appends, then an exception nobody catches ends the process
    sigint     a hand-driven run appends, then waits for Ctrl-C (Python's own KeyboardInterrupt)
    return     a hand-driven run (kept at module level) appends, then the script returns, run still open
    sys.exit   the same, then ``sys.exit(2)``
    abandon    a function drives a run and returns without ending it; the script exits a moment later
    finished   a run appends and ends normally, then the process waits to be stopped
    hang       appends in batches (the next one when a line arrives on stdin), then hangs
    exit       appends, waits --wait seconds, then ``os._exit(3)``
    paced      appends one message every --pace seconds, reporting each, then hangs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from kiln_otel import traced_run
from kiln_otel.export import configure_tracing

RUN_NAME = "crash-safety"
KEPT: list[Any] = []


def message(i: int) -> dict[str, Any]:
    """The i-th message of every scenario's conversation (the parent rebuilds and compares it)."""
    if i == 0:
        return {"role": "system", "content": "You plan trips. Keep me first."}
    kind = i % 3
    if kind == 1:
        return {"role": "user", "content": f"Étape {i}: café ☕ à 東京"}
    if kind == 2:
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": '{"q": "€"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "tool", "tool_call_id": f"call_{i - 1}", "content": f"résultat {i} ✓"}


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": time.monotonic(), **fields}), flush=True)


def append(run: Any, start: int, count: int, pace: float = 0.0, each: bool = False) -> None:
    for i in range(start, start + count):
        run.messages.append(message(i))
        if each:
            report("appended", seq=i)
        if pace:
            time.sleep(pace)
    report("batch", count=start + count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario",
        choices=["sigterm", "uncaught", "sigint", "return", "sys.exit", "abandon", "finished", "hang", "exit", "paced"],
    )
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()
    provider, _ = configure_tracing(service_name="kiln-otel-crash-safety")
    run = traced_run(RUN_NAME, tracer_provider=provider)
    KEPT.append(run)  # as a script's module-level run would be, still there at exit
    report("started", trace_id=run.trace_id, span_id=run.span_id, pid=os.getpid())
    if args.scenario == "sigterm":
        with run:
            append(run, 0, args.messages)
            time.sleep(600)
    elif args.scenario == "uncaught":
        append(run, 0, args.messages)
        raise ValueError("the tool returned garbage")
    elif args.scenario == "sigint":
        append(run, 0, args.messages)
        time.sleep(600)
    elif args.scenario == "return":
        append(run, 0, args.messages)
    elif args.scenario == "sys.exit":
        append(run, 0, args.messages)
        sys.exit(2)
    elif args.scenario == "abandon":
        KEPT.clear()
        append(run, 0, args.messages)
        del run
        time.sleep(0.1)
    elif args.scenario == "finished":
        with run:
            append(run, 0, args.messages)
        report("ended")
        time.sleep(600)
    elif args.scenario == "hang":
        per_batch = args.messages // args.batches
        for batch in range(args.batches):
            if batch:
                sys.stdin.readline()
            append(run, batch * per_batch, per_batch)
        time.sleep(600)
    elif args.scenario == "exit":
        append(run, 0, args.messages)
        time.sleep(args.wait)
        os._exit(3)
    else:
        append(run, 0, args.messages, pace=args.pace, each=True)
        time.sleep(600)


if __name__ == "__main__":
    main()
