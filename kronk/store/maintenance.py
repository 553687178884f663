"""Store upkeep: reconcile (make the disk consistent) and check (re-hash against manifests)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kronk.store.download import hash_file
from kronk.store.locks import try_model_lock
from kronk.store.manifest import MANIFEST_NAME, read_manifest

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    kept: list[str] = field(default_factory=list)  # present models
    dropped_manifests: list[str] = field(default_factory=list)  # models whose files were gone / wrong size
    removed_files: list[str] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    kept_partials: list[str] = field(default_factory=list)  # young partial downloads, left to resume
    skipped_busy: list[str] = field(default_factory=list)  # folders a pull holds right now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckResult:
    name: str
    folder: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    removed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def reconcile_models(root: Path, partial_max_age_s: float) -> ReconcileReport:
    report = ReconcileReport()
    now = time.time()
    for folder in _model_dirs(root):
        try:
            with try_model_lock(root, folder.name) as free:
                if not free:
                    report.skipped_busy.append(folder.name)
                    continue
                _reconcile_one(folder, now, partial_max_age_s, report)
        except FileNotFoundError:  # removed by hand while we looked: nothing to do
            continue
        except OSError as e:
            log.warning("reconcile: cannot tidy %s: %s", folder, e)
    return report


def _reconcile_one(folder: Path, now: float, max_age: float, report: ReconcileReport) -> None:
    m = read_manifest(folder)
    if m is not None and not m.problems():
        report.kept.append(m.name)
        for p in folder.iterdir():  # we hold the lock: any temp file here is stale
            if p.is_file() and p.name.startswith(".") and p.name.endswith((".part", ".tmp")):
                p.unlink(missing_ok=True)
                report.removed_files.append(str(p))
        return
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        manifest.unlink()
        report.dropped_manifests.append(m.name if m is not None else folder.name)
    for p in list(folder.iterdir()):
        if not p.is_file():
            continue
        if now - p.stat().st_mtime >= max_age:
            p.unlink(missing_ok=True)
            report.removed_files.append(str(p))
        elif p.name.endswith(".part"):
            report.kept_partials.append(str(p))
    try:
        folder.rmdir()  # only when empty
        report.removed_dirs.append(str(folder))
    except OSError:
        pass


def check_models(root: Path) -> list[CheckResult]:
    out = []
    for folder in _model_dirs(root):
        m = read_manifest(folder)
        if m is None:
            if (folder / MANIFEST_NAME).exists():
                out.append(CheckResult(folder.name, str(folder), False, ["manifest.json is unreadable"]))
            continue
        problems = m.problems()
        if not problems:
            for f in m.files:
                digest = hash_file(folder / f.name)
                if digest != f.sha256:
                    problems.append(f"{f.name} has sha256 {digest}, the manifest says {f.sha256}")
        out.append(CheckResult(m.name, str(folder), not problems, problems))
    return out
