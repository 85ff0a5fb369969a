"""Keeps kiln-otel's own failures out of the app: log the first one from each place, swallow them all.

Telemetry is a passenger: a bug here must cost the user some telemetry, never their run. Tests flip
`strict` on so such bugs fail loudly there instead of hiding behind a log line.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["guarded", "logger", "report_internal_error", "set_strict"]

logger = logging.getLogger("kiln_otel")

_P = ParamSpec("_P")
_R = TypeVar("_R")

_strict = False
_reported: set[str] = set()


def set_strict(strict: bool) -> None:
    """Re-raise internal errors instead of swallowing them (for kiln-otel's own test suite)."""
    global _strict
    _strict = strict


def report_internal_error(where: str, exc: BaseException) -> None:
    """Log once per place, at WARNING with the stack, then at DEBUG, so a hot path cannot flood logs."""
    if _strict:
        raise exc
    if where in _reported:
        logger.debug("kiln-otel internal error in %s (repeated): %r", where, exc)
        return
    _reported.add(where)
    logger.warning(
        "kiln-otel internal error in %s; telemetry for this run may be incomplete, the app is unaffected",
        where,
        exc_info=exc,
    )


def guarded(default: _R) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Run the wrapped function; on an internal error report it and return ``default``."""

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        where = func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                report_internal_error(where, exc)
                return default

        return wrapper

    return decorate
