"""The benchmark's summaries: medians over rounds, and ratios paired within a round."""

import pytest

from benchmarks.run import medians, paired_ratio, table


def row(system, c, rnd, tps, ttft=50.0):
    return {"system": system, "concurrency": c, "round": rnd, "agg_tok_s": tps, "ttft_p50_ms": ttft,
            "decode_tok_s_per_seq": tps / c}


# the machine slows down in round 1 for both systems: paired ratios stay at 0.9, unpaired ones would not
ROUNDS = [row("kronk-engine", 8, 0, 100.0), row("kronk-serve", 8, 0, 90.0),
          row("kronk-engine", 8, 1, 60.0), row("kronk-serve", 8, 1, 54.0),
          row("kronk-engine", 8, 2, 80.0), row("kronk-serve", 8, 2, 76.0)]


def test_medians_per_system_and_concurrency():
    m = {r["system"]: r for r in medians(ROUNDS)}
    assert m["kronk-engine"]["agg_tok_s"] == 80.0 and m["kronk-engine"]["rounds"] == 3
    assert (m["kronk-serve"]["agg_tok_s_min"], m["kronk-serve"]["agg_tok_s_max"]) == (54.0, 90.0)


def test_ratio_is_paired_within_rounds():
    assert paired_ratio(ROUNDS, "kronk-serve", "kronk-engine", 8) == pytest.approx(0.9)
    assert paired_ratio(ROUNDS, "kronk-serve", "llama-server", 8) is None


def test_table_shows_the_paired_ratio():
    md = table(ROUNDS, [], [])
    line = next(ln for ln in md.splitlines() if ln.startswith("| 8 |"))
    cells = [c.strip() for c in line.strip(" |").split("|")]
    # serve / engine; no serve-proxy rows; no make-serve-defaults rows
    assert cells[-3:] == ["0.90", "-", "-"] and "80.0 (60-100)" in cells


def test_table_shows_the_defaults_beside_llama_server_np8():
    rounds = [row("kronk-serve-defaults", 16, 0, 50.0), row("llama-server-np8", 16, 0, 40.0),
              row("kronk-serve-defaults", 16, 1, 30.0), row("llama-server-np8", 16, 1, 25.0)]
    line = next(ln for ln in table(rounds, [], []).splitlines() if ln.startswith("| 16 |"))
    assert line.strip(" |").split("|")[-1].strip() == "1.23"  # median of 1.25 and 1.20
