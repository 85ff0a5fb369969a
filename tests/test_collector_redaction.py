"""The collector's redaction (``transform/redact`` in collector-config/otelcol.yaml), the second line
behind kiln-otel's own redactor: planted secrets come out masked, JSON stays valid, prose stays.

Two layers:
- the statements read from the YAML and run with Python's ``re`` (RE2 and Python agree on the
  syntax used, which is checked): exact expectations per shape, a precision list, and a hypothesis
  property over arbitrary JSON messages (plain and nested in a JSON string);
- the real collector binary: a run exported with client redaction OFF, read back from the file
  output and from Jaeger.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kiln_otel import KilnRunError, reconstruct_error, traced_run
from tests.backends import REPO_ROOT, Pipeline, otlp_spans
from tests.test_e2e_pipeline import Telemetry, exporter_for, telemetry_factory

__all__ = ["PLANTED", "redact", "telemetry_factory"]

OTELCOL = REPO_ROOT / "collector-config" / "otelcol.yaml"
MASK = "[REDACTED]"
_LITERAL = r'"((?:[^"\\]|\\.)*)"'
_STATEMENT = re.compile(rf'^replace_all_patterns\(attributes, "value", {_LITERAL}, {_LITERAL}\)$')


def _statement_groups() -> dict[str, list[list[str]]]:
    transform = yaml.safe_load(OTELCOL.read_text(encoding="utf-8"))["processors"]["transform/redact"]
    groups: dict[str, list[list[str]]] = {}
    for group in transform["trace_statements"]:
        groups.setdefault(group["context"], []).append(group["statements"])
    return groups


def _unquote(literal: str) -> str:
    """An OTTL string literal's value: the only escapes the config uses are \\\\ and \\"."""
    assert re.fullmatch(r'(?:[^\\]|\\[\\"])*', literal), f"unexpected escape in {literal!r}"
    return re.sub(r"\\(.)", r"\1", literal)


def _python_replacement(replacement: str) -> str:
    """``$${N}`` (collector escaping of Go's ``${N}``) -> Python's ``\\g<N>``."""
    go = replacement.replace("$$", "$")
    assert re.fullmatch(r"(?:[^$]|\$\{\d\})*", go), f"unexpected $ in {replacement!r}"
    return re.sub(r"\$\{(\d)\}", r"\\g<\1>", go)


def _rules() -> list[tuple[re.Pattern[str], str]]:
    [statements] = _statement_groups()["spanevent"]
    rules = []
    for statement in statements:
        match = _STATEMENT.match(statement)
        assert match, f"not a replace_all_patterns statement: {statement[:80]}"
        pattern = _unquote(match.group(1))
        for construct in ("(?=", "(?!", "(?<", "(?P", "\\1", "(?#", "\\Z", "(?x"):
            assert construct not in pattern, f"{construct} is not RE2: {pattern[:60]}"
        rules.append((re.compile(pattern, re.ASCII), _python_replacement(_unquote(match.group(2)))))
    return rules


RULES = _rules()


def redact(text: str) -> str:
    """What transform/redact does to one string attribute value."""
    for pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def test_every_context_runs_the_same_statements() -> None:
    groups = _statement_groups()
    [events] = groups["spanevent"]
    [resource] = groups["resource"]
    assert resource == events
    assert events in groups["span"]
    # the status message is parked in an attribute, redacted with it, put back, and the key removed
    flat = [s for g in groups["span"] for s in g]
    park = 'set(attributes["kiln_otel.redact.status"], status.message) where status.message != ""'
    assert flat[0] == park
    assert flat[-2].startswith('set(status.message, attributes["kiln_otel.redact.status"])')
    assert flat[-1] == 'delete_key(attributes, "kiln_otel.redact.status")'


# ---------------------------------------------------------------------------------------------
# planted secrets: (raw, masked). Each is a whole "word" of a message (spaces around it).

