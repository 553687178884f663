"""One run of a workload with no prefix reuse at all, with the RAM and disk prefix caches on or off, so that
their cost is measured side by side (kronk/engine/prefix_cache.py): 16 requests whose prompts (~300 tokens)
differ from their first tokens, 8 at a time on 4 slots, 96 tokens each, in one engine in this process.

    farm-bench -n 8 --timeout 1400 --vs "python -m benchmarks.no_reuse off" -- python -m benchmarks.no_reuse on
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.engine import LlamaEngine

WORDS = ["river", "mountain", "lantern", "copper", "violin", "meadow", "harbor", "cinnamon", "glacier", "orchard",
         "falcon", "velvet"]
REQUESTS, IN_FLIGHT, SLOTS, TOKENS = 16, 8, 4, 96


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("caches", choices=["on", "off"])
    ap.add_argument("--model", default=None, help="GGUF path (default: gemma3-270m from PyPI)")
    args = ap.parse_args()
    from benchmarks.speculative import default_model

    kw = {"prefix_cache_dir": tempfile.mkdtemp()} if args.caches == "on" else {"prefix_cache_bytes": 0}
    engine = LlamaEngine(EngineConfig(model_path=args.model or default_model(), parallel=SLOTS, ctx_size=4096,
                                      **kw))

    def prompt(k: int) -> list[int]:
        body = " ".join(WORDS[(k * 7 + j * 3) % len(WORDS)] for j in range(220))
        return engine.tokenize(f"Note {k * 7919 % 100003}: {body}\nSummarize note {k}:")

    async def run() -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(k: int) -> None:
            async with gate:
                req = GenerationRequest(prompt=prompt(k), sampling=SamplingParams(temperature=0.0),
                                        max_tokens=TOKENS, ignore_eos=True)
                async for _ in engine.generate(req):
                    pass

        await asyncio.gather(*[one(k) for k in range(REQUESTS)])

    try:
        asyncio.run(run())
        tiers = engine.stats().prefix_cache
        if ("ram" in tiers) != (args.caches == "on"):
            raise SystemExit(f"the prefix caches are not {args.caches}: {tiers}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
