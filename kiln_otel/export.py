"""`configure_tracing`: a TracerProvider wired the way the standard ``OTEL_*`` variables say.

The same code must run on a laptop with nothing else installed and in production next to a
Collector, so the environment decides and code never has to change:

===========================================  ==============================================================
environment                                  spans go to
===========================================  ==============================================================
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or    OTLP behind a batch processor: gRPC, or HTTP/protobuf when
``OTEL_EXPORTER_OTLP_ENDPOINT`` set          ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` is ``http/protobuf``
neither set                                  OTLP JSON lines in a file: ``traces_file`` argument >
                                             ``KILN_OTEL_TRACES_FILE`` > ``default_file``; none: nowhere
===========================================  ==============================================================

It is also where an app says "this process is mine": it handles SIGTERM (and SIGINT when that is
still the OS default) so a container stop ends the open runs and exports them before the process goes
(`kiln_otel.lifecycle`), and it exports ended spans within `DEFAULT_SCHEDULE_DELAY_MILLIS` rather than
the SDK's 5 s, since that delay is part of what a SIGKILLed process loses.

OTLP requests are kept under the receiver's size limit (`SizeLimitedSpanExporter`): at most
``max_request_bytes`` > ``KILN_OTEL_MAX_REQUEST_BYTES`` > 3 MiB of protobuf each, which a gRPC receiver at
its 4 MiB default accepts. Raise it only together with the receiver's own limit (the Collector's
``max_recv_msg_size_mib``).

Exit is bounded. The SDK's batch processor joins its worker for up to 30 s at shutdown, then exports
what is queued one batch at a time, each with a fresh exporter timeout, and its ``force_flush`` has no
bound at all: an unreachable collector could hold a finishing process for minutes. Here
``force_flush`` and ``shutdown`` each return within the export timeout (``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``
> ``OTEL_EXPORTER_OTLP_TIMEOUT`` > 10, in seconds as the Python SDK reads them) plus
`SHUTDOWN_SLACK_SECONDS`, and a flush followed by a shutdown within that once; what is still unsent
then is dropped. Losing telemetry beats hanging an app.
"""

from __future__ import annotations

import os
from pathlib import Path

from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from kiln_otel import lifecycle
from kiln_otel._guard import logger
from kiln_otel.config import (
    DEFAULT_EXPORT_TIMEOUT_SECONDS,
    SHUTDOWN_SLACK_SECONDS,
    _number_from_env,
    _warn_once,
    export_timeout,
)
from kiln_otel.export_size import DEFAULT_MAX_REQUEST_BYTES, MIN_REQUEST_BYTES
from kiln_otel.exporters import OtlpJsonFileExporter, SizeLimitedSpanExporter
from kiln_otel.lifecycle import run_within

__all__ = [
    "DEFAULT_EXPORT_TIMEOUT_SECONDS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_SCHEDULE_DELAY_MILLIS",
    "ENV_MAX_REQUEST_BYTES",
    "ENV_TRACES_FILE",
    "SHUTDOWN_SLACK_SECONDS",
    "BoundedBatchSpanProcessor",
    "SizeLimitedOtlpSpanExporter",
    "configure_tracing",
    "export_timeout",
    "max_request_bytes_from_env",
    "traces_file_target",
]

ENV_TRACES_FILE = "KILN_OTEL_TRACES_FILE"
"""Where the embedded default writes OTLP JSON lines when no OTLP endpoint is configured."""
ENV_MAX_REQUEST_BYTES = "KILN_OTEL_MAX_REQUEST_BYTES"
"""Largest OTLP export request, in bytes of protobuf; batches are split (and a lone oversized span cut) to fit."""
ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
ENV_SCHEDULE_DELAY = "OTEL_BSP_SCHEDULE_DELAY"

