"""Redact, then bound: how every piece of text kiln-otel did not write becomes an attribute.

Two rules, in this order, for exception text, tool arguments and results, status descriptions, log
lines: mask secrets first, because a cut can leave half a key that no pattern recognises any more;
then cut to a byte budget, because one 5 MB tool result must not cost the whole trace (a request over
the receiver's 4 MiB limit is dropped whole). Cutting is cheap because redaction only reads a window
slightly longer than what is kept (see `Redactor.head`): a 50 MB text costs about what its cut costs.
What was cut says so, in the text (``…[truncated, N bytes]``) and to the caller (the original size).
"""

from __future__ import annotations

from kiln_otel.redaction import MARGIN, RedactHook, Redactor

__all__ = ["bound_text", "cut_utf8", "fits_utf8", "redacted_head", "utf8_size"]

_MARK = "…[truncated, {size} bytes]"


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def fits_utf8(text: str, max_bytes: int) -> bool:
    """Whether ``text`` is at most ``max_bytes`` in UTF-8; text of a quarter of that many characters
    fits without being encoded (a character is at most 4 bytes)."""
    return len(text) <= max_bytes // 4 or utf8_size(text) <= max_bytes


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` in UTF-8, never half a character."""
    if len(text) <= max_bytes and (text.isascii() or utf8_size(text) <= max_bytes):
        return text
    if text.isascii():
        return text[:max_bytes]
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def redacted_head(text: str, keep: int, redact: RedactHook | None) -> str:
    """``text[:keep]`` as it reads once masked, reading at most ``keep + MARGIN`` characters."""
    if redact is None:
        return text[:keep]
    if isinstance(redact, Redactor):
        return redact.head(text, keep)
    # Any other hook sees the window; its last MARGIN characters are dropped so that a secret the
    # window cut in half (which the hook could not recognise) is never kept, even if the hook
    # shortened what came before it.
    window = text[: keep + MARGIN]
    masked = redact(window)
    if len(window) == len(text):
        return masked[:keep]
    return masked[: max(0, min(keep, len(masked) - MARGIN))]


def bound_text(text: str, max_bytes: int, redact: RedactHook | None) -> tuple[str, int | None]:
    """``text`` redacted and then cut to at most ``max_bytes`` UTF-8 bytes, with a visible mark.

    Returns the text to record and, when it was cut, the original's size in bytes (else None).
    """
    size = utf8_size(text) if len(text) <= max_bytes else None
    if size is not None and size <= max_bytes:
        masked = redact(text) if redact is not None else text
        if fits_utf8(masked, max_bytes):
            return masked, None
        # The masks made it longer than the budget; it holds no secret any more, so cut it plainly.
        return _with_mark(masked, max_bytes, size), size
    if size is None:
        size = utf8_size(text)
    keep = max(max_bytes - utf8_size(_MARK.format(size=size)), 0)
    return _with_mark(redacted_head(text, keep, redact), max_bytes, size), size


def _with_mark(text: str, max_bytes: int, size: int) -> str:
    """``text`` cut to leave room for the mark saying the original had ``size`` bytes; the mark
    alone, cut, when even it does not fit."""
    mark = _MARK.format(size=size)
    mark_size = utf8_size(mark)
    if mark_size > max_bytes:
        return cut_utf8(mark, max_bytes)
    return cut_utf8(text, max_bytes - mark_size) + mark
