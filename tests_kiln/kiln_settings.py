"""Kiln's own pytest settings for its shipped tests, which the wheel does not carry (pytest -p).

Kiln runs its suite with ``asyncio_mode=auto`` and leaves tests marked ``paid``, ``slow`` or
``prerelease`` out unless asked: they call real providers. The published wheel ships the tests but
not that configuration, so this plugin gives it back: the markers are registered and those tests are
deselected (reported as deselected, so the count of what ran stays honest).
"""

from __future__ import annotations

import pytest

_NOT_OFFLINE = ("paid", "slow", "prerelease")


def pytest_configure(config: pytest.Config) -> None:
    for marker in _NOT_OFFLINE:
        config.addinivalue_line("markers", f"{marker}: Kiln test that needs a real provider (deselected)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    offline = [item for item in items if not any(item.get_closest_marker(m) for m in _NOT_OFFLINE)]
    deselected = [item for item in items if item not in offline]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = offline
