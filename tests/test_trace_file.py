"""The trace file survives anything: a line is a line, a torn line costs only itself, memory follows the trace.

- The writer escapes every character ``str.splitlines`` splits on, so any line splitter sees one
  request per line; the reader splits on ``\\n`` only, so files from other writers read too.
- A writer SIGKILLed in the middle of a line (a real child process, killed while its line is half on
  disk) leaves a torn last line: it is skipped and reported, every run on a complete line rebuilt.
- 200 MB of other traces: reading one trace id costs memory for that trace, not for the file
  (peak RSS of the real command, measured in the child).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from kiln_otel import reconstruct_trace, traced_run
from kiln_otel.cli import EXIT_OK, EXIT_TRACE_NOT_FOUND
from kiln_otel.exporters import OtlpJsonFileExporter, json_line
from kiln_otel.sources import load_spans
from tests.measured import MIB, run_cli

SPLITLINES_BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_the_list_of_breaks_is_what_splitlines_splits_on() -> None:
    """Guards the list below against a Python that splits on more."""
    splitting = {chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1}
    assert splitting == {b for b in SPLITLINES_BREAKS if len(b) == 1}


def run_to_file(path: Path, messages: list[Any], **options: Any) -> str:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    with traced_run("file", tracer_provider=provider, **options) as run:
        run.messages.extend(messages)
    provider.shutdown()
    assert run.trace_id is not None
    return run.trace_id


def test_every_line_break_character_is_escaped_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    messages = [{"role": "user", "content": f"before{char}after", "key{char}": char} for char in SPLITLINES_BREAKS]
    trace_id = run_to_file(path, messages)
    run_to_file(path, [{"role": "user", "content": "a second run, on its own line"}])
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) == text.count("\n") == 2
    assert all(json.loads(line) for line in text.splitlines())
    assert reconstruct_trace(path, trace_id=trace_id) == messages


def test_json_line_escapes_only_inside_strings_and_stays_the_same_json() -> None:
    value = {"a\u2028": ["\x85", "\u2029", "plain ü ✓"], "n": 1}
    line = json_line(value)
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert len(line.splitlines()) == 1
    assert json.loads(line) == value
    assert "ü ✓" in line  # still compact UTF-8, not ASCII-escaped throughout


def test_a_file_from_a_writer_that_left_them_raw_reads_too(tmp_path: Path) -> None:
    """Files written before the fix, or by other tools: split on \\n only, they still read."""
    path = tmp_path / "old.jsonl"
    trace_id = run_to_file(path, [{"role": "user", "content": "x\u2028y\u2029z\x85"}])
    raw = path.read_text(encoding="utf-8").replace("\\u2028", "\u2028").replace("\\u2029", "\u2029")
    raw = raw.replace("\\u0085", "\x85")
    path.write_text(raw, encoding="utf-8")
    assert len(raw.splitlines()) > 1  # what made every trace unreadable before
    assert reconstruct_trace(path, trace_id=trace_id) == [{"role": "user", "content": "x\u2028y\u2029z\x85"}]
    assert reconstruct_trace(raw, trace_id=trace_id) == [{"role": "user", "content": "x\u2028y\u2029z\x85"}]


# --- A writer killed mid-line ----------------------------------------------------------------------

_WRITER = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from kiln_otel import traced_run
from kiln_otel.exporters import OtlpJsonFileExporter

provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(sys.argv[1])))
for n in range(10_000):  # until killed: one run, one ~20 MB line, at a time
    with traced_run(f"run {n}", tracer_provider=provider, max_message_bytes=8 << 20, max_span_bytes=64 << 20) as run:
        run.messages.extend({"role": "user", "content": f"run {n} message {m} " + "x" * 5_000_000} for m in range(4))
"""


def _kill_mid_line(path: Path, attempts: int = 10) -> bytes:
    """Start the writer, and SIGKILL it while a line after the first is partly on disk."""
    for _ in range(attempts):
        path.unlink(missing_ok=True)
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)])
        try:
            first_line = _wait_for_first_line(path, writer)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                size = path.stat().st_size
                if size > first_line and size % first_line:
                    writer.kill()
                    break
        finally:
            writer.kill()
            writer.wait(timeout=30)
        data = path.read_bytes()
        if data.count(b"\n") >= 1 and not data.endswith(b"\n"):
            return data
    pytest.fail(f"the writer was never caught mid-line in {attempts} attempts")


