"""docs/telemetry.md and kiln_otel/wire.py describe the same contract, name for name."""

from __future__ import annotations

import re
from pathlib import Path

from kiln_otel import wire

DOC = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
NAME = re.compile(r"`((?:kiln_otel|gen_ai|error|server)\.[a-z0-9_.]+)`")


def wire_names() -> set[str]:
    names = {value for key, value in vars(wire).items() if key.isupper() and isinstance(value, str) and "." in value}
    return {name for name in names if NAME.fullmatch(f"`{name}`")}


def test_every_documented_name_is_in_wire() -> None:
    documented = set(NAME.findall(DOC))
    prefixes = {wire.EVENT_MESSAGE_PREFIX}
    missing = {name for name in documented if name not in wire_names() and name not in prefixes}
    assert not missing, f"documented in docs/telemetry.md but not in kiln_otel/wire.py: {sorted(missing)}"


def test_every_wire_name_is_documented() -> None:
    documented = set(NAME.findall(DOC))
    undocumented = wire_names() - documented
    assert not undocumented, f"in kiln_otel/wire.py but not in docs/telemetry.md: {sorted(undocumented)}"


def test_message_event_names_follow_roles() -> None:
    assert wire.message_event_name("tool") == "kiln_otel.message.tool"
    assert wire.message_event_name("narrator") == "kiln_otel.message"
    assert "`kiln_otel.message.{role}`" in DOC