_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2g==\n-----END RSA PRIVATE KEY-----"
PLANTED: list[tuple[str, str]] = [
    ("sk-proj-Zq8vN3xT5rW1yB7kL2mP9sD4fG6hJ0aQ_x-y", MASK),
    ("sk-ant-api03-AAAAbbbbCCCCdddd1234-x_y", MASK),
    ("sk-" + "Ab1" * 16, MASK),
    ("key:sk-svcacct-Zq8vN3xT5rW1yB7kL2mP9sD4", f"key:{MASK}"),
    ("AKIAIOSFODNN7EXAMPLE", MASK),
    ("ASIAY34FZKBOKMUTVV7A", MASK),
    ("AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", MASK),
    ("ghp_" + "a1B2" * 9, MASK),
    ("gho_" + "z9Y8" * 9, MASK),
    ("ghu_" + "c3D4" * 9, MASK),
    ("ghs_" + "e5F6" * 9, MASK),
    ("ghr_" + "g7H8" * 9, MASK),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", MASK),
    ("glpat-xYz12345AbCdEfGhIjKl", MASK),
    ("xoxb-2048123456-4096123456-AbCdEfGhIjKlMnOp", MASK),
    ("xoxp-1234567890-abcdefghij", MASK),
    ("xoxa-2-1234567890-abcdef", MASK),
    ("xoxr-1234567890-abcdef", MASK),
    ("xoxs-1234567890-abcdef", MASK),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", MASK),
    ("rk_live_4eC39HqLyjWDarjtT1zdp7dc", MASK),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", MASK),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", MASK),
    (_PEM, MASK),
    ("postgres://app:hunter2@db.internal:5432/prod", f"postgres://app:{MASK}@db.internal:5432/prod"),
    ("https://user:p4ss%40word@example.com/x", f"https://user:{MASK}@example.com/x"),
    ("redis://:s3cr3t@cache:6379", f"redis://:{MASK}@cache:6379"),
    ("Authorization: Bearer abc.def-123_ghi", f"Authorization: Bearer {MASK}"),
    ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {MASK}"),
    ("authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", f"authorization: Token {MASK}"),
    ("Proxy-Authorization: Digest abc123", f"Proxy-Authorization: Digest {MASK}"),
    ("X-Api-Key: 0123abcd", f"X-Api-Key: {MASK}"),
    ("api-key: 0123abcd", f"api-key: {MASK}"),
    ("X-Auth-Token: 0123abcd", f"X-Auth-Token: {MASK}"),
    ("X-CSRF-Token: 0123abcd", f"X-CSRF-Token: {MASK}"),
    ("Ocp-Apim-Subscription-Key: 0123456789abcdef", f"Ocp-Apim-Subscription-Key: {MASK}"),
    ("Cookie: sessionid=abc; csrftoken=def\n", f"Cookie: {MASK}\n"),
    ("Set-Cookie: id=a3fWa; Secure; HttpOnly\n", f"Set-Cookie: {MASK}\n"),
    ("password=hunter2", f"password={MASK}"),
    ("PASSWORD=hunter2", f"PASSWORD={MASK}"),
    ("passwd=hunter2", f"passwd={MASK}"),
    ("api_key='abc123'", f"api_key='{MASK}'"),
    ("apikey=abc123", f"apikey={MASK}"),
    ("token=abc&page=2", f"token={MASK}&page=2"),
    ("auth=abc", f"auth={MASK}"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"AWS_SECRET_ACCESS_KEY={MASK}"),
    ("mysql_pwd=s3cret", f"mysql_pwd={MASK}"),
    ("credentials=abc", f"credentials={MASK}"),
    ("session=abc", f"session={MASK}"),
    ("x_csrftoken=abc", f"x_csrftoken={MASK}"),
    ("refresh_token=abc", f"refresh_token={MASK}"),
    ("client_secret: abc", f"client_secret: {MASK}"),
    ("password: hunter2", f"password: {MASK}"),
    ("private_key: abc", f"private_key: {MASK}"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.kiln-token_0001", f"Bearer {MASK}"),
    ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", f"Basic {MASK}"),
    ("{'api_key': 'abc', 'n': 1}", f"{{'api_key': '{MASK}', 'n': 1}}"),
    ("{'Authorization': 'Bearer x'}", f"{{'Authorization': '{MASK}'}}"),
]

_SECRET_FIELDS = [
    "password",
    "passwd",
    "secret",
    "api_key",
    "apiKey",
    "apikey",
    "auth",
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "session",
    "csrftoken",
    "sessionid",
    "x_csrftoken",
    "set_cookie",
    "cookie",
    "authorization",
    "Authorization",
    "x_api_key",
    "X-Api-Key",
    "refresh_token",
    "auth_token",
    "secret_key",
    "access_token",
    "client_secret",
    "aws_secret_access_key",
    "Ocp-Apim-Subscription-Key",
    "GITHUB_TOKEN",
]
ORDINARY_FIELDS = ["role", "content", "city", "author", "max_tokens", "oauth", "token_count_note", "name", "id"]

