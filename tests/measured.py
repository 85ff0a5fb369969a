"""Run the ``kiln-otel`` command in a child process under hard limits, and measure what it used.

The child sets ``RLIMIT_AS`` (address space) and ``RLIMIT_CPU`` on itself before importing anything,
then runs the console script's ``main``: a runaway allocation becomes a MemoryError in the child
(never a swapping machine), a runaway loop a SIGXCPU. On its way out it reports its own peak resident
memory (``VmHWM``, which starts afresh at exec; ``ru_maxrss`` from ``wait4`` would also count the
parent's memory the child was forked with). The parent kills it past a wall-clock timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024

_LAUNCHER = """\
import resource, sys
memory, cpu, report = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
from kiln_otel.cli import main
try:
    code = main(sys.argv[4:])
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(peak)
sys.exit(code)
"""


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    """Bytes: the child's peak resident set size (VmHWM), 0 if it died before reporting it."""
    seconds: float


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    stdin: bytes = b"",
    memory_bytes: int = 1024 * MIB,
    cpu_seconds: int = 60,
    timeout: float = 120.0,
) -> Measured:
    """``kiln-otel *args`` in a limited child; waits at most ``timeout`` seconds (then kills it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "KILN_OTEL_"))}
    with (
        tempfile.TemporaryFile() as given,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as scratch,
    ):
        report = Path(scratch) / "peak"
        given.write(stdin)
        given.seek(0)
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(memory_bytes), str(cpu_seconds), str(report), *args],
            cwd=cwd,
            env=env,
            stdin=given,
            stdout=out,
            stderr=err,
        )
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            child.wait()
        finally:
            killer.cancel()
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=child.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            peak_rss=int(report.read_text()) * 1024 if report.exists() else 0,
            seconds=seconds,
        )
