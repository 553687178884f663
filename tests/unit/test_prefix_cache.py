"""Prefix caches beyond the slots (kronk/engine/prefix_cache.py): the RAM tier and the disk tier.

The containers are tested alone (budgets, eviction, superseding, atomic files, corrupt files, identities), then
in real engines: every answer is compared with one from an engine without these caches (temperature 0), and
``cached_tokens`` with what the request could really reuse. A restore is found by hashes of token blocks but
used only after its tokens are compared in full: with every hash made equal, restores still serve only the
conversation they belong to."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kronk.engine import EngineConfig
from kronk.engine import prefix_cache as pc
from kronk.engine.engine import LlamaEngine
from kronk.engine.prefix_cache import (
    BLOCK_TOKENS,
    DiskPrefixCache,
    Identity,
    RamPrefixCache,
    Snapshot,
    Window,
    common_prefix,
)
from tests.models import gemma_path, smollm_path
from tests.unit.test_shared_prefix import QUESTIONS, SYSTEM
from tests.unit.test_shared_prefix import generate as answer

IDENT = Identity.of(model="m", kv="f16")


def snap(tokens: list[int], size: int = 1000, identity: Identity = IDENT) -> Snapshot:
    return Snapshot(tuple(tokens), 0, bytes(range(256)) * (size // 256) + bytes(size % 256), identity.digest)


# ----------------------------------------------------------------------------------------- containers
def test_ram_tier_finds_the_longest_verified_prefix_and_evicts_the_least_recently_used():
    ram = RamPrefixCache(budget_bytes=3 * 1000 + 3 * 4 * 200, identity=IDENT)
    a, b, c = ([i] * 200 for i in (1, 2, 3))
    for t in (a, b, c):
        assert ram.put(snap(t))
    assert len(ram) == 3
    found = ram.find([*a[:150], 9, 9], limit=151)
    assert found is not None and found[0].tokens == tuple(a) and found[1] == 150
    ram.put(snap([4] * 200))  # over budget: b is the least recently used now (a was just found)
    assert ram.find(b, 199) is None and ram.find(a, 199) is not None
    assert ram.describe()["evictions"] == 1 and ram.bytes <= ram.budget_bytes
    assert not ram.put(snap([5] * 10, size=10_000))  # larger than the whole budget
    assert not ram.put(snap([6] * 200, identity=Identity.of(model="other")))


def test_a_longer_snapshot_supersedes_its_prefix_unless_a_sliding_window_keeps_it_apart():
    full = RamPrefixCache(10**6, IDENT)
    full.put(snap(list(range(300))))
    full.put(snap(list(range(500))))
    assert len(full) == 1 and full.find([*list(range(300)), 7], 300)[1] == 300
    swa = RamPrefixCache(10**6, IDENT, Window(n_swa=128))
    swa.put(snap(list(range(300))))
    swa.put(snap(list(range(500))))
    assert len(swa) == 2  # the 500-token one restores only its last 128 positions' window: it cannot serve 300
    got = swa.find([*list(range(300)), 7], 300)
    assert got is not None and len(got[0].tokens) == 300 and got[1] == 300
    assert swa.find([*list(range(400)), 7], 400)[0].tokens == tuple(range(300))  # 400 of the 500: unusable
    assert swa.covers(list(range(300))) and not swa.covers(list(range(299)))


def test_window_rules():
    w = Window(n_swa=512)
    assert w.floor(400) == 0 and w.floor(1000) == 488
    assert w.usable(400, 10) and w.usable(1000, 999) and w.usable(1000, 1000) and not w.usable(1000, 998)
    assert w.keeps(0, 5) and w.keeps(488, 0) and not w.keeps(488, 998) and w.keeps(488, 999)
    assert Window().usable(10_000, 1)


def test_every_hash_colliding_changes_no_answer(monkeypatch):
    monkeypatch.setattr(pc, "block_hash", lambda prev, block: b"same")
    ram = RamPrefixCache(10**6, IDENT)
    a = [1] * BLOCK_TOKENS * 3
    b = [2] * BLOCK_TOKENS * 3
    ram.put(snap(a))
    ram.put(snap(b))
    assert len(ram) == 2  # b does not "supersede" a: their tokens differ
    assert ram.find([*b, 5], len(b))[0].tokens == tuple(b)
    assert ram.find([3] * BLOCK_TOKENS * 3, 100) is None
    assert not ram.covers([3] * BLOCK_TOKENS * 3)


def test_disk_tier_writes_whole_files_verifies_them_and_keeps_within_budget(tmp_path):
    disk = DiskPrefixCache(tmp_path, budget_bytes=3 * 1100, identity=IDENT)
    a, b = list(range(100)), list(range(100, 200))
    pa = disk.write(snap(a))
    pb = disk.write(snap(b))
    assert pa is not None and pb is not None and pa.parent == tmp_path / IDENT.digest
    assert not [p for p in pa.parent.iterdir() if p.name.endswith(".tmp")]
    again = DiskPrefixCache(tmp_path, 3 * 1100, IDENT)  # a restart (or another replica) finds them
    got = again.load([*a, 1], 100)
    assert got is not None and got[0].tokens == tuple(a) and got[0].data == snap(a).data and got[1] == 100
    # another identity (another model build, template or KV type) neither sees nor uses them
    other = DiskPrefixCache(tmp_path, 10**6, Identity.of(model="m", kv="q8_0"))
    assert other.best_match([*a, 1], 100) == 0 and other.load([*a, 1], 100) is None
    # a corrupt file fails its checksum: deleted, never restored
    raw = bytearray(pb.read_bytes())
    raw[-5] ^= 0xFF
    pb.write_bytes(bytes(raw))
    os.utime(pb.parent, ns=(1, 1))  # the folder changed (as a write by another replica would show)
    assert again.load([*b, 1], 100) is None and not pb.exists()
    # beyond the budget the oldest go first
    for i in range(4):
        disk.write(snap(list(range(1000 + 100 * i, 1100 + 100 * i))))
    assert sum(p.stat().st_size for p in pa.parent.glob("*.kv")) <= 3 * 1100
    assert not pa.exists()


def test_a_continued_conversation_replaces_its_earlier_file(tmp_path):
    disk = DiskPrefixCache(tmp_path, 10**6, IDENT)
    first = disk.write(snap(list(range(300))))
    second = disk.write(snap(list(range(400))))
    assert not first.exists() and second.exists() and disk.describe()["entries"] == 1


def test_common_prefix_takes_tuples_and_lists():
    assert common_prefix((1, 2, 3), [1, 2, 4]) == 2
    assert common_prefix(list(range(600)), tuple(range(600)), limit=599) == 599


# ------------------------------------------------------------------------------------------- engines
MAX_TOKENS = 10


def run(e: LlamaEngine, prompt: list[int], n: int = MAX_TOKENS) -> tuple[list[int], int]:
    return asyncio.run(answer(e, prompt, n))


def engine(path: str, **kw) -> LlamaEngine:
    kw.setdefault("parallel", 2)
    return LlamaEngine(EngineConfig(batch_invariant=True, model_path=path, ctx_size=2048, **kw))


def no_caches(path: str, **kw) -> LlamaEngine:
    return engine(path, prefix_cache_bytes=0, share_prefixes=False, **kw)


SYSTEMS = [f"You are assistant number {k}. " + SYSTEM for k in range(3)]


def test_a_system_prompt_comes_back_from_ram_after_every_slot_moved_on():
    """Gemma 3 (sliding window): the slots' exact prefix is kept as a snapshot of its own; a later user with the
    same instructions restores it, and gets the answer a fresh prefill gives."""
    e = engine(gemma_path())
    try:
        prompts = [e.tokenize(f"{SYSTEMS[0]}\nCustomer: {q}\nAgent:") for q in QUESTIONS[:2]]
        others = [e.tokenize(f"{SYSTEMS[1 + i]}\nCustomer: hello\nAgent:") for i in range(2)]
        run(e, prompts[0])
        asyncio.run(_together(e, others))  # both slots now hold other instructions
        got, cached = run(e, prompts[1])
        st = e.stats().prefix_cache
    finally:
        e.close()
    shared = common_prefix(prompts[0], prompts[1])
    assert st["ram"]["hits"] == 1 and cached == shared // 256 * 256 and cached >= 256
    ref = no_caches(gemma_path())
    try:
        assert got == run(ref, prompts[1])[0]
    finally:
        ref.close()


async def _together(e: LlamaEngine, prompts: list[list[int]]) -> list[tuple[list[int], int]]:
    return await asyncio.gather(*[answer(e, p, MAX_TOKENS) for p in prompts])


def turn_two(e: LlamaEngine, first: list[int], reply: list[int], text: str) -> list[int]:
    """A chat's next prompt as the engine sees it: the last prompt, the answer, the next user message."""
    return first + reply + e.tokenize(f"<end_of_turn>\n<start_of_turn>user\n{text}<end_of_turn>\n"
                                      "<start_of_turn>model\n", add_special=False)


