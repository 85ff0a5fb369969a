"""A plain litellm app with no kiln-otel code: what a zero-code user runs under ``opentelemetry-instrument``.

    opentelemetry-instrument python tests/zerocode_app.py http://127.0.0.1:PORT/v1
    opentelemetry-instrument python tests/zerocode_app.py http://127.0.0.1:PORT/v1 burst CALLS MESSAGES

It holds a short conversation (the third call is rate limited), then streams an answer the server
cuts half-way, asynchronously. For the test that runs it, it prints one JSON line per call to stdout:
``{"call": n, "sent": [messages], "error": class name or null, "partial": text received or null}``.

``burst``: CALLS calls in quick succession, each sending its own history of MESSAGES messages of 1 KiB,
which the server refuses (a rate-limit storm); one line ``{"failed": n}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import litellm
from litellm.exceptions import MidStreamFallbackError, RateLimitError

PLANTED_KEY = "sk-proj-ZeroCodePlanted0123456789abcdefXYZ"
"""A credential a user pasted into the conversation: it must never reach the telemetry."""


def report(call: int, sent: list[dict[str, Any]], error: BaseException | None, partial: str | None = None) -> None:
    line = {"call": call, "sent": sent, "error": type(error).__name__ if error else None, "partial": partial}
    print(json.dumps(line), flush=True)


def conversation(options: dict[str, Any]) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You plan trips."},
        {"role": "user", "content": f"My booking key is {PLANTED_KEY}. Plan a weekend in Lyon."},
    ]
    for call in range(1, 4):
        sent = list(messages)
        try:
            response = litellm.completion(messages=messages, **options)
        except RateLimitError as exc:
            report(call, sent, exc)
            return
        report(call, sent, None)
        messages.append({"role": "assistant", "content": response.choices[0].message.content})
        messages.append({"role": "user", "content": f"And what about day {call + 1}?"})


async def streamed(options: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Describe Lyon's old town, slowly."}]
    received: list[str] = []
    try:
        async for chunk in await litellm.acompletion(messages=messages, stream=True, **options):
            received.append(chunk.choices[0].delta.content or "")
    except MidStreamFallbackError as exc:
        report(4, messages, exc, "".join(received))


def burst(options: dict[str, Any], calls: int, messages: int) -> None:
    failed = 0
    for call in range(calls):
        history = [
            {
                "role": "user" if turn % 2 == 0 else "assistant",
                "content": f"call {call} turn {turn}: " + "détail " * 140,
            }
            for turn in range(messages)  # about 1 KiB each
        ]
        try:
            litellm.completion(messages=history, **options)
        except RateLimitError:
            failed += 1
    print(json.dumps({"failed": failed}), flush=True)


def main(base_url: str, mode: str = "conversation", *sizes: str) -> None:
    litellm.suppress_debug_info = True
    options: dict[str, Any] = {
        "model": "openai/scripted",
        "api_base": base_url,
        "api_key": "sk-local",
        "num_retries": 0,
        "timeout": 10,
    }
    if mode == "burst":
        burst(options, int(sizes[0]), int(sizes[1]))
        return
    conversation(options)
    asyncio.run(streamed(options))


if __name__ == "__main__":
    main(*sys.argv[1:])