ORDINARY = [
    "I have a basic question about my API key",
    "Bearer tokens (RFC 6750) travel in the Authorization header.",
    "a Bearer token",
    "The password field is required and the token must be fresh.",
    "Session 3 of 5: morning keynote",
    "Tokens: 512 in, 128 out",
    "sk-short and task-managementsystem",
    "Basic MyClass and basic iPhone",
    "https://example.com:8080/a@b?q=1#frag",
    "mailto:someone@example.com",
    "user@example.com",
    "550e8400-e29b-41d4-a716-446655440000",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
    "def get_token(session):\n    return session.token\n",
    "hf_hub_download(repo_id='x')",
    "The author wrote: café ☕ à 東京 — naïve “quotes”",
    "max_tokens=512, temperature=0.2",
    "Use the key: value syntax in YAML",
]


@pytest.mark.parametrize(("raw", "masked"), PLANTED, ids=[m[:24] for m, _ in PLANTED])
def test_planted_secret_is_masked(raw: str, masked: str) -> None:
    assert redact(f"see {raw} now") == f"see {masked} now"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert redact(text) == text
    assert redact(json.dumps({"content": text})) == json.dumps({"content": text})


@pytest.mark.parametrize("field", _SECRET_FIELDS)
def test_secret_field_masked_in_json_nested_json_and_key_value(field: str) -> None:
    doc = {field: "s3cr3t-value", "city": "Oslo"}
    assert json.loads(redact(json.dumps(doc))) == {field: MASK, "city": "Oslo"}
    outer = json.loads(redact(json.dumps({"arguments": json.dumps(doc)})))
    assert json.loads(outer["arguments"]) == {field: MASK, "city": "Oslo"}
    assert redact(f"{field}=s3cr3t-value rest") == f"{field}={MASK} rest"


def test_secret_field_with_a_list_or_object_value() -> None:
    doc = {"token": ["a", "b"], "credentials": {"user": "u", "pass": "p"}, "n": 1}
    assert json.loads(redact(json.dumps(doc))) == {"token": MASK, "credentials": MASK, "n": 1}


def test_pem_cut_before_its_end_loses_its_body() -> None:
    cut = _PEM.split("-----END")[0]
    assert redact(json.dumps({"content": cut})) == json.dumps({"content": MASK})


# ---------------------------------------------------------------------------------------------
# The property: any JSON message, plain or nested in a JSON string, stays valid JSON, keeps its
# structure and its ordinary text, and loses exactly the planted secrets.

_SAFE_TEXT = st.text(
    alphabet=st.sampled_from([*"abcXYZ019 .,!?'\"\\/{}[]\n\t", "é", "東", "☕", "\u2028", "\x00"]),
    max_size=20,
)


@st.composite
def _string(draw: st.DrawFn) -> tuple[str, str]:
    """(raw, expected) text: ordinary pieces and planted secrets, space-separated."""
    pieces = draw(st.lists(st.one_of(_SAFE_TEXT.map(lambda t: (t, t)), st.sampled_from(PLANTED)), max_size=4))
    raw = " ".join(r for r, _ in pieces)
    expected = " ".join(e for _, e in pieces)
    return raw, expected


_SCALAR = st.one_of(st.integers(-(10**6), 10**6), st.booleans(), st.none())


@st.composite
def _document(draw: st.DrawFn, depth: int = 0, nested: bool = False) -> tuple[Any, Any]:
    """(doc, expected) for a JSON object; ``nested`` = it will travel inside a JSON string."""
    doc: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        secret = draw(st.booleans())
        key = draw(st.sampled_from(_SECRET_FIELDS if secret else ORDINARY_FIELDS))
        if key in doc:
            continue
        kind = draw(st.sampled_from(["str", "scalar", "flat_list", "object", "json_string"]))
        if kind == "str":
            raw, exp = draw(_string())
            doc[key], expected[key] = raw, (MASK if secret else exp)
        elif kind == "scalar":
            doc[key] = expected[key] = draw(_SCALAR)
        elif kind == "flat_list":
            items = draw(st.lists(st.one_of(_SAFE_TEXT, _SCALAR), max_size=3))
            # plain JSON: a secret field's flat list becomes one string; nested: only strings are masked
            doc[key], expected[key] = items, (MASK if secret and not nested else items)
        elif kind == "object" and depth < 2:
            inner, inner_expected = draw(_document(depth + 1, nested))
            doc[key] = inner
            flat = not any(isinstance(v, (dict, list)) for v in inner.values())
            expected[key] = MASK if secret and flat and not nested else inner_expected
        elif kind == "json_string" and not nested and not secret:
            inner, inner_expected = draw(_document(depth + 1, nested=True))
            doc[key], expected[key] = json.dumps(inner), ("json", inner_expected)
    return doc, expected


