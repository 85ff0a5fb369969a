"""kiln-otel for litellm (``pip install 'kiln-otel[litellm]'``): model and tool calls as GenAI spans.

Public surface::

    traced_acompletion / traced_completion   one litellm call as a ``chat`` span; appends the answer
    AsyncTracedStream / TracedStream         what those return for ``stream=True``
    run_agent                                the reference tool-calling loop (async)
    LiteLLMInstrumentor                      ``chat`` spans for direct ``litellm.(a)completion`` calls

Importing this package does not import litellm; the first call does.
"""

from kiln_otel.litellm.agent import OnToolError, ToolHandler, run_agent
from kiln_otel.litellm.completion import traced_acompletion, traced_completion
from kiln_otel.litellm.instrumentor import LiteLLMInstrumentor
from kiln_otel.litellm.stream import AsyncTracedStream, TracedStream

__all__ = [
    "AsyncTracedStream",
    "LiteLLMInstrumentor",
    "OnToolError",
    "ToolHandler",
    "TracedStream",
    "run_agent",
    "traced_acompletion",
    "traced_completion",
]
