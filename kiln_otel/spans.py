"""A backend-neutral view of exported spans: what every telemetry source is parsed into.

Reconstruction reads only this shape, so a new source (another backend's JSON) needs a parser and
nothing else. Ids are lowercase hex, as Jaeger and the OTLP JSON encoding show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["AttributeValue", "EventRecord", "LoadedSpans", "SkippedLine", "SpanRecord"]

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


@dataclass(frozen=True)
class SkippedLine:
    """A line of a JSON Lines source that could not be read and was left out, the rest being kept."""

    number: int
    reason: str
    trace_ids: frozenset[str] = frozenset()
    """Trace ids (lowercase hex) the line mentions, so a reader can tell whose spans it may have held."""


class LoadedSpans(list[SpanRecord]):
    """Spans read from a source (a list), plus the lines of it that had to be skipped."""

    def __init__(self, records: Iterable[SpanRecord] = (), skipped: Iterable[SkippedLine] = ()) -> None:
        super().__init__(records)
        self.skipped = list(skipped)
