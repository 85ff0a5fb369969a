"""Real trace backends for the tests: an OpenTelemetry Collector and Jaeger v2, as processes.

A pytest plugin (``pytest_plugins = ["tests.backends"]``). It builds, or reuses from the cache
outside the work tree, the two binaries with ``scripts/backends.sh build`` (the collector from
backends/collector, Jaeger from backends/jaeger, both from the Go module proxy), then runs:

    SDK --OTLP--> collector (collector-config/otelcol.yaml) --OTLP/gRPC--> Jaeger (jaeger.yaml)
                                      \\--> file output (OTLP JSON lines, in a tmp dir)

or the gateway profile (docs/pipeline.md):

    SDK --OTLP--> load balancer (gateway/loadbalancer.yaml) --by trace id--> sampler 1..N
                  (otelcol.yaml + gateway/sampler.yaml) --> Jaeger + one archive file each

Every listening address is a free 127.0.0.1 port handed to the configs through their
``${env:...}`` variables; the configs are the ones users run, unchanged.

Fixtures:
    ``backend_binaries`` (session): ``BackendBinaries(collector, jaeger)``, built or cached.
    ``pipeline`` (session): a running ``Pipeline``; stopped (SIGTERM, then SIGKILL) at the end.
    ``gateway_factory`` (test): ``start(samplers=2, sampler_env={...})`` -> a running ``Gateway``;
    every one started is stopped at the end of the test.

If the build or the start fails, tests using these fixtures are skipped with the reason, or,
when ``CI=true``, fail with the reason and the log tail. A failing test that used ``pipeline``
or ``gateway_factory`` gets the backends' logs appended to its report.

Knobs (environment): ``KILN_OTEL_BACKENDS_BUILD_TIMEOUT`` (seconds, default 2400),
``KILN_OTEL_BACKENDS_START_TIMEOUT`` (seconds, default 60), ``KILN_OTEL_BACKENDS_CACHE``
(binary cache, read by scripts/backends.sh).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS_SH = REPO_ROOT / "scripts" / "backends.sh"
COLLECTOR_CONFIG = REPO_ROOT / "collector-config" / "otelcol.yaml"
SAMPLER_CONFIG = REPO_ROOT / "collector-config" / "gateway" / "sampler.yaml"
LOADBALANCER_CONFIG = REPO_ROOT / "collector-config" / "gateway" / "loadbalancer.yaml"
JAEGER_CONFIG = REPO_ROOT / "collector-config" / "jaeger.yaml"

BUILD_TIMEOUT = float(os.environ.get("KILN_OTEL_BACKENDS_BUILD_TIMEOUT", "2400"))
START_TIMEOUT = float(os.environ.get("KILN_OTEL_BACKENDS_START_TIMEOUT", "60"))
STOP_TIMEOUT = 15.0
LOG_TAIL_BYTES = 16_000
POLL_INTERVAL = 0.2
HOST = "127.0.0.1"


class BackendUnavailableError(RuntimeError):
    """The backends could not be built or started; the message says why (with a log tail)."""


# --------------------------------------------------------------------------------------------
# small helpers


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", errors="replace")
    return text if size <= limit else f"[... {size - limit} bytes cut ...]\n{text}"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _poll(what: str, timeout: float, probe: Callable[[], tuple[bool, Any, str]]) -> Any:
    """Call ``probe`` until it says done or ``timeout`` passes; ``probe`` -> (done, value, last)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        done, value, last = probe()
        if done:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not there within {timeout:g}s (last seen: {last[:2000]})")
        time.sleep(POLL_INTERVAL)


