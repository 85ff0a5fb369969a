"""The default Redactor: every planted secret masked, ordinary text untouched, JSON always valid.

What leaves the process through each integration (spans, payloads, logs, the pipeline) is checked in
``test_secrets_everywhere.py``; this module checks the redactor and the redact-then-bound primitives.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln_otel import Redactor, traced_run, wire
from kiln_otel import redaction as redaction_module
from kiln_otel.bounded import bound_text, utf8_size
from kiln_otel.config import resolve_settings
from kiln_otel.encoding import bound_json, encode_message, record_json, serialize
from kiln_otel.redaction import MARGIN
from kiln_otel.secret_shapes import is_placeholder
from tests.conftest import Tracing
from tests.secret_corpus import ALL_SECRETS, PLANTED, Planted, leaks, ordinary_messages

KEY = "sk-proj-AbCdEfGhIjKlMnOpQrSt1234"


def _forms(text: str) -> dict[str, str]:
    """The ways a secret reaches the redactor: as text, in a message's JSON, in a tool result's JSON
    inside that JSON, and in a Python repr (an exception's text often is one)."""
    return {
        "text": text,
        "message": json.dumps({"role": "user", "content": text}),
        "message_ascii_escaped": json.dumps({"role": "user", "content": text}, ensure_ascii=True),
        "tool_result_json": json.dumps({"role": "tool", "content": json.dumps({"output": text})}),
        "repr": repr({"content": text}),
    }


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: p.name)
def test_every_planted_secret_is_masked_in_every_form(planted: Planted) -> None:
    redact = Redactor()
    for form, text in _forms(planted.text).items():
        masked = redact(text)
        assert not leaks(masked), (form, masked)
        assert "[REDACTED:" in masked, (form, masked)
        if form != "text" and form != "repr":
            json.loads(masked)
    assert redact.masked >= len(_forms(planted.text))


def test_the_planted_corpus_covers_the_issue() -> None:
    """Issue 9 counted 37 kinds; the corpus has more, each under its own name."""
    names = [p.name for p in PLANTED]
    assert len(names) == len(set(names)) >= 37 + 30


def test_masks_name_what_they_hide() -> None:
    redact = Redactor()
    basic = "headers={'Authorization': 'Basic dXNlcjpwYXNz'}"
    kwargs = "litellm.completion(api_key='abc123', model='x')"
    fields = '{"client_secret": "c", "password": "p"}'
    cases = {
        f"my key is {KEY}.": "my key is [REDACTED:openai_key].",
        "Authorization: Bearer abc.def.ghi12345": "Authorization: Bearer [REDACTED:authorization]",
        basic: "headers={'Authorization': 'Basic [REDACTED:authorization]'}",
        "https://h/x?api_key=abc123&b=1": "https://h/x?api_key=[REDACTED:api_key]&b=1",
        kwargs: "litellm.completion(api_key='[REDACTED:api_key]', model='x')",
        '{"x-api-key": "abc"}': '{"x-api-key": "[REDACTED:api_key]"}',
        fields: '{"client_secret": "[REDACTED:secret]", "password": "[REDACTED:password]"}',
        "postgres://user:hunter2@db/x": "postgres://user:[REDACTED:url_password]@db/x",
        "password: hunter2": "password: [REDACTED:password]",
        "AKIAIOSFODNN7EXAMPLE": "[REDACTED:aws_access_key_id]",
        "nothing to see here": "nothing to see here",
    }
    for text, expected in cases.items():
        assert redact(text) == expected


def test_the_defects_issue_9_found() -> None:
    redact = Redactor()
    # An unmatched quote no longer runs across the JSON: it stays valid and equal.
    message = json.dumps({"content": "set password='", "b": "it's", "name": "O'Brien"})
    assert redact(message) == message
    # Ordinary prose about keys is left alone.
    assert redact("I have a basic question about my API key") == "I have a basic question about my API key"
    # An sk- key glued to a word, and a secret-named field whose value is a list.
    assert redact(f"mykey{KEY}") == "mykey[REDACTED:openai_key]"
    assert json.loads(redact('{"secret": ["a1", "b2"], "n": 1}')) == {
        "secret": ["[REDACTED:secret]", "[REDACTED:secret]"],
        "n": 1,
    }


def test_json_inside_json_at_any_depth_stays_valid() -> None:
    document: Any = {"api_key": "hunter2", "n": 1}
    for _ in range(4):
        document = {"role": "tool", "content": json.dumps(document)}
    masked = json.loads(Redactor()(json.dumps(document)))
    for _ in range(4):
        masked = json.loads(masked["content"])
    assert masked == {"api_key": "[REDACTED:api_key]", "n": 1}


def test_extra_patterns_callback_and_replacement() -> None:
    redact = Redactor(patterns=[r"cust-\d+"], callback=lambda t: t.replace("ACME", "[ORG]"), replacement="***")
    assert redact(f"ACME cust-42 {KEY}") == "[ORG] *** ***"
    assert "patterns=1" in repr(redact)
    assert redact.masked == 2


