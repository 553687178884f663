"""Ollama's model routes over kronk's store, pull jobs and pool: ``/api/tags``, ``/api/show``, ``/api/ps``,
``/api/pull``, ``/api/delete``, ``/api/copy``.

What a model is comes from its manifest in the store (size, digest, family, capabilities), else from its
catalog entry (a pinned model served from a path or a package), and from the served model's card (context
length, sampling defaults). kronk keeps no GGUF metadata beside the manifest, so ``model_info`` holds what the
manifest and the served model know (architecture as the family, context length), and ``parameter_size`` is
empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kronk.api.errors import unwrap
from kronk.api.http import backend_of, installed_models, limits_of, offline_models, ops_of, read_json
from kronk.api.models.routes import remove
from kronk.api.ollama.names import LATEST, kronk_names, not_found, ollama_name, pick
from kronk.api.ollama.schemas import CopyBody, ModelBody
from kronk.api.ollama.serving import line, now_iso
from kronk.api.schemas import json_body
from kronk.errors import KronkError, NotFound
from kronk.security.auth import ADMIN_ONLY
from kronk.serving.backend import ModelOps
from kronk.store.refs import quant_of

router = APIRouter()

PULL_POLL_S = 0.25
TERMINAL = ("succeeded", "failed", "cancelled")
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)  # a pinned (or keep_alive -1) model's expires_at


def _iso(stamp: Any) -> str:
    """A manifest's time (ISO-8601) or a card's Unix seconds as RFC 3339."""
    try:
        if isinstance(stamp, int | float):
            return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")
        return datetime.fromisoformat(str(stamp)).isoformat().replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return now_iso()


class Known:
    """What the server knows of its models for one answer: served cards, manifests, catalog entries."""

    def __init__(self, cards: list[dict[str, Any]], manifests: list[dict[str, Any]], catalog: list[dict[str, Any]],
                 offline: list[str]):
        self.cards = {c["id"]: c for c in cards}
        self.manifests = {m["name"]: m for m in manifests}
        self.catalog = {e["name"]: e for e in catalog}
        self.offline = offline

    @classmethod
    async def of(cls, request: Request) -> Known:
        backend = backend_of(request)
        try:
            catalog = await ops_of(request).call("catalog", None, None)
        except Exception:  # informational: a listing never fails on it
            catalog = []
        offline = await offline_models(backend) if getattr(backend, "on_demand", False) else []
        return cls(await backend.model_cards(), await installed_models(backend), catalog, offline)

    def names(self) -> list[str]:
        """Served models first, then the installed ones, then (pool on) those a package ships."""
        return list(dict.fromkeys([*self.cards, *self.manifests, *self.offline]))

    def details(self, name: str) -> dict[str, Any]:
        m, e = self.manifests.get(name) or {}, self.catalog.get(name) or {}
        family = m.get("family") or e.get("family") or ""
        quant = e.get("quant") or (quant_of(m["primary"]) if m.get("primary") else None) or ""
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
                "parameter_size": "", "quantization_level": quant}

    def size(self, name: str) -> int:
        m = self.manifests.get(name)
        return int(m.get("size_bytes") or 0) if m else int((self.catalog.get(name) or {}).get("size_bytes") or 0)

    def digest(self, name: str) -> str:
        m = self.manifests.get(name)
        if m:
            primary = next((f for f in m.get("files", []) if f.get("name") == m.get("primary")), None)
            return (primary or {}).get("sha256") or ""
        sha = (self.catalog.get(name) or {}).get("sha256") or {}
        return next(iter(sha.values()), "") if isinstance(sha, dict) else ""

    def modified(self, name: str) -> str:
        m = self.manifests.get(name)
        return _iso(m.get("created_at") if m else (self.cards.get(name) or {}).get("created", 0))

    def context_length(self, name: str) -> int | None:
        return (self.cards.get(name) or {}).get("context_length") or (self.manifests.get(name) or {}).get(
            "context_length") or (self.catalog.get(name) or {}).get("context_length")

    def capabilities(self, name: str) -> list[str]:
        """Ollama's capabilities from kronk's (chat/completion -> completion, reasoning -> thinking)."""
        caps = (self.manifests.get(name) or {}).get("capabilities") or (self.catalog.get(name) or {}).get(
            "capabilities") or ["chat", "completion"]
        out = ["completion"] if {"chat", "completion"} & set(caps) else []
        out += [{"reasoning": "thinking"}.get(c, c) for c in ("tools", "reasoning", "vision", "embedding")
                if c in caps]
        return out

    def tag(self, name: str) -> dict[str, Any]:
        shown = ollama_name(name)
        return {"name": shown, "model": shown, "modified_at": self.modified(name), "size": self.size(name),
                "digest": self.digest(name), "details": self.details(name)}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """The models this server has: served, installed, and (pool on) shipped in installed packages."""
    known = await Known.of(request)
    return {"models": [known.tag(n) for n in known.names()]}


def _parameters(card: dict[str, Any]) -> str:
    """A served model's sampling defaults in Modelfile ``PARAMETER`` form (``temperature 0.8``)."""
    values = card.get("sampling_defaults") or {}
    return "\n".join(f"{k} {v.get('value') if isinstance(v, dict) else v}" for k, v in values.items())


