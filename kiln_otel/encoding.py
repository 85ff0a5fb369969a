"""Pure conversions between a message and its span-event attributes, in both directions.

Everything that decides what a message looks like on the wire is here, and nothing here touches a
span: the recorder decides where events go, this module decides what they say. Keeping the two apart
is what will let a log-record mode (OTEP 4430) reuse the same encoding later.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

import orjson
import pydantic_core

from kiln_otel import wire
from kiln_otel.bounded import bound_text, cut_utf8, fits_utf8, redacted_head, utf8_size
from kiln_otel.config import Settings
from kiln_otel.json_input import loads
from kiln_otel.message_text import as_text, content_text, one_line
from kiln_otel.redaction import RedactHook

__all__ = [
    "EXCERPT_CHARS",
    "EXCERPT_MAX_BYTES",
    "EncodedMessage",
    "approximate_json",
    "bound_json",
    "encode_message",
    "message_excerpt",
    "message_from_event",
    "message_json",
    "message_role",
    "record_json",
    "restore_nulls",
    "serialize",
    "to_jsonable",
    "truncate_json",
]

_MAX_DEPTH = 64
_SURROGATES = re.compile("[\ud800-\udfff]")
_TRUNCATION_SUFFIX = "…[truncated]"
_PLACEHOLDER_OPEN, _PLACEHOLDER_CLOSE = "\ue000", "\ue001"
"""Private-use characters: no rule matches them, and JSON carries them unescaped."""

_EVENT_NAMES = {role: wire.message_event_name(role) for role in wire.KNOWN_ROLES}
_UNREADABLE: Any = object()
_ABSENT: Any = object()
_DIGIT_LIMIT = sys.get_int_max_str_digits()
_MAX_INT_BITS = int((_DIGIT_LIMIT - 1) * 3.3219) if _DIGIT_LIMIT else 0
"""Ints with more bits may have more digits than Python will read back (``int`` refuses them): not JSON."""
_WALKED = frozenset({dict, list, tuple, int})
_orjson_dumps = orjson.dumps
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Datetimes and dataclasses are pydantic_core's to write, as they always were (its formats)."""

EncodedMessage = tuple[str, dict[str, Any], int]
"""(event name, event attributes, bytes counted against the span budget)."""


def _field(message: Any, key: str) -> Any:
    """Messages arrive as dicts or as litellm's pydantic ``Message`` objects; read both the same way.

    A pydantic model's fields are read where pydantic keeps them: its ``__dict__``, then its extras,
    where litellm keeps a tool call's ``id`` and ``function`` (``getattr`` finds those only through
    pydantic's ``__getattr__``, about 0.5 us a read). Anything else, including a model's properties,
    goes through ``getattr``.
    """
    if type(message) is dict or isinstance(message, Mapping):
        return message.get(key)
    if hasattr(type(message), "__pydantic_fields__"):
        value = message.__dict__.get(key, _ABSENT)
        if value is not _ABSENT:
            return value
        extra = message.__pydantic_extra__
        if extra and key in extra:
            return extra[key]
    return getattr(message, key, None)


def _role_or_unreadable(message: Any) -> Any:
    try:
        return message.get("role") if type(message) is dict else _field(message, "role")
    except Exception:  # a property that raises: the message is recorded anyway, marked lossy
        return _UNREADABLE


def message_role(message: Any) -> str | None:
    """The message's role, or None when it has none, not a string, or reading it raises."""
    role = _role_or_unreadable(message)
    return role if isinstance(role, str) else None


def serialize(message: Any) -> tuple[bytes, bool]:
    """UTF-8 JSON of the message and whether it had to be approximated (the lossy flag).

    orjson writes plain JSON data (dicts, lists, strings, numbers) about seven times faster than
    ``json.dumps``, and refuses by itself what would not come back as it went: a non-string key
    (``{1: "a", "1": "b"}`` would come back as one key), an int over 64 bits, lone surrogates,
    cycles. It writes NaN and infinities as ``null``, so JSON holding ``null`` is written again by
    pydantic_core (``NaN``, ``Infinity``). Anything else (pydantic models, datetimes, sets, long ints)
    takes pydantic_core's path, which checks what it cannot give back; what neither can write is
    approximated.
    """
    raw, _, lossy = _serialize(message)
    return raw, lossy