def _pdeathsig_prefix() -> list[str]:
    """Linux: have the backend get SIGTERM if pytest dies without running its teardown.

    ``setpriv --pdeathsig`` (util-linux) sets it and execs the backend, so no ``preexec_fn``
    (unsafe with threads, and warned about on newer Pythons) is needed.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


# --------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class BackendBinaries:
    collector: Path
    jaeger: Path


def build_backends(log_path: Path, timeout: float = BUILD_TIMEOUT) -> BackendBinaries:
    """Run ``scripts/backends.sh build`` (bounded); its progress goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            proc = subprocess.Popen(
                ["bash", str(BACKENDS_SH), "build"],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # so a timeout can stop `go build` too
            )
        except OSError as exc:
            raise BackendUnavailableError(f"cannot run {BACKENDS_SH}: {exc}") from exc
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BackendUnavailableError(
                f"scripts/backends.sh build did not finish within {timeout:g}s "
                f"(KILN_OTEL_BACKENDS_BUILD_TIMEOUT); log tail:\n{_tail(log_path)}"
            ) from None
    paths = [line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()]
    if proc.returncode != 0 or len(paths) < 2:
        raise BackendUnavailableError(
            f"scripts/backends.sh build failed (exit {proc.returncode}); log tail:\n{_tail(log_path)}"
        )
    binaries = BackendBinaries(collector=Path(paths[-2]), jaeger=Path(paths[-1]))
    for path in (binaries.collector, binaries.jaeger):
        if not os.access(path, os.X_OK):
            raise BackendUnavailableError(f"scripts/backends.sh build printed {path}, not an executable")
    return binaries


# --------------------------------------------------------------------------------------------
# processes


@dataclass(frozen=True)
class ProcessUsage:
    rss_bytes: int
    peak_rss_bytes: int  # since the process started (VmHWM)
    cpu_seconds: float  # user + system


class BackendProcess:
    """One backend subprocess: fixed argv/env/log file, can be stopped and started again."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self.running:
            return
        self._reap()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [*_pdeathsig_prefix(), *self.argv],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL; returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)
        with self.log_path.open("ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} stopped: exit {proc.returncode}\n".encode())
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, as after a crash or the OOM killer."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        with self.log_path.open("ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} killed: exit {proc.returncode}\n".encode())

    def usage(self) -> ProcessUsage | None:
        """Memory and CPU of the running process (Linux /proc), None when it is not running."""
        if not self.running or self.pid is None:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        kib = {
            k: int(v.split()[0])
            for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)
            if k in ("VmRSS", "VmHWM")
        }
        ticks = os.sysconf("SC_CLK_TCK")
        return ProcessUsage(kib["VmRSS"] * 1024, kib["VmHWM"] * 1024, (int(stat[11]) + int(stat[12])) / ticks)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def exit_message(self) -> str:
        code = self._proc.poll() if self._proc is not None else None
        return f"{self.name} exited with {code}; log tail:\n{_tail(self.log_path)}"


def _wait_ready(proc: BackendProcess, timeout: float, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.running:
            raise BackendUnavailableError(f"{what}: {proc.exit_message()}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise BackendUnavailableError(f"{what}: not ready within {timeout:g}s; log tail:\n{_tail(proc.log_path)}")
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------------------------
# OTLP JSON helpers (Jaeger v3 and the file exporter write the same OTLP JSON shape)


def _get(d: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    return d[camel] if camel in d else d.get(snake, default)


def otlp_spans(traces_data: dict[str, Any]) -> list[dict[str, Any]]:
    """All spans of an OTLP JSON ``TracesData`` (camelCase or snake_case keys)."""
    spans: list[dict[str, Any]] = []
    for rs in _get(traces_data, "resourceSpans", "resource_spans", []) or []:
        for ss in _get(rs, "scopeSpans", "scope_spans", []) or []:
            spans.extend(ss.get("spans", []) or [])
    return spans


def _hex_id(value: str) -> str:
    """OTLP/JSON writes ids in hex, the protobuf JSON printer in base64 (which ends in ``=``)."""
    return base64.b64decode(value).hex() if value.endswith("=") else value.lower().rjust(32, "0")


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _decode_json_stream(body: bytes) -> list[Any]:
    """One JSON document, or several concatenated / newline-delimited ones."""
    text = body.decode("utf-8", errors="replace").strip()
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while pos < len(text):
        doc, end = decoder.raw_decode(text, pos)
        docs.append(doc)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


def _merge_v3(docs: list[Any]) -> dict[str, Any]:
    """Jaeger's v3 GetTrace is a stream of ``{"result": TracesData}``; merge the chunks."""
    if len(docs) == 1 and isinstance(docs[0], dict):
        return docs[0]
    merged: list[Any] = []
    key = "resourceSpans"
    for doc in docs:
        result = doc.get("result", {}) if isinstance(doc, dict) else {}
        if "resource_spans" in result:
            key = "resource_spans"
        merged.extend(_get(result, "resourceSpans", "resource_spans", []) or [])
    return {"result": {key: merged}}


