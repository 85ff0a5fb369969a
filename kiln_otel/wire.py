"""The wire contract: every span name, event name and attribute key kiln-otel writes.

Exported telemetry is the only thing `reconstruct_trace` may rely on, so these strings are a public,
versioned contract (documented in ``docs/telemetry.md``): change one and old traces stop rebuilding.
GenAI semantic-convention names (pinned at semconv v1.41) are reused where they mean the same thing;
the per-message events have no convention yet, so they live under the ``kiln_otel.`` namespace.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTR_ERROR_TYPE",
    "ATTR_EVENT_SEQ",
    "ATTR_GEN_AI_AGENT_NAME",
    "ATTR_GEN_AI_CONVERSATION_ID",
    "ATTR_GEN_AI_OPERATION_NAME",
    "ATTR_GEN_AI_PROVIDER_NAME",
    "ATTR_GEN_AI_TOOL_CALL_ID",
    "ATTR_GEN_AI_TOOL_NAME",
    "ATTR_MESSAGES_COUNT",
    "ATTR_MESSAGES_LOSSY",
    "ATTR_MESSAGES_OPS",
    "ATTR_MESSAGES_ORDER",
    "ATTR_MESSAGES_REMOVED",
    "ATTR_MESSAGES_TRUNCATED",
    "ATTR_MESSAGE_CAPTURED",
    "ATTR_MESSAGE_INDEX",
    "ATTR_MESSAGE_JSON",
    "ATTR_MESSAGE_LOSSY",
    "ATTR_MESSAGE_ROLE",
    "ATTR_MESSAGE_SIZE",
    "ATTR_MESSAGE_TOOL_CALL_IDS",
    "ATTR_MESSAGE_TOOL_NAMES",
    "ATTR_MESSAGE_TRUNCATED",
    "ATTR_SCHEMA_VERSION",
    "ATTR_SEGMENTS",
    "ATTR_SEGMENT_INDEX",
    "EVENT_EXCEPTION",
    "EVENT_MESSAGES_DELETE",
    "EVENT_MESSAGES_REORDER",
    "EVENT_MESSAGE_PREFIX",
    "KNOWN_ROLES",
    "MARKER_KEY",
    "NOT_CAPTURED",
    "OPERATION_INVOKE_AGENT",
    "SCHEMA_VERSION",
    "SPAN_SEGMENT",
    "message_event_name",
    "run_span_name",
]

SCHEMA_VERSION: Final = 1
"""Bumped only when a change would make older readers misread newer telemetry."""

# --- GenAI semantic conventions (v1.41) -------------------------------------------------------
ATTR_GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
ATTR_GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
ATTR_GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
ATTR_GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
ATTR_GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
ATTR_GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
ATTR_ERROR_TYPE: Final = "error.type"
OPERATION_INVOKE_AGENT: Final = "invoke_agent"
EVENT_EXCEPTION: Final = "exception"

# --- The run span and its continuation segments -----------------------------------------------
ATTR_SCHEMA_VERSION: Final = "kiln_otel.schema_version"
"""On the run span: marks it as a kiln-otel run and says which contract wrote it."""
ATTR_MESSAGES_COUNT: Final = "kiln_otel.messages.count"
"""On the run span at its end: the list's final length, so a reader can tell a trace is whole."""
ATTR_MESSAGES_OPS: Final = "kiln_otel.messages.ops"
"""On the run span at its end: how many list events were written (their seq run 0..ops-1)."""
ATTR_SEGMENTS: Final = "kiln_otel.segments"
"""On the run span at its end: how many continuation segment spans were opened."""
ATTR_MESSAGES_TRUNCATED: Final = "kiln_otel.messages.truncated"
ATTR_MESSAGES_LOSSY: Final = "kiln_otel.messages.lossy"

SPAN_SEGMENT: Final = "kiln_otel.messages"
"""Child of the run span that carries further events once the run span is full."""
ATTR_SEGMENT_INDEX: Final = "kiln_otel.segment.index"

# --- List events ------------------------------------------------------------------------------
EVENT_MESSAGE_PREFIX: Final = "kiln_otel.message"
"""A message inserted into the list: ``kiln_otel.message.<role>`` (or the bare prefix for odd roles)."""
EVENT_MESSAGES_DELETE: Final = "kiln_otel.messages.delete"
"""``count`` messages removed starting at ``index``."""
EVENT_MESSAGES_REORDER: Final = "kiln_otel.messages.reorder"
"""The list permuted in place: new[i] = old[order[i]]."""

ATTR_EVENT_SEQ: Final = "kiln_otel.seq"
"""Position of the event among all list events of the run: replay order, and gap detection."""
ATTR_MESSAGE_INDEX: Final = "kiln_otel.message.index"
ATTR_MESSAGE_ROLE: Final = "kiln_otel.message.role"
"""Only for roles outside `KNOWN_ROLES` (theirs is already in the event name)."""
ATTR_MESSAGE_JSON: Final = "kiln_otel.message.json"
ATTR_MESSAGE_SIZE: Final = "kiln_otel.message.size"
"""Bytes of the message JSON before truncation; written when it was truncated or not captured."""
ATTR_MESSAGE_TRUNCATED: Final = "kiln_otel.message.truncated"
ATTR_MESSAGE_LOSSY: Final = "kiln_otel.message.lossy"
"""The message held values JSON cannot carry (objects, cycles, bad unicode, bytes) and was approximated."""
ATTR_MESSAGE_CAPTURED: Final = "kiln_otel.message.captured"
"""False when content capture is off: the JSON is absent and only the structure is recorded."""
ATTR_MESSAGE_TOOL_CALL_IDS: Final = "kiln_otel.message.tool_call_ids"
ATTR_MESSAGE_TOOL_NAMES: Final = "kiln_otel.message.tool_names"
ATTR_MESSAGES_REMOVED: Final = "kiln_otel.messages.removed"
ATTR_MESSAGES_ORDER: Final = "kiln_otel.messages.order"

KNOWN_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# --- What reconstruction puts into a message it could not rebuild exactly ----------------------
MARKER_KEY: Final = "_kiln_otel"
"""Key added to a reconstructed message that is not the original: truncated, lossy or not captured."""
NOT_CAPTURED: Final = "[content not captured]"


def message_event_name(role: str) -> str:
    """Role in the name so a trace reader sees the conversation's shape without opening attributes."""
    return f"{EVENT_MESSAGE_PREFIX}.{role}" if role in KNOWN_ROLES else EVENT_MESSAGE_PREFIX


def run_span_name(agent_name: str | None) -> str:
    return f"{OPERATION_INVOKE_AGENT} {agent_name}" if agent_name else OPERATION_INVOKE_AGENT