@router.post("/api/show", openapi_extra=json_body(ModelBody))
async def show(request: Request) -> dict[str, Any]:
    req = ModelBody.model_validate(await read_json(request), context={"limits": limits_of(request)})
    known = await Known.of(request)
    name = pick(req.model or "", known.names())
    if name is None:
        raise not_found(req.model or "")
    details, info = known.details(name), {}
    if details["family"]:
        info["general.architecture"] = details["family"]
        if known.context_length(name):
            info[f"{details['family']}.context_length"] = known.context_length(name)
    info["general.basename"] = name
    entry, manifest = known.catalog.get(name) or {}, known.manifests.get(name) or {}
    template = manifest.get("chat_template") or entry.get("chat_template") or ""
    return {"license": entry.get("license", ""), "modelfile": f"# served by kronk\nFROM {name}\n",
            "parameters": _parameters(known.cards.get(name) or {}), "template": template, "details": details,
            "model_info": info, "capabilities": known.capabilities(name), "modified_at": known.modified(name)}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """Loaded models: the pinned ones that run (always loaded) and the pool's loaded models."""
    backend = backend_of(request)
    known = await Known.of(request)
    out = []
    for name, card in known.cards.items():
        if card.get("error") or card.get("status") == "scaled_to_zero":
            continue
        out.append({**known.tag(name), "expires_at": FOREVER.isoformat().replace("+00:00", "Z"),
                    "size_vram": 0, "context_length": known.context_length(name)})
    states = await backend.pool_states() if getattr(backend, "on_demand", False) else []
    now = datetime.now(UTC)
    for st in states:
        if st.get("state") != "loaded" or st["model"] in known.cards:
            continue
        left = st.get("expires_in_s") if st.get("expires_in_s") is not None else st.get("keep_alive_s")
        expires = FOREVER if left is None else now + timedelta(seconds=float(left))
        out.append({**known.tag(st["model"]), "size": int(st.get("bytes") or known.size(st["model"])),
                    "expires_at": expires.isoformat().replace("+00:00", "Z"), "size_vram": 0,
                    "context_length": (st.get("settings") or {}).get("ctx_size") or known.context_length(st["model"])})
    return {"models": out}


# ---------------------------------------------------------------------------------------------- pulls
def _status_of(code: str | None) -> int:
    """The HTTP status of a failed pull's error code (the KronkError class that has it), else 500."""
    todo: list[type[KronkError]] = [KronkError]
    while todo:
        cls = todo.pop()
        if code is not None and cls.code == code:
            return cls.kind.status
        todo.extend(cls.__subclasses__())
    return 500


async def _start_pull(ops: ModelOps, name: str) -> dict[str, Any]:
    """Start (or join) the pull of what an Ollama name means: as sent, then the other spelling of its tag."""
    tried = kronk_names(name) if not name.lower().startswith(("hf.co/", "huggingface.co/", "http")) else [name]
    for i, ref in enumerate(tried):
        try:
            return await ops.call("pull", ref)
        except Exception as e:
            if isinstance(unwrap(e), KeyError) and i + 1 < len(tried):  # not in the catalog: the other spelling
                continue
            raise unwrap(e) from None
    raise AssertionError("unreachable")


