"""Talking to the Hugging Face Hub (or any server speaking its protocol, see HF_ENDPOINT).

Metadata (files, sizes, LFS sha256, the commit a revision points at) comes from
``huggingface_hub``'s ``HfApi.model_info(files_metadata=True)``; file bytes come
from ``GET <endpoint>/<repo>/resolve/<commit>/<file>`` with httpx, so the store
controls Range resume, temp names and byte accounting. Every call carries
``Authorization: Bearer <settings.hf_token>`` when a token is set; the token
never appears in a message or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from kronk.store.errors import GatedRepo, HubError, RepoNotFound

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # from LFS metadata; None for small non-LFS files


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str
    commit: str
    files: dict[str, RemoteFile]
    gated: bool


class HubClient:
    def __init__(self, endpoint: str | None = None, token: SecretStr | None = None, timeout_s: float = 30.0):
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._token = token
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0))

    @property
    def has_token(self) -> bool:
        return bool(self._token and self._token.get_secret_value())

    def _headers(self) -> dict[str, str]:
        h = {"Accept-Encoding": "identity", "User-Agent": "kronk"}
        if self.has_token:
            h["Authorization"] = f"Bearer {self._token.get_secret_value()}"  # type: ignore[union-attr]
        return h

    def scrub(self, text: str) -> str:
        if self.has_token:
            text = text.replace(self._token.get_secret_value(), "***")  # type: ignore[union-attr]
        return text

    # ------------------------------------------------------------------ metadata

    def snapshot(self, repo: str, revision: str = "main") -> RepoSnapshot:
        """The repo's files (size, LFS sha256) at ``revision``, and the commit it points at."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RevisionNotFoundError

        token = self._token.get_secret_value() if self.has_token else False  # type: ignore[union-attr]
        api = HfApi(endpoint=self.endpoint, token=token, library_name="kronk")
        try:
            info = api.model_info(repo, revision=revision, files_metadata=True, timeout=self._timeout.read)
        except GatedRepoError:
            raise GatedRepo(repo) from None
        except RevisionNotFoundError:
            raise RepoNotFound(f"revision {revision!r} of {repo} not found on {self.endpoint}") from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status == 401 and not self.has_token:
                raise GatedRepo(repo) from None
            if status in (401, 404):
                raise RepoNotFound(
                    f"model repository {repo} not found on {self.endpoint}"
                    + (" (or your token has no access to it)" if self.has_token else "")
                ) from None
            if status == 403:
                raise GatedRepo(repo) from None
            raise HubError(f"the hub at {self.endpoint} answered {status} for {repo}") from None
        except Exception as e:  # connection refused, DNS, offline mode, timeouts
            raise HubError(
                f"cannot reach the Hugging Face Hub at {self.endpoint}: {self.scrub(str(e)) or type(e).__name__}"
            ) from None
        files: dict[str, RemoteFile] = {}
        for s in info.siblings or []:
            lfs = s.lfs
            size = lfs.size if lfs is not None else s.size
            sha = lfs.sha256 if lfs is not None else None
            files[s.rfilename] = RemoteFile(s.rfilename, size, sha)
        if not info.sha:
            raise HubError(f"the hub at {self.endpoint} gave no commit for {repo}@{revision}")
        gated = bool(info.gated) and info.gated != "false"
        if gated and not self.has_token:
            raise GatedRepo(repo)
        return RepoSnapshot(repo=repo, revision=revision, commit=info.sha, files=files, gated=gated)

    # ------------------------------------------------------------------ files

    def file_url(self, repo: str, commit: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/{quote(commit, safe='')}/{quote(path)}"

    @contextmanager
    def get(self, url: str, start: int, *, repo: str, path: str) -> Iterator[httpx.Response]:
        """A streaming GET from byte ``start`` (Range). Yields 200/206/416 responses; raises others.

        Redirects are followed; httpx drops the Authorization header when a redirect
        leaves the hub's origin (the CDN URL is signed), as huggingface_hub does.
        """
        headers = self._headers()
        if start > 0:
            headers["Range"] = f"bytes={start}-"
        with (
            httpx.Client(timeout=self._timeout, follow_redirects=True) as http,
            http.stream("GET", url, headers=headers) as resp,
        ):
            if resp.status_code in (200, 206, 416):
                yield resp
                return
            code = resp.headers.get("X-Error-Code", "")
            if code == "GatedRepo" or (resp.status_code == 401 and not self.has_token):
                raise GatedRepo(repo)
            if resp.status_code in (401, 403):
                raise HubError(f"the hub refused access to {path} in {repo} ({resp.status_code}): check the token")
            if resp.status_code == 404:
                raise RepoNotFound(f"{path} not found in {repo} on {self.endpoint}")
            raise HubError(f"the hub answered {resp.status_code} for {path} in {repo}", code="hub_http_error")
