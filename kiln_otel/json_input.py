"""JSON from outside the process, parsed with bounds: the only way kiln-otel reads JSON it did not write.

Python's ``json`` recurses once per nesting level and raises RecursionError (or, under a raised
recursion limit, overflows the C stack) on deep input, and it refuses integers over
``sys.get_int_max_str_digits()`` digits with a bare ValueError. Telemetry files, Jaeger answers and saved
payloads are input, so every failure here is one `JSONInputError` that says what was wrong, and the
nesting depth is checked before parsing, without recursion, in time linear in the input.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "JSONInputError", "loads", "nesting_depth"]

MAX_DEPTH = 512
"""Deeper than anything kiln-otel writes (OTLP/JSON is ~15 levels, pydantic refuses to write past ~255)."""

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_OPENER = ord("[")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_REDUCTION_PASSES = 16
_CHUNK = 1 << 20


class JSONInputError(ValueError):
    """Input that is not JSON kiln-otel will parse; the message is one line a person can act on."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises only `JSONInputError`, never recurses past ``max_depth`` levels, and
    reads bytes as UTF-8 only (``json`` would guess UTF-16 and UTF-32 too)."""
    few_brackets = data.count("[") + data.count("{") <= max_depth if isinstance(data, str) else False
    if not few_brackets:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        if nesting_depth(raw, max_depth) > max_depth:
            raise JSONInputError(f"JSON nested deeper than {max_depth} levels")
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as err:
        raise JSONInputError(f"invalid UTF-8: {err.reason} at byte {err.start}") from err
    except json.JSONDecodeError as err:
        raise JSONInputError(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except ValueError as err:  # an integer over sys.get_int_max_str_digits() digits
        raise JSONInputError(f"not JSON kiln-otel reads: {' '.join(str(err).split()[:8])}") from err
    except RecursionError as err:  # the caller was already deep in its own stack
        raise JSONInputError("JSON nested too deep for the remaining stack") from err


def nesting_depth(data: bytes, stop_above: int) -> int:
    """Above ``stop_above`` exactly when brackets nest deeper than that outside strings.

    The figure is the depth itself, except that counting stops just past ``stop_above``, and that
    input with no more brackets than ``stop_above`` is not scanned (its bracket count is returned).

    Escaped backslashes and quotes are dropped first (so ``\\"`` cannot end a string), then all but
    quotes and brackets, then strings, all at C speed; each pass that removes the innermost pairs
    (of either kind: a parser stops at the first mismatch anyway) takes exactly one level off, and
    only what is left is walked in Python. On invalid JSON the figure can be too high, never too
    low for the part a parser reads before it fails.
    """
    openers = data.count(b"[") + data.count(b"{")
    if openers <= stop_above:
        return openers
    # Dropping an adjacent pair of quotes leaves every other byte on the same side of a string.
    structure = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    structure = structure.replace(b'""', b"")
    parts, in_string = [], False
    for start in range(0, len(structure), _CHUNK):  # in chunks: a split makes one object per quote
        pieces = structure[start : start + _CHUNK].split(b'"')
        parts.append(b"".join(pieces[in_string::2]))
        in_string ^= len(pieces) % 2 == 0
    brackets = b"".join(parts).translate(_ONE_KIND)  # depth does not care which kind of bracket
    passes = 0
    while passes < _REDUCTION_PASSES:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets, passes = shorter, passes + 1
    depth = deepest = passes
    for byte in brackets:
        if byte == _OPENER:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    return deepest
        else:
            depth -= 1
    return deepest
