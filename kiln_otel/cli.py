"""The ``kiln-otel`` command: a demo that needs nothing installed, and failed runs read back from telemetry.

Scripts drive this command, so every outcome has its own exit code (`EXIT_CODES`, also in ``--help``)
and a one-line message on stderr; stdout carries only the result. Subcommands import what they need
when they run: ``kiln-otel --help`` must not wait seconds for litellm.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from kiln_otel.errors import (
    AmbiguousTraceError,
    MalformedTelemetryError,
    NotKilnTelemetryError,
    ReconstructionError,
    TraceNotFoundError,
)

if TYPE_CHECKING:
    from kiln_otel.demo import DemoResult
    from kiln_otel.payload import ErrorWithTrace
    from kiln_otel.reconstruct import ReconstructedTrace
    from kiln_otel.spans import LoadedSpans, SpanRecord

__all__ = [
    "DEFAULT_HTTP_TIMEOUT_SECONDS",
    "DEMO_FAILURES",
    "EXIT_BACKEND_UNREACHABLE",
    "EXIT_CODES",
    "EXIT_MALFORMED",
    "EXIT_NOT_KILN",
    "EXIT_OK",
    "EXIT_TRACE_NOT_FOUND",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "CliError",
    "main",
]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_TRACE_NOT_FOUND = 3
EXIT_BACKEND_UNREACHABLE = 4
EXIT_NOT_KILN = 5
EXIT_MALFORMED = 6

EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "ok",
    EXIT_UNEXPECTED: "the demo's reconstruction differed from its payload, or an unexpected error",
    EXIT_USAGE: "usage: bad arguments, a missing file, or several runs match (pass --trace-id)",
    EXIT_TRACE_NOT_FOUND: "no kiln-otel run with that trace id",
    EXIT_BACKEND_UNREACHABLE: "the tracing backend (Jaeger) could not be reached, answered an error, or did "
    "not answer within --timeout",
    EXIT_NOT_KILN: "the telemetry holds spans, but none from kiln-otel",
    EXIT_MALFORMED: "the input is not telemetry (or an ErrorWithTrace) that kiln-otel can read",
}

DEFAULT_HTTP_TIMEOUT_SECONDS = 10.0
DEMO_FAILURES = (
    "rate-limit", "timeout", "stream-cut", "stream-error", "context-window", "auth",
    "server-error", "unavailable", "malformed", "bad-tool-args", "none",
)  # fmt: skip
"""``demo --fail`` choices, the first the default. The same names as `kiln_otel.demo.FAILURES` (a test
checks): spelled out here because importing the demo module would slow every command down."""
_TRACE_ID = re.compile(r"^(?:0x)?[0-9a-fA-F]{1,32}$")
_PROG = "kiln-otel"


class CliError(Exception):
    """A failure the user can act on: its message is printed as one line, its code is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (the console script passes it to ``sys.exit``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as error:
        return _fail(error.code, str(error))
    except AmbiguousTraceError as error:
        return _fail(EXIT_USAGE, f"{error} (choose with --trace-id / --span-id)")
    except ReconstructionError as error:
        return _fail(_reconstruction_exit_code(error), str(error))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kiln-otel ... | head`: the reader left, nothing is wrong
        _silence_stdout()
        return EXIT_OK
    except Exception as error:  # a bug of ours: still one line and a documented code, never a traceback
        return _fail(EXIT_UNEXPECTED, f"unexpected error ({type(error).__name__}): {str(error)[:300]}")


def _fail(code: int, message: str) -> int:
    print(f"{_PROG}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _reconstruction_exit_code(error: ReconstructionError) -> int:
    codes: list[tuple[type[ReconstructionError], int]] = [
        (TraceNotFoundError, EXIT_TRACE_NOT_FOUND),
        (NotKilnTelemetryError, EXIT_NOT_KILN),
        (MalformedTelemetryError, EXIT_MALFORMED),
    ]
    return next((code for cls, code in codes if isinstance(error, cls)), EXIT_UNEXPECTED)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --- The parser ----------------------------------------------------------------------------------


def _epilog() -> str:
    rows = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    return f"exit codes:\n{rows}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="OpenTelemetry for LLM agent runs: see a failed run's whole trace, from telemetry alone.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_reconstruct(commands)
    _add_show(commands)
    return parser


def _subparser(commands: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=textwrap.fill(description, 100),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _add_output_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the transcript (auto: when stdout is a terminal and NO_COLOR is unset)",
    )
    parser.add_argument("--width", type=_positive_int, default=None, help="wrap the transcript at N columns")
    parser.add_argument(
        "--all",
        action="store_true",
        dest="all_messages",
        help="show every message of a long run (default: the first 2 and the last ones, with a count of the rest)",
    )


def _add_demo(commands: Any) -> None:
    parser = _subparser(
        commands,
        "demo",
        "run a tool-using agent that fails, then rebuild its trace from the exported spans",
        "Runs a trip-planning agent through litellm against a scripted model server on 127.0.0.1 (no "
        "network, no API key, no collector). Two tool rounds succeed, then the third model call fails "
        "(--fail). Prints the ErrorWithTrace as a transcript and as JSON, exports the spans (OTLP when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set, else OTLP JSON lines in a file) and checks that the file "
        "alone rebuilds the same payload.",
    )
    parser.add_argument(
        "--fail",
        choices=DEMO_FAILURES,
        default=DEMO_FAILURES[0],
        help=f"how the run fails; none: it succeeds (default {DEMO_FAILURES[0]})",
    )
    parser.add_argument(
        "--stream", action="store_true", help="stream the model calls (implied by stream-cut and stream-error)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="PATH",
        help="trace file (default: $KILN_OTEL_TRACES_FILE, else ./kiln-otel-traces.jsonl)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="each model call's timeout (default 1)",
    )
    _add_output_options(parser, "print only JSON: {payload, reconstructed_equal, trace_id, export, ...}")
    parser.set_defaults(handler=_demo)


def _add_reconstruct(commands: Any) -> None:
    parser = _subparser(
        commands,
        "reconstruct",
        "rebuild a run's ErrorWithTrace from Jaeger, an OTLP JSON file or stdin",
        "Rebuilds what the app got when a traced run failed, from exported telemetry alone. A run that "
        "did not fail is shown as its trace, with a note.",
    )
    parser.add_argument(
        "--jaeger",
        nargs=2,
        metavar=("URL", "TRACE_ID"),
        help="fetch the trace from Jaeger's query API (/api/v3/traces, else the legacy /api/traces)",
    )
    parser.add_argument("--file", type=Path, metavar="PATH", help="an OTLP JSON (Lines) or protobuf file")
    parser.add_argument("stdin", nargs="?", choices=["-"], help="read the telemetry from stdin")
    parser.add_argument("--trace-id", metavar="ID", help="which trace, when the file or stdin holds several")
    parser.add_argument("--span-id", metavar="ID", help="which run, when the trace holds several")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_HTTP_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"total time --jaeger may take, however slowly Jaeger answers (default {DEFAULT_HTTP_TIMEOUT_SECONDS:g})",
    )
    _add_output_options(parser, "print the ErrorWithTrace as JSON instead of a transcript")
    parser.set_defaults(handler=_reconstruct, parser=parser)


def _add_show(commands: Any) -> None:
    parser = _subparser(
        commands,
        "show",
        "print a saved ErrorWithTrace JSON file as a transcript",
        "Reads an ErrorWithTrace (as an app served it, or the demo's --json output) and prints it.",
    )
    parser.add_argument("file", metavar="FILE", help="the JSON file, or - for stdin")
    _add_output_options(parser, "print the validated ErrorWithTrace as JSON")
    parser.set_defaults(handler=_show)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


# --- Output --------------------------------------------------------------------------------------


def _use_color(args: argparse.Namespace) -> bool:
    if args.color != "auto":
        return bool(args.color == "always")
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _width(args: argparse.Namespace) -> int:
    if args.width:
        return int(args.width)
    return min(100, shutil.get_terminal_size((100, 24)).columns) if sys.stdout.isatty() else 100


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _shown(args: argparse.Namespace) -> int | None:
    """How many messages a transcript shows: None (all) with --all."""
    from kiln_otel.transcript import DEFAULT_SHOWN

    return None if args.all_messages else DEFAULT_SHOWN


def _print_payload(payload: ErrorWithTrace, args: argparse.Namespace) -> None:
    from kiln_otel.transcript import render_transcript

    if args.json:
        _print_json(payload.model_dump(mode="json"))
    else:
        sys.stdout.write(render_transcript(payload, width=_width(args), color=_use_color(args), shown=_shown(args)))


def _note(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


# --- demo ----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from kiln_otel.demo import run_demo

    progress = (lambda line: None) if args.json else (lambda line: print(f"  · {line}", file=sys.stderr))
    timeout = {} if args.timeout is None else {"timeout": args.timeout}
    try:
        result = run_demo(fail=args.fail, stream=args.stream, output=args.output, progress=progress, **timeout)
    except ImportError as error:
        raise CliError(EXIT_UNEXPECTED, str(error)) from error
    if args.json:
        _print_json(result.as_json())
    else:
        _print_demo(result, args)
    return EXIT_UNEXPECTED if result.reconstructed_equal is False else EXIT_OK


def _print_demo(result: DemoResult, args: argparse.Namespace) -> None:
    from kiln_otel.transcript import render_trace

    if result.payload is not None:  # the JSON first: the transcript's last lines are what led to the failure
        print("ErrorWithTrace JSON, as the app got it:")
        _print_json(result.payload.model_dump(mode="json"))
        print("\nThe same run as a transcript:")
        _print_payload(result.payload, args)
    else:
        sys.stdout.write(
            render_trace(
                result.messages,
                trace_id=result.trace_id,
                width=_width(args),
                color=_use_color(args),
                shown=_shown(args),
            )
        )
        print(f"\nFinal answer: {result.answer}")
    print(f"\nspans exported: {result.export}")
    if result.traces_file is None:
        print(f"read them back with: {_PROG} reconstruct --jaeger <URL> {result.trace_id}")
    elif result.reconstructed_equal:
        print(f"rebuilt from {result.traces_file}: identical")
    else:
        print(f"rebuilt from {result.traces_file}: DIFFERENT from what the app got")


# --- reconstruct ---------------------------------------------------------------------------------


def _reconstruct(args: argparse.Namespace) -> int:
    sources = [name for name in ("jaeger", "file", "stdin") if getattr(args, name)]
    if len(sources) != 1:
        _usage(args.parser, "give exactly one source: --jaeger URL TRACE_ID, --file PATH, or - for stdin")
    trace_id = _trace_id(args.jaeger[1]) if args.jaeger else _optional_trace_id(args.trace_id)
    spans = _load(args, trace_id)
    _notes(f"skipped line {line.number}: {line.reason}" for line in spans.skipped)
    trace = _reconstruct_trace(spans, trace_id, args.span_id)
    _notes(f"the trace is incomplete: {issue}" for issue in trace.issues)
    if trace.run.status_code == "ERROR":
        from kiln_otel.reconstruct import reconstruct_error

        _print_payload(reconstruct_error(spans, trace.trace_id, span_id=trace.span_id), args)
    else:
        _print_unfailed(trace, args)
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.print_usage(sys.stderr)
    raise CliError(EXIT_USAGE, message)


def _trace_id(text: str) -> str:
    if not _TRACE_ID.match(text.strip()):
        raise CliError(EXIT_USAGE, f"{text!r} is not a trace id (up to 32 hex digits)")
    return text.strip().lower().removeprefix("0x").rjust(32, "0")


def _optional_trace_id(text: str | None) -> str | None:
    return None if text is None else _trace_id(text)


def _notes(notes: Iterable[str], shown: int = 20) -> None:
    """At most ``shown`` notes: hostile input can have a problem per line."""
    from kiln_otel.message_text import one_line

    count = 0
    for count, note in enumerate(notes, start=1):
        if count <= shown:
            _note(one_line(note))
    if count > shown:
        _note(f"... and {count - shown} more")


def _load(args: argparse.Namespace, trace_id: str | None) -> LoadedSpans:
    """With a trace id the file (or stdin) is streamed and only the lines that mention it are parsed."""
    from kiln_otel.sources import load_spans

    if args.jaeger:
        return load_spans(_fetch_jaeger(args.jaeger[0], trace_id or "", args.timeout), trace_id=trace_id)
    if args.file:
        return load_spans(_existing(args.file), trace_id=trace_id)
    return load_spans(sys.stdin.buffer, trace_id=trace_id)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CliError(EXIT_USAGE, f"no such file: {path}")
    return path


def _reconstruct_trace(spans: list[SpanRecord], trace_id: str | None, span_id: str | None) -> ReconstructedTrace:
    from kiln_otel.reconstruct import reconstruct_trace

    return reconstruct_trace(spans, trace_id=trace_id, span_id=span_id)


def _print_unfailed(trace: ReconstructedTrace, args: argparse.Namespace) -> None:
    from kiln_otel.transcript import render_trace

    status = trace.run.status_code
    if args.json:
        _print_json(
            {
                "failed": False,
                "status": status,
                "trace": list(trace),
                "trace_id": trace.trace_id,
                "span_id": trace.span_id,
                "trace_complete": trace.complete,
            }
        )
        return
    note = f"this run did not fail (status {status}): there is no error, its trace is shown as recorded"
    sys.stdout.write(
        render_trace(
            trace, trace_id=trace.trace_id, note=note, width=_width(args), color=_use_color(args), shown=_shown(args)
        )
    )


def _fetch_jaeger(base_url: str, trace_id: str, timeout: float) -> bytes:
    """Jaeger v2 serves OTLP JSON at /api/v3; older ones only the legacy /api/traces, so try both.

    ``timeout`` bounds the whole fetch, both paths together: a server that trickles its answer a
    byte at a time never times out a single read, so a per-read timeout would bound nothing.
    """
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CliError(EXIT_USAGE, f"--jaeger wants an http:// or https:// URL, got {base_url!r}")
    deadline = time.monotonic() + timeout
    urls = [f"{base}/api/v3/traces/{trace_id}", f"{base}/api/traces/{trace_id}"]
    last_status = 0
    for url in urls:
        try:
            return _http_get(url, deadline, timeout)
        except urllib.error.HTTPError as error:
            last_status = error.code
    if last_status == 404:
        raise TraceNotFoundError(f"Jaeger at {base} has no trace {trace_id}")
    raise CliError(EXIT_BACKEND_UNREACHABLE, f"Jaeger at {base} answered HTTP {last_status} for trace {trace_id}")


def _http_get(url: str, deadline: float, timeout: float) -> bytes:
    """GET ``url`` in a daemon thread and wait for it until ``deadline``: a total bound, whatever the server does."""
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=max(deadline - time.monotonic(), 0.001)) as response:
                outcome["body"] = response.read()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=fetch, name="kiln-otel-jaeger", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        raise CliError(EXIT_BACKEND_UNREACHABLE, f"{url} did not answer in full within {timeout:g} s (--timeout)")
    error = outcome.get("error")
    if isinstance(error, urllib.error.HTTPError):
        error.close()
        raise error
    if isinstance(error, (urllib.error.URLError, OSError, http.client.HTTPException)):
        reason = getattr(error, "reason", error)
        raise CliError(EXIT_BACKEND_UNREACHABLE, f"could not reach {url}: {reason}") from error
    if error is not None:
        raise error
    body: bytes = outcome["body"]
    return body


# --- show ----------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from kiln_otel.json_input import JSONInputError, loads
    from kiln_otel.payload import ErrorWithTrace

    name = "stdin" if args.file == "-" else args.file
    data = sys.stdin.buffer.read() if args.file == "-" else _existing(Path(args.file)).read_bytes()
    try:
        value = loads(data.removeprefix(b"\xef\xbb\xbf"))
    except JSONInputError as error:
        raise CliError(EXIT_MALFORMED, f"{name} is not JSON kiln-otel reads: {error}") from error
    if isinstance(value, dict) and isinstance(value.get("payload"), dict):
        value = value["payload"]  # the demo's --json output
    try:
        payload = ErrorWithTrace.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()[:5])
        raise CliError(EXIT_MALFORMED, f"{name} is not an ErrorWithTrace ({problems})") from error
    _print_payload(payload, args)
    return EXIT_OK
