"""The wire contract: every span name, event name and attribute key kiln-otel writes.

Exported telemetry is the only thing `reconstruct_trace` may rely on, so these strings are a public,
versioned contract (documented in ``docs/telemetry.md``): change one and old traces stop rebuilding.
GenAI semantic-convention names (pinned at semconv v1.41) are reused where they mean the same thing;
the per-message events have no convention yet, so they live under the ``kiln_otel.`` namespace.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTR_ERROR_MESSAGE",
    "ATTR_ERROR_SPAN_ID",
    "ATTR_ERROR_TYPE",
    "ATTR_EVENT_SEQ",
    "ATTR_EXCEPTION_SPAN_ID",
    "ATTR_EXPORT_CUT",
    "ATTR_EXPORT_ORIGINAL_SIZE",
    "ATTR_GEN_AI_AGENT_NAME",
    "ATTR_GEN_AI_CONVERSATION_ID",
    "ATTR_GEN_AI_OPERATION_NAME",
    "ATTR_GEN_AI_PROVIDER_NAME",
    "ATTR_GEN_AI_REQUEST_CHOICE_COUNT",
    "ATTR_GEN_AI_REQUEST_FREQUENCY_PENALTY",
    "ATTR_GEN_AI_REQUEST_MAX_TOKENS",
    "ATTR_GEN_AI_REQUEST_MODEL",
    "ATTR_GEN_AI_REQUEST_PRESENCE_PENALTY",
    "ATTR_GEN_AI_REQUEST_SEED",
    "ATTR_GEN_AI_REQUEST_STOP_SEQUENCES",
    "ATTR_GEN_AI_REQUEST_STREAM",
    "ATTR_GEN_AI_REQUEST_TEMPERATURE",
    "ATTR_GEN_AI_REQUEST_TOP_K",
    "ATTR_GEN_AI_REQUEST_TOP_P",
    "ATTR_GEN_AI_RESPONSE_FINISH_REASONS",
    "ATTR_GEN_AI_RESPONSE_ID",
    "ATTR_GEN_AI_RESPONSE_MODEL",
    "ATTR_GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK",
    "ATTR_GEN_AI_TOKEN_TYPE",
    "ATTR_GEN_AI_TOOL_CALL_ARGUMENTS",
    "ATTR_GEN_AI_TOOL_CALL_ID",
    "ATTR_GEN_AI_TOOL_CALL_RESULT",
    "ATTR_GEN_AI_TOOL_NAME",
    "ATTR_GEN_AI_TOOL_TYPE",
    "ATTR_GEN_AI_USAGE_INPUT_TOKENS",
    "ATTR_GEN_AI_USAGE_OUTPUT_TOKENS",
    "ATTR_MESSAGES_COUNT",
    "ATTR_MESSAGES_LAST_SPAN_ID",
    "ATTR_MESSAGES_LOSSY",
    "ATTR_MESSAGES_OPS",
    "ATTR_MESSAGES_ORDER",
    "ATTR_MESSAGES_REMOVED",
    "ATTR_MESSAGES_TRUNCATED",
    "ATTR_MESSAGE_CAPTURED",
    "ATTR_MESSAGE_EXCERPT",
    "ATTR_MESSAGE_INDEX",
    "ATTR_MESSAGE_JSON",
    "ATTR_MESSAGE_LOSSY",
    "ATTR_MESSAGE_NULL_KEYS",
    "ATTR_MESSAGE_PARTIAL",
    "ATTR_MESSAGE_ROLE",
    "ATTR_MESSAGE_SIZE",
    "ATTR_MESSAGE_TOOL_CALL_IDS",
    "ATTR_MESSAGE_TOOL_NAMES",
    "ATTR_MESSAGE_TRUNCATED",
    "ATTR_REDACTION_MASKED",
    "ATTR_RUN_NAME",
    "ATTR_RUN_PARENT_SPAN_ID",
    "ATTR_SCHEMA_VERSION",
    "ATTR_SEGMENTS",
    "ATTR_SEGMENT_FIRST_SEQ",
    "ATTR_SEGMENT_INDEX",
    "ATTR_SEGMENT_LAST_SEQ",
    "ATTR_SERVER_ADDRESS",
    "ATTR_SERVER_PORT",
    "ATTR_STREAM_ABANDONED",
    "ATTR_TRUNCATED",
    "ATTR_USAGE_ESTIMATED",
    "DURATION_BUCKETS",
    "EVENT_EXCEPTION",
    "EVENT_MESSAGES_DELETE",
    "EVENT_MESSAGES_REORDER",
    "EVENT_MESSAGE_PREFIX",
    "KNOWN_ROLES",
    "MARKER_KEY",
    "METRIC_OPERATION_DURATION",
    "METRIC_TOKEN_USAGE",
    "NOT_CAPTURED",
    "OPERATION_CHAT",
    "OPERATION_EXECUTE_TOOL",
    "OPERATION_INVOKE_AGENT",
    "PARTIAL_MESSAGE_KEY",
    "SCHEMA_VERSION",
    "SPAN_SEGMENT",
    "TOKEN_TYPE_INPUT",
    "TOKEN_TYPE_OUTPUT",
    "TOKEN_USAGE_BUCKETS",
    "TOOL_ERROR_KEY",
    "TOOL_ERROR_MESSAGE_KEY",
    "TOOL_TYPE_FUNCTION",
    "chat_span_name",
    "message_event_name",
    "run_span_name",
    "tool_span_name",
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

# --- The run span and its segment spans ----------------------------------------------------------
ATTR_SCHEMA_VERSION: Final = "kiln_otel.schema_version"
"""On the run span: marks it as a kiln-otel run and says which contract wrote it."""
ATTR_MESSAGES_COUNT: Final = "kiln_otel.messages.count"
"""The list's length after the span's last list event: on the run span (at its end) the final length,
on a segment the length when it was written, so a reader can tell a trace is whole."""
ATTR_MESSAGES_OPS: Final = "kiln_otel.messages.ops"
"""On the run span at its end: how many list events were written (their seq run 0..ops-1)."""
ATTR_SEGMENTS: Final = "kiln_otel.segments"
"""On the run span at its end: how many segment spans were written."""
ATTR_MESSAGES_TRUNCATED: Final = "kiln_otel.messages.truncated"
ATTR_MESSAGES_LOSSY: Final = "kiln_otel.messages.lossy"
ATTR_REDACTION_MASKED: Final = "kiln_otel.redaction.masked"
"""On the run span at its end: values the client-side `Redactor` masked during the run (messages,
exception text, tool spans), so an operator sees that redaction worked without seeing a secret."""
ATTR_TRUNCATED: Final = "kiln_otel.truncated"
"""On a span or event: the keys of its attributes that kiln-otel cut to their byte budget (each cut
value ends with ``…[truncated, N bytes]``, N the original size)."""

ATTR_ERROR_MESSAGE: Final = "kiln_otel.error.message"
"""On a failed run span: the user-facing message (the payload's ``message``, the status description),
first among kiln-otel's attributes where a trace viewer lists them by name. Domain-specific, as the
semantic conventions now ask (the generic ``error.message`` is deprecated)."""
ATTR_EXCEPTION_SPAN_ID: Final = "kiln_otel.exception.span_id"
"""On a run span's ``exception`` event: the span whose ``exception`` event records the same exception
with the frames this one leaves out (the failing model or tool call): one stack per failure."""
ATTR_MESSAGES_LAST_SPAN_ID: Final = "kiln_otel.messages.last_span_id"
"""On the run span at its end: the span holding the run's last list event, the run span itself or a
segment (paste it into Jaeger's "Find" box), so the messages just before a failure are found at once."""
ATTR_ERROR_SPAN_ID: Final = "kiln_otel.error.span_id"
"""On a run that failed because a nested run's error passed through it: that run's span id, so the
payload rebuilt from the trace id alone is the one the app got."""

SPAN_SEGMENT: Final = "kiln_otel.messages"
"""Child of the run span holding list events written while the run was going (live export).

Readers recognise segments by `ATTR_SEGMENT_INDEX`, never by this name."""
ATTR_SEGMENT_INDEX: Final = "kiln_otel.segment.index"
"""On every segment (from 1): what makes a span a segment of the run that is its parent."""
ATTR_SEGMENT_FIRST_SEQ: Final = "kiln_otel.segment.seq.first"
ATTR_SEGMENT_LAST_SEQ: Final = "kiln_otel.segment.seq.last"
ATTR_RUN_NAME: Final = "kiln_otel.run.name"
"""On segments: the run's name, so a run whose own span never ended can still be named."""
ATTR_RUN_PARENT_SPAN_ID: Final = "kiln_otel.run.parent_span_id"
"""On segments of a run that has a parent span: that span's id (nesting of runs that never ended)."""

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
ATTR_MESSAGE_EXCERPT: Final = "kiln_otel.message.excerpt"
"""One line of plain text, ``role: text`` (tool calls as ``→ get_weather({"city": "Lisbon"})``), from the
recorded (redacted) message; only when content is captured. Named to sort before the JSON: Jaeger
lists an event's attributes by name and cuts its one-line summary after the first long value."""
ATTR_MESSAGE_NULL_KEYS: Final = "kiln_otel.message.null_keys"
"""The message's top-level keys whose value was null, left out of its JSON and restored on rebuild."""
ATTR_MESSAGE_PARTIAL: Final = "kiln_otel.message.partial"
"""True on an assistant message assembled from a stream that broke off (`PARTIAL_MESSAGE_KEY`)."""
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

# --- Marks of the exporter: a span too large for one export request --------------------------
ATTR_EXPORT_CUT: Final = "kiln_otel.export.cut"
"""On a span (all its cuts) and on each event that lost something: string values cut at export."""
ATTR_EXPORT_ORIGINAL_SIZE: Final = "kiln_otel.export.original_size"
"""On a span cut at export: bytes of its OTLP encoding before the cut."""

# --- What reconstruction puts into a message it could not rebuild exactly ----------------------
MARKER_KEY: Final = "_kiln_otel"
"""Key added to a reconstructed message that is not the original: truncated, lossy or not captured."""
NOT_CAPTURED: Final = "[content not captured]"


# --- The litellm integration: model-call and tool-call spans, GenAI metrics ---------------------
# Span and attribute names below are GenAI semantic-convention names (v1.41, plus the incubating
# ``gen_ai.request.stream`` and ``gen_ai.response.time_to_first_chunk``) except the ``kiln_otel.``
# ones, which say what no convention covers yet.
OPERATION_CHAT: Final = "chat"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
ATTR_GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
ATTR_GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
ATTR_GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
ATTR_GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
ATTR_GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
ATTR_GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
ATTR_GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
ATTR_GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
ATTR_GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
ATTR_GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
ATTR_GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
ATTR_GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
ATTR_GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
ATTR_GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
ATTR_GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
"""Seconds from issuing a streamed request to receiving its first chunk."""
ATTR_GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
ATTR_GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
ATTR_GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
ATTR_GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
"""Opt-in: only when the run captures content, and redacted."""
ATTR_GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
"""Opt-in: only when the run captures content, and redacted."""
ATTR_GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
ATTR_SERVER_ADDRESS: Final = "server.address"
ATTR_SERVER_PORT: Final = "server.port"
TOOL_TYPE_FUNCTION: Final = "function"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

ATTR_USAGE_ESTIMATED: Final = "kiln_otel.usage.estimated"
"""True when the usage numbers are litellm's local tokenizer estimate, not the provider's count.

litellm reports an estimate that looks exactly like real usage for a stream requested without
``stream_options={"include_usage": True}``. Also set on the token-usage metric's data points.
"""
ATTR_STREAM_ABANDONED: Final = "kiln_otel.stream.abandoned"
"""True on a chat span whose stream the caller closed or dropped before its end (status stays UNSET)."""

METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# Keys the litellm integration puts INSIDE messages (so they travel in the message JSON).
PARTIAL_MESSAGE_KEY: Final = "kiln_otel_partial"
"""``True`` on an assistant message assembled from a stream that failed part-way: what arrived."""
TOOL_ERROR_KEY: Final = "is_error"
"""Kiln's key: ``True`` on a tool message that reports a failed tool call instead of a result."""
TOOL_ERROR_MESSAGE_KEY: Final = "error_message"
"""Kiln's key: the (redacted) error text of a failed tool call."""


def message_event_name(role: str) -> str:
    """Role in the name so a trace reader sees the conversation's shape without opening attributes."""
    return f"{EVENT_MESSAGE_PREFIX}.{role}" if role in KNOWN_ROLES else EVENT_MESSAGE_PREFIX


def run_span_name(agent_name: str | None) -> str:
    return f"{OPERATION_INVOKE_AGENT} {agent_name}" if agent_name else OPERATION_INVOKE_AGENT


def chat_span_name(model: str | None) -> str:
    return f"{OPERATION_CHAT} {model}" if model else OPERATION_CHAT


def tool_span_name(tool_name: str | None) -> str:
    return f"{OPERATION_EXECUTE_TOOL} {tool_name}" if tool_name else OPERATION_EXECUTE_TOOL
