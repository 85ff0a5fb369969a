"""Masking secrets before anything leaves the process: span events, exception text, error payloads.

Redaction works on text (a message's JSON, an exception's message) rather than on objects so that one
hook covers every place kiln-otel writes, and so the fast path is a few substring checks: most
messages hold no secret, and recording them must stay cheaper than ``json.dumps``.
The default masks keep JSON valid: only the secret itself is replaced, never a quote or a brace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["DEFAULT_REPLACEMENT", "RedactHook", "Redactor", "resolve_redactor"]

DEFAULT_REPLACEMENT = "[REDACTED]"

RedactHook = Callable[[str], str]

_SECRET_KEYS = r"api[_-]?key|x-api-key|authorization|proxy-authorization|access[_-]?token|client[_-]?secret|password"
# "api_key": "v" / 'api_key': 'v' / api_key="v" : keep the key and the quotes, mask what is between.
_QUOTED_FIELD = re.compile(rf"""(?i)(["']?(?:{_SECRET_KEYS})["']?\s*[:=]\s*)(["'])((?:\\.|(?!\2)[^\\])*)\2""")
# The same inside a JSON string that holds JSON (a tool result), at any depth: \"api_key\": \"v\".
# Depth N escapes the key's quotes with 2**N - 1 backslashes; where the value ends is found by
# counting backslashes (see _value_end), since a value may itself hold escaped quotes.
_NESTED_FIELD = re.compile(rf'''(?i)(?<!\\)(\\+)"(?:{_SECRET_KEYS})\1"\s*:\s*\1"''')
# api_key=v (query strings, kwargs reprs, log lines)
_BARE_FIELD = re.compile(rf"""(?i)(\b(?:{_SECRET_KEYS})=)([^\s&,;'"\\)\]}}]+)""")
_BEARER = re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]{8,}")
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")


def _may_hold_field(lowered: str) -> bool:
    """Substring checks first: a regex scan costs more than serializing the message."""
    return (
        "key" in lowered
        or "auth" in lowered
        or "bearer" in lowered
        or "token" in lowered
        or "secret" in lowered
        or "password" in lowered
    )


class Redactor:
    """The default redaction hook: masks API keys, bearer tokens and secret-named fields.

    Extend it rather than replace it: ``patterns`` are extra regular expressions masked whole,
    ``callback`` runs last on the already-masked text (for app-specific rules such as customer ids).
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

    def __repr__(self) -> str:
        return f"Redactor(patterns={len(self._extra)}, callback={self._callback is not None})"

    def __call__(self, text: str) -> str:
        if "sk-" in text:
            text = _SK_KEY.sub(self._replacement, text)
        if _may_hold_field(text.lower()):
            text = self._mask_fields(text)
        for pattern in self._extra:
            text = pattern.sub(self._replacement, text)
        if self._callback is not None:
            text = self._callback(text)
        return text

    def _mask_fields(self, text: str) -> str:
        masked = f"\\g<1>\\g<2>{self._replacement}\\g<2>"
        text = _mask_nested_fields(text, self._replacement)
        text = _QUOTED_FIELD.sub(masked, text)
        text = _BARE_FIELD.sub(f"\\g<1>{self._replacement}", text)
        return _BEARER.sub(f"\\g<1>{self._replacement}", text)


def _value_end(text: str, start: int, depth: int) -> int | None:
    """Index of the quote closing a depth-``depth`` string that starts at ``start``, or None.

    A quote preceded by a run of r backslashes closes that string exactly when
    r mod 2**(depth+1) == 2**depth - 1: fewer low bits set is a shallower quote (impossible inside
    a well-formed value), all of them set is a quote escaped inside the value itself.
    """
    modulus, wanted = 2 ** (depth + 1), 2**depth - 1
    quote = text.find('"', start)
    while quote != -1:
        run = 0
        while quote - run > start and text[quote - run - 1] == "\\":
            run += 1
        if run % modulus == wanted:
            return quote
        quote = text.find('"', quote + 1)
    return None


def _mask_nested_fields(text: str, replacement: str) -> str:
    pieces, position = [], 0
    for match in _NESTED_FIELD.finditer(text):
        if match.start() < position:
            continue
        escapes = len(match.group(1))
        depth = (escapes + 1).bit_length() - 1
        end = _value_end(text, match.end(), depth) if 2**depth - 1 == escapes else None
        if end is None:
            continue
        pieces += [text[position : match.end()], replacement, match.group(1)]
        position = end
    return "".join([*pieces, text[position:]]) if pieces else text


_DEFAULT = Redactor()

RedactSetting = Redactor | RedactHook | None | str


def resolve_redactor(redact: RedactSetting) -> RedactHook | None:
    """Map the user's ``redact=`` argument to a hook: ``"default"`` is the default Redactor, None is off."""
    if redact == "default":
        return _DEFAULT
    if redact is None or callable(redact):
        return redact
    raise TypeError(f"redact must be a Redactor, a str -> str callable, None or 'default'; got {redact!r}")
