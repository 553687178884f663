"""The model manager: one named, detached Ray actor that owns catalog, store and pull jobs.

Every ingress replica (and the CLI) talks to the same actor, so a pull started by
one client is seen, joined or cancelled by any other, and it keeps running when
the caller goes away. Pulls run in the actor's background threads; calls answer
plain dicts (JSON-able), never library objects.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from kronk.catalog import Catalog
from kronk.settings import Settings
from kronk.store import ModelNotFound, ModelStore, PullJobManager, parse_ref

log = logging.getLogger(__name__)

ACTOR_NAME = "kronk-model-manager"
NAMESPACE = "kronk"
ACTOR_OPTIONS: dict[str, Any] = {
    "name": ACTOR_NAME,
    "namespace": NAMESPACE,
    "lifetime": "detached",
    "num_cpus": 0.1,
    "max_concurrency": 16,  # threaded actor: a blocking resolve() must not stall job() / jobs()
    "get_if_exists": True,
}


class ModelManager:
    def __init__(self, settings_args: dict[str, Any] | None = None):
        self.settings = Settings(**(settings_args or {}))
        self.catalog_ = Catalog.load(self.settings)
        self.store = ModelStore(self.settings, catalog=self.catalog_)
        self.jobs_ = PullJobManager(store=self.store)

    def ready(self) -> bool:
        return True

    # ------------------------------------------------------------------ pulls

    def pull(self, ref: str) -> dict[str, Any]:
        """Start (or join) a background pull; returns the job's snapshot at once."""
        return self.jobs_.start(ref).snapshot()

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

    def get_model(self, name: str) -> dict[str, Any] | None:
        m = self.store.get(name)
        return m.to_dict() if m is not None else None

    def remove(self, name: str) -> bool:
        return self.store.remove(name)

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


def get_or_create_model_manager(settings_args: dict[str, Any] | None = None) -> ray.actor.ActorHandle:
    """The cluster's model manager: the running one, or a new detached one (needs ray.init first).

    ``settings_args`` is ``Settings.to_args()``; it is used only when the actor is created.
    """
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        pass
    return ray.remote(ModelManager).options(**ACTOR_OPTIONS).remote(settings_args or {})
