"""Every way exported telemetry reaches kiln-otel, parsed into backend-neutral `SpanRecord`s.

Reconstruction must give the same answer whether it reads spans in memory, an OTLP request, the
Collector's file exporter output or what Jaeger serves back, so every source is normalised here and
nothing downstream knows where a span came from. Each format has one private reader; the OTLP/JSON
reader is the hub (protobuf and in-memory spans are turned into OTLP/JSON first), which is what makes
the records from different sources equal rather than merely alike.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import reprlib
from base64 import b64decode
from binascii import Error as BinasciiError
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, BinaryIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from kiln_otel.errors import MalformedTelemetryError
from kiln_otel.json_input import JSONInputError, loads
from kiln_otel.otlp_json import encode_otlp_json
from kiln_otel.spans import EventRecord, LoadedSpans, SkippedLine, SpanRecord

__all__ = ["load_spans"]

_EXPECTED = (
    "OTLP spans (SDK ReadableSpans, protobuf or JSON ExportTraceServiceRequest, JSON Lines of them), "
    "a Jaeger /api/v3/traces or /api/traces body, or a path to a file holding one of those"
)
_STATUS_NAMES = ("UNSET", "OK", "ERROR")
_BOM = b"\xef\xbb\xbf"
_MAX_VALUE_DEPTH = 32
"""Arrays and maps nested in one attribute value; the SDK writes flat arrays, other writers a few levels."""
_INT64_MIN, _UINT64_END = -(2**63), 2**64
_DECIMAL = re.compile(r"\s*[-+]?[0-9]{1,20}\s*")

# Tags Jaeger's OTLP translator adds to a span for things that are not span attributes.
_JAEGER_STATUS_CODE = "otel.status_code"
_JAEGER_STATUS_MESSAGE = "otel.status_description"
_JAEGER_DROPPED_EVENTS = "otel.dropped_events_count"
_JAEGER_TRANSLATOR_TAGS = (
    "span.kind",
    "otel.scope.name",
    "otel.scope.version",
    "otel.library.name",
    "otel.library.version",
    "w3c.tracestate",
    "internal.span.format",
)
_JAEGER_EVENT_NAME = "event"
_JAEGER_VALUE_KEYS = ("value", "vStr", "vInt64", "vBool", "vFloat64", "vBinary")


def load_spans(source: object, *, trace_id: str | None = None) -> LoadedSpans:
    """Spans from any telemetry source kiln-otel reads, in the order the source lists them.

    With ``trace_id`` (hex) only that trace's spans are kept, and JSON Lines that do not mention it
    are skipped before they are parsed, so reading one trace out of a large file costs memory for
    that trace and the longest line, not for the file. A line of JSON Lines that cannot be read is
    left out and listed in the result's ``skipped`` (a writer killed mid-line leaves one), as long
    as something else in the source could be read. Otherwise raises `MalformedTelemetryError` (its
    cause chained), naming what was expected and what was found; an empty source gives ``[]``.
    """
    wanted = None if trace_id is None else _Wanted(trace_id)
    loaded = _load(source, wanted)
    if wanted is None or not loaded:
        return loaded
    return LoadedSpans((record for record in loaded if record.trace_id == wanted.trace_id), loaded.skipped)


def _load(source: object, wanted: _Wanted | None) -> LoadedSpans:
    if isinstance(source, ReadableSpan):
        return _from_readable_spans([source])
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), wanted)
    if isinstance(source, str):
        return _from_text(source, wanted)
    if isinstance(source, os.PathLike):
        return _from_path(source, wanted)
    if isinstance(source, io.TextIOBase):
        return _from_text(source.read(), wanted)
    if isinstance(source, io.IOBase) or (callable(getattr(source, "readline", None)) and hasattr(source, "read")):
        return _from_stream(source, wanted)  # type: ignore[arg-type]
    if isinstance(source, Mapping):
        return LoadedSpans(_from_json_object(source, ""))
    if isinstance(source, Iterable):
        return _from_iterable(source)
    raise MalformedTelemetryError(f"expected {_EXPECTED}; found a {type(source).__name__}")


class _Wanted:
    """One trace id, and the spellings of it a line must contain to be worth parsing.

    Hex in either case, shortened by leading zeros as Jaeger writes 64-bit ids (the suffix matches the
    full id too), or the base64 protobuf's JSON printer uses (the first 21 characters depend on the
    id's bytes alone).
    """

    def __init__(self, trace_id: str) -> None:
        text = trace_id.strip().lower().removeprefix("0x")
        if not 0 < len(text) <= 32 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"trace_id must be up to 32 hex digits, got {trace_id!r}")
        self.trace_id = text.rjust(32, "0")
        short = self.trace_id.lstrip("0") or "0"
        encoded = base64.b64encode(bytes.fromhex(self.trace_id))[:21]
        self.needles = {
            short.encode(),
            short.upper().encode(),
            encoded,
            encoded.replace(b"+", b"-").replace(b"/", b"_"),
        }

    def mentioned_in(self, line: bytes) -> bool:
        return any(needle in line for needle in self.needles)


# --- Containers: files, streams, bytes, text, iterables ----------------------------------------


def _from_path(path: os.PathLike[Any], wanted: _Wanted | None) -> LoadedSpans:
    name = os.fsdecode(path)
    try:
        with open(name, "rb") as stream:
            return _from_stream(stream, wanted)
    except OSError as err:
        raise MalformedTelemetryError(f"could not read the telemetry file {name}: {err}") from err
    except MalformedTelemetryError as err:
        raise MalformedTelemetryError(f"{name}: {err}") from err


def _from_stream(stream: BinaryIO, wanted: _Wanted | None) -> LoadedSpans:
    """JSON Lines are read a line at a time; anything else (protobuf, one JSON document) whole."""
    first = stream.readline()
    head = first.removeprefix(_BOM)
    if not head.lstrip(b" \t\r").startswith((b"{", b"[")):
        return _from_bytes(first + stream.read(), wanted)
    try:
        value = _parse_json(head)
    except MalformedTelemetryError:  # the first line of a document spread over several lines
        return _from_bytes(first + stream.read(), wanted)
    return _from_json_lines(enumerate(stream, start=2), wanted, first_value=value)


def _from_bytes(data: bytes, wanted: _Wanted | None) -> LoadedSpans:
    body = data.removeprefix(_BOM).lstrip()
    if not body:
        return LoadedSpans()
    if body[:1] not in (b"{", b"["):
        return _from_protobuf(data)
    try:
        value = _parse_json(body)
    except MalformedTelemetryError as json_error:
        if b"\n" not in body.rstrip():
            raise MalformedTelemetryError(f"expected JSON holding {_EXPECTED}; found {json_error}") from json_error
        try:
            return _from_json_lines(enumerate(io.BytesIO(data), start=1), wanted)
        except MalformedTelemetryError:
            # 0x0a is also protobuf's first tag (resource_spans), and a length of 0x7b or 0x5b after it
            # makes binary data look like a JSON text that starts with a blank line.
            if data[:1] != b"\n":
                raise
            return _from_protobuf_or_raise(data, json_error)
    return LoadedSpans(_from_json_value(value, ""))


def _from_protobuf_or_raise(data: bytes, error: MalformedTelemetryError) -> LoadedSpans:
    try:
        return _from_protobuf(data)
    except MalformedTelemetryError:
        pass
    raise error


def _parse_json(data: bytes) -> Any:
    try:
        return loads(data)
    except JSONInputError as err:
        raise MalformedTelemetryError(f"{err} (it starts {data[:60]!r})") from err


def _from_protobuf(data: bytes) -> LoadedSpans:
    """Protobuf is read through its JSON mapping so that the one OTLP/JSON reader does all the work."""
    found = f"{len(data)} bytes starting {data[:8].hex(' ')}"
    try:
        request = ExportTraceServiceRequest.FromString(data)
    except (DecodeError, ValueError, RecursionError) as err:
        raise MalformedTelemetryError(
            f"expected {_EXPECTED}; found {found}, neither JSON nor a protobuf ExportTraceServiceRequest ({err})"
        ) from err
    if not request.resource_spans:
        raise MalformedTelemetryError(
            f"expected a protobuf ExportTraceServiceRequest or TracesData; found {found} that hold no "
            "resource_spans (field 1), only unknown fields"
        )
    return LoadedSpans(_from_otlp(MessageToDict(request), ""))


def _from_text(text: str, wanted: _Wanted | None) -> LoadedSpans:
    stripped = text.strip().removeprefix("\ufeff").strip()
    if not stripped:
        return LoadedSpans()
    if stripped[:1] not in ("{", "["):
        raise MalformedTelemetryError(
            f"expected JSON holding {_EXPECTED}; found text that is not JSON "
            f"(it starts {stripped[:60]!r}; pass a pathlib.Path to read a file)"
        )
    return _from_bytes(stripped.encode("utf-8", "surrogatepass"), wanted)


def _from_json_lines(
    lines: Iterable[tuple[int, bytes]], wanted: _Wanted | None, *, first_value: Any = None
) -> LoadedSpans:
    """The Collector's file exporter output: one complete request per line, split on ``\\n`` only.

    ``str.splitlines`` would also split at U+2028, U+2029, U+0085 and other characters a JSON string
    may hold raw. A line that cannot be read is skipped and reported; only a source with no readable
    line at all is an error.
    """
    loaded = LoadedSpans() if first_value is None else LoadedSpans(_from_json_value(first_value, "line 1: "))
    readable = first_value is not None
    for number, line in lines:
        if not line.strip():
            continue
        if wanted is not None and not wanted.mentioned_in(line):
            readable = True  # not parsed, not needed: the source is not all garbage for all we know
            continue
        try:
            records = _from_json_value(_parse_json(line), "")
        except MalformedTelemetryError as err:
            loaded.skipped.append(SkippedLine(number, str(err), _mentioned_trace_ids(line)))
            continue
        readable = True
        loaded.extend(records)
    if loaded.skipped and not readable:
        first = loaded.skipped[0]
        raise MalformedTelemetryError(
            f"expected one JSON document or JSON Lines (one complete request per line); line {first.number} "
            f"is not readable: {first.reason}"
        )
    return loaded


_TRACE_ID_FIELD = re.compile(rb'"trace_?id"\s*:\s*"([0-9a-fA-F]{1,32}|[A-Za-z0-9+/_-]{22}==)"', re.IGNORECASE)


def _mentioned_trace_ids(line: bytes) -> frozenset[str]:
    ids = set()
    for match in _TRACE_ID_FIELD.finditer(line):
        try:
            ids.add(_hex_id(match.group(1).decode(), 16, ""))
        except MalformedTelemetryError:
            continue
    return frozenset(ids)


def _from_iterable(items: Iterable[object]) -> LoadedSpans:
    listed = list(items)
    spans = [item for item in listed if isinstance(item, ReadableSpan)]
    if len(spans) == len(listed):
        return _from_readable_spans(spans)
    if spans:
        raise MalformedTelemetryError(
            f"expected only SDK ReadableSpans or only parsed JSON bodies; found {len(spans)} ReadableSpans "
            f"mixed with {len(listed) - len(spans)} other items"
        )
    return LoadedSpans(_from_json_value(listed, ""))


def _from_readable_spans(spans: Sequence[ReadableSpan]) -> LoadedSpans:
    """Through the exporter's own encoding, so in-memory spans read exactly as their exported copy.

    One span at a time: the encoder groups spans by resource and scope, which would reorder them.
    """
    return LoadedSpans(record for span in spans for record in _from_otlp(encode_otlp_json([span]), ""))


# --- Parsed JSON: which body is it -------------------------------------------------------------


def _from_json_value(value: object, where: str) -> list[SpanRecord]:
    """A body, or a list of bodies (one level: a list inside the list is not something anyone writes)."""
    if isinstance(value, list):
        return [record for index, item in enumerate(value) for record in _from_json_body(item, f"{where}[{index}]")]
    return _from_json_body(value, where)


def _from_json_body(value: object, where: str) -> list[SpanRecord]:
    if isinstance(value, Mapping):
        return _from_json_object(value, where)
    raise MalformedTelemetryError(f"{where}expected a JSON object holding {_EXPECTED}; found {_show(value)}")


def _from_json_object(body: Mapping[Any, Any], where: str) -> list[SpanRecord]:
    if not body:
        return []  # an empty ExportTraceServiceRequest encodes as {}
    if _get(body, "resourceSpans") is not None:
        return _from_otlp(body, where)
    if "result" in body:
        return _from_jaeger_v3(body, where)
    if "data" in body or "errors" in body:
        return _from_jaeger_legacy(body, where)
    if "spans" in body and "traceID" in body:
        return _jaeger_trace(body, where)
    if "error" in body:
        raise MalformedTelemetryError(f"{where}expected telemetry; found a backend error: {_show(body['error'])}")
    raise MalformedTelemetryError(
        f'{where}expected an OTLP request {{"resourceSpans": [...]}}, a Jaeger /api/v3 body '
        f'{{"result": {{...}}}} or a Jaeger /api/traces body {{"data": [...]}}; found a JSON object '
        f"with keys {sorted(map(str, body))[:10]}"
    )


def _from_jaeger_v3(body: Mapping[Any, Any], where: str) -> list[SpanRecord]:
    """``GET /api/v3/traces/{id}``: an OTLP/JSON TracesData under ``result``."""
    result = _mapping(body["result"], f"{where}result")
    return _from_otlp(result, f"{where}result.")


# --- OTLP/JSON --------------------------------------------------------------------------------


def _from_otlp(request: Mapping[Any, Any], where: str) -> list[SpanRecord]:
    records = []
    for r, resource_spans in enumerate(_list(request, "resourceSpans", where)):
        at_resource = f"{where}resourceSpans[{r}]"
        for s, scope_spans in enumerate(_scope_spans(_mapping(resource_spans, at_resource), at_resource)):
            at_scope = f"{at_resource}.scopeSpans[{s}]"
            for n, span in enumerate(_list(_mapping(scope_spans, at_scope), "spans", at_scope)):
                records.append(_otlp_span(_mapping(span, f"{at_scope}.spans[{n}]"), f"{at_scope}.spans[{n}]"))
    return records


def _scope_spans(resource_spans: Mapping[Any, Any], where: str) -> list[Any]:
    """OTLP before 0.15 called them instrumentation library spans; old collector files still do."""
    if _get(resource_spans, "scopeSpans") is None:
        return _list(resource_spans, "instrumentationLibrarySpans", where)
    return _list(resource_spans, "scopeSpans", where)


def _otlp_span(span: Mapping[Any, Any], where: str) -> SpanRecord:
    status = _mapping(_get(span, "status") or {}, f"{where}.status")
    return SpanRecord(
        trace_id=_hex_id(_get(span, "traceId"), 16, f"{where}.traceId"),
        span_id=_hex_id(_get(span, "spanId"), 8, f"{where}.spanId"),
        parent_span_id=_parent_id(_get(span, "parentSpanId"), f"{where}.parentSpanId"),
        name=_str(_get(span, "name") or "", f"{where}.name"),
        start_time_unix_nano=_int(_get(span, "startTimeUnixNano") or 0, f"{where}.startTimeUnixNano"),
        end_time_unix_nano=_int(_get(span, "endTimeUnixNano") or 0, f"{where}.endTimeUnixNano"),
        attributes=_otlp_attributes(span, where),
        events=tuple(
            _otlp_event(_mapping(event, f"{where}.events[{n}]"), f"{where}.events[{n}]")
            for n, event in enumerate(_list(span, "events", where))
        ),
        status_code=_status_code(_get(status, "code"), f"{where}.status.code"),
        status_message=_str(_get(status, "message") or "", f"{where}.status.message"),
        dropped_events=_int(_get(span, "droppedEventsCount") or 0, f"{where}.droppedEventsCount"),
    )


def _otlp_event(event: Mapping[Any, Any], where: str) -> EventRecord:
    return EventRecord(
        name=_str(_get(event, "name") or "", f"{where}.name"),
        time_unix_nano=_int(_get(event, "timeUnixNano") or 0, f"{where}.timeUnixNano"),
        attributes=_otlp_attributes(event, where),
    )


def _otlp_attributes(owner: Mapping[Any, Any], where: str, depth: int = 0) -> dict[str, Any]:
    attributes = {}
    for n, pair in enumerate(_list(owner, "attributes", where)):
        at = f"{where}.attributes[{n}]"
        pair = _mapping(pair, at)
        key = _str(_get(pair, "key"), f"{at}.key")
        attributes[key] = _any_value(_get(pair, "value") or {}, f"{at}.value", depth)
    return attributes


def _any_value(value: object, where: str, depth: int = 0) -> Any:
    """An OTLP ``AnyValue``; an empty one (protobuf's "no value") reads as None."""
    value = _mapping(value, where)
    for kind, decode in _ANY_VALUE_DECODERS.items():
        raw = _get(value, kind)
        if raw is not None:
            return decode(raw, f"{where}.{kind}", depth)
    return None


def _nested(where: str, depth: int) -> int:
    if depth >= _MAX_VALUE_DEPTH:
        raise MalformedTelemetryError(f"{where}: expected values nested at most {_MAX_VALUE_DEPTH} deep")
    return depth + 1


def _array_value(array: object, where: str, depth: int) -> list[Any]:
    depth = _nested(where, depth)
    items = _list(_mapping(array, where), "values", where)
    return [_any_value(item, f"{where}.values[{n}]", depth) for n, item in enumerate(items)]


def _kvlist_value(kvlist: object, where: str, depth: int) -> str:
    """Span attributes cannot hold maps (the SDK refuses them), so other writers' maps become JSON text."""
    depth = _nested(where, depth)
    items = _list(_mapping(kvlist, where), "values", where)
    return json.dumps(_otlp_attributes({"attributes": items}, where, depth), ensure_ascii=False)


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise MalformedTelemetryError(f"{where}: expected a boolean; found {_show(value)}")


def _double(value: object, where: str) -> float:
    """Protobuf's JSON mapping writes NaN and infinities as the strings float() reads back."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise MalformedTelemetryError(f"{where}: expected a number; found {_show(value)}")


_ANY_VALUE_DECODERS: dict[str, Callable[[Any, str, int], Any]] = {
    "stringValue": lambda value, where, _: _str(value, where),
    "boolValue": lambda value, where, _: _bool(value, where),
    "intValue": lambda value, where, _: _int(value, where, signed=True),
    "doubleValue": lambda value, where, _: _double(value, where),
    "arrayValue": _array_value,
    "kvlistValue": _kvlist_value,
    "bytesValue": lambda value, where, _: _str(value, where),  # kept as the base64 the JSON carries
}


def _status_code(code: object, where: str) -> str:
    """Enums arrive as ints (OTLP/JSON) or names, with or without the ``STATUS_CODE_`` prefix."""
    if code is None:
        return "UNSET"
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(_STATUS_NAMES):
        return _STATUS_NAMES[code]
    if isinstance(code, str):
        name = code.strip().upper().removeprefix("STATUS_CODE_")
        if name in _STATUS_NAMES:
            return name
        if name in ("0", "1", "2"):
            return _STATUS_NAMES[int(name)]
    raise MalformedTelemetryError(f"{where}: expected a status code 0-2 or UNSET/OK/ERROR; found {_show(code)}")


# --- Jaeger's legacy /api/traces JSON ----------------------------------------------------------


def _from_jaeger_legacy(body: Mapping[Any, Any], where: str) -> list[SpanRecord]:
    """``GET /api/traces/{id}``: ``{"data": [trace, ...], "errors": ...}``."""
    traces = body.get("data") or []
    if not traces and body.get("errors"):
        raise MalformedTelemetryError(f"{where}expected Jaeger trace data; found errors: {_show(body['errors'])}")
    if not isinstance(traces, list):
        raise MalformedTelemetryError(f"{where}data: expected a list of Jaeger traces; found {_show(traces)}")
    return [
        record
        for n, trace in enumerate(traces)
        for record in _jaeger_trace(_mapping(trace, f"{where}data[{n}]"), f"{where}data[{n}].")
    ]


def _jaeger_trace(trace: Mapping[Any, Any], where: str) -> list[SpanRecord]:
    return [
        _jaeger_span(_mapping(span, f"{where}spans[{n}]"), f"{where}spans[{n}]")
        for n, span in enumerate(_list(trace, "spans", where))
    ]


def _jaeger_span(span: Mapping[Any, Any], where: str) -> SpanRecord:
    """Times are microseconds there; kind, status and dropped counts are tags the translator added."""
    tags = _jaeger_fields(_list(span, "tags", where), f"{where}.tags", (_JAEGER_STATUS_MESSAGE,))
    status_code = _status_code(tags.pop(_JAEGER_STATUS_CODE, None), f"{where}.tags.{_JAEGER_STATUS_CODE}")
    if tags.get("error") is True and status_code != "OK":  # the translator's own error=true flag
        status_code = "ERROR"
        del tags["error"]
    status_message = tags.pop(_JAEGER_STATUS_MESSAGE, "")
    dropped_events = tags.pop(_JAEGER_DROPPED_EVENTS, 0)
    for key in _JAEGER_TRANSLATOR_TAGS:
        tags.pop(key, None)
    start_us = _int(span.get("startTime") or 0, f"{where}.startTime")
    return SpanRecord(
        trace_id=_hex_id(span.get("traceID"), 16, f"{where}.traceID"),
        span_id=_hex_id(span.get("spanID"), 8, f"{where}.spanID"),
        parent_span_id=_jaeger_parent(span, where),
        name=_str(span.get("operationName") or "", f"{where}.operationName"),
        start_time_unix_nano=start_us * 1000,
        end_time_unix_nano=(start_us + _int(span.get("duration") or 0, f"{where}.duration")) * 1000,
        attributes=tags,
        events=tuple(
            _jaeger_log(_mapping(log, f"{where}.logs[{n}]"), f"{where}.logs[{n}]")
            for n, log in enumerate(_list(span, "logs", where))
        ),
        status_code=status_code,
        status_message=_str(status_message, f"{where}.tags.{_JAEGER_STATUS_MESSAGE}"),
        dropped_events=_int(dropped_events, f"{where}.tags.{_JAEGER_DROPPED_EVENTS}"),
    )


def _jaeger_parent(span: Mapping[Any, Any], where: str) -> str | None:
    """The translator writes the parent as the first CHILD_OF reference; old clients had parentSpanID."""
    for n, reference in enumerate(_list(span, "references", where)):
        reference = _mapping(reference, f"{where}.references[{n}]")
        if str(reference.get("refType", "")).upper() == "CHILD_OF":
            return _parent_id(reference.get("spanID"), f"{where}.references[{n}].spanID")
    return _parent_id(span.get("parentSpanID"), f"{where}.parentSpanID")


def _jaeger_log(log: Mapping[Any, Any], where: str) -> EventRecord:
    fields = _jaeger_fields(_list(log, "fields", where), f"{where}.fields", (_JAEGER_EVENT_NAME,))
    # The event name travels as a field named "event". An attribute literally named "event" shadows
    # it (the translator then writes no name field), so such an event reads back named after that
    # attribute's value and without it. kiln-otel never writes an attribute called "event".
    name = fields.pop(_JAEGER_EVENT_NAME, "")
    return EventRecord(
        name=_str(name, f"{where}.fields.{_JAEGER_EVENT_NAME}"),
        time_unix_nano=_int(log.get("timestamp") or 0, f"{where}.timestamp") * 1000,
        attributes=fields,
    )


def _jaeger_fields(items: list[Any], where: str, verbatim: tuple[str, ...]) -> dict[str, Any]:
    """Tags or log fields by key; keys in ``verbatim`` are strings that must not be read as arrays."""
    fields = {}
    for n, item in enumerate(items):
        at = f"{where}[{n}]"
        item = _mapping(item, at)
        key = _str(item.get("key"), f"{at}.key")
        fields[key] = _jaeger_value(item, at, parse_arrays=key not in verbatim)
    return fields


def _jaeger_value(item: Mapping[Any, Any], where: str, *, parse_arrays: bool) -> Any:
    """Typed by ``type`` (UI JSON) or ``vType`` (api_v2 JSON); int64 may come as a string."""
    value = next((item[key] for key in _JAEGER_VALUE_KEYS if key in item), None)
    kind = str(item.get("type") or item.get("vType") or "").lower()
    if kind == "int64":
        return _int(value, f"{where}.value", signed=True)
    if kind == "float64":
        return _double(value, f"{where}.value")
    if kind == "bool":
        return value if isinstance(value, bool) else _bool_text(value, f"{where}.value")
    if isinstance(value, str) and parse_arrays:
        return _json_array_or_text(value)
    return value


def _bool_text(value: object, where: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise MalformedTelemetryError(f"{where}: expected a boolean; found {_show(value)}")


def _json_array_or_text(text: str) -> Any:
    """Jaeger has no array tags: the translator writes arrays as JSON text, read back into a list.

    A string attribute that is itself a valid JSON array of scalars is therefore read as a list too.
    """
    if not text.startswith("["):
        return text
    try:
        parsed = loads(text)
    except JSONInputError:
        return text
    if isinstance(parsed, list) and all(item is None or isinstance(item, (str, bool, int, float)) for item in parsed):
        return parsed
    return text


# --- Small shared readers ----------------------------------------------------------------------


@cache
def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


def _get(obj: Mapping[Any, Any], camel: str) -> Any:
    """OTLP/JSON keys are camelCase; protobuf's JSON printer can keep the proto names (snake_case)."""
    if camel in obj:
        return obj[camel]
    return obj.get(_snake(camel))


def _list(obj: Mapping[Any, Any], camel: str, where: str) -> list[Any]:
    value = _get(obj, camel)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedTelemetryError(f"{where}.{camel}: expected a JSON list; found {_show(value)}")
    return value


def _mapping(value: object, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise MalformedTelemetryError(f"{where}: expected a JSON object; found {_show(value)}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedTelemetryError(f"{where}: expected a string; found {_show(value)}")
    return value


def _int(value: object, where: str, *, signed: bool = False) -> int:
    """int64 is a JSON string in OTLP/JSON (JavaScript numbers cannot hold it) and a number elsewhere.

    Protobuf holds nothing wider than 64 bits, so anything outside int64 (``signed``) or uint64 (times,
    counts) was not written by an OTLP encoder.
    """
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (isinstance(value, str) and _DECIMAL.fullmatch(value)):
        number = int(value)
    low, end = (_INT64_MIN, -_INT64_MIN) if signed else (_INT64_MIN, _UINT64_END)
    if number is None or not low <= number < end:
        raise MalformedTelemetryError(f"{where}: expected a 64-bit integer; found {_show(value)}")
    return number


def _hex_id(value: object, size: int, where: str) -> str:
    """Hex (OTLP/JSON, Jaeger; Jaeger drops leading zeros of 64-bit trace ids) or base64 (protobuf JSON).

    Unambiguous: padded base64 of 8 or 16 bytes always ends in ``=``, which is not a hex digit.
    """
    if isinstance(value, str) and 0 < len(value) <= 2 * size and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower().zfill(2 * size)
    if isinstance(value, str):
        try:
            raw = b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (BinasciiError, ValueError):
            raw = b""
        if len(raw) == size:
            return raw.hex()
    raise MalformedTelemetryError(
        f"{where}: expected an id of {size} bytes as {2 * size} hex digits or base64; found {_show(value)}"
    )


def _parent_id(value: object, where: str) -> str | None:
    """A root span has no parent: the id is absent, empty or all zeros depending on the writer."""
    if value is None or value == "":
        return None
    parent = _hex_id(value, 8, where)
    return None if parent.strip("0") == "" else parent


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def _show(value: object) -> str:
    """A bounded description: the value is input, and may be huge or deeply nested."""
    return f"{type(value).__name__} {_REPR.repr(value)}"