def _serialize(message: Any) -> tuple[bytes, str, bool]:
    """`serialize`, with the JSON also as text (what an event records; searched as text, it is cheaper)."""
    try:
        raw = _orjson_dumps(message, default=_not_plain, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: not plain JSON data
        raw, lossy = _serialize_carefully(message)
        return raw, raw.decode(), lossy
    text = raw.decode()
    if "null" not in text:
        return raw, text, False
    try:  # keys and ints already passed orjson: only NaN and infinities are to be written apart
        raw = pydantic_core.to_json(message, inf_nan_mode="constants")
    except Exception:
        raw, lossy = _serialize_carefully(message)
        return raw, raw.decode(), lossy
    return raw, raw.decode(), False


def _not_plain(value: Any) -> Any:
    raise TypeError


def _serialize_carefully(message: Any) -> tuple[bytes, bool]:
    """pydantic_core handles models, datetimes and sets; what it accepts but cannot give back (non-string
    keys, ints too long for Python to read) or refuses (cycles, lone surrogates, arbitrary objects)
    is approximated and marked lossy."""
    try:
        raw = pydantic_core.to_json(message, inf_nan_mode="constants")
    except Exception:
        return approximate_json(message).encode(), True
    if _round_trips(message):
        return raw, False
    return approximate_json(message).encode(), True


def _round_trips(value: Any) -> bool:
    """No non-string key and no over-long int in the dicts and lists of ``value``; no recursion.

    Called only after pydantic_core serialized the value, so it holds no cycle. Strings, the bulk of
    a message, are never looked at.
    """
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict or (kind not in _WALKED and isinstance(item, dict)):
            for key, inner in item.items():
                if type(key) is not str and not isinstance(key, str):
                    return False
                if type(inner) in _WALKED:
                    push(inner)
        elif kind is list or kind is tuple:
            for inner in item:
                if type(inner) in _WALKED:
                    push(inner)
        elif kind is int and _MAX_INT_BITS and item.bit_length() > _MAX_INT_BITS:
            return False
    return True


def approximate_json(value: Any) -> str:
    """Best-effort JSON for anything: cycles, unknown objects and bad unicode become readable text."""
    return json.dumps(_approximate(value, (), 0), ensure_ascii=False, allow_nan=True)


def _approximate(value: Any, path: tuple[int, ...], depth: int) -> Any:
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return _approximate_int(value)
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if id(value) in path:
        return "[cycle]"
    if depth >= _MAX_DEPTH:
        return "[too deep]"
    inner = (*path, id(value))
    if isinstance(value, Mapping):
        return _approximate_mapping(value, inner, depth)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_approximate(v, inner, depth + 1) for v in value]
    return _approximate_object(value, inner, depth)


def _approximate_int(value: int) -> int | str:
    if _MAX_INT_BITS and value.bit_length() > _MAX_INT_BITS:
        return f"[an integer of about {int(value.bit_length() * 0.30103) + 1} digits]"
    return value


def _approximate_mapping(value: Mapping[Any, Any], path: tuple[int, ...], depth: int) -> dict[str, Any]:
    """String keys keep their name; another key becomes text, renamed if that text is taken."""
    try:
        items = list(value.items())
    except Exception:
        return {"[unreadable]": _safe_repr(value)}
    taken = {key for key, _ in items if isinstance(key, str)}
    result: dict[str, Any] = {}
    for key, item in items:
        if isinstance(key, str):
            text = str(_SURROGATES.sub("\ufffd", key))
        else:
            text = base = _approximate_key(key)
            suffix = 1
            while text in taken or text in result:
                suffix += 1
                text = f"{base} ({type(key).__name__}{'' if suffix == 2 else f' {suffix - 1}'})"
        result[text] = _approximate(item, path, depth + 1)
    return result


