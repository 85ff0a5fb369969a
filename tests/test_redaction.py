"""The default Redactor masks secrets in every shape they arrive in and keeps JSON valid."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from kiln_otel import Redactor

KEY = "sk-proj-AbCdEfGhIjKlMnOpQrSt1234"


def test_shapes() -> None:
    redact = Redactor()
    cases = {
        f"my key is {KEY}.": "my key is [REDACTED].",
        "Authorization: Bearer abc.def.ghi12345": "Authorization: Bearer [REDACTED]",
        "headers={'Authorization': 'Basic dXNlcjpwYXNz'}": "headers={'Authorization': '[REDACTED]'}",
        "https://h/x?api_key=abc123&b=1": "https://h/x?api_key=[REDACTED]&b=1",
        "litellm.completion(api_key='abc123', model='x')": "litellm.completion(api_key='[REDACTED]', model='x')",
        '{"x-api-key": "abc"}': '{"x-api-key": "[REDACTED]"}',
        '{"client_secret": "c", "password": "p"}': '{"client_secret": "[REDACTED]", "password": "[REDACTED]"}',
        "nothing to see here": "nothing to see here",
    }
    for text, expected in cases.items():
        assert redact(text) == expected


def test_json_inside_json_stays_valid() -> None:
    inner = json.dumps({"api_key": "hunter2", "n": 1})
    outer = json.dumps({"role": "tool", "content": inner})
    masked = json.loads(Redactor()(outer))
    assert json.loads(masked["content"]) == {"api_key": "[REDACTED]", "n": 1}


def test_extra_patterns_and_callback() -> None:
    redact = Redactor(patterns=[r"cust-\d+"], callback=lambda t: t.replace("ACME", "[ORG]"))
    assert redact(f"ACME cust-42 {KEY}") == "[ORG] [REDACTED] [REDACTED]"
    assert "patterns=1" in repr(redact)


SECRET_FIELD = st.sampled_from(["api_key", "apiKey", "API-KEY", "authorization", "access_token", "password"])
VALUE = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=6, max_size=30).filter(
    lambda v: v.strip() and "[REDACTED]" not in v
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
    assert decoded[field] == "[REDACTED]"


@given(
    prefix=st.text(max_size=30),
    suffix=st.text(max_size=30),
    body=st.from_regex(r"[A-Za-z0-9_\-]{16,40}", fullmatch=True),
)
def test_sk_keys_never_survive(prefix: str, suffix: str, body: str) -> None:
    key = f"sk-{body}"
    masked = Redactor()(f"{prefix} {key} {suffix}")
    assert not re.search(re.escape(key) + r"(?![A-Za-z0-9_\-])", masked)
