"""Unmodified OpenAI-compatible client libraries against kronk (real models, in-process backend, real HTTP):
LangChain's ChatOpenAI (structured output both ways, bound tools), LiteLLM's completion(), a pydantic-ai Agent
with an output type. Forced calls and schemas are grammar-constrained, so even the small instruct model returns
values that validate."""

from __future__ import annotations

import os

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.helpers import SMOL

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM fetches its price list from the web else


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                  "required": ["city"]}

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def chat_openai(api_url):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=api_url + "/v1", api_key="unused", model=SMOL, temperature=0, max_tokens=60,
                      max_retries=0, timeout=120)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(chat_openai, method):
    out = chat_openai.with_structured_output(City, method=method).invoke(QUESTION)
    assert isinstance(out, City) and out.name and out.country


def test_langchain_bind_tools(chat_openai):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = chat_openai.bind_tools([get_weather], tool_choice="get_weather")
    msg = llm.invoke("What is the weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    call = msg.tool_calls[0]
    jsonschema.validate(call["args"], WEATHER_SCHEMA)
    # the round trip: the call and the tool's answer go back, and the model answers in text
    reply = chat_openai.bind_tools([get_weather]).invoke(
        [HumanMessage("What is the weather in Paris?"), msg,
         ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert isinstance(reply.content, str) and reply.content.strip() and not reply.tool_calls


def test_litellm_completion(api_url):
    import litellm

    r = litellm.completion(model="openai/" + SMOL, api_base=api_url + "/v1", api_key="unused", temperature=0,
                           max_tokens=16, messages=[{"role": "user", "content": QUESTION}], num_retries=0)
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason in ("stop", "length")
    chunks = list(litellm.completion(model="openai/" + SMOL, api_base=api_url + "/v1", api_key="unused",
                                     temperature=0, max_tokens=16, stream=True, num_retries=0,
                                     messages=[{"role": "user", "content": QUESTION}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content


def test_pydantic_ai_agent_with_an_output_type(api_url):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(SMOL, provider=OpenAIProvider(base_url=api_url + "/v1", api_key="unused"))
    agent = Agent(model, output_type=City, model_settings={"temperature": 0, "max_tokens": 60}, retries=0)
    result = agent.run_sync(QUESTION)
    assert isinstance(result.output, City) and result.output.name and result.output.country
