"""The one place the litellm integration imports litellm, so that importing kiln-otel never does.

litellm takes seconds and thousands of modules to import; an app that only records runs by hand
must not pay for it, and an app without the extra must get an error that says how to fix it.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["INSTALL_HINT", "require_litellm"]

INSTALL_HINT = "kiln-otel's litellm integration needs the extra: pip install 'kiln-otel[litellm]'"


def require_litellm() -> ModuleType:
    try:
        import litellm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return litellm
