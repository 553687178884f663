"""The model manager: one named, detached Ray actor that owns catalog, store and pull jobs.

Every ingress replica (and the CLI) talks to the same actor, so a pull started by
one client is seen, joined or cancelled by any other, and it keeps running when
the caller goes away. Pulls run in the actor's background threads; calls answer
plain dicts (JSON-able), never library objects.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from deployments.board import start_publisher_in_actor
from deployments.ray_env import lower_process
from kronk.store.manager import ModelManager

log = logging.getLogger(__name__)

__all__ = ["ACTOR_NAME", "NAMESPACE", "ModelManager", "get_or_create_model_manager"]

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


class ModelManagerActor(ModelManager):
    """The actor's class: a pull (download, hashing) is background work, so its process runs at the
    settings' ``background_nice`` and yields the CPU to the models on its node."""

    def __init__(self, settings_args: dict[str, Any] | None = None):
        super().__init__(settings_args)
        lower_process(os.getpid(), self.settings.background_nice)
        self._publisher = start_publisher_in_actor(self.recorder)  # its pulls' numbers on the stats board


def get_or_create_model_manager(settings_args: dict[str, Any] | None = None) -> ray.actor.ActorHandle:
    """The cluster's model manager: the running one, or a new detached one (needs ray.init first).

    ``settings_args`` is ``Settings.to_args()``; it is used only when the actor is created.
    """
    try:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        pass
    return ray.remote(ModelManagerActor).options(**ACTOR_OPTIONS).remote(settings_args or {})