def test_forks_count_apart_and_compare_equal() -> None:
    shared = Redactor()
    first, second = resolve_settings(redact=shared).redact, resolve_settings(redact=shared).redact
    assert isinstance(first, Redactor)
    assert isinstance(second, Redactor)
    assert first is not second
    assert first == second == shared
    first(KEY)
    assert (first.masked, second.masked, shared.masked) == (1, 0, 0)
    assert Redactor(patterns=["x"]) != shared


def test_the_prefilter_is_the_rust_engine() -> None:
    """Without it every message would take the slow path; if pydantic_core ever stops searching
    (or is built without the Rust engine) the check below falls back, never lets a secret through."""
    assert redaction_module._searches()
    assert redaction_module._clean("an ordinary sentence about tokens and keys.")
    assert redaction_module._clean not in (redaction_module._never_clean, redaction_module._clean_first)
    assert not any(redaction_module._clean(p.text) for p in PLANTED)


def test_importing_kiln_otel_builds_no_rule_and_the_first_text_builds_them_all() -> None:
    """The rules cost ~10 ms to build: an import must not pay it, the first redaction must."""
    script = (
        "import kiln_otel, kiln_otel.redaction as r\n"
        "assert r._clean is r._clean_first and not hasattr(r, '_FIELD')\n"
        f"assert kiln_otel.Redactor()({PLANTED[0].text!r}) != {PLANTED[0].text!r}\n"
        "assert r._clean is not r._clean_first and r._FIELD and r._SHAPE_GROUPS\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_text_the_prefilter_cannot_read_is_still_masked() -> None:
    text = f"lone \ud800 surrogate then {KEY}"
    assert Redactor()(text) == "lone \ud800 surrogate then [REDACTED:openai_key]"


# --- precision ---------------------------------------------------------------------------------------
ORDINARY = ordinary_messages()


def test_the_precision_corpus_is_large() -> None:
    assert len(ORDINARY) >= 200
    assert len({json.dumps(m) for m in ORDINARY}) == len(ORDINARY)


@pytest.mark.parametrize("index", range(len(ORDINARY)))
def test_ordinary_messages_are_unchanged(index: int) -> None:
    message = ORDINARY[index]
    redact = Redactor()
    for text in (
        json.dumps(message),
        json.dumps(message, ensure_ascii=False),
        json.dumps(message, separators=(",", ":")),
        *([message["content"]] if isinstance(message.get("content"), str) else []),
    ):
        assert redact(text) == text
    event = encode_message(message, 0, resolve_settings())[1]
    assert event[wire.ATTR_MESSAGE_JSON] == record_json(message)[0].decode()
    assert redact.masked == 0


# --- the JSON property -------------------------------------------------------------------------------
_SNIPPETS = st.sampled_from(
    [
        *(p.text for p in PLANTED),
        "password='",
        "O'Brien",
        'say "hi"',
        "back\\slash",
        "token: 12",
        "api_key=",
        "Authorization: ",
        '{"password": ',
        "'api_key': [",
        "\\u00e9",
        "-----BEGIN PRIVATE KEY-----\nabc",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=30),
    _SNIPPETS,
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), _SNIPPETS, st.text(max_size=8)),
)
_KEYS = st.one_of(
    st.sampled_from(["password", "api_key", "token", "secret", "credentials", "authorization", "X-Api-Key", "cookie"]),
    st.from_regex(r"[a-z_ ]{0,12}", fullmatch=True),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=15,
)


def _same_structure(before: Any, after: Any) -> bool:
    """Equal except string leaves: same keys in the same order, same lengths, same non-strings."""
    if isinstance(before, dict):
        return (
            isinstance(after, dict)
            and list(before) == list(after)
            and all(_same_structure(before[k], after[k]) for k in before)
        )
    if isinstance(before, list):
        return isinstance(after, list) and len(before) == len(after) and all(map(_same_structure, before, after))
    if isinstance(before, str):
        return isinstance(after, str)
    if isinstance(before, float) and math.isnan(before):
        return isinstance(after, float) and math.isnan(after)
    return type(before) is type(after) and before == after


@settings(max_examples=400)
@given(content=_JSON, ascii=st.booleans(), depth=st.integers(min_value=0, max_value=2))
def test_any_json_message_stays_valid_json_of_the_same_structure(content: Any, ascii: bool, depth: int) -> None:
    message: Any = {"role": "user", "content": content}
    for _ in range(depth):
        message = {"role": "tool", "content": json.dumps(message, ensure_ascii=ascii)}
    masked = Redactor()(json.dumps(message, ensure_ascii=ascii))
    assert _same_structure(message, json.loads(masked))


SECRET_FIELD = st.sampled_from(["api_key", "apiKey", "API-KEY", "authorization", "access_token", "password", "token"])
VALUE = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=6, max_size=30).filter(
    lambda v: v.strip() and any(c.isdigit() for c in v) and not is_placeholder(v)
)
PAYLOAD = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(field=SECRET_FIELD, secret=VALUE, payload=PAYLOAD, depth=st.integers(min_value=0, max_value=3))
def test_secret_fields_never_survive_and_json_stays_valid(field: str, secret: str, payload: object, depth: int) -> None:
    """Tool results often hold JSON inside a JSON string, sometimes nested further."""
    document: object = {"role": "user", "content": payload, field: secret}
    for _ in range(depth):
        document = {"role": "tool", "content": json.dumps(document)}
    masked = Redactor()(json.dumps(document, ensure_ascii=False))
    decoded = json.loads(masked)
    for _ in range(depth):
        decoded = json.loads(decoded["content"])
    assert "[REDACTED:" in decoded[field]
    assert secret not in decoded[field]


