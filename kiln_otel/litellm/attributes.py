"""Pure translations from litellm's call arguments and responses to GenAI span attributes.

Nothing here touches a span or imports litellm, so the mapping is testable on plain data and one
table decides what every entry point (traced calls, the instrumentor, the agent loop) records.
Only named request parameters are read: the kwargs also hold API keys and headers, which must
never reach telemetry, so nothing is copied wholesale.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel.encoding import _field

__all__ = [
    "PROVIDER_NAMES",
    "provider_name",
    "request_attributes",
    "response_attributes",
    "server_attributes",
    "split_model",
    "usage_tokens",
]

PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "anthropic_text": "anthropic",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_text": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "codestral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "perplexity": "perplexity",
    "watsonx": "ibm.watsonx.ai",
    "watsonx_text": "ibm.watsonx.ai",
}
"""litellm provider -> the GenAI conventions' well-known ``gen_ai.provider.name``; others pass through."""


def provider_name(litellm_provider: str) -> str:
    return PROVIDER_NAMES.get(litellm_provider, litellm_provider)


def split_model(model: str, custom_llm_provider: str | None, known_providers: Container[str]) -> tuple[str | None, str]:
    """(litellm provider or None, model name without the provider prefix), as litellm routes it.

    A prefix counts only when litellm knows it: ``meta-llama/Llama-3`` names a model, not a provider.
    A bare model name (``gpt-4o``) leaves the provider to be read from the response or the error.
    """
    if custom_llm_provider:
        prefix = custom_llm_provider + "/"
        return custom_llm_provider, model.removeprefix(prefix)
    prefix, slash, rest = model.partition("/")
    if slash and rest and (prefix in known_providers or prefix in PROVIDER_NAMES):
        return prefix, rest
    return None, model


def server_attributes(api_base: object) -> dict[str, AttributeValue]:
    """Host and port only: an api_base can carry credentials or a deployment key in its query."""
    if not isinstance(api_base, str) or not api_base:
        return {}
    try:
        parts = urlsplit(api_base)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return {}
    if not parts.hostname:
        return {}
    attributes: dict[str, AttributeValue] = {wire.ATTR_SERVER_ADDRESS: parts.hostname}
    if port:
        attributes[wire.ATTR_SERVER_PORT] = port
    return attributes


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stop_sequences(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


_REQUEST_PARAMETERS: tuple[tuple[str, str, Callable[[object], AttributeValue | None]], ...] = (
    ("temperature", wire.ATTR_GEN_AI_REQUEST_TEMPERATURE, _number),
    ("top_p", wire.ATTR_GEN_AI_REQUEST_TOP_P, _number),
    ("top_k", wire.ATTR_GEN_AI_REQUEST_TOP_K, _integer),
    ("frequency_penalty", wire.ATTR_GEN_AI_REQUEST_FREQUENCY_PENALTY, _number),
    ("presence_penalty", wire.ATTR_GEN_AI_REQUEST_PRESENCE_PENALTY, _number),
    ("max_tokens", wire.ATTR_GEN_AI_REQUEST_MAX_TOKENS, _integer),
    ("max_completion_tokens", wire.ATTR_GEN_AI_REQUEST_MAX_TOKENS, _integer),
    ("seed", wire.ATTR_GEN_AI_REQUEST_SEED, _integer),
    ("stop", wire.ATTR_GEN_AI_REQUEST_STOP_SEQUENCES, _stop_sequences),
)


def request_attributes(kwargs: Mapping[str, Any], known_providers: Container[str] = ()) -> dict[str, AttributeValue]:
    """Everything known before the call: what samplers and the span name need, set at span start."""
    attributes = dict(_routing_attributes(kwargs, known_providers))
    if not _PARAMETER_NAMES.isdisjoint(kwargs):
        for key, attribute, convert in _REQUEST_PARAMETERS:
            value = convert(kwargs.get(key))
            if value is not None:
                attributes[attribute] = value
    choices = _integer(kwargs.get("n"))
    if choices is not None and choices != 1:
        attributes[wire.ATTR_GEN_AI_REQUEST_CHOICE_COUNT] = choices
    if kwargs.get("stream"):
        attributes[wire.ATTR_GEN_AI_REQUEST_STREAM] = True
    return attributes


_PARAMETER_NAMES = frozenset(key for key, _, _ in _REQUEST_PARAMETERS)
_ROUTES: dict[tuple[object, ...], dict[str, AttributeValue]] = {}
_MAX_ROUTES = 256


def _routing_attributes(kwargs: Mapping[str, Any], known_providers: Container[str]) -> dict[str, AttributeValue]:
    """Operation, provider, model and server: the same for every call to one model at one address,
    so made once per (model, provider, api_base) and shared (read only: callers copy)."""
    model = kwargs.get("model")
    custom = kwargs.get("custom_llm_provider")
    base = kwargs.get("api_base") or kwargs.get("base_url")
    try:
        key = (model, custom, base, known_providers)
        found = _ROUTES.get(key)
    except TypeError:  # something unhashable where a string belongs: nothing to share
        key, found = None, None
    if found is not None:
        return found
    model = model if isinstance(model, str) else ""
    provider, model_name = split_model(model, custom if isinstance(custom, str) else None, known_providers)
    attributes: dict[str, AttributeValue] = {wire.ATTR_GEN_AI_OPERATION_NAME: wire.OPERATION_CHAT}
    if provider:
        attributes[wire.ATTR_GEN_AI_PROVIDER_NAME] = provider_name(provider)
    if model_name:
        attributes[wire.ATTR_GEN_AI_REQUEST_MODEL] = model_name
    attributes.update(server_attributes(base))
    if key is not None:
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        _ROUTES[key] = attributes
    return attributes


def usage_tokens(response: object) -> tuple[int | None, int | None]:
    """(input, output) tokens as litellm reports them, None where it reports nothing usable."""
    usage = _field(response, "usage")
    if usage is None:
        return None, None
    return _integer(_field(usage, "prompt_tokens")), _integer(_field(usage, "completion_tokens"))


def response_attributes(response: object) -> dict[str, AttributeValue]:
    """What the answer says about itself: set at span end, on success only."""
    attributes: dict[str, AttributeValue] = {}
    for key, attribute in (("id", wire.ATTR_GEN_AI_RESPONSE_ID), ("model", wire.ATTR_GEN_AI_RESPONSE_MODEL)):
        value = _field(response, key)
        if isinstance(value, str) and value:
            attributes[attribute] = value
    choices = _field(response, "choices")
    if isinstance(choices, (list, tuple)):
        reasons = [_field(choice, "finish_reason") for choice in choices]
        if reasons and all(isinstance(r, str) for r in reasons):
            attributes[wire.ATTR_GEN_AI_RESPONSE_FINISH_REASONS] = tuple(reasons)
    input_tokens, output_tokens = usage_tokens(response)
    if input_tokens is not None:
        attributes[wire.ATTR_GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        attributes[wire.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
    return attributes
