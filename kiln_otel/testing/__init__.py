"""Test helpers that ship with kiln-otel, so the demo, the test suite and the benchmarks (and Kiln's own
tests) drive litellm against the same deterministic model server.

Standard library only: importing this never imports litellm.
"""

from kiln_otel.testing.scripted_server import (
    Fault,
    Script,
    ScriptedModelServer,
    ToolCall,
    Turn,
    estimate_tokens,
)

__all__ = ["Fault", "Script", "ScriptedModelServer", "ToolCall", "Turn", "estimate_tokens"]
