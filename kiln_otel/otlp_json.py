"""OTLP/JSON encoding of SDK spans, byte for byte what a real OTLP exporter sends.

Built on the SDK's own protobuf encoder rather than a hand-written mapping, so a file written here,
a request on the wire and the collector's file exporter all agree; the only change made to protobuf's
JSON mapping is the one the OTLP spec makes: trace and span ids as lowercase hex, not base64.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["encode_otlp_json"]

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` as OTLP/JSON: camelCase, int64 as strings, enums as ints.

    The result is a fresh dict of plain JSON values: ``json.dumps`` it as is.
    """
    request = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in request.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _ids_to_hex(span)
                for link in span.get("links", ()):
                    _ids_to_hex(link)
    return request  # type: ignore[no-any-return]


def _ids_to_hex(message: dict[str, Any]) -> None:
    """Protobuf's JSON mapping writes bytes as base64; OTLP/JSON mandates hex for ids."""
    for key in _ID_KEYS:
        if key in message:
            message[key] = base64.b64decode(message[key]).hex()
