"""Span exporters that need no backend at all.

`OtlpJsonFileExporter` writes what the Collector's file exporter writes, so a file from a test, a
laptop or a production collector is read back the same way (`kiln_otel.sources.load_spans`).
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

from kiln_otel.otlp_json import encode_otlp_json

__all__ = ["OtlpJsonFileExporter"]

_logger = logging.getLogger("kiln_otel")


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
            line = json.dumps(encode_otlp_json(spans), ensure_ascii=False, separators=(",", ":")) + "\n"
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