@pytest.mark.parametrize("path", [gemma_path(), smollm_path()], ids=["gemma3-sliding-window", "smollm2"])
def test_a_conversation_evicted_from_its_slot_continues_from_ram(path):
    """Turn 2 restores turn 1's whole sequence (prompt and answer) and prefills only the new message; the answer
    is the one it gets when the conversation keeps its slot (an engine without the RAM tier)."""
    e = engine(path)
    try:
        first = e.tokenize(f"{SYSTEMS[0]}\nCustomer: {QUESTIONS[0]}\nAgent:")
        reply, _ = run(e, first)
        asyncio.run(_together(e, [e.tokenize(f"{SYSTEMS[1 + i]}\nCustomer: hi\nAgent:") for i in range(2)]))
        second = turn_two(e, first, reply, QUESTIONS[1])
        got, cached = run(e, second)
        st = e.stats().prefix_cache
    finally:
        e.close()
    # the KV held: the prompt and the answer (but its last token when it ended at max_tokens: never evaluated)
    assert len(first) + len(reply) - 1 <= cached <= len(first) + len(reply)
    assert st["ram"]["hits"] >= 1 and st["ram"]["tokens"] >= cached
    ref = no_caches(path)
    try:
        r_reply, _ = run(ref, first)
        assert r_reply == reply
        assert run(ref, second) == (got, cached)  # kept its slot: the same reuse, the same answer
    finally:
        ref.close()


