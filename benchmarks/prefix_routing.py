"""Prefix-affinity routing across replicas: 12-turn chats on one model with two replicas, with ``prefix_routing``
on (deployments/router.py) and off (Serve's default router, the power of two choices), each server started fresh
per round.

Both run the same application shape: the routing ingress (``ingress: router``) over the model's two replicas,
Serve's HTTP proxy in front, so the router is the only difference. Each chat is the 12 turns of
``workloads.CHAT_TURNS`` (its first message names the chat, so that chats share nothing), streamed, temperature
0, ``ignore_eos``, 16 tokens per answer; chats run one after the other. Per turn: the tokens prefilled
(``prompt_tokens - cached_tokens``), TTFT, and which replica served it (from the replicas' counters in
``/metrics``).

Results: benchmarks/results/prefix_routing/ (``prefix_routing_turns.parquet`` (every turn),
``prefix_routing.parquet`` (per mode and turn), ``prefix_routing.png``, ``results.md``, ``meta.json``).

    python -m benchmarks.prefix_routing --rounds 2 --chats 3
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import workloads as W
from benchmarks.peers import kronk_serve

OUT = Path(__file__).parent / "results" / "prefix_routing"
MODEL = "gemma3-270m"
TOKENS = 16
REPLICAS = 2
SLOTS = 2


def completion_tokens_by_replica(client: httpx.Client, url: str) -> dict[str, float]:
    from kronk.telemetry import prometheus

    out: dict[str, float] = {}
    for name, labels, value in prometheus.parse(client.get(url + "/metrics", timeout=30).text):
        if name == "kronk_completion_tokens_total" and labels.get("model") == MODEL:
            out[labels["replica"]] = out.get(labels["replica"], 0.0) + value
    return out


def served_by(client: httpx.Client, url: str, before: dict[str, float], tokens: int) -> str | None:
    """The replica whose counter rose by the turn's tokens (the board is pushed just after each request)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = completion_tokens_by_replica(client, url)
        if sum(now.values()) - sum(before.values()) >= tokens:
            grew = [r for r, n in now.items() if n > before.get(r, 0.0)]
            return grew[0] if len(grew) == 1 else None
        time.sleep(0.1)
    return None


