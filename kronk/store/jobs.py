"""Pull jobs: pulls that run in background threads, watched and cancelled by id.

A job belongs to no caller: the thread that started it may go away and the pull
goes on. Starting a pull of a model that is already being pulled joins that job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Literal

from kronk.errors import KronkError, NotFound, redact_paths
from kronk.settings import Settings
from kronk.store.errors import InvalidRef, PullCancelled
from kronk.store.progress import PullProgress
from kronk.store.refs import parse_ref
from kronk.store.store import ModelStore
from kronk.telemetry import tracing

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[str, ...] = ("queued", "running")


# pull phases (kronk.store.progress) -> span names
PHASE_SPANS: dict[str, str | None] = {"resolving": "kronk.pull.resolve", "downloading": "kronk.pull.download",
                                      "verifying": "kronk.pull.verify", "done": None}


class PullJob:
    def __init__(self, ref: str, model: str, trace: dict[str, str] | None = None):
        self.trace = trace  # W3C trace context of the request that started the job
        self.id = uuid.uuid4().hex[:16]
        self.ref = ref
        self.model = model
        self.status: JobStatus = "queued"
        self.progress: PullProgress | None = None
        self.error: str | None = None
        self.error_code: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_event = threading.Event()
        self.done_event = threading.Event()
        # set once the pull is past its checks (sizes known, free space checked) or has ended
        self.checked_event = threading.Event()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def _on_progress(self, p: PullProgress) -> None:
        self.progress = p
        if p.phase != "resolving":  # downloading / verifying / done: the free-space check has passed
            self.checked_event.set()

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data. Times are Unix seconds."""
        p = self.progress
        return {
            "id": self.id,
            "ref": self.ref,
            "model": self.model,
            "status": self.status,
            "phase": p.phase if p else None,
            "file": p.file if p else None,
            "bytes_done": p.bytes_done if p else 0,
            "bytes_total": p.bytes_total if p else 0,
            "rate_bps": p.rate_bps if p else 0.0,
            "eta_s": p.eta_s if p else None,
            "error": self.error,
            "error_code": self.error_code,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "manifest": self.manifest,
        }


class PullJobManager:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: ModelStore | None = None,
        max_concurrent: int = 2,
        keep_finished: int = 100,
        recorder: Any = None,
    ):
        """``recorder``: a kronk.telemetry.metrics.Recorder that counts ended jobs (None: no metrics)."""
        self.recorder = recorder
        if store is None:
            if settings is None:
                raise ValueError("PullJobManager needs settings or a store")
            store = ModelStore(settings)
        self.store = store
        self._secret = store.settings.hf_token.get_secret_value() if store.settings.hf_token else ""
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._jobs: dict[str, PullJob] = {}
        self._keep_finished = keep_finished

    def start(self, ref: str, trace: dict[str, str] | None = None) -> PullJob:
        """Start pulling ``ref`` in the background (or join the running pull of the same model).

        A malformed reference or an unknown catalog name raises at once (InvalidRef, UnknownModel).
        ``trace`` (a W3C ``traceparent`` carrier) makes the job's spans part of the caller's trace.
        """
        if parse_ref(ref).kind == "local":
            raise InvalidRef(f"{ref} is a local file: serve it by path, there is nothing to pull")
        model = self.store.name_for(ref)
        with self._lock:
            for job in self._jobs.values():
                if job.model == model and job.active:
                    return job
            job = PullJob(ref, model, trace)
            self._jobs[job.id] = job
            self._trim()
        threading.Thread(target=self._run, args=(job,), name=f"kronk-pull-{job.id}", daemon=True).start()
        return job

    def _run(self, job: PullJob) -> None:
        spans = tracing.PhaseSpans("kronk.pull", job.trace, PHASE_SPANS, {
            "kronk.pull.job_id": job.id, "kronk.pull.ref": job.ref, "kronk.model": job.model}) \
            if tracing.enabled() else None

        def on_progress(p: Any) -> None:
            job._on_progress(p)
            if spans is not None:
                spans.phase(p.phase, {"kronk.pull.file": p.file})

        while not self._slots.acquire(timeout=0.2):
            if job.cancel_event.is_set():
                self._end(job, "cancelled", "cancelled before it started", "pull_cancelled", spans)
                return
        try:
            if job.cancel_event.is_set():
                raise PullCancelled("cancelled before it started")
            job.status, job.started_at = "running", time.time()
            manifest = self.store.pull(
                job.ref, progress=on_progress, cancel=job.cancel_event, progress_interval_s=0.0
            )
            job.manifest = manifest.to_dict()
            self._end(job, "succeeded", spans=spans)
        except PullCancelled as e:
            self._end(job, "cancelled", e.message, e.code, spans)
        except KronkError as e:
            self._end(job, "failed", e.message, e.code, spans)
        except Exception as e:
            log.exception("pull job %s (%s) failed", job.id, job.model)
            self._end(job, "failed", redact_paths(f"{type(e).__name__}: {e}"), "internal_error", spans)
        finally:
            self._slots.release()

    def _end(self, job: PullJob, status: JobStatus, error: str | None = None, code: str | None = None,
             spans: tracing.PhaseSpans | None = None) -> None:
        if error and self._secret:
            error = error.replace(self._secret, "***")
        job.error, job.error_code = error, code
        job.finished_at = time.time()
        moved = job.progress.bytes_moved if job.progress else 0
        if spans is not None:
            spans.end(RuntimeError(error) if status == "failed" else None, {
                "kronk.pull.status": status, "kronk.pull.bytes": moved, "kronk.pull.error_code": code})
        if self.recorder is not None:
            try:
                self.recorder.on_pull(job.model, status, moved, code)
            except Exception:  # metrics never fail a pull
                log.exception("recording pull metrics failed")
        job.status = status
        job.done_event.set()
        job.checked_event.set()

    def _trim(self) -> None:
        done = [j for j in self._jobs.values() if not j.active]
        for j in sorted(done, key=lambda j: j.finished_at or 0)[: max(0, len(done) - self._keep_finished)]:
            del self._jobs[j.id]

    def get(self, job_id: str) -> PullJob | None:
        return self._jobs.get(job_id)

    def _must(self, job_id: str) -> PullJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no pull job {job_id!r}", param="job_id")
        return job

    def list(self) -> list[PullJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop (its partial download is kept for a later resume). False if it had ended."""
        job = self._must(job_id)
        if not job.active:
            return False
        job.cancel_event.set()
        return True

    def wait_checked(self, job_id: str, timeout: float | None = None) -> PullJob:
        """Wait until the job is past its checks (free space) or has ended (or ``timeout`` s pass)."""
        job = self._must(job_id)
        job.checked_event.wait(timeout)
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> PullJob:
        """Wait until the job ends (or ``timeout`` s pass) and return it."""
        job = self._must(job_id)
        job.done_event.wait(timeout)
        return job
