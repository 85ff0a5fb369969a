"""A backend-neutral view of exported spans: what every telemetry source is parsed into.

Reconstruction reads only this shape, so a new source (another backend's JSON) needs a parser and
nothing else. Ids are lowercase hex, as Jaeger and the OTLP JSON encoding show them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["AttributeValue", "EventRecord", "SpanRecord"]

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]


@dataclass(frozen=True)
class EventRecord:
    name: str
    time_unix_nano: int
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_time_unix_nano: int = 0
    end_time_unix_nano: int = 0
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    events: Sequence[EventRecord] = ()
    status_code: str = "UNSET"
    """One of ``UNSET``, ``OK``, ``ERROR``."""
    status_message: str = ""
    dropped_events: int = 0
