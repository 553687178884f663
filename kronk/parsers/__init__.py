"""Per-model-family tool-call and reasoning parsers, and the prompt side of tools.

See docs/tools.md. The names below are the public API.
"""

from kronk.parsers.base import StreamState, ToolParser
from kronk.parsers.families import TOOL_PARSERS, get_tool_parser, guess_tool_parser
from kronk.parsers.output import OutputParser, OutputStream, output_parser
from kronk.parsers.prompt import (
    chosen_function,
    render_tools_system_prompt,
    template_supports_tools,
    tool_call_grammar_schema,
)
from kronk.parsers.reasoning import ReasoningParser
from kronk.parsers.types import (
    FunctionCall,
    ParsedOutput,
    StreamEvent,
    ToolCall,
    coalesce,
    collect,
    new_call_id,
)

__all__ = [
    "TOOL_PARSERS",
    "FunctionCall",
    "OutputParser",
    "OutputStream",
    "ParsedOutput",
    "ReasoningParser",
    "StreamEvent",
    "StreamState",
    "ToolCall",
    "ToolParser",
    "chosen_function",
    "coalesce",
    "collect",
    "get_tool_parser",
    "guess_tool_parser",
    "new_call_id",
    "output_parser",
    "render_tools_system_prompt",
    "template_supports_tools",
    "tool_call_grammar_schema",
]
