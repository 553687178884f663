"""The manifest: the one file that makes a model present.

It sits beside the model's files as ``manifest.json`` and is written last,
atomically (temp file, fsync, rename, fsync of the folder). A folder without a
valid manifest, or whose files are missing or of the wrong size, holds no model.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    size: int = Field(ge=0)
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    name: str
    ref: str
    source: Literal["hf", "pypi"]
    hf_repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    pypi_package: str | None = None
    files: list[ManifestFile] = Field(min_length=1)
    primary: str
    mmproj: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    family: str | None = None
    chat_template: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    context_length: int | None = None
    kv_cache_type: str | None = None

    _dir: Path | None = PrivateAttr(default=None)

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise ValueError("manifest is not attached to a folder")
        return self._dir

    @property
    def primary_path(self) -> Path:
        return self.dir / self.primary

    @property
    def mmproj_path(self) -> Path | None:
        return self.dir / self.mmproj if self.mmproj else None

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def attach(self, folder: Path) -> Manifest:
        self._dir = Path(folder)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for HTTP answers and Ray). No absolute path: clients see it, and where the
        server keeps its files is not theirs to know; in-process callers use :attr:`dir` and
        :attr:`primary_path`, others ``ModelStore.resolve`` (or the model manager's ``resolve``)."""
        d = self.model_dump(mode="json")
        d["size_bytes"] = self.size_bytes
        return d

    def problems(self) -> list[str]:
        """Quick check (no hashing): every listed file exists with its recorded size."""
        out = []
        for f in self.files:
            p = self.dir / f.name
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                out.append(f"{f.name} is missing")
                continue
            if size != f.size:
                out.append(f"{f.name} has {size} bytes, expected {f.size}")
        return out


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest in ``folder``, or None when there is none or it is unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    try:
        m = Manifest.model_validate(data)
    except ValidationError:
        return None
    if m.schema_version > SCHEMA_VERSION or m.primary not in {f.name for f in m.files}:
        return None
    return m.attach(Path(folder))


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write atomically: temp file, fsync, rename over manifest.json, fsync the folder."""
    folder = Path(folder)
    tmp = folder / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    data = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST_NAME)
    fsync_dir(folder)
    return manifest.attach(folder)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