def _check(got: Any, expected: Any) -> None:
    if isinstance(expected, tuple) and expected[:1] == ("json",):
        assert isinstance(got, str)
        _check(json.loads(got), expected[1])
    elif isinstance(expected, dict):
        assert isinstance(got, dict)
        assert list(got) == list(expected)
        for key in expected:
            _check(got[key], expected[key])
    else:
        assert got == expected


@given(_document(), st.booleans())
def test_any_json_message_stays_valid_and_loses_only_its_secrets(case: tuple[Any, Any], ascii_only: bool) -> None:
    doc, expected = case
    masked = redact(json.dumps(doc, ensure_ascii=ascii_only))
    _check(json.loads(masked), expected)


# ---------------------------------------------------------------------------------------------
# through the real collector: client redaction off, everything planted, read back twice


def _planted_conversation() -> list[dict[str, Any]]:
    secrets = " ".join(raw for raw, _ in PLANTED)
    fields = dict.fromkeys(_SECRET_FIELDS, "s3cr3t-value")
    return [
        {"role": "system", "content": ORDINARY[0]},
        {"role": "user", "content": f"here you go: {secrets}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "login", "arguments": json.dumps(fields)}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps({**fields, "city": "Oslo"})},
        *({"role": "user", "content": text} for text in ORDINARY),
    ]


def _string_values(spans: list[dict[str, Any]]) -> list[str]:
    out = []
    for span in spans:
        out.append(span.get("status", {}).get("message", ""))
        for attribute in span.get("attributes", []) + [a for e in span.get("events", []) for a in e["attributes"]]:
            out.append(attribute["value"].get("stringValue", ""))
    return out


def test_collector_masks_what_the_client_did_not(
    pipeline: Pipeline, telemetry_factory: Callable[..., Telemetry]
) -> None:
    telemetry = telemetry_factory(exporter_for(pipeline, "grpc"))
    messages = _planted_conversation()
    with (
        pytest.raises(KilnRunError) as caught,
        traced_run("planted", tracer_provider=telemetry.provider, redact=None) as run,
    ):
        run.messages.extend(messages)
        raise RuntimeError(f"provider said: {PLANTED[0][0]} and {{'api_key': 'abc'}} password=hunter2")
    assert telemetry.provider.force_flush(10_000)
    trace_id = str(caught.value.trace_id)
    spans = telemetry.produced(trace_id)
    raws = [raw.strip() for raw, _ in PLANTED] + ["s3cr3t-value", "hunter2"]

    jaeger = pipeline.fetch_jaeger_v3(trace_id, min_spans=spans)
    archive = pipeline.read_file_lines(trace_id)
    for where, found, source in (
        ("jaeger", otlp_spans(jaeger["result"]), jaeger),
        ("file", [s for line in archive.splitlines() for s in otlp_spans(json.loads(line))], archive),
    ):
        values = _string_values(found)
        text = "\n".join(values)
        leaked = [raw[:24] for raw in raws if any(part in text for part in raw.split("\n"))]
        assert leaked == [], f"{where}: not masked: {leaked}"
        assert "kiln_otel.redact.status" not in json.dumps(found)
        for value in values:
            if value.startswith(("{", "[")):
                json.loads(value)  # every JSON attribute still parses
        rebuilt = reconstruct_error(source, trace_id)
        assert rebuilt.trace is not None
        # ordinary messages come back untouched; the planted ones with only the secrets replaced
        assert rebuilt.trace[0] == messages[0]
        assert rebuilt.trace[-len(ORDINARY) :] == messages[-len(ORDINARY) :]
        assert rebuilt.trace[1]["content"] == "here you go: " + " ".join(m for _, m in PLANTED)
        assert json.loads(rebuilt.trace[3]["content"]) == {**dict.fromkeys(_SECRET_FIELDS, MASK), "city": "Oslo"}
        arguments = rebuilt.trace[2]["tool_calls"][0]["function"]["arguments"]
        assert json.loads(arguments) == dict.fromkeys(_SECRET_FIELDS, MASK)
        assert rebuilt.message.startswith(f"provider said: {MASK} and {{'api_key': '{MASK}'}} password={MASK}")