def _wait_for_first_line(path: Path, writer: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert writer.poll() is None, "the writer died on its own"
        if path.exists():
            with path.open("rb") as file:
                line = file.readline()
            if line.endswith(b"\n"):
                return len(line)
        time.sleep(0.01)
    pytest.fail("the writer wrote no line in 120 s")


def test_a_writer_killed_mid_line_costs_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    data = _kill_mid_line(path)
    complete = data.count(b"\n")
    loaded = load_spans(path)
    assert len(loaded) == complete  # one run span per complete line
    [torn] = loaded.skipped
    assert torn.number == complete + 1
    assert "not JSON" in torn.reason
    for record in loaded:
        trace = reconstruct_trace(loaded, trace_id=record.trace_id)
        assert trace.complete, trace.issues
        name = record.name.removeprefix("invoke_agent ")
        assert [m["content"][: len(f"{name} message 0 ")] for m in trace] == [f"{name} message {m} " for m in range(4)]
    [torn_trace] = torn.trace_ids  # the id is near the start of the line, before the tear
    result = run_cli(["reconstruct", "--file", str(path), "--trace-id", torn_trace], cwd=tmp_path)
    assert result.returncode == EXIT_TRACE_NOT_FOUND
    assert f"line {torn.number}, which mentions it, could not be read" in result.stderr
    intact = run_cli(["reconstruct", "--file", str(path), "--trace-id", loaded[0].trace_id], cwd=tmp_path)
    assert intact.returncode == EXIT_OK, intact.stderr
    assert "incomplete" not in intact.stderr  # the torn line never mentions it: skipped unparsed, rightly


# --- 200 MB, one trace ------------------------------------------------------------------------------

FILE_BYTES = 200 * MIB
MEMORY_BOUND = 48 * MIB
"""What reading one trace from the big file may cost over reading it from a file of its own."""


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, list[Any]]:
    """200 MB of other traces with the wanted trace's lines spread through it, and that trace alone."""
    directory = tmp_path_factory.mktemp("big")
    wanted = [{"role": "user", "content": f"wanted {n} " + "w" * 3000} for n in range(600)]
    alone = directory / "alone.jsonl"
    trace_id = run_to_file(alone, wanted)
    other = directory / "other.jsonl"
    other_id = run_to_file(other, [{"role": "assistant", "content": f"other {n} " + "o" * 3000} for n in range(110)])
    [template] = _lines(other)
    mine = _lines(alone)
    assert len(mine) > 3  # the run span and its segments: several lines to find
    fillers = FILE_BYTES // len(template.encode())
    positions = {fillers * (n + 1) // (len(mine) + 1): line for n, line in enumerate(mine)}
    big = directory / "big.jsonl"
    with big.open("w", encoding="utf-8") as file:
        for n in range(fillers):
            file.write(template.replace(other_id, secrets.token_hex(16)))
            if n in positions:
                file.write(positions[n])
    return big, alone, trace_id, wanted


def test_reading_one_trace_from_200_mb_costs_that_trace_not_the_file(
    big_file: tuple[Path, Path, str, list[Any]], tmp_path: Path
) -> None:
    big, alone, trace_id, wanted = big_file
    assert big.stat().st_size >= FILE_BYTES
    args = ["reconstruct", "--trace-id", trace_id, "--json", "--file"]
    baseline = run_cli([*args, str(alone)], cwd=tmp_path, memory_bytes=2048 * MIB)
    measured = run_cli([*args, str(big)], cwd=tmp_path, memory_bytes=2048 * MIB)
    assert baseline.returncode == measured.returncode == EXIT_OK, measured.stderr
    assert json.loads(measured.stdout)["trace"] == json.loads(baseline.stdout)["trace"] == wanted
    print(
        f"\n200 MB file, one trace: peak RSS {measured.peak_rss / MIB:.0f} MiB in {measured.seconds:.1f} s; "
        f"the same trace from its own {alone.stat().st_size / MIB:.1f} MB file: {baseline.peak_rss / MIB:.0f} MiB "
        f"in {baseline.seconds:.1f} s"
    )
    assert baseline.peak_rss > 0
    assert measured.peak_rss - baseline.peak_rss < MEMORY_BOUND
    assert measured.seconds < 60