def test_partial_restores_on_a_model_without_sliding_window():
    """SmolLM2 keeps every cell in a snapshot: a prompt sharing only part of it restores that part."""
    e = engine(smollm_path())
    try:
        a = e.tokenize(f"{SYSTEMS[0]}\nCustomer: {QUESTIONS[0]}\nAgent:")
        b = e.tokenize(f"{SYSTEMS[0]}\nCustomer: {QUESTIONS[3]}\nAgent:")
        run(e, a)
        asyncio.run(_together(e, [e.tokenize(f"{SYSTEMS[1 + i]}\nCustomer: hi\nAgent:") for i in range(2)]))
        got, cached = run(e, b)
    finally:
        e.close()
    assert cached == common_prefix(a, b)
    ref = no_caches(smollm_path())
    try:
        assert got == run(ref, b)[0]
    finally:
        ref.close()


def test_concurrent_load_with_every_hash_equal_never_restores_another_conversation(monkeypatch):
    """Three users with three different instructions (same length, same structure), two questions each, arriving
    in waves onto 2 slots and a RAM tier that holds only a few snapshots: every block hash is the same, so every
    snapshot is a candidate for every prompt. Every answer equals a fresh prefill's, and ``cached_tokens`` never
    exceeds what the prompt shares with a prompt seen before."""
    monkeypatch.setattr(pc, "block_hash", lambda prev, block: b"collide")
    e = engine(gemma_path(), prefix_cache_bytes=40 << 20)
    try:
        prompts = [e.tokenize(f"{s}\nCustomer: {q}\nAgent:") for q in QUESTIONS[:2] for s in SYSTEMS]
        got: list[tuple[list[int], int]] = []
        for wave in (prompts[:3], prompts[3:]):
            got += asyncio.run(_together(e, wave))
        st = e.stats().prefix_cache
    finally:
        e.close()
    ref = no_caches(gemma_path(), parallel=1)
    try:
        expected = [run(ref, p)[0] for p in prompts]
    finally:
        ref.close()
    assert [g for g, _ in got] == expected
    for i, (_, cached) in enumerate(got):
        seen = max((common_prefix(prompts[i], p) for p in prompts[:i]), default=0)
        assert cached <= max(seen, 1)
    assert st["ram"]["hits"] >= 1  # the second wave restored instructions the slots no longer held
    assert sum(c for _, c in got[3:]) >= 3 * 256