# --------------------------------------------------------------------------------------------
# the pipeline


class JaegerReader:
    """Reading traces back from Jaeger's query API at ``self.jaeger_query_url``."""

    jaeger_query_url: str  # "http://127.0.0.1:P" (query API: /api/v3/traces/..., /api/traces/...)

    def fetch_jaeger_v3(self, trace_id_hex: str, timeout: float = 20.0, min_spans: int = 1) -> dict[str, Any]:
        """``GET /api/v3/traces/{id}``, polled until it holds at least ``min_spans`` spans.

        Returns the body (chunks merged): ``{"result": {"resourceSpans": [...]}}``.
        """
        url = f"{self.jaeger_query_url}/api/v3/traces/{trace_id_hex.lower()}"

        def probe() -> tuple[bool, Any, str]:
            status, body = _http_get(url)
            if status != 200:
                return False, None, f"HTTP {status}: {body[:500]!r}"
            try:
                doc = _merge_v3(_decode_json_stream(body))
            except ValueError as exc:
                return False, None, f"HTTP 200, not JSON ({exc}): {body[:500]!r}"
            n = len(otlp_spans(doc.get("result", {})))
            return n >= min_spans, doc, f"HTTP 200 with {n} span(s)"

        return _poll(f"trace {trace_id_hex} in Jaeger /api/v3", timeout, probe)  # type: ignore[no-any-return]

    def find_traces_v3(self, service: str, min_traces: int = 1, timeout: float = 20.0) -> list[str]:
        """Trace ids of ``service`` from the last hour, found as a user finds them: a search
        (``GET /api/v3/traces?query.service_name=...``), polled until there are ``min_traces``."""
        now = time.time()
        query = urllib.parse.urlencode(
            {
                "query.service_name": service,
                "query.start_time_min": _rfc3339(now - 3600),
                "query.start_time_max": _rfc3339(now + 3600),
                "query.num_traces": max(min_traces, 20),
            }
        )
        url = f"{self.jaeger_query_url}/api/v3/traces?{query}"

        def probe() -> tuple[bool, Any, str]:
            status, body = _http_get(url)
            if status != 200:
                return False, None, f"HTTP {status}: {body[:500]!r}"
            spans = otlp_spans(_merge_v3(_decode_json_stream(body)).get("result", {}))
            found = sorted({_hex_id(_get(span, "traceId", "trace_id")) for span in spans})
            return len(found) >= min_traces, found, f"HTTP 200 with {len(found)} trace(s)"

        return _poll(f"{min_traces} trace(s) of {service} in Jaeger /api/v3", timeout, probe)  # type: ignore[no-any-return]

    def fetch_jaeger_v3_now(self, trace_id_hex: str) -> dict[str, Any] | None:
        """``GET /api/v3/traces/{id}`` once: the body, or None when Jaeger does not have the trace."""
        status, body = _http_get(f"{self.jaeger_query_url}/api/v3/traces/{trace_id_hex.lower()}", timeout=10.0)
        if status == 404:
            return None
        assert status == 200, f"Jaeger answered HTTP {status} for {trace_id_hex}: {body[:500]!r}"
        return _merge_v3(_decode_json_stream(body))

    def fetch_jaeger_legacy(self, trace_id_hex: str, timeout: float = 20.0, min_spans: int = 1) -> dict[str, Any]:
        """``GET /api/traces/{id}`` (the UI's API), polled until ``data[0].spans`` has ``min_spans``."""
        url = f"{self.jaeger_query_url}/api/traces/{trace_id_hex.lower()}"

        def probe() -> tuple[bool, Any, str]:
            status, body = _http_get(url)
            if status != 200:
                return False, None, f"HTTP {status}: {body[:500]!r}"
            try:
                doc = json.loads(body)
            except ValueError as exc:
                return False, None, f"HTTP 200, not JSON ({exc}): {body[:500]!r}"
            data = doc.get("data") or []
            n = sum(len(t.get("spans") or []) for t in data)
            return n >= min_spans, doc, f"HTTP 200 with {n} span(s)"

        return _poll(f"trace {trace_id_hex} in Jaeger /api/traces", timeout, probe)  # type: ignore[no-any-return]

    def jaeger_ready(self) -> bool:
        return _http_get(f"{self.jaeger_query_url}/api/services", timeout=1.0)[0] == 200


