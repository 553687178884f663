"""Shared prefixes: 8 users arriving at once with the same ~1.2k-token system prompt, kronk's Serve app beside
llama-server, both with 8 slots, on the same GGUF, started fresh each round.

Three measurements per system and round, all chat completions (temperature 0, ``ignore_eos``, 16 tokens):

- **cold**: the first 8 requests after start, all at once, each its own question: TTFT p50 / max;
- **warm**: 8 more at once, new questions (every slot now holds the system prompt);
- **throughput**: 32 requests with new questions, 8 in flight at a time: requests/s.

Results: benchmarks/results/shared_prefix/ (``shared_prefix.parquet``, ``shared_prefix_rounds.parquet``,
``shared_prefix.png``, ``results.md``, ``meta.json``).

    python -m benchmarks.shared_prefix --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import workloads as W
from benchmarks.peers import kronk_serve, llama_server

OUT = Path(__file__).parent / "results" / "shared_prefix"
SLOTS = 8
TOKENS = 16

SYSTEM = "You are the support assistant of a parcel company. Follow these rules exactly.\n" + "\n".join(
    f"Rule {i}: when a customer asks about order {1000 + i}, check the warehouse in city {i % 7} first, then the "
    f"courier log for day {i % 28 + 1}, and answer politely in at most {i % 5 + 2} sentences."
    for i in range(34))
TOPICS = ["my parcel", "a return", "opening hours", "shipping abroad", "a broken item", "my address", "discounts",
          "paying cash", "a double charge", "gift cards", "a late courier", "a wrong size", "insurance",
          "a lost key", "a missing invoice", "weekend delivery"]


def question(i: int) -> str:
    return f"Question {i}: I need help with {TOPICS[i % len(TOPICS)]} (ticket {7000 + i})."


async def _wave(client: httpx.AsyncClient, url: str, first: int, n: int, in_flight: int) -> list[W.Result]:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> W.Result:
        async with gate:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(i)}]
            r, _ = await W.http_chat(client, url, "gemma3-270m", messages, TOKENS)
            return r

    return list(await asyncio.gather(*[one(first + i) for i in range(n)]))


def measure(system: str, url: str, rnd: int) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        rows = []
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:
            for phase, first, n in (("cold", 0, SLOTS), ("warm", 100, SLOTS), ("throughput", 200, 4 * SLOTS)):
                t0 = time.perf_counter()
                res = await _wave(client, url, first, n, SLOTS)
                wall = time.perf_counter() - t0
                ttft = [r.ttft_s * 1000 for r in res]
                rows.append({"system": system, "round": rnd, "phase": phase, "requests": n,
                             "ttft_p50_ms": statistics.median(ttft), "ttft_max_ms": max(ttft),
                             "requests_per_s": n / wall, "wall_s": wall,
                             "prompt_tokens": statistics.median(r.prompt_tokens for r in res)})
        return rows

    return asyncio.run(go())


def summary(rows: list[dict]) -> tuple[list[dict], str]:
    out: list[dict] = []
    for system in dict.fromkeys(r["system"] for r in rows):
        for phase in ("cold", "warm", "throughput"):
            rs = [r for r in rows if r["system"] == system and r["phase"] == phase]
            if rs:
                out.append({"system": system, "phase": phase, "rounds": len(rs),
                            "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs),
                            "requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
                            "prompt_tokens": rs[0]["prompt_tokens"]})
    by = {(r["system"], r["phase"]): r for r in out}
    lines = ["| phase | kronk TTFT p50 ms | llama-server TTFT p50 ms | ratio | kronk req/s | llama-server req/s "
             "| ratio |", "|---|---|---|---|---|---|---|"]
    for phase in ("cold", "warm", "throughput"):
        k, s = by.get(("kronk-serve", phase)), by.get(("llama-server", phase))
        if not (k and s):
            continue
        lines.append(f"| {phase} | {k['ttft_p50_ms']:.0f} | {s['ttft_p50_ms']:.0f} | "
                     f"{k['ttft_p50_ms'] / s['ttft_p50_ms']:.2f} | {k['requests_per_s']:.2f} | "
                     f"{s['requests_per_s']:.2f} | {k['requests_per_s'] / s['requests_per_s']:.2f} |")
    return out, "\n".join(lines)


def save(rows: list[dict], summ: list[dict], md: str, meta: dict[str, Any], out: Path) -> None:
    W.save_tables(out, {"shared_prefix_rounds": rows, "shared_prefix": summ}, md, meta)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    systems = list(dict.fromkeys(r["system"] for r in summ))
    for ax, (metric, label) in zip(axes, (("ttft_p50_ms", "TTFT p50 (ms)"), ("requests_per_s", "requests/s")),
                                   strict=True):
        phases = ["cold", "warm"] if metric == "ttft_p50_ms" else ["throughput"]
        width = 0.8 / len(systems)
        for j, system in enumerate(systems):
            vals = [next((r[metric] for r in summ if r["system"] == system and r["phase"] == p), 0) for p in phases]
            ax.bar([i + j * width for i in range(len(phases))], vals, width, label=system)
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(phases))], phases)
        ax.set(title=f"{SLOTS} users, one ~1.2k-token system prompt", ylabel=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "shared_prefix.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: gemma3-270m from PyPI)")
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: kronk,llama-server")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/"
                    "shared_prefix, or a temporary one with --skip)")
    args = ap.parse_args()
    from benchmarks.speculative import default_model
    from kronk.engine.model import physical_cores

    model = args.model or default_model()
    skip = set(filter(None, args.skip.split(",")))
    threads = physical_cores()
    rows: list[dict] = []
    sargs = {"models": [{"name": "gemma3-270m", "source": model, "parallel": SLOTS, "ctx_size": args.ctx,
                         "chat_template": "gemma", "num_cpus": 1, "threads": threads}]}
    for rnd in range(args.rounds):
        if "llama-server" not in skip:
            with llama_server(model, threads, SLOTS, args.ctx) as url:
                rows += measure("llama-server", url, rnd)
        if "kronk" not in skip:
            with kronk_serve(sargs) as url:
                rows += measure("kronk-serve", url, rnd)
    summ, md = summary(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads": threads, "model": model, "slots": SLOTS, "ctx_per_slot": args.ctx, "tokens": TOKENS,
            "rounds": args.rounds}
    out = args.out or (Path(tempfile.mkdtemp(prefix="kronk-bench-shared-")) if skip else OUT)
    save(rows, summ, md, meta, out)
    print("\n" + md + f"\n\nresults in {out}")


if __name__ == "__main__":
    main()