def test_a_chat_survives_a_restart_through_the_disk_tier_and_only_there(tmp_path: Path):
    """Turn 1 on one engine, which is closed (its finished conversation written to disk); turn 2 on a new engine
    over the same folder restores it and prefills only the new message, with the answer of an engine where the
    conversation kept its slot. An engine of another KV type, or a corrupt file, restores nothing."""
    folder = str(tmp_path / "kv")
    a = engine(gemma_path(), prefix_cache_dir=folder)
    try:
        first = a.tokenize(f"{SYSTEMS[0]}\nCustomer: {QUESTIONS[0]}\nAgent:")
        reply, _ = run(a, first)
        second = turn_two(a, first, reply, QUESTIONS[1])
    finally:
        a.close()
    files = list(Path(folder).glob("*/*.kv"))
    assert len(files) == 1
    q8 = engine(gemma_path(), prefix_cache_dir=folder, cache_type_k="q8_0", cache_type_v="q8_0")
    try:
        _, cached = run(q8, second)
        assert cached <= 1 and q8.stats().prefix_cache["disk"]["hits"] == 0
    finally:
        q8.close()
    b = engine(gemma_path(), prefix_cache_dir=folder)
    try:
        got, cached = run(b, second)
        st = b.stats().prefix_cache["disk"]
    finally:
        b.close()
    assert len(first) + len(reply) - 1 <= cached <= len(first) + len(reply) and st["hits"] == 1
    turn_one = cached
    ref = no_caches(gemma_path())
    try:
        run(ref, first)
        assert run(ref, second)[0] == got
    finally:
        ref.close()
    # the newest file holds turn 2 (turn 1's stays: with a sliding window, turn 2's cannot serve turn 1's prompts);
    # corrupt it, and a restart deletes it and restores turn 1's instead
    newest = max(Path(folder).glob("*/*.kv"), key=lambda p: p.stat().st_mtime)
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    c = engine(gemma_path(), prefix_cache_dir=folder)
    try:
        third = turn_two(c, second, got, QUESTIONS[2])
        _, cached = run(c, third)
    finally:
        c.close()
    assert cached == turn_one and not newest.exists()


def test_the_disk_tier_lives_beside_the_models_not_among_them(tmp_path: Path):
    """Its default folder is a dot-folder of models_dir: the store neither lists it nor tidies it as a model."""
    from kronk.engine.config import engine_config
    from kronk.settings import ModelConfig, Settings
    from kronk.store import ModelStore
    from kronk.store.maintenance import reconcile_models

    settings = Settings(home=tmp_path)
    folder = Path(engine_config(settings, ModelConfig(name="m"), gemma_path()).prefix_cache_dir)
    assert folder == settings.models_path / ".kv-cache"
    written = DiskPrefixCache(folder, 10**6, IDENT).write(snap(list(range(300))))
    os.utime(written, (1, 1))  # as old as can be: a stale file in a model's folder would be tidied away
    report = reconcile_models(settings.models_path, partial_max_age_s=0)
    assert ModelStore(settings).list() == [] and written.exists() and not report.removed_files
