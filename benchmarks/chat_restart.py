"""A chat continued after its server restarts: kronk's Serve app is stopped after turn 6 of a 12-turn chat (with
a ~1.2k-token system prompt) and started again over the same ``prefix_cache_dir``; turn 7 restores the history
from the disk prefix cache instead of prefilling it. A third app, without the disk tier
(``prefix_cache_disk_bytes: 0``), shows what turn 7 costs without it.

Per turn: TTFT, prompt tokens, cached tokens (``usage.prompt_tokens_details.cached_tokens``) and the tokens
prefilled (prompt - cached). The issue's target: after the restart, only the new message is prefilled and turn
7's TTFT is within 1.5x of a warm turn's (turn 6, before the restart).

Results: benchmarks/results/chat_restart/ (``chat_restart.parquet``, ``results.md``, ``meta.json``).

    python -m benchmarks.chat_restart
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
from benchmarks.peers import kronk_serve
from benchmarks.shared_prefix import SYSTEM

OUT = Path(__file__).parent / "results" / "chat_restart"
TOKENS = 32
RESTART_AFTER = 6


async def _turns(url: str, messages: list[dict], first: int, last: int, phase: str) -> list[dict[str, Any]]:
    rows = []
    async with httpx.AsyncClient(timeout=600) as client:
        for i in range(first, last):
            messages.append({"role": "user", "content": W.CHAT_TURNS[i]})
            r, text = await W.http_chat(client, url, "gemma3-270m", messages, TOKENS)
            messages.append({"role": "assistant", "content": text})
            rows.append({"phase": phase, "turn": i + 1, "ttft_ms": r.ttft_s * 1000, "prompt_tokens": r.prompt_tokens,
                         "cached_tokens": r.cached_tokens, "prefilled_tokens": r.prompt_tokens - r.cached_tokens})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: gemma3-270m from PyPI)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from benchmarks.speculative import default_model
    from kronk.engine.model import physical_cores

    model = args.model or default_model()
    threads = physical_cores()
    folder = tempfile.mkdtemp(prefix="kronk-bench-kv-")
    base = {"name": "gemma3-270m", "source": model, "parallel": 4, "ctx_size": 4096, "chat_template": "gemma",
            "num_cpus": 1, "threads": threads}
    rows: list[dict[str, Any]] = []
    history: list[dict] = [{"role": "system", "content": SYSTEM}]
    with kronk_serve({"models": [base], "prefix_cache_dir": folder}) as url:
        rows += asyncio.run(_turns(url, history, 0, RESTART_AFTER, "before restart"))
    kept = list(history)
    with kronk_serve({"models": [base], "prefix_cache_dir": folder}) as url:
        rows += asyncio.run(_turns(url, history, RESTART_AFTER, len(W.CHAT_TURNS), "after restart, disk tier"))
    with kronk_serve({"models": [{**base, "prefix_cache_disk_bytes": 0}], "prefix_cache_dir": folder}) as url:
        rows += asyncio.run(_turns(url, kept, RESTART_AFTER, RESTART_AFTER + 1, "after restart, no disk tier"))
    warm = next(r for r in rows if r["turn"] == RESTART_AFTER)
    lines = ["| phase | turn | TTFT ms | prompt tokens | cached | prefilled | TTFT / turn 6 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['turn']} | {r['ttft_ms']:.0f} | {r['prompt_tokens']} "
                     f"| {r['cached_tokens']} | {r['prefilled_tokens']} | {r['ttft_ms'] / warm['ttft_ms']:.2f} |")
    after = [r for r in rows if r["phase"] == "after restart, disk tier"]
    lines.append(f"\nwarm turns before the restart (2-{RESTART_AFTER}): TTFT median "
                 f"{statistics.median(r['ttft_ms'] for r in rows[1:RESTART_AFTER]):.0f} ms; turn "
                 f"{RESTART_AFTER + 1} after it: {after[0]['ttft_ms']:.0f} ms")
    md = "\n".join(lines)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads": threads, "model": model, "tokens": TOKENS, "restart_after_turn": RESTART_AFTER}
    W.save_tables(args.out, {"chat_restart": rows}, md, meta)
    print("\n" + md + f"\n\nresults in {args.out}")


if __name__ == "__main__":
    main()
