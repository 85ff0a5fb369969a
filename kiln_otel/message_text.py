"""A message's content as plain text: what the event excerpt and the terminal transcript both show.

The excerpt a Jaeger reader sees first (``kiln_otel.message.excerpt``) and the transcript read content
the same way, so a message looks the same in both places. Nothing here trusts the message's shape:
content may be a string, a list of parts or anything else. Pure functions; no redaction here (the
caller decides what text they are given).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["abbreviate", "as_text", "content_text", "one_line"]

_MAX_URL = 60


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def one_line(text: str) -> str:
    return " ".join(text.split())


def abbreviate(text: str, limit: int) -> str:
    """At most ``limit`` characters, the last one ``…`` when something was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 1, 0)]}…"


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        return "\n".join(_part_text(part) for part in content)
    return as_text(content)


def _part_text(part: Any) -> str:
    """Parts as OpenAI defines them; media are named, never dumped (a data URL is megabytes)."""
    if not isinstance(part, Mapping):
        return as_text(part)
    kind = part.get("type")
    if kind == "text" or (kind is None and "text" in part):
        return as_text(part.get("text", ""))
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        return f"[image: {abbreviate(as_text(url), _MAX_URL)}]"
    if kind == "file":
        file = part.get("file")
        name = file.get("filename") if isinstance(file, Mapping) else None
        return f"[file: {name}]" if name else "[file]"
    if kind == "input_audio":
        return "[audio]"
    return f"[{kind or 'unknown'} part]"
