"""The two GenAI client metrics: token usage and operation duration, with the advised buckets.

Instruments are made once per meter provider and reused: the SDK warns on every re-registration,
and a model call is far too hot a path to create instruments in.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.util.types import AttributeValue

from kiln_otel import wire
from kiln_otel.version import __version__

__all__ = ["ChatMetrics", "chat_metrics"]

METRIC_ATTRIBUTES = (
    wire.ATTR_GEN_AI_OPERATION_NAME,
    wire.ATTR_GEN_AI_PROVIDER_NAME,
    wire.ATTR_GEN_AI_REQUEST_MODEL,
    wire.ATTR_GEN_AI_RESPONSE_MODEL,
    wire.ATTR_SERVER_ADDRESS,
    wire.ATTR_SERVER_PORT,
)
"""Only low-cardinality span attributes become metric dimensions (never ids or token counts)."""


class ChatMetrics:
    def __init__(self, provider: MeterProvider) -> None:
        meter = metrics.get_meter("kiln_otel.litellm", __version__, provider)
        self._tokens: Histogram = meter.create_histogram(
            wire.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=wire.TOKEN_USAGE_BUCKETS,
        )
        self._duration: Histogram = meter.create_histogram(
            wire.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=wire.DURATION_BUCKETS,
        )

    def record(
        self,
        span_attributes: Mapping[str, AttributeValue],
        seconds: float,
        *,
        tokens: tuple[int | None, int | None] = (None, None),
        estimated: bool = False,
        error_type: str | None = None,
    ) -> None:
        """One finished call. Estimated usage is kept but marked, so dashboards can filter it out."""
        common = {key: span_attributes[key] for key in METRIC_ATTRIBUTES if key in span_attributes}
        failed = {wire.ATTR_ERROR_TYPE: error_type} if error_type is not None else {}
        self._duration.record(seconds, {**common, **failed})
        token_attributes = {**common, wire.ATTR_USAGE_ESTIMATED: True} if estimated else common
        for kind, count in zip((wire.TOKEN_TYPE_INPUT, wire.TOKEN_TYPE_OUTPUT), tokens):
            if count is not None:
                self._tokens.record(count, {**token_attributes, wire.ATTR_GEN_AI_TOKEN_TYPE: kind})


_lock = threading.Lock()
_by_provider: weakref.WeakKeyDictionary[MeterProvider, ChatMetrics] = weakref.WeakKeyDictionary()
_global: ChatMetrics | None = None


def chat_metrics(provider: MeterProvider | None = None) -> ChatMetrics:
    """The instruments for ``provider`` (the global meter provider when None), made on first use.

    The global provider is resolved once: it can be set only once, and instruments made from the
    API's proxy before that forward to the provider set later.
    """
    global _global
    if provider is None:
        if _global is None:
            _global = chat_metrics(metrics.get_meter_provider())
        return _global
    resolved = provider
    found = _by_provider.get(resolved)  # made once per provider: the lock only guards the making
    if found is not None:
        return found
    with _lock:
        found = _by_provider.get(resolved)
        if found is None:
            found = _by_provider[resolved] = ChatMetrics(resolved)
        return found
