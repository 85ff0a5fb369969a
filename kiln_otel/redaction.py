"""Masking secrets before anything leaves the process: span events, exception text, error payloads.

Redaction works on text (a message's JSON, an exception's message) rather than on objects so that one
hook covers every place kiln-otel writes. Three layers, cheapest first:

1. A prefilter answers "could this text hold a secret at all?" for every shape and field name at
   once. Python's ``re`` tries each alternative at each position (~40 us for a 300-character message
   and this rule set); the Rust ``regex`` crate inside pydantic_core (already a dependency) runs the
   same alternation as one automaton in ~0.5 us, so most messages cost that and nothing more.
2. Value shapes (`kiln_otel.secret_shapes`): keys with a recognisable prefix or structure.
3. Secret-named fields, read the way they are written: JSON (also JSON inside JSON strings, at any
   depth), Python reprs and kwargs, header lines, ``key=value`` and ``key: value`` text.

Every mask is a span of the original text, so the result is exact and cuttable: `Redactor.head`
masks a window a little longer than what will be kept and cuts in the original's coordinates, which
is what keeps a 50 MB tool result cheap and a secret straddling the cut masked (see
`kiln_otel.bounded`). Masks keep JSON valid: only characters inside a string are replaced, never a
quote, a brace or half of an escape sequence, and the marker (``[REDACTED:<kind>]``) needs no escaping.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from kiln_otel.secret_shapes import (
    FIELD_TRIGGER,
    FIELD_WORDS,
    MAX_SHAPE_CHARS,
    SHAPES,
    Shape,
    cased,
    field_kind,
    is_placeholder,
)

__all__ = ["DEFAULT_REPLACEMENT", "MARGIN", "RedactHook", "RedactSetting", "Redactor", "resolve_redactor"]

DEFAULT_REPLACEMENT = "[REDACTED:{kind}]"
"""``{kind}`` names what was masked (``openai_key``, ``password``, ...): countable, and no secret."""

MARGIN = 2 * MAX_SHAPE_CHARS
"""How far past a cut the text is still masked: longer than any shape needs to be recognised."""

RedactHook = Callable[[str], str]
Span = tuple[int, int, str]

_FIELD_GATE = cased(*FIELD_WORDS) + "[A-Za-z0-9_.\\-]*\\\\*[\"']?[ \\t]*[:=]"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_PREVIOUS_WORD = re.compile(r"([A-Za-z]{2,20})[ \t]+$")
_BARE_TOKEN = re.compile(r"[^\s&,;'\"\\)\]}<>]+")
_LINE_VALUE = re.compile(r"[^\r\n\"'\\<>]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9\-]{1,19})[ \t]+(?=\S)")
_TYPE_WORD = re.compile(
    r"(?:Optional\[|Union\[|Annotated\[|list\[|dict\[)?(?:str|string|int|integer|bool|boolean|bytes|float|number|"
    r"None|null|Any|object|dict|list|SecretStr|SecretBytes|Secret)\b"
)
_LITERALS = frozenset({"none", "null", "nil", "true", "false", "undefined", "nan"})
_LINE_KINDS = frozenset({"authorization", "cookie"})
_AUTH_SCHEMES = frozenset(
    {
        *("bearer", "basic", "token", "digest", "negotiate", "ntlm", "bot", "apikey", "key", "ssws", "oauth"),
        *("hmac", "hawk", "splunk", "geniekey", "signature", "sharedkey", "sharedkeylite", "mac", "jwt", "dpop"),
        *("pat", "aws4-hmac-sha256", "sso-key"),
    }
)
# Words that continue a sentence after a colon ("API keys: in the environment"), never a credential.
_STOPWORDS = frozenset(
    {
        *("a", "an", "the", "in", "on", "at", "of", "to", "for", "from", "by", "with", "and", "or", "not", "no"),
        *("yes", "is", "are", "was", "be", "it", "its", "this", "that", "these", "those", "see", "use", "must"),
        *("should", "can", "will", "may", "as", "if", "when", "where", "how", "what", "which", "who", "you"),
        *("your", "we", "our", "they", "their", "i", "never", "always", "only", "also", "please", "set"),
        *("stored", "kept"),
    }
)
_SCHEMA_KEYS = frozenset({"type", "$ref", "properties", "anyOf", "oneOf", "allOf"})
_QUOTE_OR_BRACKET = re.compile(r"[\"'\[\]{}]")
_MARKER = re.compile(r"\[REDACTED(?::[a-z_]+)?\]")


def _rust_clean_check(pattern: str) -> Callable[[str], bool]:
    """``text -> True`` when the Rust regex engine finds no match in it (a search, not a match from
    the start: `_searches` checks that once); always False when the engine is not there."""
    try:
        validator = SchemaValidator(
            cs.with_default_schema(cs.str_schema(pattern=pattern), default=None, on_error="default"),
            config={"regex_engine": "rust-regex"},
        )
    except Exception:  # pragma: no cover - depends on the installed pydantic_core
        return _never_clean
    validate = validator.validate_python

    def clean(text: str) -> bool:
        # Text Rust cannot take (lone surrogates) fails validation too: it gets the full Python scan.
        return validate(text) is None and (text.isascii() or _encodable(text))

    return clean


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _never_clean(text: str) -> bool:
    return False


def _searches() -> bool:
    """Whether the Rust check searches: were it to anchor at the start, it would wave secrets through."""
    probe = _rust_clean_check("AKIA")
    return probe is not _never_clean and not probe("x = 1; AKIA rest") and probe("plain words")


_GROUP_SIZE = 8
_FIELD: re.Pattern[str]
_SHAPE_GROUPS: tuple[tuple[Callable[[str], bool], tuple[tuple[Shape, re.Pattern[str]], ...]], ...]
"""Shapes in groups, each with its own prefilter: text that passed `_clean` is read only by the
shapes of the groups whose prefilter fires, not by all of them."""


def _compile() -> None:
    """Build the rules: about 10 ms of regular expressions, paid when the first text is checked rather
    than by every ``import kiln_otel`` (a process that never redacts never pays). Two threads racing
    here build the same rules twice; `_clean` is bound last, so whoever sees it sees the rest."""
    global _FIELD, _SHAPE_GROUPS, _clean
    rust = _searches()
    shapes = tuple((shape, re.compile(shape.pattern)) for shape in SHAPES)
    _FIELD = re.compile(FIELD_TRIGGER + r"(?P<rest>[a-z0-9_.\-]*)(?P<close>\\*[\"'])?[ \t]*(?P<sep>[:=])(?![=>:])")
    _SHAPE_GROUPS = tuple(
        (
            _rust_clean_check("|".join(f"(?:{shape.prefilter})" for shape, _ in members)) if rust else _never_clean,
            members,
        )
        for members in (shapes[i : i + _GROUP_SIZE] for i in range(0, len(shapes), _GROUP_SIZE))
    )
    prefilter = "|".join([*(f"(?:{shape.prefilter})" for shape in SHAPES), _FIELD_GATE])
    _clean = _rust_clean_check(prefilter) if rust else _never_clean


def _clean_first(text: str) -> bool:
    _compile()
    return _clean(text)


_clean: Callable[[str], bool] = _clean_first
"""The prefilter: True only for text no shape and no field rule can match. Every rule is reached
through it (`Redactor.__call__`, `Redactor.spans`), so its first call builds them all (`_compile`)."""


# --- JSON-aware reading ---------------------------------------------------------------------------
def _trailing_ones(number: int) -> int:
    """JSON depth of a quote preceded by ``number`` backslashes: 0 raw, 1 as ``\\"``, 2 as ``\\\\\\"``."""
    ones = 0
    while number & 1:
        ones += 1
        number >>= 1
    return ones


def _backslashes_before(text: str, index: int, floor: int = 0) -> int:
    run = 0
    while index - run > floor and text[index - run - 1] == "\\":
        run += 1
    return run


def _string_end(text: str, start: int, depth: int) -> int | None:
    """Index of the quote closing a depth-``depth`` JSON string whose content starts at ``start``.

    A quote preceded by a run of r backslashes closes it exactly when r mod 2**(depth+1) ==
    2**depth - 1: fewer low bits set is a shallower quote (the string is unterminated), all of them
    set is a quote escaped inside the string itself.
    """
    modulus, wanted = 2 ** (depth + 1), 2**depth - 1
    quote = text.find('"', start)
    while quote != -1:
        run = _backslashes_before(text, quote, start)
        if run % modulus == wanted:
            return quote - run
        if _trailing_ones(run) < depth:
            return None
        quote = text.find('"', quote + 1)
    return None


def _single_quoted_end(text: str, start: int, in_json: bool) -> tuple[int, bool]:
    """End of a repr string's content, and whether its closing quote was found (not a line end, not
    the end of a JSON string around it, not the end of the text)."""
    index = start
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "'":
            return index, True
        if char in "\r\n" or (in_json and char == '"'):
            return index, False
        index += 1
    return length, False


class _Reader:
    """Finds the value that follows a secret-named key, and the spans to mask in it.

    ``truncated``: the text is a window of a longer one, so a value still open at its end was cut
    and is masked to the end; in a whole text an unterminated value is not a value (``'Password: '``).
    """

    def __init__(self, text: str, in_json: bool, truncated: bool) -> None:
        self.text = text
        self.in_json = in_json
        self.truncated = truncated

    def _open(self, start: int, end: int, closed: bool) -> bool:
        return closed or (self.truncated and end >= len(self.text) and end > start)

    def value(self, at: int, depth: int | None, kind: str, sep: str, key: str) -> list[Span]:
        """Spans to mask in the value at ``at``; ``depth`` is the JSON depth of a quoted key, else None."""
        text = self.text
        at = _skip_blanks(text, at)
        if at >= len(text):
            return []
        char = text[at]
        if char in "[{":
            return self.container(at, depth, kind)
        if depth is None and char in "fbruFBRU" and text[at + 1 : at + 2] in ("'", '"'):
            at += 1  # f'...', b"...": a Python string prefix
            char = text[at]
        quote = _quote_at(text, at)
        if quote is not None:
            run, depth_of_quote = quote
            if depth is not None and depth_of_quote != depth:
                return []
            if depth is None and self.in_json and depth_of_quote == 0:
                return []  # the JSON string holding this text ends here: there is no value
            start = at + run + 1
            close = _string_end(text, start, depth_of_quote)
            end = len(text) if close is None else close
            if depth is None and not self._open(start, end, close is not None):
                return []
            return self.quoted(start, end, kind)
        if char == "'" and depth is None:
            end, closed = _single_quoted_end(text, at + 1, self.in_json)
            return self.quoted(at + 1, end, kind) if self._open(at + 1, end, closed) else []
        if depth is not None:
            return []  # a number, true, false or null: not text, and the JSON's shape must not change
        return self.bare(at, kind, sep, key)

    def quoted(self, start: int, end: int, kind: str) -> list[Span]:
        if kind == "authorization":
            start = _after_scheme(self.text, start, end)
        if end <= start or is_placeholder(self.text[start:end]):
            return []
        return [(start, end, kind)]

    def bare(self, at: int, kind: str, sep: str, key: str) -> list[Span]:
        """An unquoted value: one token; a whole header value for Authorization and Cookie lines."""
        text = self.text
        if sep == "=" and at > 0 and text[at - 1] in " \t":
            return []  # ``token = make_token()``: code, not configuration
        if kind in _LINE_KINDS:
            line = _LINE_VALUE.match(text, at)
            if line is None:
                return []
            end = at + len(line.group().rstrip())
            start = _after_scheme(text, at, end) if kind == "authorization" else at
            whole = start > at or (kind == "cookie" and "=" in text[at:end])
            if whole:
                return [(start, end, kind)] if end > start and not is_placeholder(text[start:end]) else []
        token = _BARE_TOKEN.match(text, at)
        if token is None:
            return []
        value = token.group()
        lowered = value.lower()
        if (
            is_placeholder(value)
            or lowered in _LITERALS
            or value == key
            or (sep == ":" and (lowered in _STOPWORDS or _TYPE_WORD.match(value)))
            or (kind in ("token", "session") and value.isdigit())
        ):
            return []
        return [(at, token.end(), kind)]

    def container(self, at: int, depth: int | None, kind: str) -> list[Span]:
        """Every string value in a list or object (keys kept): ``"api_keys": ["a", "b"]``.

        An object that describes a schema (``{"type": "string"}``) is left alone; secret fields
        inside it are still found by their own names. A value that ends where a JSON string around
        it ends was not a list or an object, unless the text was cut there: then what it held so
        far is masked, so a cut can never take the JSON's structure with it.
        """
        text = self.text
        floor = depth if depth is not None else (1 if self.in_json else 0)
        spans: list[Span] = []
        level = 0
        schema = False
        index = at
        length = len(text)
        closed = False
        while index < length:
            found = _QUOTE_OR_BRACKET.search(text, index)
            if found is None:
                index = length
                break
            index = found.start()
            char = text[index]
            if char in "[{":
                level += 1
                index += 1
                continue
            if char in "]}":
                level -= 1
                index += 1
                if level == 0:
                    closed = True
                    break
                continue
            if char == "'":
                start = index + 1
                end, string_closed = _single_quoted_end(text, start, self.in_json)
                after = end + 1
            else:
                run = _backslashes_before(text, index, at)
                string_depth = _trailing_ones(run)
                if string_depth < floor:
                    break  # the JSON string this value sits in ends here
                start = index + 1
                close = _string_end(text, start, string_depth)
                end, string_closed = (length, False) if close is None else (close, True)
                after = end + run + 1
            if not string_closed:
                if self.truncated and end >= length:
                    spans.append((start, end, kind))
                    closed = True
                break
            if _is_key(text, after):
                schema = schema or (level == 1 and text[start:end] in _SCHEMA_KEYS)
            elif end > start:
                spans.append((start, end, kind))
            index = after
        if not closed and not (self.truncated and index >= length):
            return []
        return [] if schema else [s for s in spans if not is_placeholder(text[s[0] : s[1]])]


def _after_scheme(text: str, start: int, end: int) -> int:
    """``Bearer abc``: where the credentials start, so the scheme stays readable."""
    scheme = _SCHEME.match(text, start, end)
    if scheme is not None and scheme.group(1).lower() in _AUTH_SCHEMES:
        return scheme.end()
    return start


def _skip_blanks(text: str, index: int) -> int:
    length = len(text)
    while index < length and text[index] in " \t":
        index += 1
    return index


def _quote_at(text: str, index: int) -> tuple[int, int] | None:
    """(backslashes, depth) of a double-quote token starting at ``index`` (``"``, ``\\"``, ...)."""
    run = 0
    while index + run < len(text) and text[index + run] == "\\":
        run += 1
    if index + run < len(text) and text[index + run] == '"':
        return run, _trailing_ones(run)
    return None


def _is_key(text: str, after: int) -> bool:
    index = _skip_blanks(text, after)
    return index < len(text) and text[index] == ":"


def _key_bounds(text: str, match: re.Match[str]) -> tuple[int, int | None]:
    """Where the key starts, and its JSON depth when it is a double-quoted key (None otherwise)."""
    start = match.start()
    while start > 0 and text[start - 1] in _NAME_CHARS:
        start -= 1
    close = match.group("close")
    if not close:
        return start, None
    if close.endswith("'"):
        opening = start - 1
        while opening >= 0 and start - opening < 64 and text[opening] not in "'\"\n":
            opening -= 1
        return (opening + 1, None) if opening >= 0 and text[opening] == "'" else (start, -1)
    run = len(close) - 1
    opening = start - 1
    while opening >= 0 and start - opening < 64 and text[opening] not in '"\n':
        opening -= 1
    if opening >= 0 and text[opening] == '"' and _backslashes_before(text, opening) == run:
        return opening + 1, _trailing_ones(run)
    return start, -1


def _field_spans(text: str, lowered: str, in_json: bool, truncated: bool) -> list[Span]:
    reader = _Reader(text, in_json, truncated)
    spans: list[Span] = []
    for match in _FIELD.finditer(lowered):
        key_start, depth = _key_bounds(lowered, match)
        if depth == -1:
            continue  # a closing quote with no opening one: not a key
        key_end = match.end("rest")
        key = text[key_start:key_end]
        previous = None
        if depth is None and match.group("close") is None and key.isalpha():
            before = _PREVIOUS_WORD.search(text, max(0, key_start - 24), key_start)
            previous = before.group(1) if before else None
        kind = field_kind(key, previous)
        if kind is None:
            continue
        spans.extend(reader.value(match.end(), depth, kind, match.group("sep"), key))
    return spans


def _shape_spans(text: str, lowered: str) -> list[Span]:
    spans: list[Span] = []
    for clean, members in _SHAPE_GROUPS:
        if not clean(text):
            spans.extend(_group_spans(text, lowered, members))
    return spans


def _group_spans(text: str, lowered: str, members: tuple[tuple[Shape, re.Pattern[str]], ...]) -> list[Span]:
    spans: list[Span] = []
    for shape, pattern in members:
        haystack = lowered if shape.ignore_case else text
        if not any(literal in haystack for literal in shape.literals):
            continue
        group = "secret" if "secret" in pattern.groupindex else 0
        for match in pattern.finditer(text):
            start = match.start()
            if shape.starts_token and start > 0 and text[start - 1].isalnum():
                continue
            if shape.check is not None and not shape.check(match):
                continue
            spans.append((match.start(group), match.end(group), shape.kind))
    return spans


def _json_safe(text: str, span: Span) -> Span | None:
    """Widen or shorten a span so replacing it can never break a JSON string it lies in.

    It must not start or end inside an escape sequence, nor contain a quote that ends a string.
    """
    start, end, kind = span
    for index in range(max(0, start - 5), start):  # starts inside \\uXXXX: take the whole escape
        if text.startswith("\\u", index) and _backslashes_before(text, index) % 2 == 0:
            start = index
            break
    if _backslashes_before(text, start) % 2:
        start -= 1
    quote = text.find('"', start, end)
    while quote != -1:
        run = _backslashes_before(text, quote)
        if run % 2 == 0:
            end = quote - min(run, quote - start)
            break
        quote = text.find('"', quote + 1, end)
    for index in range(max(start, end - 5), end):  # ends inside \\uXXXX
        if text.startswith("\\u", index) and _backslashes_before(text, index) % 2 == 0:
            end = max(end, index + 6)
    if _backslashes_before(text, end, start) % 2:
        end += 1
    end = min(end, len(text))
    return (start, end, kind) if end > start else None


def _outside_markers(text: str, spans: list[Span]) -> list[Span]:
    """Spans minus earlier masks, so redacting redacted text changes nothing (``https://[REDACTED:x]@``
    must not read as a URL password)."""
    markers = [m.span() for m in _MARKER.finditer(text)]
    kept: list[Span] = []
    for start, end, kind in spans:
        for marker_start, marker_end in markers:
            if marker_start < end and start < marker_end:
                if start < marker_start:
                    kept.append((start, marker_start, kind))
                start = max(start, marker_end)
        if start < end:
            kept.append((start, end, kind))
    return kept


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end, kind in sorted(spans):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, kind))
    return merged


class Redactor:
    """The default redaction hook: credential shapes and secret-named fields, masked as ``[REDACTED:<kind>]``.

    Extend it rather than replace it: ``patterns`` are extra regular expressions masked whole (kind
    ``custom``), ``callback`` runs last on the already-masked text (for app-specific rules such as
    customer ids). ``masked`` counts the values masked so far; each run works on its own `fork`, so
    its count lands on its span (``kiln_otel.redaction.masked``).
    """

    def __init__(
        self,
        *,
        patterns: Iterable[str | re.Pattern[str]] = (),
        callback: RedactHook | None = None,
        replacement: str = DEFAULT_REPLACEMENT,
    ) -> None:
        self._extra = tuple(re.compile(p) if isinstance(p, str) else p for p in patterns)
        self._callback = callback
        self._replacement = replacement
        self._markers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._plain = not self._extra and callback is None
        self.masked = 0

    def __repr__(self) -> str:
        return f"Redactor(patterns={len(self._extra)}, callback={self._callback is not None})"

    def _config(self) -> tuple[Any, ...]:
        return self._extra, self._callback, self._replacement

    def __eq__(self, other: object) -> bool:
        """Forks of one configuration redact alike, so a payload redacted by one needs no other."""
        return isinstance(other, Redactor) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    def fork(self) -> Redactor:
        """The same rules with a count of their own (one per run)."""
        return Redactor(patterns=self._extra, callback=self._callback, replacement=self._replacement)

    def __call__(self, text: str) -> str:
        clean = _clean(text) if self._plain else None
        if clean:
            return text
        spans = self._spans(text, False, clean)
        if spans:
            text = self._apply(text, spans, len(text))
        return self._callback(text) if self._callback is not None else text

    def head(self, text: str, keep: int) -> str:
        """The first ``keep`` characters of ``text``, masked as if the whole text had been.

        Only ``keep + MARGIN`` characters are read: a secret that starts before the cut is recognised
        within the margin and masked whole, one that starts after it is cut away, and an unterminated
        value or PEM block runs masked to the end of the window.
        """
        window = text[: keep + MARGIN]
        spans = self.spans(window, truncated=len(window) < len(text))
        head = self._apply(window, spans, keep) if spans else window[:keep]
        return self._callback(head) if self._callback is not None else head

    def spans(self, text: str, truncated: bool = False) -> list[Span]:
        """(start, end, kind) of every value to mask, sorted, non-overlapping, JSON-safe.

        ``truncated``: ``text`` is the start of a longer text (a value open at its end was cut).
        """
        return self._spans(text, truncated, None)

    def _spans(self, text: str, truncated: bool, clean: bool | None) -> list[Span]:
        """`spans`; ``clean`` is the prefilter's answer for ``text`` when the caller already has it."""
        found: list[Span] = []
        for pattern in self._extra:
            found.extend((m.start(), m.end(), "custom") for m in pattern.finditer(text) if m.end() > m.start())
        if not (_clean(text) if clean is None else clean):
            lowered = text.lower()
            if len(lowered) != len(text):  # a few characters lower-case to two: keep offsets aligned
                lowered = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
            in_json = text.startswith(('{"', '["', "[{", "[[", '"', "{}", "[]"))
            found.extend(_shape_spans(text, lowered))
            found.extend(_field_spans(text, lowered, in_json, truncated))
        if not found:
            return found
        if "[REDACTED" in text:
            found = _outside_markers(text, found)
        return _merge([s for s in (_json_safe(text, span) for span in found) if s is not None])

    def _marker(self, kind: str) -> str:
        marker = self._markers.get(kind)
        if marker is None:
            marker = self._markers[kind] = self._replacement.replace("{kind}", kind)
        return marker

    def _apply(self, text: str, spans: list[Span], limit: int) -> str:
        """``text[:limit]`` with every span that starts before ``limit`` replaced by its marker."""
        pieces: list[str] = []
        position = 0
        applied = 0
        for start, end, kind in spans:
            if start >= limit:
                break
            pieces.append(text[position:start])
            pieces.append(self._marker(kind))
            position = end
            applied += 1
        if position < limit:
            pieces.append(text[position:limit])
        with self._lock:
            self.masked += applied
        return "".join(pieces)


RedactSetting = Redactor | RedactHook | None | str


def resolve_redactor(redact: RedactSetting) -> RedactHook | None:
    """Map the user's ``redact=`` argument to a hook: ``"default"`` is a new default Redactor, None is off."""
    if redact == "default":
        return Redactor()
    if redact is None or callable(redact):
        return redact
    raise TypeError(f"redact must be a Redactor, a str -> str callable, None or 'default'; got {redact!r}")


def masked_count(hook: object) -> int | None:
    """How many values a run's redactor masked (None for a custom hook, which kiln-otel cannot count)."""
    return hook.masked if isinstance(hook, Redactor) else None
