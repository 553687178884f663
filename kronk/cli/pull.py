"""``kronk model pull``: progress on stderr, through the server's model manager or in this process."""

from __future__ import annotations

import threading
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from kronk.cli.client import ServerError
from kronk.cli.common import EXIT_INTERRUPTED, err, fail, human_bytes
from kronk.cli.ops import LocalOps, RemoteOps
from kronk.errors import ErrorKind, KronkError

_USAGE_KINDS = (ErrorKind.INVALID_REQUEST, ErrorKind.NOT_FOUND, ErrorKind.MODEL_NOT_FOUND)


class PullDisplay:
    """A rich progress bar on a terminal; plain lines (at most one a second) otherwise. Always stderr."""

    def __init__(self, ref: str):
        self.ref = ref
        self.console = Console(stderr=True)
        self.tty = self.console.is_terminal
        self.progress: Progress | None = None
        self.task: Any = None
        self._last = 0.0
        self._phase: str | None = None
        if self.tty:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(f"pulling {ref}", total=None)

    def update(self, phase: str | None, file: str | None, done: int, total: int, rate: float) -> None:
        what = f"{phase or 'pulling'} {file or self.ref}"
        if self.progress is not None:
            self.progress.update(self.task, description=what, completed=done, total=total or None)
            return
        now = time.monotonic()
        if phase == self._phase and now - self._last < 1.0:
            return
        self._phase, self._last = phase, now
        pct = f"{100 * done / total:5.1f}% " if total else ""
        self.console.print(f"{self.ref}: {what} {pct}({human_bytes(done)} / {human_bytes(total or None)}, "
                           f"{human_bytes(rate)}/s)", highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _where(ops: LocalOps | RemoteOps, name: str) -> str:
    """Where the model's files are: its folder in this process's models dir, else the server (whose answers
    name no path)."""
    return str(ops.manager.store.model_dir(name)) if isinstance(ops, LocalOps) else ops.where


def _done(m: dict[str, Any] | None, name: str, where: str) -> None:
    if m:
        click.echo(f"pulled {m.get('name', name)} ({human_bytes(m.get('size_bytes'))}) to {where}")
    else:
        click.echo(f"pulled {name}")


def _resumable() -> None:
    err("kronk: pull cancelled; the partial download is kept: run the same command again to resume")
    raise click.exceptions.Exit(EXIT_INTERRUPTED)


def _usage_or_fail(e: KronkError) -> None:
    fail(e.message, 2 if e.kind in _USAGE_KINDS else 1)


def pull(ops: LocalOps | RemoteOps, ref: str) -> None:
    try:
        name = ops.store_name(ref)
    except KronkError as e:
        _usage_or_fail(e)
    present = ops.get_model(name)
    if present is not None:
        click.echo(f"{name} is already present ({human_bytes(present.get('size_bytes'))}, "
                   f"{_where(ops, name)}); nothing to pull")
        return
    if isinstance(ops, RemoteOps):
        _pull_remote(ops, ref, name)
    else:
        _pull_local(ops, ref, name)


def _pull_local(ops: LocalOps, ref: str, name: str) -> None:
    display = PullDisplay(ref)
    cancel = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            m = ops.manager.store.pull(ref, progress=lambda p: display.update(
                p.phase, p.file, p.bytes_done, p.bytes_total, p.rate_bps), cancel=cancel)
            result["manifest"] = m.to_dict()
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=run, name="kronk-pull", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        t.join(30)
        display.close()
        _resumable()
    display.close()
    e = result.get("error")
    if isinstance(e, KronkError):
        if e.code == "pull_cancelled":
            _resumable()
        _usage_or_fail(e)
    if e is not None:
        fail(f"pull of {ref} failed: {type(e).__name__}: {e}", 1)
    _done(result.get("manifest"), name, _where(ops, name))


def _pull_remote(ops: RemoteOps, ref: str, name: str) -> None:
    display = PullDisplay(ref)
    job: dict[str, Any] = {}
    try:
        for job in ops.client.stream("/v1/models/pull", {"model": ref, "stream": True}):
            display.update(job.get("phase"), job.get("file"), int(job.get("bytes_done") or 0),
                           int(job.get("bytes_total") or 0), float(job.get("rate_bps") or 0.0))
    except KeyboardInterrupt:
        display.close()
        if job.get("id"):
            try:
                ops.client.delete(f"/v1/models/pull/{job['id']}")
            except ServerError:
                pass
        _resumable()
    except ServerError as e:
        display.close()
        fail(e.message, 2 if e.status in (400, 404, 422) else 1)
    display.close()
    status = job.get("status")
    if status == "succeeded":
        _done(job.get("manifest"), name, _where(ops, name))
    elif status == "cancelled":
        err(f"kronk: the pull of {ref} was cancelled on the server; run the same command again to resume")
        raise click.exceptions.Exit(1)
    else:
        code = 2 if job.get("error_code") in ("invalid_model_reference", "repo_not_found", "model_not_found") else 1
        fail(f"pull of {ref} failed: {job.get('error') or status or 'the server ended the stream'}", code)
