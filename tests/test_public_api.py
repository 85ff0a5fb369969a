"""The public surface is exactly what we mean, typed, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kiln_otel

EXPECTED = {
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
}


def test_public_surface() -> None:
    assert set(kiln_otel.__all__) == EXPECTED
    assert kiln_otel.__all__ == sorted(kiln_otel.__all__)
    for name in EXPECTED:
        assert hasattr(kiln_otel, name)


def test_package_is_typed() -> None:
    assert (Path(kiln_otel.__file__).parent / "py.typed").exists()


def test_import_does_not_pull_litellm_or_web_frameworks() -> None:
    code = (
        "import sys, kiln_otel, kiln_otel.testing;"
        "heavy = [m for m in ('litellm', 'fastapi', 'starlette', 'openai', 'httpx') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""


def test_exception_tree() -> None:
    assert issubclass(kiln_otel.TraceNotFoundError, kiln_otel.ReconstructionError)
    assert issubclass(kiln_otel.ReconstructionError, kiln_otel.KilnOtelError)
    assert not issubclass(kiln_otel.KilnRunError, kiln_otel.KilnOtelError)
    endings = (
        kiln_otel.ProcessExitedError,
        kiln_otel.ProcessTerminatedError,
        kiln_otel.RunAbandonedError,
        kiln_otel.RunNotEndedError,
    )
    for ending in endings:
        assert issubclass(ending, kiln_otel.RunInterruptedError)
        assert not issubclass(ending, (kiln_otel.KilnOtelError, kiln_otel.KilnRunError))
        assert str(ending()) == ending.default_message