DEFAULT_SCHEDULE_DELAY_MILLIS = 500
"""How long an ended span may wait in the batch queue (``OTEL_BSP_SCHEDULE_DELAY`` wins; the SDK's own
default is 5000). With the live-export delay it bounds what SIGKILL loses: 1 s + 0.5 s + one export."""

_GRPC = "grpc"
_HTTP_PROTOBUF = "http/protobuf"


def configure_tracing(
    *,
    service_name: str = "kiln-otel",
    default_file: Path | None = None,
    traces_file: Path | None = None,
    handle_signals: bool = True,
    max_request_bytes: int | None = None,
) -> tuple[TracerProvider, str]:
    """A new TracerProvider exporting where the environment says, and a sentence saying where.

    The global provider is left alone: set it yourself (``trace.set_tracer_provider``) if you want
    one. ``service.name`` is ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``)
    when the deployment sets one, else ``service_name``. ``traces_file`` is an explicit file for the
    embedded default (it beats ``KILN_OTEL_TRACES_FILE``, which beats ``default_file``); an OTLP
    endpoint in the environment still takes precedence over any file. ``max_request_bytes`` bounds
    each OTLP request (it beats ``KILN_OTEL_MAX_REQUEST_BYTES``; default 3 MiB).

    ``handle_signals``: on SIGTERM (and SIGINT, if its handler is still the OS default) end the open
    runs as failed, flush, then let the signal end the process as it would have. Installed only from
    the main thread and only where no handler is set: an app's own handler is never replaced.
    """
    if max_request_bytes is not None and max_request_bytes < MIN_REQUEST_BYTES:
        raise ValueError(f"max_request_bytes must be at least {MIN_REQUEST_BYTES}, got {max_request_bytes}")
    provider = TracerProvider(resource=_resource(service_name))
    exporter, where = _exporter(default_file, traces_file, max_request_bytes or max_request_bytes_from_env())
    if exporter is not None:
        provider.add_span_processor(
            BoundedBatchSpanProcessor(
                exporter, bound_seconds=export_timeout(), schedule_delay_millis=_schedule_delay_millis()
            )
        )
    lifecycle.add_provider(provider)  # after the provider: its exit hook must run before the SDK's
    if handle_signals:
        lifecycle.install_signal_handlers()
    return provider, where


def _schedule_delay_millis() -> float | None:
    """None lets the SDK read ``OTEL_BSP_SCHEDULE_DELAY`` (and warn about a bad value) itself."""
    return None if os.environ.get(ENV_SCHEDULE_DELAY, "").strip() else DEFAULT_SCHEDULE_DELAY_MILLIS


def _resource(service_name: str) -> Resource:
    """The SDK's Resource.create (so OTEL_RESOURCE_ATTRIBUTES apply) with our name only as a fallback.

    Resource.create lets an attribute passed in beat the environment, which would stop a deployment
    from renaming the service; so the name is passed only when the environment has none.
    """
    from_env = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return Resource.create({} if from_env else {SERVICE_NAME: service_name})


def traces_file_target(*, default_file: Path | None = None, traces_file: Path | None = None) -> Path | None:
    """The file `configure_tracing` would write with these arguments here, or None (OTLP, or nowhere).

    For callers that read their own spans back, such as the demo checking its reconstruction.
    """
    if _otlp_endpoint():
        return None
    return traces_file or _env_path() or default_file


def _otlp_endpoint() -> str:
    return os.environ.get(ENV_TRACES_ENDPOINT, "").strip() or os.environ.get(ENV_ENDPOINT, "").strip()


def max_request_bytes_from_env() -> int:
    """``KILN_OTEL_MAX_REQUEST_BYTES``, or the default when unset or not a size we can use (warned once)."""
    return _number_from_env(
        ENV_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES, _byte_count, lambda value: value >= MIN_REQUEST_BYTES
    )


def _byte_count(raw: str) -> int:
    """Plain ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses."""
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise ValueError(raw)
    return int(raw)