def wait_replicas(url: str, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(url + "/v1/stats", timeout=30).json()["models"][MODEL]["replicas"] >= n:
            return
        time.sleep(1)
    raise TimeoutError(f"{n} replicas did not start")


async def chat_turn(url: str, messages: list[dict[str, str]]) -> tuple[W.Result, str]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return await W.http_chat(client, url, MODEL, messages, TOKENS)


def measure(mode: str, url: str, rnd: int, chats: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with httpx.Client() as sync:
        for chat in range(chats):
            messages: list[dict[str, str]] = []
            last = None
            for turn, user in enumerate(W.CHAT_TURNS, start=1):
                content = f"(chat {rnd}-{chat}) {user}" if turn == 1 else user
                messages.append({"role": "user", "content": content})
                before = completion_tokens_by_replica(sync, url)
                r, text = asyncio.run(chat_turn(url, messages))
                messages.append({"role": "assistant", "content": text})
                replica = served_by(sync, url, before, r.tokens)
                rows.append({"mode": mode, "round": rnd, "chat": chat, "turn": turn, "prompt_tokens": r.prompt_tokens,
                             "cached_tokens": r.cached_tokens, "prefilled": r.prompt_tokens - r.cached_tokens,
                             "ttft_ms": r.ttft_s * 1000, "replica": replica,
                             "moved": turn > 1 and replica is not None and replica != last})
                last = replica
    return rows


def summary(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out: list[dict[str, Any]] = []
    for mode in modes:
        for turn in range(1, len(W.CHAT_TURNS) + 1):
            rs = [r for r in rows if r["mode"] == mode and r["turn"] == turn]
            out.append({"mode": mode, "turn": turn, "chats": len(rs),
                        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in rs),
                        "prefilled_mean": statistics.mean(r["prefilled"] for r in rs),
                        "ttft_p50_ms": statistics.median(r["ttft_ms"] for r in rs),
                        "moved": sum(r["moved"] for r in rs)})
    by = {(r["mode"], r["turn"]): r for r in out}
    lines = ["| turn | prompt tokens | on: prefilled (mean) | on: TTFT p50 ms | on: moved | off: prefilled (mean) "
             "| off: TTFT p50 ms | off: moved |", "|---|---|---|---|---|---|---|---|"]
    for turn in range(1, len(W.CHAT_TURNS) + 1):
        on, off = by.get(("on", turn)), by.get(("off", turn))
        if not (on and off):
            continue
        lines.append(f"| {turn} | {on['prompt_tokens']:.0f} | {on['prefilled_mean']:.1f} | {on['ttft_p50_ms']:.0f} "
                     f"| {on['moved']}/{on['chats']} | {off['prefilled_mean']:.1f} | {off['ttft_p50_ms']:.0f} "
                     f"| {off['moved']}/{off['chats']} |")
    later = {m: [r for r in rows if r["mode"] == m and r["turn"] > 1] for m in modes}
    if later.get("on") and later.get("off"):
        chats = {m: len({(r["round"], r["chat"]) for r in later[m]}) for m in modes}
        pre = {m: sum(r["prefilled"] for r in later[m]) / chats[m] for m in modes}
        ttft = {m: statistics.median(r["ttft_ms"] for r in later[m]) for m in modes}
        moved = {m: sum(r["moved"] for r in later[m]) for m in modes}
        lines += ["", f"Turns 2-12, per chat: prefilled {pre['on']:.0f} tokens with routing on vs {pre['off']:.0f} "
                  f"off ({pre['on'] / pre['off']:.2f}x); TTFT p50 {ttft['on']:.0f} ms vs {ttft['off']:.0f} ms "
                  f"({ttft['on'] / ttft['off']:.2f}x); turns that moved to the other replica: {moved['on']} vs "
                  f"{moved['off']} of {len(later['on'])}."]
    return out, "\n".join(lines)


def save(rows: list[dict], summ: list[dict], md: str, meta: dict[str, Any], out: Path) -> None:
    W.save_tables(out, {"prefix_routing_turns": rows, "prefix_routing": summ}, md, meta)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(axes, (("prefilled_mean", "tokens prefilled (mean)"),
                                          ("ttft_p50_ms", "TTFT p50 (ms)")), strict=True):
        for mode in dict.fromkeys(r["mode"] for r in summ):
            rs = [r for r in summ if r["mode"] == mode]
            ax.plot([r["turn"] for r in rs], [r[metric] for r in rs], marker="o", label=f"prefix_routing {mode}")
        ax.set(title=f"12-turn chats, {REPLICAS} replicas", xlabel="turn", ylabel=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "prefix_routing.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: gemma3-270m from PyPI)")
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chats", type=int, default=3, help="chats per server and round")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/"
                    "prefix_routing)")
    args = ap.parse_args()
    from benchmarks.speculative import default_model
    from kronk.engine.model import physical_cores

    model = args.model or default_model()
    threads = max(1, physical_cores() // REPLICAS)
    rows: list[dict] = []
    for rnd in range(args.rounds):
        for mode in ("on", "off"):
            sargs = {"ingress": "router", "models": [{
                "name": MODEL, "source": model, "chat_template": "gemma", "min_replicas": REPLICAS,
                "max_replicas": REPLICAS, "parallel": SLOTS, "ctx_size": args.ctx, "num_cpus": 1, "threads": threads,
                "prefix_routing": mode == "on"}]}
            with kronk_serve(sargs, front="proxy") as url:
                wait_replicas(url, REPLICAS)
                rows += measure(mode, url, rnd, args.chats)
    summ, md = summary(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads_per_replica": threads, "replicas": REPLICAS, "slots": SLOTS, "model": model,
            "ctx_per_slot": args.ctx, "tokens": TOKENS, "rounds": args.rounds, "chats": args.chats}
    out = args.out or OUT
    save(rows, summ, md, meta, out)
    print("\n" + md + f"\n\nresults in {out}")


if __name__ == "__main__":
    main()