def _approximate_key(key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return str(_approximate_int(key))
    return str(_SURROGATES.sub("\ufffd", _safe_repr(key)))


def _approximate_object(value: Any, path: tuple[int, ...], depth: int) -> Any:
    try:
        plain = pydantic_core.to_jsonable_python(value)
    except Exception:
        return _safe_repr(value)
    if plain is value:
        return _safe_repr(value)
    return _approximate(plain, path, depth + 1)


def _safe_repr(value: Any) -> str:
    try:
        return _SURROGATES.sub("\ufffd", repr(value))
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def to_jsonable(message: Any) -> Any:
    """The message as plain JSON data, exactly as it would be rebuilt from its event."""
    raw, _ = serialize(message)
    return json.loads(raw)


def truncate_json(text: str, budget: int) -> str:
    """Shrink JSON text under ``budget`` UTF-8 bytes by cutting its longest strings; stays valid JSON.

    Cutting strings (not the text) keeps the message's shape: role, ids and keys survive, so a
    truncated tool result still reads as a tool result. Binary search on the longest kept string.
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    fitted = _fit_strings(value, budget)
    if fitted is not None:
        return fitted[1]
    return _head_as_json(text, budget, None)


def bound_json(text: str, budget: int, redact: RedactHook | None) -> str:
    """`truncate_json` that masks secrets before anything is cut, reading little more than it keeps.

    Each string longer than the cut is masked in a window just past the cut (`bounded`), so a
    secret straddling it is masked whole and one beyond it is never read. The rest of the message is
    then redacted as a whole, each long string standing in as a short placeholder: that finds the
    secret-named fields (a placeholder a field rule masks takes its string with it) without reading
    the long strings twice.
    """
    if redact is None:
        return truncate_json(text, budget)
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    fitted = _fit_strings(value, budget)
    if fitted is None:
        return _head_as_json(text, budget, redact)
    # Cut strings go behind placeholders, put back after the whole is masked; where the text holds
    # something placeholder-like they would be ambiguous, so the cut strings are masked in place.
    heads: dict[str, str] | None = None if _PLACEHOLDER_OPEN in text else {}
    masked = redact(_dumps(_cut_strings(value, fitted[0], redact, heads)))
    for placeholder, head in (heads or {}).items():
        masked = masked.replace(placeholder, _dumps(head)[1:-1], 1)
    return masked if utf8_size(masked) <= budget else truncate_json(masked, budget)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def _fit_strings(value: Any, budget: int) -> tuple[int, str] | None:
    """The longest string length that makes ``value`` fit ``budget`` bytes, with the JSON it gives."""
    low, high = 0, _longest_string(value)
    best = None
    while low <= high:
        mid = (low + high) // 2
        candidate = _dumps(_cut_strings(value, mid))
        if len(candidate.encode()) <= budget:
            best, low = (mid, candidate), mid + 1
        else:
            high = mid - 1
    return best


def _head_as_json(text: str, budget: int, redact: RedactHook | None) -> str:
    """Even empty strings do not fit: the structure itself is too large. Keep a readable head."""
    head, _ = bound_text(text, max(budget // 2, 0), redact)
    return json.dumps(head, ensure_ascii=False)


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((_longest_string(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


def _cut_strings(value: Any, limit: int, redact: RedactHook | None = None, heads: dict[str, str] | None = None) -> Any:
    """Strings over ``limit`` cut (masked first when ``redact``); into ``heads`` behind placeholders."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        head = redacted_head(value, limit, redact)[:limit] + _TRUNCATION_SUFFIX
        if heads is None:
            return head
        placeholder = f"{_PLACEHOLDER_OPEN}{len(heads)}{_PLACEHOLDER_CLOSE}"
        heads[placeholder] = head
        return placeholder
    if isinstance(value, dict):
        return {k: _cut_strings(v, limit, redact, heads) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, limit, redact, heads) for v in value]
    return value


def _tool_call_attributes(message: Any, role: str | None, attributes: dict[str, Any]) -> str | None:
    """The tool attributes of a tool or assistant message; for tool calls also their excerpt text
    (``get_weather({...}), ...``), made in the same pass."""
    if role == "tool":
        call_id = _field(message, "tool_call_id")
        if isinstance(call_id, str):
            attributes[wire.ATTR_GEN_AI_TOOL_CALL_ID] = call_id
        name = _field(message, "name")
        if isinstance(name, str):
            attributes[wire.ATTR_GEN_AI_TOOL_NAME] = name
        return None
    calls = message.get("tool_calls") if type(message) is dict else _field(message, "tool_calls")
    if not calls or not isinstance(calls, (list, tuple)):
        return None
    ids, names, shown = [], [], []
    for call in calls:
        if type(call) is dict:  # inlined `_call_parts` and `_call_excerpt`: this runs for every tool call recorded
            function = call.get("function")
            call_id = call.get("id")
            call_id = call_id if type(call_id) is str else str(call_id or "")
            if type(function) is dict:
                name, arguments = function.get("name"), function.get("arguments")
            else:
                name, arguments = _field(function, "name"), _field(function, "arguments")
            name = name if type(name) is str else str(name or "")
            shown.append(f"{name}({arguments if type(arguments) is str else as_text(arguments)})")
        else:
            call_id, name, function = _call_parts(call)
            shown.append(_call_excerpt(name, function))
        ids.append(call_id)
        names.append(name)
    attributes[wire.ATTR_MESSAGE_TOOL_CALL_IDS] = tuple(ids)
    attributes[wire.ATTR_MESSAGE_TOOL_NAMES] = tuple(names)
    return ", ".join(shown)