def _exporter(
    default_file: Path | None, traces_file: Path | None, max_request_bytes: int
) -> tuple[SpanExporter | None, str]:
    endpoint = _otlp_endpoint()
    if endpoint:
        otlp, where = _otlp_exporter(endpoint)
        return SizeLimitedSpanExporter(otlp, max_request_bytes), where
    path = traces_file_target(default_file=default_file, traces_file=traces_file)
    if path is None:
        return None, f"nowhere (set {ENV_ENDPOINT} for OTLP or {ENV_TRACES_FILE} for a file)"
    return OtlpJsonFileExporter(path), f"OTLP JSON lines in {path}"


def _env_path() -> Path | None:
    raw = os.environ.get(ENV_TRACES_FILE, "").strip()
    return Path(raw) if raw else None


def _otlp_exporter(endpoint: str) -> tuple[SpanExporter, str]:
    """The SDK's exporters read endpoint, headers, TLS and compression from the environment themselves."""
    timeout = export_timeout()
    if _protocol() == _HTTP_PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(timeout=timeout), f"OTLP/HTTP (protobuf) to {endpoint}"
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter(timeout=timeout), f"OTLP/gRPC to {endpoint}"


class SizeLimitedOtlpSpanExporter(SizeLimitedSpanExporter):
    """``OTEL_TRACES_EXPORTER=kiln_otel_otlp``: the OTLP exporter `configure_tracing` builds, for apps
    whose SDK something else sets up (``opentelemetry-instrument``, the distro's configurator).

    The SDK's own OTLP exporter sends a whole batch as one request, however large: a burst of failed
    calls, each carrying its conversation, can exceed the receiver's 4 MiB and lose the lot. This one
    is gRPC, or HTTP/protobuf per ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, configured by the same
    ``OTEL_EXPORTER_OTLP_*`` variables, with each request under ``KILN_OTEL_MAX_REQUEST_BYTES``.
    """

    def __init__(self) -> None:
        exporter, _ = _otlp_exporter(_otlp_endpoint() or "the default endpoint")
        super().__init__(exporter, max_request_bytes_from_env())


def _protocol() -> str:
    """``grpc`` unless told otherwise; ``http/json`` (which the Python SDK cannot send) becomes protobuf."""
    for name in (ENV_TRACES_PROTOCOL, ENV_PROTOCOL):
        raw = os.environ.get(name, "").strip().lower()
        if not raw:
            continue
        if raw in (_GRPC, _HTTP_PROTOBUF):
            return raw
        fallback = _HTTP_PROTOBUF if raw.startswith("http") else _GRPC
        _warn_once(name, raw, fallback)
        return fallback
    return _GRPC


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor whose `force_flush` and `shutdown` give up after ``bound_seconds``.

    Past the bound, shutdown shuts the exporter down, which aborts its retries and closes its
    connection; the SDK's worker thread is a daemon, so nothing it still holds can delay exit. A
    flush that already ran out of time means the backend is not answering, so the shutdown after it
    does not wait a second time: flush then shutdown, the usual way out, waits one bound in all.
    """

    def __init__(
        self, exporter: SpanExporter, *, bound_seconds: float, schedule_delay_millis: float | None = None
    ) -> None:
        super().__init__(exporter, schedule_delay_millis=schedule_delay_millis)
        self.bound_seconds = bound_seconds
        self._stalled = False
        self._closed = False

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        bound = self.bound_seconds if timeout_millis is None else min(self.bound_seconds, timeout_millis / 1000)
        flush, flushed = super().force_flush, []
        if not run_within(lambda: flushed.append(flush()), 0.0 if self._stalled else bound):
            self._stalled = True
            return False
        return all(flushed)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not run_within(super().shutdown, 0.0 if self._stalled else self.bound_seconds):
            logger.warning(
                "kiln-otel: span export did not finish within %.1f s; dropping the spans not yet sent",
                self.bound_seconds,
            )
            self.span_exporter.shutdown()
