"""Span exporters kiln-otel adds: a file that needs no backend, and requests a receiver accepts.

`OtlpJsonFileExporter` writes what the Collector's file exporter writes, so a file from a test, a
laptop or a production collector is read back the same way (`kiln_otel.sources.load_spans`).
`SizeLimitedSpanExporter` wraps any exporter (the OTLP ones, in `configure_tracing`) so that no request
is over the receiver's size limit (`kiln_otel.export_size`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from kiln_otel import wire
from kiln_otel.export_size import DEFAULT_MAX_REQUEST_BYTES, MIN_REQUEST_BYTES, split_requests
from kiln_otel.otlp_json import encode_otlp_json

__all__ = ["OtlpJsonFileExporter", "SizeLimitedSpanExporter"]

_logger = logging.getLogger("kiln_otel")

_LINE_BREAKS_JSON_KEEPS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
"""What ``str.splitlines`` splits on and ``json.dumps(ensure_ascii=False)`` writes raw (it escapes the
rest: ``\\n``, ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``). They can only occur inside JSON strings,
where the escape means the same character, so escaping them keeps the JSON and makes a line a line
for every reader."""


def json_line(request: object) -> str:
    """One compact JSON text and its newline, with no character any line splitter breaks at."""
    text = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
    for char, escape in _LINE_BREAKS_JSON_KEEPS:
        if char in text:
            text = text.replace(char, escape)
    return text + "\n"


class OtlpJsonFileExporter(SpanExporter):
    """Appends one compact OTLP/JSON ``ExportTraceServiceRequest`` per `export` call, one per line.

    Exporting runs inside the traced app, so a failure (disk full, unwritable path) must never reach
    it: `export` answers FAILURE and the first such failure is logged, the rest are not (a broken
    disk would otherwise log once per batch). The file is opened per call, so it can be rotated or
    removed between exports.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._shut_down = False
        self._failure_logged = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            line = json_line(encode_otlp_json(spans))
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(line)
        except Exception:
            self._log_failure_once()
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shut_down = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every export is written and closed before it returns, so there is nothing to flush."""
        return True

    def _log_failure_once(self) -> None:
        with self._lock:
            if self._failure_logged:
                return
            self._failure_logged = True
        _logger.exception("kiln-otel could not write spans to %s; further failures are not logged", self.path)


class SizeLimitedSpanExporter(SpanExporter):
    """Hands ``exporter`` requests of at most ``max_request_bytes`` (protobuf-encoded), never more.

    A batch over the limit goes out as several requests, a trace's spans together, each exported on
    its own: one that fails does not take the others with it (`export` reports FAILURE if any did).
    A span over the limit alone is cut, marked, and sent (`kiln_otel.export_size.fit_span`). Should
    measuring fail, the batch goes out as it came: this wrapper never loses spans itself.
    """

    def __init__(self, exporter: SpanExporter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        if max_request_bytes < MIN_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must be at least {MIN_REQUEST_BYTES}, got {max_request_bytes}")
        self.exporter = exporter
        self.max_request_bytes = max_request_bytes
        self._problem_logged = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            requests = split_requests(spans, self.max_request_bytes)
        except Exception:
            self._log_once("kiln-otel could not measure a span batch; exporting it unsplit", exc_info=True)
            requests = [list(spans)]
        if any(wire.ATTR_EXPORT_CUT in (span.attributes or {}) for request in requests for span in request[:1]):
            self._log_once(
                "kiln-otel cut a span over %d bytes to export it (marked %s)",
                self.max_request_bytes,
                wire.ATTR_EXPORT_CUT,
            )
        results = [self.exporter.export(request) for request in requests]
        return (
            SpanExportResult.SUCCESS
            if all(r is SpanExportResult.SUCCESS for r in results)
            else SpanExportResult.FAILURE
        )

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def _log_once(self, message: str, *args: object, exc_info: bool = False) -> None:
        """Once per exporter: a batch problem tends to repeat with every batch."""
        if not self._problem_logged:
            self._problem_logged = True
            _logger.warning(message, *args, exc_info=exc_info)
