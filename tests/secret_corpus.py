"""Planted secrets and ordinary messages, shared by every test that checks what leaves the process.

``PLANTED``: one entry per credential shape and per way of writing a secret-named field (the 37 kinds
issue 9 found leaking or masked, and more). Each holds the text a user or a provider would produce and
the secret parts that must not survive anywhere kiln-otel writes. The values are fakes that match the
real formats; each is unique so that finding it anywhere is a leak.

``ORDINARY``: messages a redactor must leave exactly as they are: prose about keys, tokens and
passwords, code, base64 images, UUIDs, hashes, URLs without credentials, JSON with innocent keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Planted:
    name: str
    text: str
    secrets: tuple[str, ...]


def _alnum(seed: str, length: int) -> str:
    """Deterministic mixed-case alphanumerics, unique per seed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha512(seed.encode()).digest() * 4
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _hex(seed: str, length: int) -> str:
    return (hashlib.sha512(seed.encode()).hexdigest() * 2)[:length]


def _upper(seed: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    digest = hashlib.sha512(seed.encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def _jwt(seed: str) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    payload = base64.urlsafe_b64encode(json.dumps({"sub": seed, "admin": True}).encode()).decode().rstrip("=")
    return f"{header}.{payload}.{_alnum(seed, 43)}"


OPENAI = "sk-" + _alnum("openai", 48)
OPENAI_PROJECT = "sk-proj-" + _alnum("project", 60) + "T3BlbkFJ" + _alnum("project2", 60)
ANTHROPIC = "sk-ant-api03-" + _alnum("anthropic", 93) + "AA"
GLUED = "sk-proj-" + _alnum("glued", 40)
AWS_ID = "AKIA" + _upper("aws-id", 16)
AWS_SESSION_ID = "ASIA" + _upper("aws-session", 16)
AWS_SECRET = _alnum("aws-secret", 20) + "/" + _alnum("aws-secret-2", 19)
GOOGLE = "AIza" + _alnum("google", 35)
GITHUB_CLASSIC = "ghp_" + _alnum("github", 36)
GITHUB_OAUTH = "gho_" + _alnum("github-oauth", 36)
GITHUB_FINE = "github_pat_" + _alnum("github-fine", 22) + "_" + _alnum("github-fine-2", 59)
GITLAB = "glpat-" + _alnum("gitlab", 20)
SLACK = "xoxb-" + "1234567890123-1234567890123-" + _alnum("slack", 24)
SLACK_USER = "xoxp-" + "2234567890123-2234567890123-" + _alnum("slack-user", 32)
SLACK_HOOK_PATH = "T0" + _upper("team", 8) + "/B0" + _upper("bot", 8) + "/" + _alnum("hook", 24)
STRIPE = "sk_live_" + _alnum("stripe", 24)
STRIPE_RESTRICTED = "rk_live_" + _alnum("stripe-rk", 24)
JWT = _jwt("jwt-user")
NPM = "npm_" + _alnum("npm", 36)
TWILIO = "SK" + _hex("twilio", 32)
SENDGRID = "SG." + _alnum("sendgrid", 22) + "." + _alnum("sendgrid-2", 43)
HUGGINGFACE = "hf_" + _alnum("hf", 34)
AZURE_CLIENT_SECRET = _alnum("az", 3) + "8Q~" + _alnum("azure-secret", 34)
AZURE_STORAGE = _alnum("azure-storage", 86) + "=="
SUBSCRIPTION_KEY = _hex("subscription", 32)
PEM_BODY = "\n".join(_alnum(f"pem-{i}", 64) for i in range(6))
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"
OPENSSH_BODY = _alnum("openssh", 70)
OPENSSH = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{OPENSSH_BODY}\n-----END OPENSSH PRIVATE KEY-----"
BASIC = base64.b64encode(b"deploy-bot:Correct-Horse-42").decode()
BEARER = _alnum("bearer", 40)
TOKEN_AUTH = _hex("token-auth", 40)
PG_PASSWORD = "pg-" + _alnum("pg", 14)
HTTP_PASSWORD = "http-" + _alnum("http", 12)
REDIS_PASSWORD = "redis-" + _alnum("redis", 12)
GCP_OAUTH = "ya29." + _alnum("gcp-oauth", 60)
GROQ = "gsk_" + _alnum("groq", 52)
DATABRICKS = "dapi" + _hex("databricks", 32)
VAULT = "hvs." + _alnum("vault", 90)
PYPI = "pypi-AgEIcHlwaS5vcmc" + _alnum("pypi", 60)
TELEGRAM = "123456789:AA" + _alnum("telegram", 33)
SAS_SIGNATURE = _alnum("sas", 43) + "%3D"


def _value(name: str) -> str:
    """A field value that appears nowhere else: finding it in the output is a leak."""
    return f"v-{name}-" + _alnum(name, 12)


def _field(name: str, render: str) -> Planted:
    value = _value(name)
    return Planted(name, render.replace("{value}", value), (value,))


PLANTED: tuple[Planted, ...] = (
    # -- value shapes ---------------------------------------------------------------------------
    Planted("openai_key", f"my key is {OPENAI}, use it", (OPENAI,)),
    Planted("openai_project_key", f"export OPENAI_API_KEY={OPENAI_PROJECT}", (OPENAI_PROJECT,)),
    Planted("anthropic_key", f"the anthropic key {ANTHROPIC} is rotated", (ANTHROPIC,)),
    Planted("openai_key_glued_to_a_word", f"keyis{GLUED} (pasted without a space)", (GLUED,)),
    Planted("aws_access_key_id", f"AWS access key id {AWS_ID} in us-east-1", (AWS_ID,)),
    Planted("aws_session_key_id", f"temporary credentials {AWS_SESSION_ID}", (AWS_SESSION_ID,)),
    Planted("aws_secret_key_in_prose", f"aws creds: {AWS_ID} / {AWS_SECRET}", (AWS_ID, AWS_SECRET)),
    Planted("aws_secret_key_env", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", (AWS_SECRET,)),
    Planted("google_api_key", f"maps key={GOOGLE}&libraries=places", (GOOGLE,)),
    Planted("google_oauth_token", f"token {GCP_OAUTH} expires soon", (GCP_OAUTH,)),
    Planted("github_classic_token", f"git clone https://{GITHUB_CLASSIC}@github.com/org/repo", (GITHUB_CLASSIC,)),
    Planted("github_oauth_token", f"gh auth status shows {GITHUB_OAUTH}", (GITHUB_OAUTH,)),
    Planted("github_fine_grained_token", f"use {GITHUB_FINE} for the API", (GITHUB_FINE,)),
    Planted("gitlab_token", f"CI uses {GITLAB}", (GITLAB,)),
    Planted("slack_bot_token", f"SLACK_BOT={SLACK}", (SLACK,)),
    Planted("slack_user_token", f"the user token is {SLACK_USER}.", (SLACK_USER,)),
    Planted("slack_webhook", f"post to https://hooks.slack.com/services/{SLACK_HOOK_PATH}", (SLACK_HOOK_PATH,)),
    Planted("stripe_secret_key", f"stripe.api_key = '{STRIPE}'", (STRIPE,)),
    Planted("stripe_restricted_key", f"restricted: {STRIPE_RESTRICTED}", (STRIPE_RESTRICTED,)),
    Planted("bare_jwt", f"session cookie value {JWT} decoded", (JWT,)),
    Planted("pem_private_key", f"here is the key:\n{PEM}\nthanks", (PEM_BODY[:64], PEM_BODY[-64:])),
    Planted("openssh_private_key", f"id_ed25519:\n{OPENSSH}", (OPENSSH_BODY,)),
    Planted("postgres_url_password", f"DATABASE_URL=postgres://app:{PG_PASSWORD}@db:5432/prod", (PG_PASSWORD,)),
    Planted("https_url_password", f"fetch https://alice:{HTTP_PASSWORD}@example.com/file", (HTTP_PASSWORD,)),
    Planted("redis_url_password", f"redis://:{REDIS_PASSWORD}@cache:6379/0", (REDIS_PASSWORD,)),
    Planted("npm_token", f"//registry.npmjs.org/:_authToken={NPM}", (NPM,)),
    Planted("twilio_api_key", f"twilio key {TWILIO}", (TWILIO,)),
    Planted("sendgrid_key", f"SENDGRID={SENDGRID}", (SENDGRID,)),
    Planted("huggingface_token", f"huggingface-cli login --token {HUGGINGFACE}", (HUGGINGFACE,)),
    Planted("azure_client_secret", f"client secret value {AZURE_CLIENT_SECRET}", (AZURE_CLIENT_SECRET,)),
    Planted(
        "azure_storage_connection_string",
        f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={AZURE_STORAGE};EndpointSuffix=core.windows.net",
        (AZURE_STORAGE[:40],),
    ),
    Planted(
        "azure_sas_url", f"https://acme.blob.core.windows.net/c/f?sv=2022-11-02&sig={SAS_SIGNATURE}", (SAS_SIGNATURE,)
    ),
    Planted("groq_key", f"GROQ_API_KEY is {GROQ}", (GROQ,)),
    Planted("databricks_token", f"token: {DATABRICKS}", (DATABRICKS,)),
    Planted("vault_token", f"VAULT_TOKEN={VAULT}", (VAULT,)),
    Planted("pypi_token", f"twine upload -p {PYPI}", (PYPI,)),
    Planted("telegram_bot_token", f"bot {TELEGRAM} online", (TELEGRAM,)),
    # -- credentials in headers ------------------------------------------------------------------
    Planted("bearer_header", f"Authorization: Bearer {BEARER}", (BEARER,)),
    Planted("bearer_alone", f"curl sent Bearer {BEARER}x to the API", (BEARER,)),
    Planted("basic_header", f"Authorization: Basic {BASIC}", (BASIC,)),
    Planted("basic_in_headers_repr", f"headers={{'Authorization': 'Basic {BASIC}'}}", (BASIC,)),
    Planted("token_scheme_header", f"Authorization: Token {TOKEN_AUTH}", (TOKEN_AUTH,)),
    _field("x_api_key_header", "GET /v1/items\nX-Api-Key: {value}\nAccept: */*"),
    _field("subscription_key_header", "Ocp-Apim-Subscription-Key: {value}"),
    _field("cookie_header", "Cookie: sessionid={value}; theme=dark"),
    _field("set_cookie_header", "Set-Cookie: csrftoken={value}; Path=/; HttpOnly"),
    # -- secret-named fields, every way they are written -------------------------------------------
    _field("api_key_json", '{"api_key": "{value}"}'),
    _field("apiKey_json", '{"apiKey": "{value}", "region": "eu"}'),
    _field("password_json", '{"user": "bob", "password": "{value}"}'),
    _field("authorization_json", '{"headers": {"authorization": "{value}"}}'),
    _field("token_json", '{"token": "{value}"}'),
    _field("refresh_token_json", '{"refresh_token": "{value}", "expires_in": 3600}'),
    _field("auth_token_json", '{"auth_token": "{value}"}'),
    _field("secret_json", '{"secret": "{value}"}'),
    _field("secret_key_json", '{"secret_key": "{value}"}'),
    _field("private_key_json", '{"private_key": "{value}"}'),
    _field("passwd_json", '{"passwd": "{value}"}'),
    _field("cookie_json", '{"cookie": "{value}"}'),
    _field("client_secret_json", '{"client_id": "app", "client_secret": "{value}"}'),
    _field("access_token_json", '{"access_token": "{value}", "token_type": "bearer"}'),
    _field("mysql_pwd_json", '{"mysql_pwd": "{value}"}'),
    _field("csrftoken_json", '{"x_csrftoken": "{value}"}'),
    _field("sessionid_json", '{"sessionid": "{value}"}'),
    _field("credentials_json", '{"credentials": "{value}"}'),
    _field("x_api_key_json", '{"X-Api-Key": "{value}"}'),
    _field("subscription_key_json", '{"Ocp-Apim-Subscription-Key": "{value}"}'),
    _field("secret_list_value", '{"api_keys": ["{value}", "{value}-2"]}'),
    _field("secret_object_value", '{"credentials": {"user": "svc", "key": "{value}"}}'),
    _field("json_inside_json", json.dumps({"result": json.dumps({"api_key": "{value}"})})),
    _field("json_inside_json_twice", json.dumps({"a": json.dumps({"b": json.dumps({"password": "{value}"})})})),
    _field("python_repr_dict", "{'password': '{value}', 'user': 'bob'}"),
    _field("python_kwargs_repr", "Client(base_url='https://api.example.com', api_key='{value}')"),
    _field("kwargs_double_quoted", 'connect(host="db", password="{value}")'),
    _field("query_string", "GET /callback?code=ok&access_token={value}&state=1"),
    _field("env_file", "DEBUG=false\nDB_PASSWORD={value}\nPORT=8000"),
    _field("yaml_config", "database:\n  user: app\n  password: {value}\n"),
    _field("prose_password", "my password: {value}"),
    _field("prose_api_key", "Your API key: {value}"),
    _field(
        "litellm_bad_request", "litellm.BadRequestError: OpenAIException - Error code: 400 - {'api_key': '{value}'}"
    ),
)
"""At least one entry per kind the issue lists; names are unique."""

ALL_SECRETS: tuple[str, ...] = tuple(secret for planted in PLANTED for secret in planted.secrets)


def leaks(blob: str) -> list[str]:
    """The planted secrets found in ``blob``, whole or by their first 12 characters (a cut half)."""
    found = []
    for planted in PLANTED:
        for secret in planted.secrets:
            probe = secret[:12] if len(secret) > 12 else secret
            if probe in blob:
                found.append(f"{planted.name}: {probe}")
    return found


# --- ordinary messages -----------------------------------------------------------------------------
_PROSE = [
    "I have a basic question about my API key.",
    "How do I rotate an API key without downtime?",
    "Where should I store my API keys: in environment variables or a secrets manager?",
    "The password must be at least 12 characters and include a number.",
    "Forgot your password? Click the reset link we emailed you.",
    "Tokens are the units a model reads; this prompt used 512 tokens.",
    "The max_tokens parameter limits how long the answer can be.",
    "Each token costs $0.000002, so a million tokens cost two dollars.",
    "Authentication failed because the key had expired; please generate a new one.",
    "OAuth uses an access token and a refresh token; the refresh token lasts longer.",
    "Bearer tokens should be sent over HTTPS only.",
    "A bearer of bad news is still a messenger.",
    "Basic authentication encodes the username and password with base64.",
    "This is a basic example of a secret sharing scheme.",
    "The author of the book wrote about secrets and keys in medieval castles.",
    "Press any key on the keyboard to continue.",
    "The monkey found the key to the kitchen.",
    "Session cookies expire when you close the browser.",
    "Our session today covers authorization and authentication.",
    "Credentials should never be committed to git.",
    "CSRF tokens protect forms against cross-site request forgery.",
    "The secret to good bread is time.",
    "Don't share your private key with anyone, not even support.",
    "Keys in a dictionary must be hashable.",
    "Primary key: the column that identifies a row uniquely.",
    "The token bucket algorithm smooths out bursts of requests.",
    "The tokenizer splits words into subword tokens.",
    "Passwords, passphrases and PINs are all knowledge factors.",
    "Use a password manager; never reuse a password.",
    "Set the Authorization header to the scheme followed by the credentials.",
    "Step 1: create a key. Step 2: copy it. Step 3: paste it into the dashboard.",
    "The task-force-review meeting is moved to Thursday.",
    "We use scikit-learn and sk-learn-style estimators.",
    "Our disk-cleanup-utility-program freed 20 GB.",
    "AWS pricing changed last year; the laws of physics did not.",
    "She draws maps of the Amazon with her straws and paws.",
    "The keynote speaker explained public-key cryptography.",
    "Tokens: 1024 in, 256 out.",
    "Remember: the session starts at 9.",
    "Café ☕ à Tōkyō — naïve “quotes” and emoji 🔑 are fine.",
    "Ключ API нужно хранить в секрете.",
    "APIキーは秘密にしてください。",
    "Note: secrets management is hard; use Vault or AWS Secrets Manager.",
    "The API returned 401 Unauthorized; check the key's permissions.",
    "Rate limit: 60 requests per minute per API key.",
    "Is 'password123' a good password? No.",
    "The word 'token' appears 3 times in this sentence: token, token.",
    "Cookie: a sweet baked treat. Session: a period of time.",
    "Use `os.environ['OPENAI_API_KEY']` to read your key.",
    "Export the key with export OPENAI_API_KEY=<your-key> before running.",
]

_CODE = [
    "def login(username: str, password: str) -> bool:\n    return check(username, password)",
    "token = create_token(user_id)\nif token == expected:\n    return True",
    "api_key = os.environ['API_KEY']\nclient = OpenAI(api_key=api_key)",
    "password = getpass.getpass('Password: ')",
    "headers = {'Authorization': f'Bearer {token}'}",
    "const apiKey = process.env.API_KEY;",
    "if (password.length < 12) { throw new Error('too short'); }",
    "SELECT id, username FROM users WHERE token_count > 10;",
    "class Settings(BaseSettings):\n    api_key: SecretStr\n    secret: Optional[str] = None",
    "for key, value in config.items():\n    print(key, value)",
    "git log --oneline -n 5",
    "curl -H 'Accept: application/json' https://api.example.com/v1/models",
    "docker run -e API_KEY=${API_KEY} image:latest",
    "kubectl create secret generic db --from-literal=password=$DB_PASSWORD",
    "x = {'key': 'color', 'value': 'red'}",
    "assert tokens == 12",
    "max_tokens: int = 1024",
    "session = requests.Session()\nsession.get(url)",
    "cookie_jar = http.cookiejar.CookieJar()",
    "monkeypatch.setenv('OPENAI_API_KEY', 'test')",
    "auth = None  # filled in later",
    "def verify(secret: bytes, digest: str) -> bool: ...",
    "ssh-keygen -t ed25519 -C 'me@example.com'",
    "print(f'{len(tokens)} tokens')",
    'return {"password": password_field, "remember": True}',
]

_URLS = [
    "https://example.com/docs/authentication#api-keys",
    "https://api.example.com/v1/users?page=2&per_page=50",
    "http://localhost:8000/health",
    "postgres://localhost:5432/app",
    "https://github.com/open-telemetry/opentelemetry-python/blob/main/README.md",
    "https://en.wikipedia.org/wiki/Password",
    "ssh://git@github.com:22/org/repo.git",
    "https://www.google.com/search?q=how+to+rotate+a+token",
    "s3://my-bucket/path/to/object.json",
    "mailto:support@example.com",
]


def _identifiers() -> list[str]:
    values = []
    for i in range(10):
        values.append(str(uuid.UUID(bytes=hashlib.md5(f"uuid-{i}".encode()).digest())))
        values.append(hashlib.sha1(f"commit-{i}".encode()).hexdigest())
        values.append(hashlib.sha256(f"digest-{i}".encode()).hexdigest())
    return values


def _base64_image(seed: int, size: int = 3000) -> str:
    data = hashlib.sha512(f"image-{seed}".encode()).digest() * (size // 64)
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + data).decode()


def _innocent_json() -> list[dict[str, Any]]:
    return [
        {"tokens": 12, "max_tokens": 100, "token_count": "12", "author": "Jane Doe", "keyboard": "qwerty"},
        {"usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}},
        {"name": "O'Brien", "title": "Mr", "note": 'he said "hi"'},
        {"key": "color", "value": "red"},
        {"keys": ["a", "b"], "authors": ["x", "y"]},
        {"token_type": "bearer", "expires_in": 3600, "scope": "read"},
        {"secret_name": "prod-db-password", "secret_version": 3},
        {"password_policy": "min 12 chars", "password_min_length": 12},
        {"session_count": 4, "session_length": "30m"},
        {"api_key_id": "key_123", "api_key_name": "ci"},
        {"next_page_token": "CAE", "page_size": 50},
        {"properties": {"password": {"type": "string", "description": "The user's password"}}},
        {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
        {"auth_provider": "google", "auth_type": "oauth"},
        {"monkey": "banana", "donkey": "carrot", "turkey": "gravy"},
        {"primary_key": "id", "foreign_key": "user_id"},
        {"password": None, "token": 12345, "secret": True},
        {"cookies_enabled": True, "session_timeout": 300},
        {"credential_id": "cred-1", "credential_type": "x509"},
        {"bypass": "none", "compass": "north", "passage": "long"},
    ]


def ordinary_messages() -> list[Any]:
    """At least 200 distinct messages, in every role and shape a conversation has."""
    messages: list[Any] = []
    texts = _PROSE + _CODE + _URLS + _identifiers()
    for i, text in enumerate(texts):
        role = ("user", "assistant", "system")[i % 3]
        messages.append({"role": role, "content": text})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"result": text})})
    for i, data in enumerate(_innocent_json()):
        messages.append({"role": "tool", "tool_call_id": f"call_j{i}", "content": json.dumps(data)})
        messages.append({"role": "user", "content": "see attached", "metadata": data})
    for i in range(5):
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": _base64_image(i)}},
                ],
            }
        )
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})},
                }
            ],
        }
    )
    return messages
