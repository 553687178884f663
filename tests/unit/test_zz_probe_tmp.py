import httpx, json
from tests.helpers import GEMMA, SMOL

HI = [{"role": "user", "content": "hi"}]
SCHEMAS = [{"properties": []}, {"enum": {}}, {"type": "string", "minLength": 10**9}, {"$ref": "#/nope"},
           {"items": 5}, {"type": ["string", 5]}, {"pattern": "("}, {"type": "array", "minItems": -1},
           {"anyOf": 5}, {"required": 5, "type": "object"}, {"type": "array", "minItems": 100000},
           {"type": "object", "properties": {"a": 5}}, {"type": "object", "properties": {"a": {"type": "integer", "minimum": "x"}}},
           {"const": {"a": [1, {"b": None}]}}, {"enum": []}, {"allOf": [{"type": "string"}, {"type": "integer"}]},
           {"type": "string", "maxLength": 10**12}, {"type": "integer", "minimum": 10**30}, {"type": "number", "multipleOf": 0},
           {"type": "string", "format": "date-time"}, {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
           {"type": "object", "additionalProperties": 5}, {"oneOf": []}, {"type": "string", "pattern": "a{1000000}"},
           {"type": "array", "items": {"type": "string"}, "maxItems": 10**9}, {"prefixItems": 3}, {"type": "array", "prefixItems": [5]},
           {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", 5]}, {"type": "object", "required": [["x"]]},
           {"type": 5}, {"type": []}, {"type": "null"}, {"not": {}}, {"type": "boolean", "enum": [1]}]

def probe(url, body, path="/v1/chat/completions"):
    try:
        r = httpx.post(url + path, json=body, timeout=60)
        return r.status_code, r.text[:200]
    except Exception as e:
        return "EXC", repr(e)[:200]

def test_probe(api_url):
    out = []
    for s in SCHEMAS:
        for mode in ("rf", "tool"):
            if mode == "rf":
                body = {"model": SMOL, "messages": HI, "max_tokens": 4, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}}
            else:
                body = {"model": SMOL, "messages": HI, "max_tokens": 4, "tool_choice": "required",
                        "tools": [{"type": "function", "function": {"name": "f", "parameters": s}}]}
            st, t = probe(api_url, body)
            out.append((st, mode, json.dumps(s)[:80], t))
    extra = [
        {"model": SMOL, "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1,2]"}}]}, {"role": "tool", "content": "x"}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "5"}}]}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "tool", "content": "x", "tool_call_id": "z"}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "function", "content": "x", "name": "f"}], "max_tokens": 4},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "chat_template_kwargs": {"enable_thinking": {"a": 1}, "date_string": 5, "tools_in_user_message": []}},
        {"model": GEMMA, "messages": [{"role": "system", "content": "x"}, {"role": "system", "content": "y"}], "max_tokens": 4},
        {"model": GEMMA, "messages": [{"role": "assistant", "content": "x"}], "max_tokens": 4},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}], "tool_choice": "required", "parallel_tool_calls": True},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "tool_choice": {"type": "function", "function": {}}},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "stop": [""]},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "min_tokens": 100, "ignore_eos": True},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "seed": -5, "temperature": 1.5, "top_k": 0, "top_p": 0.0001, "min_p": 1},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "logit_bias": {str(i): -100 for i in range(1000)}},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "response_format": {"type": "json_object"}, "logit_bias": {"1": -100}},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "repeat_last_n": -1, "repeat_penalty": 10, "presence_penalty": 2},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "top_logprobs": 5},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}},
        {"model": SMOL, "messages": HI, "max_tokens": 4, "stream_options": None, "n": 1, "echo": True, "logprobs": False},
        {"model": SMOL, "messages": [{"role": "user", "content": [{"type": "input_text", "text": "x"}, {"type": "refusal"}]}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "user", "content": []}], "max_tokens": 4},
        {"model": SMOL, "messages": [{"role": "user", "content": "\u0000\u0001<|im_start|>"}], "max_tokens": 4},
    ]
    for b in extra:
        st, t = probe(api_url, b)
        out.append((st, "x", json.dumps(b)[:120], t))
    for b, path in [({"model": GEMMA, "prompt": [[1, 2]], "max_tokens": 2}, "/v1/completions"),
                    ({"model": GEMMA, "prompt": [0], "max_tokens": 2}, "/v1/completions"),
                    ({"model": GEMMA, "prompt": "x", "max_tokens": 2, "echo": True, "stream": True}, "/v1/completions"),
                    ({"model": GEMMA, "prompt": "x", "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"schema": {"pattern": "("}}}}, "/v1/completions"),
                    ({"model": GEMMA, "input": [[]]}, "/v1/embeddings"),
                    ({"model": GEMMA, "input": [""]}, "/v1/embeddings"),
                    ({"model": GEMMA, "input": [[0]], "dimensions": 1, "encoding_format": "base64"}, "/v1/embeddings"),
                    ({"model": GEMMA, "input": "x" * 20000}, "/v1/embeddings"),
                    ({"model": GEMMA, "input": [[1] * 3000]}, "/v1/embeddings"),
                    ({"model": GEMMA, "input": ["word " * 1500] * 8}, "/v1/embeddings"),
                    ({"model": SMOL, "input": "hi"}, "/v1/embeddings"),
                    ({"model": "x", "stream": "yes"}, "/v1/models/pull")]:
        st, t = probe(api_url, b, path)
        out.append((st, path, json.dumps(b)[:100], t))
    for g in ["/v1/models/%ED%A0%80", "/v1/models/" + "a" * 5000, "/v1/catalog?family=%00&capability=x", "/v1/models/pull/%ff?stream=true", "/v1/models/pull/x?stream=maybe"]:
        r = httpx.get(api_url + g, timeout=30)
        out.append((r.status_code, "GET", g[:60], r.text[:150]))
    for o in out:
        print(*o, sep=" | ")
