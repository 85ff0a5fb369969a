"""What a secret looks like: credential value shapes and secret field names, as data.

The value shapes follow the rule sets of gitleaks and detect-secrets (the reference secret scanners)
for credentials that carry a recognisable prefix or structure; the field names follow Sentry/Relay's
default denylist. `kiln_otel.redaction` turns these into masks; ``docs/telemetry.md`` lists them for
the collector's second line.

Each shape names the literal text it cannot occur without (its prefix, or an infix where the prefix
is generic). The literals of all shapes, searched at once by a Rust automaton, are the prefilter that
keeps ordinary messages cheap; the Python regex then runs only where one of its own literals occurs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FIELD_TRIGGER",
    "FIELD_WORDS",
    "MAX_SHAPE_CHARS",
    "SHAPES",
    "Shape",
    "cased",
    "field_kind",
    "is_placeholder",
    "looks_random",
]

MAX_SHAPE_CHARS = 512
"""Longest text a shape needs to see before it can match (the prefix, the key name, the separator and
enough of the value). Shapes longer than this (PEM blocks, JWTs) match their beginning, so text cut
this far past the part that is kept never hides a secret the kept part starts."""


@dataclass(frozen=True)
class Shape:
    kind: str
    pattern: str
    """Python regex; group ``secret`` (if present) is what gets masked, else the whole match."""
    literals: tuple[str, ...]
    """At least one occurs in every match (compared lower-cased when ``ignore_case``)."""
    gate: str | None = None
    """A Rust regex to prefilter with instead of the literals, where they alone occur too often."""
    ignore_case: bool = False
    check: Callable[[re.Match[str]], bool] | None = None
    """Extra evidence, for shapes a regex alone would over-match."""
    starts_token: bool = True
    """Not preceded by a letter or digit: never the middle of a base64 blob."""

    @property
    def prefilter(self) -> str:
        if self.gate is not None:
            return self.gate
        return cased(*self.literals) if self.ignore_case else "|".join(re.escape(word) for word in self.literals)


def cased(*words: str) -> str:
    """``word|Word|WORD`` rather than ``(?i:word)``: literals the Rust engine can prefilter with SIMD
    (four times faster on a typical message); a word cased otherwise (``pAsSwOrD``) slips past."""
    variants = dict.fromkeys(v for word in words for v in (word.lower(), word[:1].upper() + word[1:], word.upper()))
    return "(?:" + "|".join(re.escape(v) for v in variants) + ")"


def looks_random(token: str) -> bool:
    """A credential rather than a word: digits, or case changes past the first letter."""
    if len(token) < 8:
        return False
    if any(c.isdigit() for c in token):
        return True
    inner = token[1:]
    return any(c.isupper() for c in inner) and any(c.islower() for c in inner)


def _basic_credentials(match: re.Match[str]) -> bool:
    """``Basic`` followed by base64 of ``user:password``: decode it rather than guess from its look."""
    value = match.group("secret")
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded and all(32 <= byte < 127 for byte in decoded)


def _bearer(match: re.Match[str]) -> bool:
    return looks_random(match.group("secret"))


def _sk_key(match: re.Match[str]) -> bool:
    """``sk-`` starting a token is a key; glued to a word (``keysk-...``) it needs a key's entropy.

    Either way the body holds a digit or a capital: ``sk-learn-compatible-estimator`` is prose.
    """
    body = match.group(0)[3:]
    if not any(c.isdigit() or c.isupper() for c in body):
        return False
    start = match.start()
    if start == 0 or not (match.string[start - 1].isalnum() or match.string[start - 1] == "_"):
        return True
    if match.group(0).startswith(("sk-proj-", "sk-ant-", "sk-svcacct-", "sk-admin-", "sk-or-")):
        return True
    return len(body) >= 20 and body.isalnum() and looks_random(body) and any(c.isupper() for c in body)


def _aws_secret(match: re.Match[str]) -> bool:
    value = match.group("secret")
    return any(c.isdigit() for c in value) and any(c.isupper() for c in value) and any(c.islower() for c in value)


_PEM_LINE = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_BODY = r"(?:(?!-----END)[A-Za-z0-9+/=:,.\- \t\r\n]|\\+[nrt])*"
"""Base64, PEM headers (``Proc-Type: 4,ENCRYPTED``), whitespace, newlines escaped at any JSON depth."""
_PLACEHOLDER = re.compile(
    r"^(?:<[^>]*>|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{?[^}]*\}\}?|%\([^)]*\)s|\*+|x{3,}|X{3,}|\.{3}|…)$"
)


def is_placeholder(value: str) -> bool:
    """``<password>``, ``${API_KEY}``, ``{{token}}``, ``****``: documentation, not a credential."""
    return bool(_PLACEHOLDER.match(value)) or value.startswith("[REDACTED")


def _url_password(match: re.Match[str]) -> bool:
    return not is_placeholder(match.group("secret"))


def _shape(kind: str, pattern: str, *literals: str, **options: object) -> Shape:
    return Shape(kind, pattern, literals, **options)  # type: ignore[arg-type]


SHAPES: tuple[Shape, ...] = (
    # A PEM private key: the whole block, or, when it is cut, everything up to the first character
    # that cannot belong to it.
    _shape(
        "private_key",
        _PEM_LINE + _PEM_BODY + r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?",
        "PRIVATE KEY",
        starts_token=False,
    ),
    _shape(
        "openai_key",
        r"sk-[A-Za-z0-9_\-]{16,}",
        "sk-",
        gate=r"sk-[a-z_\-]*[A-Z0-9]",
        check=_sk_key,
        starts_token=False,
    ),
    _shape(
        "aws_access_key_id", r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", "A3T", "AKIA", "ASIA", "ABIA", "ACCA"
    ),
    _shape(
        "aws_secret_access_key",
        r"(?i:aws)[A-Za-z0-9_ .:=\"'/\-]{0,60}?(?<![A-Za-z0-9/+])(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        "aws",
        ignore_case=True,
        gate=cased("aws"),
        check=_aws_secret,
        starts_token=False,
    ),
    _shape("google_api_key", r"AIza[A-Za-z0-9_\-]{35}", "AIza"),
    _shape("google_oauth_token", r"ya29\.[A-Za-z0-9_\-]{20,}", "ya29."),
    _shape("google_client_secret", r"GOCSPX-[A-Za-z0-9_\-]{24,}", "GOCSPX-"),
    _shape(
        "github_token",
        r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
    ),
    _shape(
        "gitlab_token",
        r"(?:gl(?:pat|dt|ptt|rt|cbt|ft|imt|soat|agent|oas)-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20,})",
        "glpat-",
        "gldt-",
        "glptt-",
        "glrt-",
        "glcbt-",
        "glft-",
        "glimt-",
        "glsoat-",
        "glagent-",
        "gloas-",
        "GR1348941",
    ),
    _shape(
        "slack_token",
        r"(?:xox[a-z](?:\.xox[a-z])?-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{20,})",
        "xox",
        "xapp-",
    ),
    _shape(
        "slack_webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9+/_\-]{20,})",
        "hooks.slack.com/",
        starts_token=False,
    ),
    _shape(
        "stripe_key",
        r"(?:(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})",
        "k_live_",
        "k_test_",
        "k_prod_",
        "whsec_",
    ),
    _shape("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.ey[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]*)?", "eyJ"),
    _shape(
        "azure_client_secret",
        r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34}",
        "Q~",
        gate=r"[0-9]Q~",
    ),
    _shape("npm_token", r"npm_[A-Za-z0-9]{36}", "npm_"),
    _shape("pypi_token", r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{20,}", "pypi-AgEIcHlwaS5vcmc"),
    _shape("twilio_api_key", r"SK[0-9a-fA-F]{32}", "SK", gate=r"SK[0-9a-fA-F]{8}"),
    _shape("sendgrid_key", r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}", "SG.", gate=r"SG\.[A-Za-z0-9_\-]{8}"),
    _shape(
        "huggingface_token",
        r"(?:hf_|api_org_)[A-Za-z0-9]{30,}",
        "hf_",
        "api_org_",
        gate=r"(?:hf_|api_org_)[A-Za-z0-9]{8}",
    ),
    _shape("mailgun_key", r"key-[0-9a-f]{32}", "key-", gate=r"key-[0-9a-f]{8}"),
    _shape("mailchimp_key", r"[0-9a-f]{32}-us[0-9]{1,2}", "-us", gate=r"-us[0-9]"),
    _shape("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", "shpat_", "shpca_", "shppa_", "shpss_"),
    _shape("digitalocean_token", r"do[opr]_v1_[a-f0-9]{64}", "dop_v1_", "doo_v1_", "dor_v1_"),
    _shape("linear_key", r"lin_(?:api|oauth)_[A-Za-z0-9]{40}", "lin_api_", "lin_oauth_"),
    _shape(
        "notion_token",
        r"(?:ntn_[A-Za-z0-9]{40,}|secret_[A-Za-z0-9]{43})",
        "ntn_",
        "secret_",
        gate=r"ntn_|secret_[A-Za-z0-9]{8}",
    ),
    _shape("postman_key", r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", "PMAK-"),
    _shape("groq_key", r"gsk_[A-Za-z0-9]{48,}", "gsk_"),
    _shape("replicate_token", r"r8_[A-Za-z0-9]{37}", "r8_"),
    _shape("perplexity_key", r"pplx-[A-Za-z0-9]{48}", "pplx-"),
    _shape("xai_key", r"xai-[A-Za-z0-9]{70,}", "xai-"),
    _shape("databricks_token", r"dapi[a-f0-9]{32}", "dapi", gate=r"dapi[a-f0-9]{8}"),
    _shape("vault_token", r"hv[sbr]\.[A-Za-z0-9_\-]{24,}", "hvs.", "hvb.", "hvr."),
    _shape("age_secret_key", r"AGE-SECRET-KEY-1[0-9A-Z]{58}", "AGE-SECRET-KEY-1"),
    _shape("square_token", r"sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,}", "sq0atp-", "sq0csp-"),
    _shape("facebook_token", r"EAA[MC][A-Za-z0-9]{100,}", "EAAM", "EAAC"),
    _shape("telegram_bot_token", r"[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}", ":AA", gate=r"[0-9]:AA"),
    _shape("grafana_token", r"(?:glc_[A-Za-z0-9+/]{32,}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})", "glc_", "glsa_"),
    _shape("sentry_token", r"sntr[ysu]_[A-Za-z0-9+/=_\-]{40,}", "sntrys_", "sntryu_", "sntrus_"),
    _shape("dynatrace_token", r"dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}", "dt0c01."),
    _shape("supabase_token", r"sbp_[a-f0-9]{40}", "sbp_"),
    _shape("pulumi_token", r"pul-[a-f0-9]{40}", "pul-", gate=r"pul-[a-f0-9]{8}"),
    _shape("terraform_token", r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,}", ".atlasv1."),
    _shape("planetscale_token", r"pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=.\-]{32,}", "pscale_"),
    _shape("rubygems_key", r"rubygems_[a-f0-9]{48}", "rubygems_"),
    _shape("sendinblue_key", r"xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}", "xkeysib-"),
    _shape("langsmith_key", r"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}", "lsv2_"),
    _shape("alibaba_key_id", r"LTAI[A-Za-z0-9]{20}", "LTAI"),
    _shape("atlassian_token", r"ATATT3[A-Za-z0-9_=\-]{100,}", "ATATT3"),
    _shape(
        "doppler_token",
        r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}",
        "dp.",
        gate=r"dp\.(?:pt|st|sa|ct|scim|audit)\.",
    ),
    _shape("onepassword_token", r"ops_eyJ[A-Za-z0-9+/=_\-]{100,}", "ops_eyJ"),
    _shape("heroku_key", r"HRKU-[A-Za-z0-9_\-]{60,}", "HRKU-"),
    # scheme://user:PASSWORD@host; the password runs to the last @ before the host.
    _shape(
        "url_password",
        r"://[^\s/?#@:'\"<>\\]*:(?P<secret>[^\s/?#'\"<>\\]+)@",
        "://",
        gate=r"://[^\s/?#@:'\"<>\\]*:[^\s/?#'\"<>\\]+@",
        check=_url_password,
        starts_token=False,
    ),
    # Signed URLs: an Azure SAS, an S3 or GCS presigned URL.
    _shape(
        "url_signature",
        r"[?&](?i:sig|signature|x-amz-signature|x-goog-signature)=(?P<secret>[A-Za-z0-9%+/=_\-]{16,})",
        "sig=",
        "signature=",
        ignore_case=True,
        starts_token=False,
    ),
    _shape(
        "bearer_token",
        r"(?i:bearer)[ \t]+(?P<secret>[A-Za-z0-9._~+/=\-]{8,})",
        "bearer",
        ignore_case=True,
        gate=cased("bearer") + r"[ \t]+[a-z]*[A-Z0-9._~+/=\-]",
        check=_bearer,
    ),
    _shape(
        "basic_auth",
        r"(?i:basic)[ \t]+(?P<secret>[A-Za-z0-9+/]{6,}={0,2})",
        "basic",
        ignore_case=True,
        gate=cased("basic") + r"[ \t]+[a-z]*[A-Z0-9+/]",
        check=_basic_credentials,
    ),
)

# --- field names ------------------------------------------------------------------------------------
FIELD_WORDS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "cookie",
    "session",
    "credential",
    "creds",
    "csrf",
    "xsrf",
)
FIELD_TRIGGER = "(?:" + "|".join(FIELD_WORDS) + ")"
"""A secret field name holds one of these (lower case); the name is then judged word by word."""

# Head words that make a field secret on their own (Sentry/Relay's denylist, spelled as words).
_STRONG = {
    "password": "password",
    "passwords": "password",
    "passwd": "password",
    "passphrase": "password",
    "secret": "secret",
    "secrets": "secret",
    "clientsecret": "secret",
    "secretkey": "secret",
    "token": "token",
    "accesstoken": "token",
    "refreshtoken": "token",
    "authtoken": "token",
    "idtoken": "token",
    "apitoken": "token",
    "sessiontoken": "token",
    "csrftoken": "token",
    "xsrftoken": "token",
    "csrf": "token",
    "xsrf": "token",
    "apikey": "api_key",
    "apikeys": "api_key",
    "privatekey": "private_key",
    "accountkey": "api_key",
    "credential": "credentials",
    "credentials": "credentials",
    "creds": "credentials",
    "cookie": "cookie",
    "cookies": "cookie",
    "authorization": "authorization",
    "auth": "authorization",
    "session": "session",
    "sessionid": "session",
    "sessionkey": "session",
}
# ``key`` alone is too common a name ({"key": "color"}); with one of these before it, it is a secret.
_KEY_QUALIFIERS = {
    "api": "api_key",
    "access": "api_key",
    "account": "api_key",
    "subscription": "api_key",
    "app": "api_key",
    "client": "api_key",
    "service": "api_key",
    "functions": "api_key",
    "license": "api_key",
    "consumer": "api_key",
    "webhook": "api_key",
    "admin": "api_key",
    "auth": "api_key",
    "session": "session",
    "shared": "api_key",
    "storage": "api_key",
    "sas": "api_key",
    "secret": "secret",
    "private": "private_key",
    "signing": "private_key",
    "encryption": "private_key",
    "decryption": "private_key",
    "master": "private_key",
    "hmac": "private_key",
    "ssh": "private_key",
    "gpg": "private_key",
    "pgp": "private_key",
    "jwt": "private_key",
    "root": "private_key",
}
# A last word that says the field describes a secret rather than holding one: "token_count", "secret_name".
_META = frozenset(
    {
        *("count", "counts", "type", "types", "length", "len", "size", "bytes", "chars", "characters"),
        *("hint", "hints", "policy", "policies", "name", "names", "id", "ids", "label", "labels", "format"),
        *("url", "urls", "uri", "path", "file", "filename", "prefix", "suffix", "field", "fields", "location"),
        *("enabled", "disabled", "required", "optional", "strength", "version", "env", "var", "scope", "scopes"),
        *("expires", "expiry", "expiration", "expired", "at", "created", "updated", "rotated", "rotation"),
        *("min", "max", "limit", "limits", "usage", "used", "remaining", "budget", "ttl", "timeout", "duration"),
        *("method", "methods", "mode", "provider", "providers", "strategy", "flow", "server", "endpoint", "host"),
        *("level", "status", "state", "error", "errors", "message", "description", "lifetime"),
    }
)
# Cursors, not credentials.
_NOT_TOKEN_QUALIFIERS = frozenset({"page", "next", "prev", "previous", "continuation", "pagination", "cursor", "sync"})

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def field_kind(name: str, previous_word: str | None = None) -> str | None:
    """The kind of secret a field named ``name`` holds, or None for an ordinary field.

    ``previous_word`` is the word before an unquoted one-word name in prose ("API key: ...").
    """
    words = [w.lower() for w in _WORDS.findall(name) if not w.isdigit()]
    if not words:
        return None
    if len(words) == 1 and previous_word:
        words.insert(0, previous_word.lower())
    last = words[-1]
    if last in _META:
        return None
    if len(words) >= 2 and words[-2] == "session" and last == "id":
        return "session"
    if last in ("key", "keys"):
        qualifier = words[-2] if len(words) >= 2 else None
        if qualifier in _KEY_QUALIFIERS:
            return _KEY_QUALIFIERS[qualifier]
    if last == "pwd" and len(words) >= 2:
        return "password"
    for word in reversed(words):
        kind = _STRONG.get(word)
        if kind is None:
            continue
        if kind == "token" and word == "token":
            index = words.index(word)
            if index > 0 and words[index - 1] in _NOT_TOKEN_QUALIFIERS:
                return None
        return kind
    return None