@given(
    prefix=st.text(max_size=30),
    suffix=st.text(max_size=30),
    body=st.from_regex(r"[A-Za-z0-9_\-]{15,40}[0-9A-Z]", fullmatch=True),
)
def test_sk_keys_never_survive(prefix: str, suffix: str, body: str) -> None:
    key = f"sk-{body}"
    masked = Redactor()(f"{prefix} {key} {suffix}")
    assert not re.search(re.escape(key) + r"(?![A-Za-z0-9_\-])", masked)


# --- redact, then bound -----------------------------------------------------------------------------
@settings(max_examples=200)
@given(
    secret=st.sampled_from(ALL_SECRETS),
    before=st.integers(min_value=0, max_value=3000),
    budget=st.integers(min_value=200, max_value=4000),
)
def test_a_secret_at_any_offset_never_survives_a_cut(secret: str, before: int, budget: int) -> None:
    planted = next(p for p in PLANTED if secret in p.secrets)
    text = "x" * before + " " + planted.text + " " + "y" * 5000
    recorded, size = bound_text(text, budget, Redactor())
    assert size == utf8_size(text)
    assert utf8_size(recorded) <= budget
    assert recorded.endswith(f"…[truncated, {size} bytes]")
    assert not leaks(recorded), recorded


def test_a_cut_never_leaves_half_a_key() -> None:
    """The issue's case: cut first (at 300), and ``sk-proj-Ab`` was left, which no pattern matches."""
    for offset in range(260, 310):
        text = "p" * offset + " " + KEY + " and more"
        recorded, _ = bound_text(text, 300, Redactor())
        assert "sk-proj-Ab" not in recorded
        assert KEY[:12] not in recorded


def test_an_unterminated_private_key_is_masked_to_the_end_of_the_window() -> None:
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" * 2000
    text = "key follows: -----BEGIN PRIVATE KEY-----\n" + body
    recorded, _ = bound_text(text, 1000, Redactor())
    assert recorded.startswith("key follows: [REDACTED:private_key]…[truncated, ")
    assert "MIIEvQIB" not in recorded


def test_only_a_window_past_the_cut_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps a 50 MB tool result cheap: the redactor reads the kept part plus MARGIN, not 50 MB."""
    seen: list[int] = []
    original = Redactor.spans

    def spy(self: Redactor, text: str, truncated: bool = False) -> Any:
        seen.append(len(text))
        return original(self, text, truncated)

    monkeypatch.setattr(Redactor, "spans", spy)
    huge = ("lorem ipsum api_key=abc123 " * 200_000)[:5_000_000]
    recorded, size = bound_text(huge, 65536, Redactor())
    assert size == 5_000_000
    assert utf8_size(recorded) <= 65536
    assert seen
    assert max(seen) <= 65536 + MARGIN
    assert "abc123" not in recorded

    hook_saw: list[int] = []
    bound_text(huge, 65536, lambda text: hook_saw.append(len(text)) or text)
    assert hook_saw == [65536 - len(f"…[truncated, {size} bytes]".encode()) + MARGIN]


@settings(max_examples=80)
@given(
    secret=st.sampled_from(ALL_SECRETS),
    before=st.integers(min_value=0, max_value=5000),
    budget=st.integers(min_value=1024, max_value=6000),
)
def test_oversize_message_json_is_valid_bounded_and_clean(secret: str, before: int, budget: int) -> None:
    planted = next(p for p in PLANTED if secret in p.secrets)
    message = {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "x" * before + " " + planted.text + " " + "y" * 8000,
        "extra": {"password": "hunter2-" + "z" * 20, "note": "ok"},
    }
    raw = serialize(message)[0]
    recorded = bound_json(raw.decode(), budget, Redactor())
    assert utf8_size(recorded) <= budget
    decoded = json.loads(recorded)
    assert decoded["tool_call_id"] == "call_1"
    assert not leaks(recorded), recorded
    assert "hunter2" not in recorded


def test_the_run_span_counts_what_was_masked(tracing: Tracing) -> None:
    with traced_run("count", tracer_provider=tracing.provider) as run:
        run.messages.append({"role": "user", "content": f"use {KEY} and password: hunter2"})
        run.messages.append({"role": "user", "content": "nothing here"})
    attributes = tracing.span("invoke_agent count").attributes or {}
    assert attributes[wire.ATTR_REDACTION_MASKED] == 2
    with traced_run("off", tracer_provider=tracing.provider, redact=None) as run:
        run.messages.append({"role": "user", "content": KEY})
    assert wire.ATTR_REDACTION_MASKED not in (tracing.span("invoke_agent off").attributes or {})