def _call_parts(call: Any) -> tuple[str, str, Any]:
    """(id, name, function) of a tool call, a dict or an object (litellm's), "" for what is missing."""
    if type(call) is dict:
        call_id, function = call.get("id"), call.get("function")
    else:
        call_id, function = _field(call, "id"), _field(call, "function")
    return str(call_id or ""), str(_field(function, "name") or ""), function


def record_json(message: Any) -> tuple[bytes, bool, tuple[str, ...]]:
    """The JSON a message's event records, whether it was approximated, and its top-level null keys.

    litellm's messages carry ``content: null`` next to tool calls and ``function_call``,
    ``provider_specific_fields``, ``audio``, ``refusal``... set to null: they fill a trace viewer's
    box and say nothing. So the event's JSON leaves out every top-level key whose value is null and
    names them (``kiln_otel.message.null_keys``); rebuilding puts them back (`restore_nulls`), so the
    rebuilt message still equals the original. Nulls deeper in the message are kept as they are.
    """
    raw, _, lossy, nulls = _record(message)
    return raw, lossy, nulls


def _record(message: Any) -> tuple[bytes, str, bool, tuple[str, ...]]:
    """`record_json`, with the JSON also as text."""
    if type(message) is dict:
        try:
            stripped, nulls = (message, ()) if None not in message.values() else _drop_nulls(message)
        except Exception:  # a value whose == raises (a numpy array): look by identity instead
            stripped, nulls = _drop_nulls(message)
        raw, text, lossy = _serialize(stripped)
        return raw, text, lossy, nulls
    nulls = _model_nulls(message)
    if nulls:
        try:  # a pydantic model (litellm's Message): its own serializer, without the null fields
            raw = pydantic_core.to_json(message, inf_nan_mode="constants", exclude=set(nulls))
            return raw, raw.decode(), False, nulls
        except Exception:
            pass
    raw, text, lossy = _serialize(message)
    return raw, text, lossy, ()


