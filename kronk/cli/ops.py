"""Model-store operations, through the running server's model manager or in this process."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kronk.cli.client import Client, ServerError
from kronk.settings import Settings


class LocalOps:
    """The model manager's logic in this process, on the models dir of the settings."""

    remote = False

    def __init__(self, settings: Settings):
        from kronk.store.manager import ModelManager

        self.settings = settings
        self.manager = ModelManager(settings.to_args())
        self.where = f"models dir {settings.models_path}"

    def store_name(self, ref: str) -> str:
        """The store name of a reference (raises InvalidRef / UnknownModel)."""
        return self.manager.store.name_for(ref)

    def list_models(self) -> list[dict[str, Any]]:
        return self.manager.list_models()

    def get_model(self, name: str) -> dict[str, Any] | None:
        return self.manager.get_model(name)

    def remove(self, name: str) -> bool:
        return self.manager.remove(name)

    def catalog(self, family: str | None, capability: str | None) -> list[dict[str, Any]]:
        return self.manager.catalog(family, capability)

    def families(self) -> list[str]:
        return self.manager.families()

    def served(self) -> dict[str, dict[str, Any]]:
        return {}


class RemoteOps:
    """The same calls over the server's HTTP routes (its model manager, its models dir)."""

    remote = True

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.where = f"server {client.url}"
        self._local: LocalOps | None = None

    @property
    def local(self) -> LocalOps:
        if self._local is None:
            self._local = LocalOps(self.settings)
        return self._local

    def store_name(self, ref: str) -> str:
        return self.local.store_name(ref)

    def list_models(self) -> list[dict[str, Any]]:
        return self.client.get("/v1/store/models").get("data", [])

    def get_model(self, name: str) -> dict[str, Any] | None:
        try:
            name = self.store_name(name)
        except (ValueError, KeyError):
            pass
        return next((m for m in self.list_models() if m.get("name") == name), None)

    def remove(self, name: str) -> bool:
        try:
            self.client.delete("/v1/models/" + quote(name, safe="/:"))
        except ServerError as e:
            if e.status == 404:
                return False
            raise
        return True

    def catalog(self, family: str | None, capability: str | None) -> list[dict[str, Any]]:
        return self.client.get("/v1/catalog", family=family, capability=capability).get("data", [])

    def families(self) -> list[str]:
        return self.local.families()

    def served(self) -> dict[str, dict[str, Any]]:
        try:
            cards = self.client.get("/v1/models").get("data", [])
        except ServerError:
            return {}
        return {c["id"]: c for c in cards if c.get("served")}


def open_ops(url: str | None, settings: Settings, local: bool = False) -> LocalOps | RemoteOps:
    """The running server's model manager if one answers (unless ``local``), else this process."""
    if not local:
        client = Client.for_settings(url, settings)
        if client.health() is not None:
            return RemoteOps(client, settings)
        if url:  # an explicit --url / KRONK_URL that does not answer: say so rather than guess
            from kronk.cli.common import err

            err(f"kronk: no server answers at {client.url}; working on {settings.models_path} directly")
    return LocalOps(settings)