@dataclass(frozen=True)
class Pipeline(JaegerReader):
    """A running collector -> Jaeger pipeline on 127.0.0.1 (see the module docstring)."""

    otlp_grpc_endpoint: str  # "http://127.0.0.1:P" (the collector's OTLP/gRPC receiver)
    otlp_http_endpoint: str  # "http://127.0.0.1:P" base; traces go to f"{...}/v1/traces"
    jaeger_query_url: str  # "http://127.0.0.1:P" (query API: /api/v3/traces/..., /api/traces/...)
    jaeger_otlp_grpc_endpoint: str  # "http://127.0.0.1:P" (Jaeger's own OTLP/gRPC receiver)
    jaeger_otlp_http_endpoint: str  # "http://127.0.0.1:P" base
    collector_health_url: str  # "http://127.0.0.1:P/" (health_check extension)
    collector_metrics_url: str  # "http://127.0.0.1:P/metrics" (collector's own metrics)
    file_path: Path  # the file exporter's output (OTLP JSON lines)
    collector_log: Path
    jaeger_log: Path
    binaries: BackendBinaries
    collector_config: Path
    jaeger_config: Path
    _collector: BackendProcess = field(repr=False, compare=False)
    _jaeger: BackendProcess = field(repr=False, compare=False)

    # -- reading back --------------------------------------------------------------------

    def file_output_paths(self) -> list[Path]:
        """The file exporter's output and its rotated backups, oldest first."""
        stem, suffix = self.file_path.stem, self.file_path.suffix
        backups = sorted(p for p in self.file_path.parent.glob(f"{stem}-*{suffix}") if p != self.file_path)
        return [*backups, self.file_path]

    def read_file_lines(self, trace_id_hex: str, timeout: float = 20.0) -> str:
        """Poll the file output until a line holds ``trace_id_hex``; return those lines ("\\n"-joined).

        Each line is one OTLP JSON ``TracesData`` (``json.loads`` it).
        """
        needle = trace_id_hex.lower()

        def probe() -> tuple[bool, Any, str]:
            found: list[str] = []
            total = 0
            for path in self.file_output_paths():
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    continue
                lines = text.splitlines()
                total += len(lines)
                found.extend(line for line in lines if needle in line.lower())
            return bool(found), "\n".join(found), f"{total} line(s), none with {needle}"

        return _poll(f"trace {trace_id_hex} in {self.file_path}", timeout, probe)  # type: ignore[no-any-return]

    # -- lifecycle (reliability tests) ---------------------------------------------------

    @property
    def collector_running(self) -> bool:
        return self._collector.running

    @property
    def collector_pid(self) -> int | None:
        return self._collector.pid

    def collector_healthy(self) -> bool:
        return _http_get(self.collector_health_url, timeout=1.0)[0] == 200

    def stop_collector(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the collector (SIGTERM: it flushes its queues; SIGKILL after ``timeout``)."""
        return self._collector.stop(timeout)

    def start_collector(self, timeout: float = START_TIMEOUT) -> None:
        """Start the collector again on the same ports; wait (bounded) until it is healthy."""
        self._collector.start()
        _wait_ready(self._collector, timeout, self.collector_healthy, "collector")

    def restart_collector(self, timeout: float = START_TIMEOUT) -> None:
        self.stop_collector()
        self.start_collector(timeout)

    def logs(self) -> dict[str, str]:
        """Tails of both logs, for messages."""
        return {"collector": _tail(self.collector_log), "jaeger": _tail(self.jaeger_log)}

    def shutdown(self) -> None:
        """Stop both processes (collector first, so it can flush to Jaeger). Always safe to call."""
        try:
            self._collector.stop()
        finally:
            self._jaeger.stop()


def _base_env() -> dict[str, str]:
    """This process's environment without any of the configs' own variables."""
    ours = ("KILN_OTEL_JAEGER_", "KILN_OTEL_COLLECTOR_", "KILN_OTEL_GATEWAY_", "KILN_OTEL_SAMPLER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def _jaeger_process(
    binaries: BackendBinaries, workdir: Path, config: Path = JAEGER_CONFIG
) -> tuple[BackendProcess, int, int, int]:
    """Jaeger on free ports: (process, OTLP/gRPC port, OTLP/HTTP port, query port)."""
    grpc, http, query, query_grpc, health, metrics = free_ports(6)
    env = {
        **_base_env(),
        "JAEGER_LISTEN_HOST": HOST,
        "KILN_OTEL_JAEGER_OTLP_GRPC_ENDPOINT": f"{HOST}:{grpc}",
        "KILN_OTEL_JAEGER_OTLP_HTTP_ENDPOINT": f"{HOST}:{http}",
        "KILN_OTEL_JAEGER_QUERY_HTTP_ENDPOINT": f"{HOST}:{query}",
        "KILN_OTEL_JAEGER_QUERY_GRPC_ENDPOINT": f"{HOST}:{query_grpc}",
        "KILN_OTEL_JAEGER_HEALTH_ENDPOINT": f"{HOST}:{health}",
        "KILN_OTEL_JAEGER_METRICS_HOST": HOST,
        "KILN_OTEL_JAEGER_METRICS_PORT": str(metrics),
    }
    argv = [str(binaries.jaeger), "--config", str(config)]
    return BackendProcess("jaeger", argv, env, workdir / "jaeger.log"), grpc, http, query


def _collector_process(
    name: str, binaries: BackendBinaries, configs: list[Path], env: dict[str, str], workdir: Path
) -> BackendProcess:
    """The collector binary with ``configs`` (merged in order, as ``--config`` does), logging to ``<name>.log``."""
    argv = [str(binaries.collector), *(arg for path in configs for arg in ("--config", str(path)))]
    return BackendProcess(name, argv, env, workdir / f"{name}.log")


def _start_jaeger(jaeger: BackendProcess, query_url: str, grpc: int, timeout: float) -> None:
    def ready() -> bool:
        return _http_get(f"{query_url}/api/services", timeout=1.0)[0] == 200 and _port_open(HOST, grpc)

    jaeger.start()
    _wait_ready(jaeger, timeout, ready, "jaeger")


@dataclass(frozen=True)
class CollectorPorts:
    """Where one collector listens: OTLP/gRPC, OTLP/HTTP, health_check, its own metrics."""

    grpc: int
    http: int
    health: int
    metrics: int

    @classmethod
    def free(cls) -> CollectorPorts:
        return cls(*free_ports(4))

    def collector_env(self) -> dict[str, str]:
        """The KILN_OTEL_COLLECTOR_* variables of otelcol.yaml (the single collector, a sampler)."""
        return {
            "KILN_OTEL_COLLECTOR_GRPC_ENDPOINT": f"{HOST}:{self.grpc}",
            "KILN_OTEL_COLLECTOR_HTTP_ENDPOINT": f"{HOST}:{self.http}",
            "KILN_OTEL_COLLECTOR_HEALTH_ENDPOINT": f"{HOST}:{self.health}",
            "KILN_OTEL_COLLECTOR_METRICS_HOST": HOST,
            "KILN_OTEL_COLLECTOR_METRICS_PORT": str(self.metrics),
        }

    def healthy(self) -> bool:
        return (
            _http_get(f"http://{HOST}:{self.health}/", timeout=1.0)[0] == 200
            and _port_open(HOST, self.grpc)
            and _port_open(HOST, self.http)
        )


def start_pipeline(binaries: BackendBinaries, workdir: Path, timeout: float = START_TIMEOUT) -> Pipeline:
    """Start Jaeger, then the collector, on free 127.0.0.1 ports; wait until both are ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    jaeger, jae_grpc, jae_http, jae_query = _jaeger_process(binaries, workdir)
    ports = CollectorPorts.free()
    file_path = workdir / "traces.jsonl"
    collector_env = {
        **_base_env(),
        **ports.collector_env(),
        "KILN_OTEL_COLLECTOR_FILE_PATH": str(file_path),
        "KILN_OTEL_JAEGER_OTLP_ENDPOINT": f"{HOST}:{jae_grpc}",
    }
    collector = _collector_process("collector", binaries, [COLLECTOR_CONFIG], collector_env, workdir)
    pipeline = Pipeline(
        otlp_grpc_endpoint=f"http://{HOST}:{ports.grpc}",
        otlp_http_endpoint=f"http://{HOST}:{ports.http}",
        jaeger_query_url=f"http://{HOST}:{jae_query}",
        jaeger_otlp_grpc_endpoint=f"http://{HOST}:{jae_grpc}",
        jaeger_otlp_http_endpoint=f"http://{HOST}:{jae_http}",
        collector_health_url=f"http://{HOST}:{ports.health}/",
        collector_metrics_url=f"http://{HOST}:{ports.metrics}/metrics",
        file_path=file_path,
        collector_log=collector.log_path,
        jaeger_log=jaeger.log_path,
        binaries=binaries,
        collector_config=COLLECTOR_CONFIG,
        jaeger_config=JAEGER_CONFIG,
        _collector=collector,
        _jaeger=jaeger,
    )
    try:
        _start_jaeger(jaeger, pipeline.jaeger_query_url, jae_grpc, timeout)
        collector.start()
        _wait_ready(collector, timeout, ports.healthy, "collector")
    except BaseException:
        pipeline.shutdown()
        raise
    return pipeline


# --------------------------------------------------------------------------------------------
# the gateway profile: load balancer -> N tail-sampling collectors -> Jaeger + one archive each


@dataclass(frozen=True)
class Gateway(JaegerReader):
    """A running gateway tier on 127.0.0.1 (collector-config/gateway/, docs/pipeline.md)."""

    otlp_grpc_endpoint: str  # "http://127.0.0.1:P", the load balancer's OTLP/gRPC receiver
    otlp_http_endpoint: str  # "http://127.0.0.1:P" base of its OTLP/HTTP receiver
    jaeger_query_url: str
    archives: tuple[Path, ...]  # sampler i's file output (OTLP JSON lines), in sampler order
    loadbalancer: BackendProcess = field(repr=False, compare=False)
    samplers: tuple[BackendProcess, ...] = field(repr=False, compare=False)
    jaeger: BackendProcess = field(repr=False, compare=False)
    ports: dict[str, CollectorPorts] = field(repr=False, compare=False)

    def collectors(self) -> dict[str, BackendProcess]:
        return {"loadbalancer": self.loadbalancer, **{p.name: p for p in self.samplers}}

    def metrics(self, name: str) -> str:
        """A collector's own Prometheus metrics (text); "" when it does not answer."""
        status, body = _http_get(f"http://{HOST}:{self.ports[name].metrics}/metrics", timeout=5.0)
        return body.decode(errors="replace") if status == 200 else ""

    def stop_sampler(self, index: int, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM sampler ``index`` (it decides what it holds and flushes), SIGKILL after ``timeout``."""
        return self.samplers[index].stop(timeout)

    def kill_sampler(self, index: int) -> None:
        self.samplers[index].kill()

    def start_sampler(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Start sampler ``index`` again on the same ports; wait (bounded) until it is healthy."""
        sampler = self.samplers[index]
        sampler.start()
        _wait_ready(sampler, timeout, self.ports[sampler.name].healthy, sampler.name)

    def logs(self) -> dict[str, str]:
        return {name: _tail(p.log_path) for name, p in {**self.collectors(), "jaeger": self.jaeger}.items()}

    def shutdown(self) -> None:
        """Stop everything, each tier after the one that feeds it. Always safe to call."""
        try:
            self.loadbalancer.stop()
            for sampler in self.samplers:
                sampler.stop()
        finally:
            self.jaeger.stop()


def start_gateway(
    binaries: BackendBinaries,
    workdir: Path,
    samplers: int = 2,
    sampler_env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Gateway:
    """Start Jaeger, ``samplers`` tail-sampling collectors, then the load balancer; wait until ready.

    ``sampler_env`` sets the samplers' KILN_OTEL_SAMPLER_* knobs (gateway/sampler.yaml).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    jaeger, jae_grpc, _, jae_query = _jaeger_process(binaries, workdir)
    ports = {"loadbalancer": CollectorPorts.free()}
    sampler_procs, archives = [], []
    for i in range(1, samplers + 1):
        name = f"sampler-{i}"
        ports[name] = CollectorPorts.free()
        archives.append(workdir / f"archive-{i}.jsonl")
        env = {
            **_base_env(),
            **ports[name].collector_env(),
            "KILN_OTEL_COLLECTOR_FILE_PATH": str(archives[-1]),
            "KILN_OTEL_JAEGER_OTLP_ENDPOINT": f"{HOST}:{jae_grpc}",
            **(sampler_env or {}),
        }
        sampler_procs.append(_collector_process(name, binaries, [COLLECTOR_CONFIG, SAMPLER_CONFIG], env, workdir))
    lb = ports["loadbalancer"]
    lb_env = {
        **_base_env(),
        "KILN_OTEL_GATEWAY_GRPC_ENDPOINT": f"{HOST}:{lb.grpc}",
        "KILN_OTEL_GATEWAY_HTTP_ENDPOINT": f"{HOST}:{lb.http}",
        "KILN_OTEL_GATEWAY_HEALTH_ENDPOINT": f"{HOST}:{lb.health}",
        "KILN_OTEL_GATEWAY_METRICS_HOST": HOST,
        "KILN_OTEL_GATEWAY_METRICS_PORT": str(lb.metrics),
        "KILN_OTEL_GATEWAY_SAMPLERS": "[" + ", ".join(f"{HOST}:{ports[p.name].grpc}" for p in sampler_procs) + "]",
    }
    loadbalancer = _collector_process("loadbalancer", binaries, [LOADBALANCER_CONFIG], lb_env, workdir)
    gateway = Gateway(
        otlp_grpc_endpoint=f"http://{HOST}:{lb.grpc}",
        otlp_http_endpoint=f"http://{HOST}:{lb.http}",
        jaeger_query_url=f"http://{HOST}:{jae_query}",
        archives=tuple(archives),
        loadbalancer=loadbalancer,
        samplers=tuple(sampler_procs),
        jaeger=jaeger,
        ports=ports,
    )
    try:
        _start_jaeger(jaeger, gateway.jaeger_query_url, jae_grpc, timeout)
        for index in range(samplers):
            gateway.start_sampler(index, timeout)
        loadbalancer.start()
        _wait_ready(loadbalancer, timeout, lb.healthy, "loadbalancer")
    except BaseException:
        gateway.shutdown()
        raise
    return gateway


# --------------------------------------------------------------------------------------------
# pytest wiring

_ACTIVE: list[Pipeline] = []


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"real backends unavailable (CI=true): {reason}", pytrace=False)
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    short = " | ".join([*lines[:1], *lines[1:][-4:]])
    pytest.skip(f"real backends unavailable: {short}")


@pytest.fixture(scope="session")
def backend_binaries(tmp_path_factory: pytest.TempPathFactory) -> BackendBinaries:
    """The collector and Jaeger binaries (``scripts/backends.sh build``, bounded)."""
    log = tmp_path_factory.mktemp("backends-build") / "build.log"
    try:
        return build_backends(log)
    except BackendUnavailableError as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def pipeline(backend_binaries: BackendBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Collector -> Jaeger on free 127.0.0.1 ports, file output in a tmp dir; torn down at the end."""
    running: Pipeline | None = None
    for attempt in range(1, 4):
        workdir = tmp_path_factory.mktemp("otel-pipeline")
        try:
            running = start_pipeline(backend_binaries, workdir)
            break
        except BackendUnavailableError as exc:
            # free_ports() releases the ports before the backends bind them: another process
            # may take one in between. Try again with fresh ports; anything else is final.
            if attempt < 3 and "address already in use" in str(exc).lower():
                continue
            _unavailable(str(exc))
    assert running is not None
    _ACTIVE.append(running)
    try:
        yield running
    finally:
        _ACTIVE.remove(running)
        running.shutdown()


_GATEWAYS: list[Gateway] = []


@pytest.fixture
def gateway_factory(
    backend_binaries: BackendBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Gateway]]:
    """``start(samplers=2, sampler_env=None)``: a gateway tier on free ports, stopped at the end."""
    started: list[Gateway] = []

    def start(samplers: int = 2, sampler_env: dict[str, str] | None = None) -> Gateway:
        for attempt in range(1, 4):
            workdir = tmp_path_factory.mktemp("otel-gateway")
            try:
                gateway = start_gateway(backend_binaries, workdir, samplers, sampler_env)
            except BackendUnavailableError as exc:
                if attempt < 3 and "address already in use" in str(exc).lower():
                    continue  # a port was taken between free_ports() and the bind
                _unavailable(str(exc))
            started.append(gateway)
            _GATEWAYS.append(gateway)
            return gateway
        raise AssertionError("unreachable")

    try:
        yield start
    finally:
        for gateway in started:
            _GATEWAYS.remove(gateway)
            gateway.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Anything that needs the real backends carries the ``backends`` marker (``-m "not backends"``)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        needs = {"pipeline", "backend_binaries", "gateway_factory"}
        if needs & set(names) and item.get_closest_marker("backends") is None:
            item.add_marker(pytest.mark.backends)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    names = getattr(item, "fixturenames", ())
    if report.failed and "pipeline" in names and _ACTIVE:
        running = _ACTIVE[-1]
        report.sections.append(("collector log (tail)", _tail(running.collector_log)))
        report.sections.append(("jaeger log (tail)", _tail(running.jaeger_log)))
    if report.failed and "gateway_factory" in names:
        for gateway in _GATEWAYS:
            for name, tail in gateway.logs().items():
                report.sections.append((f"gateway {name} log (tail)", tail))
    return report