def _model_nulls(message: Any) -> tuple[str, ...]:
    """The null fields (and extras) of a pydantic model that writes them under their own names."""
    cls = type(message)
    fields = getattr(message, "__dict__", None)
    if fields is None or not hasattr(cls, "__pydantic_serializer__"):
        return ()
    config = getattr(cls, "model_config", None)
    if isinstance(config, Mapping) and config.get("serialize_by_alias"):
        return ()
    nulls = [key for key, value in fields.items() if value is None]
    extra = getattr(message, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        nulls += [key for key, value in extra.items() if value is None and type(key) is str]
    return tuple(nulls)


def _drop_nulls(message: dict[Any, Any]) -> tuple[dict[Any, Any], tuple[str, ...]]:
    nulls = tuple([key for key, value in message.items() if value is None and type(key) is str])
    if not nulls:
        return message, ()
    return {key: value for key, value in message.items() if value is not None or type(key) is not str}, nulls


def restore_nulls(value: Any, nulls: Any) -> Any:
    """Put back the top-level null keys an event's JSON left out (after the others: order is not kept)."""
    if isinstance(value, dict) and isinstance(nulls, (list, tuple)):
        for key in nulls:
            if isinstance(key, str):
                value.setdefault(key, None)
    return value


_INDEX = wire.ATTR_MESSAGE_INDEX
_EXCERPT = wire.ATTR_MESSAGE_EXCERPT
_JSON = wire.ATTR_MESSAGE_JSON
_NULL_KEYS = wire.ATTR_MESSAGE_NULL_KEYS


def encode_message(message: Any, index: int, settings: Settings) -> EncodedMessage:
    """The event for one inserted message: structure always, content when capture is on.

    A message whose fields cannot be read (a property that raises) is still recorded, marked lossy.
    """
    plain = type(message) is dict
    read_role = message.get("role") if plain else _role_or_unreadable(message)
    role = read_role if type(read_role) is str or isinstance(read_role, str) else None
    attributes: dict[str, Any] = {_INDEX: index}
    event_name = _EVENT_NAMES.get(role)  # type: ignore[arg-type]
    if event_name is None:
        event_name = wire.message_event_name(role or "")
        if role is not None:
            attributes[wire.ATTR_MESSAGE_ROLE] = role
    unreadable = read_role is _UNREADABLE
    calls = None
    if role == "assistant" or role == "tool":
        try:
            calls = _tool_call_attributes(message, role, attributes)
        except Exception:
            unreadable = True
        if plain and role == "assistant" and message.get(_PARTIAL) is True:
            attributes[wire.ATTR_MESSAGE_PARTIAL] = True
    raw, text, lossy, nulls = _record(message)
    if lossy or unreadable:
        attributes[wire.ATTR_MESSAGE_LOSSY] = True
    if not settings.capture_content:
        attributes[wire.ATTR_MESSAGE_CAPTURED] = False
        attributes[wire.ATTR_MESSAGE_SIZE] = len(raw)
        return event_name, attributes, 64
    budget = settings.max_message_bytes
    text, truncated, masked = _recorded_text(raw, text, budget, settings.redact)
    if truncated:
        attributes[wire.ATTR_MESSAGE_TRUNCATED] = True
        attributes[wire.ATTR_MESSAGE_SIZE] = len(raw)
    if nulls:
        attributes[_NULL_KEYS] = nulls
    trusted = not (masked or truncated or unreadable or lossy)  # else the excerpt reads what was recorded
    excerpt = _excerpt(message if trusted else None, calls if trusted else None, text, role, budget)
    attributes[_EXCERPT] = excerpt
    attributes[_JSON] = text
    size = len(raw)
    return event_name, attributes, (size if size < budget else budget) + len(excerpt)


def message_json(raw: bytes, budget: int, redact: RedactHook | None) -> tuple[str, bool]:
    """A message's JSON as recorded: redacted, then cut under ``budget`` bytes; and whether it was cut."""
    text, truncated, _ = _recorded_text(raw, raw.decode(), budget, redact)
    return text, truncated


def _recorded_text(raw: bytes, text: str, budget: int, redact: RedactHook | None) -> tuple[str, bool, bool]:
    """`message_json` (``text`` is ``raw`` decoded), and whether redaction changed anything (then the
    JSON is all a reader may see)."""
    if len(raw) > budget:
        return bound_json(text, budget, redact), True, True
    if redact is not None:
        masked = redact(text)
        if masked is not text and masked != text:
            if not fits_utf8(masked, budget):  # the masks made it longer than the budget
                return truncate_json(masked, budget), True, True
            return masked, False, True
    return text, False, False


# --- The excerpt: one line a trace viewer shows before the JSON -----------------------------------

EXCERPT_CHARS = 100
"""Characters of a message's text (content, then tool calls) in its excerpt, after the role."""
EXCERPT_MAX_BYTES = 512
"""An excerpt is at most this many UTF-8 bytes (and never more than the per-message budget)."""
_EXCERPT_ALWAYS_FITS = EXCERPT_MAX_BYTES // 4
_PARTIAL = wire.PARTIAL_MESSAGE_KEY
_TOOL_ERROR = wire.TOOL_ERROR_KEY
_CONTENT_BEFORE_CALLS = 60
"""Characters of text kept before a message's tool calls: the calls matter more."""


def _excerpt(message: Any, calls: str | None, recorded: str, role: str | None, budget: int) -> str:
    """From the message itself when its recorded JSON is exactly its JSON, else from what was
    recorded (redacted, cut): the excerpt must never show what the JSON does not."""
    try:
        if message is None:
            message = loads(recorded)
        text = message_excerpt(message, role, calls)
    except Exception:  # unreadable fields, unparseable JSON: the JSON's own head still reads
        text = None
    if text is None:
        text = f"{role or 'message'}: {_head(recorded)}"
    if len(text) * 4 <= budget and len(text) <= _EXCERPT_ALWAYS_FITS:
        return text
    return cut_utf8(text, EXCERPT_MAX_BYTES if budget > EXCERPT_MAX_BYTES else budget)


def message_excerpt(message: Any, role: str | None, calls: str | None = None) -> str | None:
    """``role: text`` in one line, the text's first `EXCERPT_CHARS` characters, tool calls as
    ``→ get_weather({"city": "Lisbon"})``; None when ``message`` has no fields to read (not a message).

    ``calls``: the tool calls' text when the caller already made it (`_tool_call_attributes`).
    """
    if type(message) is dict or isinstance(message, Mapping):
        get = message.get
    elif hasattr(message, "__dict__") and not isinstance(message, type):
        get = message.__dict__.get
    else:
        return None
    content = get("content")
    text = content if type(content) is str else content_text(content)
    if role == "assistant":
        label = "assistant (stream cut)" if get(_PARTIAL) is True else role
        if calls is None:
            found = get("tool_calls")
            if found and isinstance(found, (list, tuple)):
                calls = ", ".join([_call_excerpt(*_call_parts(call)[1:]) for call in found])
    elif role == "tool":
        label = "tool (error)" if get(_TOOL_ERROR) is True else role
    else:
        label = role or "message"
    if not calls:
        return f"{label}: {_head(text)}"
    if text:
        return f"{label}: {_head(text, _CONTENT_BEFORE_CALLS)} → {_head(calls)}"
    return f"{label}: → {_head(calls)}"


def _head(text: str, chars: int = EXCERPT_CHARS) -> str:
    if len(text) <= chars:
        return one_line(text) if "\n" in text else text
    head = text[:chars]
    if "\n" in head:
        head = one_line(head)
    return f"{head}…"


def _call_excerpt(name: str, function: Any) -> str:
    """``name({"city": "Lisbon"})``: the arguments as the model wrote them (cut-off JSON shows as cut)."""
    arguments = function.get("arguments") if type(function) is dict else _field(function, "arguments")
    return f"{name}({arguments if type(arguments) is str else as_text(arguments)})"


def _role_from_event(name: str, attributes: Mapping[str, Any]) -> str | None:
    role = attributes.get(wire.ATTR_MESSAGE_ROLE)
    if isinstance(role, str):
        return role
    prefix = wire.EVENT_MESSAGE_PREFIX + "."
    return name[len(prefix) :] if name.startswith(prefix) else None


def _skeleton(role: str | None, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """What a message without captured content still says: who spoke, and which tools were involved."""
    message: dict[str, Any] = {"role": role, "content": wire.NOT_CAPTURED}
    call_id = attributes.get(wire.ATTR_GEN_AI_TOOL_CALL_ID)
    if call_id is not None:
        message["tool_call_id"] = call_id
    ids = list(attributes.get(wire.ATTR_MESSAGE_TOOL_CALL_IDS) or ())
    names = list(attributes.get(wire.ATTR_MESSAGE_TOOL_NAMES) or ())
    if ids:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": wire.NOT_CAPTURED}}
            for i, n in zip(ids, names)
        ]
    return message


def message_from_event(name: str, attributes: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The message an event describes, and the marks saying how it differs from the original.

    Marks (``truncated``/``original_size``, ``lossy``, ``captured``) are returned apart so the caller
    decides whether to attach them; they are never silently dropped.
    """
    marks: dict[str, Any] = {}
    if attributes.get(wire.ATTR_MESSAGE_TRUNCATED):
        marks["truncated"] = True
        marks["original_size"] = attributes.get(wire.ATTR_MESSAGE_SIZE)
    if attributes.get(wire.ATTR_MESSAGE_LOSSY):
        marks["lossy"] = True
    text = attributes.get(wire.ATTR_MESSAGE_JSON)
    if not isinstance(text, str):
        marks["captured"] = False
        marks["size"] = attributes.get(wire.ATTR_MESSAGE_SIZE)
        return _skeleton(_role_from_event(name, attributes), attributes), marks
    try:
        return restore_nulls(loads(text), attributes.get(wire.ATTR_MESSAGE_NULL_KEYS)), marks
    except ValueError:
        marks["unparseable"] = True
        return {"role": _role_from_event(name, attributes), "content": text}, marks