def _progress_lines(job: dict[str, Any], said: set[str]) -> list[dict[str, Any]]:
    """The Ollama progress lines a job's snapshot adds to what was said already."""
    out: list[dict[str, Any]] = []
    phase, status = job.get("phase"), job.get("status")
    digest = job.get("file") or job.get("model") or ""
    if (phase in ("downloading", "verifying", "done") or status == "succeeded") and job.get("bytes_total"):
        done = job["bytes_total"] if status == "succeeded" else job.get("bytes_done", 0)
        key = f"bytes {digest} {done}"
        if key not in said:
            said.add(key)
            out.append({"status": f"pulling {digest}", "digest": digest, "total": job["bytes_total"],
                        "completed": done})
    if (phase in ("verifying", "done") or status == "succeeded") and "verifying" not in said:
        said.add("verifying")
        out.append({"status": "verifying sha256 digest"})
    if status == "succeeded":
        out += [{"status": "writing manifest"}, {"status": "success"}]
    elif status in TERMINAL:
        out.append({"error": job.get("error") or f"the pull ended ({status})"})
    return out


async def _pull_stream(ops: ModelOps, job: dict[str, Any]) -> AsyncIterator[str]:
    """Ollama's progress lines until the job ends. A client that leaves stops only this stream: the pull goes
    on in the model manager."""
    said: set[str] = set()
    yield line({"status": "pulling manifest"})
    while True:
        lines = _progress_lines(job, said)
        if lines:
            yield "".join(line(x) for x in lines)
        if job["status"] in TERMINAL:
            return
        await asyncio.sleep(PULL_POLL_S)
        job = await ops.call("job", job["id"]) or job


@router.post("/api/pull", dependencies=ADMIN_ONLY, openapi_extra=json_body(ModelBody))
async def pull(request: Request) -> Response:
    req = ModelBody.model_validate(await read_json(request), context={"limits": limits_of(request)})
    ops = ops_of(request)
    job = await _start_pull(ops, req.model or "")
    if req.stream:
        return StreamingResponse(_pull_stream(ops, job), media_type="application/x-ndjson")
    while job["status"] not in TERMINAL:
        await asyncio.sleep(PULL_POLL_S)
        job = await ops.call("job", job["id"]) or job
    if job["status"] != "succeeded":
        return JSONResponse({"error": job.get("error") or f"the pull ended ({job['status']})"},
                            status_code=_status_of(job.get("error_code")))
    return JSONResponse({"status": "success"})


# ------------------------------------------------------------------------------------ delete and copy
async def _installed(request: Request, name: str) -> str:
    found = pick(name, [m["name"] for m in await installed_models(backend_of(request))])
    if found is None:
        raise not_found(name)
    return found


@router.delete("/api/delete", dependencies=ADMIN_ONLY, openapi_extra=json_body(ModelBody))
async def delete(request: Request) -> Response:
    """Delete an installed model (as ``DELETE /v1/models/{id}``: 409 while it is served)."""
    req = ModelBody.model_validate(await read_json(request), context={"limits": limits_of(request)})
    name = await _installed(request, req.model or "")
    try:
        await remove(name, request)
    except NotFound:
        raise not_found(req.model or "") from None
    return Response(status_code=200)


@router.post("/api/copy", dependencies=ADMIN_ONLY, openapi_extra=json_body(CopyBody))
async def copy(request: Request) -> Response:
    """A new name for an installed model's files (kronk.store.store.ModelStore.copy: hard links, a manifest
    of its own); the name is given without ``:latest``, as kronk lists it."""
    req = CopyBody.model_validate(await read_json(request), context={"limits": limits_of(request)})
    source = await _installed(request, req.source)
    dest = req.destination[: -len(LATEST)] if req.destination.endswith(LATEST) else req.destination
    await ops_of(request).call("copy", source, dest)
    return Response(status_code=200)

