"""OpenWebUI's chat turn and background tasks, as it sends them, in one process (real models, in-process backend,
real HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import GEMMA, SMOL, sse_events
from tests.unit.test_api_json_mode import ends_in_a_loop

# OpenWebUI's background tasks, as it sends them
FOLLOW_UP_TASK = """### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user's point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Response must be a JSON array of strings, no extra text or formatting.
### Output:
JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }
### Chat History:
<chat_history>
USER: What is the capital of France?
ASSISTANT: {answer}
</chat_history>"""  # noqa: E501

TITLE_TASK = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Output:
JSON format: { "title": "your concise title here" }
### Chat History:
<chat_history>
USER: What is the capital of France?
ASSISTANT: {answer}
</chat_history>"""

TAGS_TASK = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.
### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }
### Chat History:
<chat_history>
USER: What is the capital of France?
ASSISTANT: {answer}
</chat_history>"""

# OpenWebUI's built-in tools, as its native function calling attaches them to every turn (names as it sends them;
# it sends ~36, all shaped like these)
OPENWEBUI_TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name.replace('_', ' ')} (an OpenWebUI built-in tool)",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": []}}}
    for name in ("get_current_timestamp", "calculate_timestamp", "search_web", "fetch_url", "search_knowledge_bases",
                 "query_knowledge_files", "search_notes", "view_note", "write_note", "search_chats", "view_chat",
                 "search_memories", "add_memory", "replace_memory_content", "generate_image", "edit_image",
                 "execute_code", "list_files", "view_file", "search_files", "get_weather", "get_user_info",
                 "list_models", "search_channels", "view_channel", "send_message", "create_task", "list_tasks",
                 "update_task", "delete_task", "create_event", "list_events", "translate_text", "summarize_text",
                 "convert_units", "get_time_zone")]

MARKUP = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>")


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_openwebui_flow(api_url, model):
    answer = ""
    with httpx.stream("POST", api_url + "/v1/chat/completions", timeout=120, json={
            "model": model, "stream": True, "max_tokens": 60, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for ch in sse_events(r.iter_lines()):
            if ch["choices"]:
                answer += ch["choices"][0]["delta"].get("content") or ""
    assert answer
    for task, limit in ((TITLE_TASK, 1000), (FOLLOW_UP_TASK, None), (TAGS_TASK, None)):
        # OpenWebUI's shape (no temperature, no response_format); the seed only makes the test repeatable
        body = {"model": model, "stream": False, "seed": 42,
                "messages": [{"role": "user", "content": task.replace("{answer}", answer)}]}
        if limit:
            body["max_tokens"] = limit
        if model == GEMMA:  # the base model never stops on its own: bound it, as a user would
            body["max_tokens"] = 80
        r = httpx.post(api_url + "/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        data = r.json()
        assert len(data["choices"]) == 1
        content = data["choices"][0]["message"]["content"]
        assert not any(m in content for m in MARKUP), content
        assert "reasoning_content" not in data["choices"][0]["message"] and "<think>" not in content
        if model == GEMMA:  # a base model: no instruction following to check beyond clean output
            continue
        # with response_format json_object and no token limit, as OpenWebUI can send it: the answer ends
        # (the request returns) far below the context (2048 here), whatever the CPU makes the model
        # write: the grammar bounds its whitespace and the repetition guard ends a loop; and one that
        # ended by itself parses, as OpenWebUI slices it
        body.update(response_format={"type": "json_object"}, temperature=0)
        body.pop("max_tokens", None)
        r = httpx.post(api_url + "/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200
        data = r.json()
        choice, used = data["choices"][0], data["usage"]["completion_tokens"]
        content = choice["message"]["content"]
        assert choice["finish_reason"] in ("stop", "length"), choice["finish_reason"]
        assert used < 2048 // 2, (used, content)
        if choice["finish_reason"] == "stop":
            sliced = content[content.index("{"): content.rindex("}") + 1]
            assert isinstance(json.loads(sliced), dict), content
        else:
            assert ends_in_a_loop(content), content


def test_openwebui_turn_with_its_built_in_tools(api_url):
    """OpenWebUI attaches its ~36 built-in tools to every turn (tool_choice unset: auto). The default model's
    template renders no tools: they are left out, so the answer is the answer, not a recital of the tool list
    (9,570 characters of "You can call these functions: - get_current_timestamp ..." before), and the prompt is
    the chat's own."""
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]
    plain = httpx.post(api_url + "/v1/chat/completions", timeout=120, json={
        "model": SMOL, "messages": msgs, "max_tokens": 1, "temperature": 0}).json()["usage"]["prompt_tokens"]
    answer, usage = "", None
    with httpx.stream("POST", api_url + "/v1/chat/completions", timeout=120, json={
            "model": SMOL, "stream": True, "max_tokens": 60, "temperature": 0, "tools": OPENWEBUI_TOOLS,
            "stream_options": {"include_usage": True}, "messages": msgs}) as r:
        assert r.status_code == 200
        for ch in sse_events(r.iter_lines()):
            if ch["choices"]:
                assert "tool_calls" not in ch["choices"][0]["delta"]
                answer += ch["choices"][0]["delta"].get("content") or ""
            usage = ch.get("usage") or usage
    assert answer.strip() and usage["prompt_tokens"] == plain
    assert not any(t["function"]["name"] in answer for t in OPENWEBUI_TOOLS), answer
