"""kiln-otel: every message of an LLM agent run as a span event, every failure an ErrorWithTrace.

Public surface (everything else is private and may change)::

    traced_run / TracedRun      start a run span whose .messages list records itself
    TracedMessages              the recording list (a real list)
    KilnRunError, ErrorWithTrace, format_error_message
    RunInterruptedError and subclasses   how a run ended that its code never ended (exit, SIGTERM, SIGKILL)
    reconstruct_trace, reconstruct_error   rebuild from exported telemetry alone
    Redactor                    the default secret-masking hook, extensible
"""

from kiln_otel.error_messages import format_error_message
from kiln_otel.errors import (
    AmbiguousTraceError,
    KilnOtelError,
    KilnRunError,
    MalformedTelemetryError,
    NotKilnTelemetryError,
    ProcessExitedError,
    ProcessTerminatedError,
    ReconstructionError,
    RunAbandonedError,
    RunInterruptedError,
    RunNotEndedError,
    TraceNotFoundError,
)
from kiln_otel.messages import TracedMessages
from kiln_otel.payload import ErrorWithTrace
from kiln_otel.reconstruct import ReconstructedTrace, reconstruct_error, reconstruct_trace
from kiln_otel.redaction import Redactor
from kiln_otel.run import TracedRun, current_run, traced_run
from kiln_otel.version import __version__

__all__ = [
    "AmbiguousTraceError",
    "ErrorWithTrace",
    "KilnOtelError",
    "KilnRunError",
    "MalformedTelemetryError",
    "NotKilnTelemetryError",
    "ProcessExitedError",
    "ProcessTerminatedError",
    "ReconstructedTrace",
    "ReconstructionError",
    "Redactor",
    "RunAbandonedError",
    "RunInterruptedError",
    "RunNotEndedError",
    "TraceNotFoundError",
    "TracedMessages",
    "TracedRun",
    "__version__",
    "current_run",
    "format_error_message",
    "reconstruct_error",
    "reconstruct_trace",
    "traced_run",
]
