"""What the default redactor costs, as ratios against ``redact=None`` measured in the same run.

    python benchmarks/bench_redaction.py [--rounds N] [--sizes 1,10,50] [--json]

1. encoding one typical message (the event kiln-otel records) with the default Redactor vs
   ``redact=None``, for a handful of ordinary messages; and the redactor alone per message;
2. recording one appended message with the default Redactor vs the naive ``json.dumps`` +
   ``span.add_event`` (bench_core's benchmark);                         target <= 0.8
3. a large tool result (1, 10, 50 MB of log-like text that mentions keys, a secret every ~8 KB)
   recorded as run_agent records it (its message event and its ``gen_ai.tool.call.result``),
   default Redactor vs ``redact=None``;                                  target <= 2
   then the worst case, 3 secrets every 110 characters (reported, no target).
Each figure is the median over rounds, baseline and subject interleaved round by round.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import bench_core

from kiln_otel.bounded import bound_text
from kiln_otel.config import Settings, resolve_settings
from kiln_otel.encoding import encode_message, serialize

TYPICAL: list[Any] = [
    bench_core.MESSAGE,
    {"role": "user", "content": "Can you find me a flight from Paris to Tokyo next Tuesday, window seat please?"},
    {"role": "system", "content": "You are a travel agent. Answer briefly and call tools when you need data."},
    {
        "role": "tool",
        "tool_call_id": "call_abc123",
        "content": json.dumps({"city": "Paris", "temperature": 21.5, "sky": "sunny", "wind_kph": 12}),
    },
    {"role": "assistant", "content": "The flight AF276 leaves at 13:25 and lands at 08:40 the next day. " * 3},
]
# A log / web page a tool returns: prose that mentions keys and tokens, code, URLs, ids, and now and
# then a real secret (one every ~8 KB); the issue measured "a 1 MB tool result that mentions 'key'".
_PAGE = (
    "2026-11-30 14:02:11 INFO request id=7f3c2a1e-9b4d-4c1a-8e2f-0a1b2c3d4e5f path=/v1/items status=200\n"
    "To rotate an API key, open the dashboard, create a new key and delete the old one after a day.\n"
    "def handler(event):\n    token_count = len(event['tokens'])\n    return {'ok': True, 'count': token_count}\n"
    "See https://docs.example.com/auth#keys and commit 9fceb02d0ae598e95dc970b74767f19372d61af8.\n"
) * 20
_SECRET_LINE = "export OPENAI_API_KEY=sk-proj-Q7wErTy9uIoP4aSdFgH2jKlZxCvBnM1234567890abcd\n"
_DENSE = 'the api key: abc123XYZ is rotated; token=t0k3n-value & see {"password": "x"} '


def big_tool_message(megabytes: int, dense: bool = False) -> dict[str, Any]:
    """``dense``: the worst case, three secrets every 110 characters."""
    size = megabytes * 1_000_000
    unit = _DENSE if dense else _PAGE + _SECRET_LINE
    text = (unit * (size // len(unit) + 1))[:size]
    return {"role": "tool", "tool_call_id": "call_big", "content": text}


interleaved = bench_core.interleaved


def timed(fn: Callable[[], Any], calls: int = 1) -> float:
    def body() -> None:
        for _ in range(calls):
            fn()

    return bench_core.per_call(body, calls)


def bench_typical(rounds: int) -> list[dict[str, Any]]:
    plain = resolve_settings(redact=None)
    redacting = resolve_settings()
    redact = redacting.redact
    assert redact is not None
    results = []
    calls = 2000
    for index, message in enumerate(TYPICAL):
        base, subject = interleaved(
            lambda m=message: timed(lambda: encode_message(m, 0, plain), calls),
            lambda m=message: timed(lambda: encode_message(m, 0, redacting), calls),
            rounds,
        )
        text = serialize(message)[0].decode()
        alone = statistics.median(timed(lambda t=text: redact(t), calls) for _ in range(rounds))
        results.append(
            {
                "benchmark": f"encode typical message #{index} ({len(text)} B), default vs redact=None",
                "baseline": round(base * 1e6, 3),
                "kiln_otel": round(subject * 1e6, 3),
                "unit": "us",
                "ratio": round(subject / base, 3),
                "redactor_alone_us": round(alone * 1e6, 3),
            }
        )
    return results


def bench_append(rounds: int) -> dict[str, Any]:
    bench_core.REDACT = "default"
    base, subject = bench_core.bench_recording(rounds)
    return {
        "benchmark": "record one message (default Redactor) vs json.dumps+add_event",
        "baseline": round(base * 1e6, 3),
        "kiln_otel": round(subject * 1e6, 3),
        "unit": "us",
        "ratio": round(subject / base, 3),
        "target": 0.8,
        "met": subject / base <= 0.8,
    }


def bench_large(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """What run_agent pays per tool result: its message event plus its ``gen_ai.tool.call.result``."""
    plain = resolve_settings(redact=None)
    redacting = resolve_settings()

    def record(message: dict[str, Any], settings: Settings) -> None:
        encode_message(message, 0, settings)
        bound_text(message["content"], settings.max_message_bytes, settings.redact)

    results = []
    for megabytes, dense in [(size, False) for size in sizes] + [(sizes[0], True)]:
        message = big_tool_message(megabytes, dense)
        base, subj = interleaved(
            lambda m=message: timed(lambda: record(m, plain)),
            lambda m=message: timed(lambda: record(m, redacting)),
            rounds,
        )
        result: dict[str, Any] = {
            "benchmark": f"{megabytes} MB {'dense ' if dense else ''}tool result (event + attribute), default vs None",
            "baseline": round(base * 1e3, 3),
            "kiln_otel": round(subj * 1e3, 3),
            "unit": "ms",
            "per_mb_ms": round(subj * 1e3 / megabytes, 3),
            "ratio": round(subj / base, 3),
        }
        if not dense:  # the worst case (3 secrets every 110 characters) is reported, not held to it
            result |= {"target": 2.0, "met": subj / base <= 2.0}
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--sizes", default="1,10,50", help="tool result sizes in MB")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    results = [
        *bench_typical(args.rounds),
        bench_append(args.rounds),
        *bench_large([int(s) for s in args.sizes.split(",")], max(args.rounds // 7, 3)),
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        verdict = "" if "met" not in r else (" ok" if r["met"] else " MISSED")
        target = f" (target <= {r['target']})" if "target" in r else ""
        extra = f"  redactor alone {r['redactor_alone_us']} us" if "redactor_alone_us" in r else ""
        extra += f"  {r['per_mb_ms']} ms/MB" if "per_mb_ms" in r else ""
        print(
            f"{r['benchmark']:<72} baseline {r['baseline']:>10} {r['unit']}  kiln-otel {r['kiln_otel']:>10} "
            f"{r['unit']}  ratio {r['ratio']:>6}{target}{verdict}{extra}"
        )


if __name__ == "__main__":
    main()
