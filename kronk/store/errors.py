"""Errors raised by the catalog and the model store.

They extend the project's error table (:mod:`kronk.errors`), so the HTTP layer maps
them to a status and the OpenAI envelope, and they pickle across Ray handles. No
message ever holds the Hugging Face token.
"""

from __future__ import annotations

from kronk.catalog.catalog import UnknownModel
from kronk.errors import ErrorKind, InvalidRequest, KronkError, ModelNotFound

__all__ = [
    "ChecksumMismatch",
    "GatedRepo",
    "HubError",
    "InsufficientStorage",
    "InvalidRef",
    "ModelInUse",
    "ModelNotFound",
    "PullCancelled",
    "RepoNotFound",
    "SizeMismatch",
    "StoreError",
    "UnknownModel",
]


class StoreError(KronkError):
    """The store could not do what was asked (disk, layout, a broken download)."""

    kind = ErrorKind.SERVER
    code = "store_error"


class InvalidRef(InvalidRequest, ValueError):
    """A model reference that cannot be parsed."""

    code = "invalid_model_reference"


class ChecksumMismatch(StoreError):
    """Downloaded bytes do not match the expected size or sha256; the partial file was deleted."""

    code = "checksum_mismatch"


class SizeMismatch(ChecksumMismatch):
    """The hub sent more bytes than it announced: the download stopped at the announced size and was deleted."""

    code = "size_mismatch"


class InsufficientStorage(StoreError):
    """The models dir has not enough free space for a pull (checked before any byte is downloaded)."""

    kind = ErrorKind.INSUFFICIENT_STORAGE
    code = "insufficient_storage"

    def __init__(self, message: str, *, needed: int = 0, free: int = 0, **kw):
        super().__init__(message, **kw)
        self.needed, self.free = needed, free


class GatedRepo(KronkError):
    kind = ErrorKind.PERMISSION
    code = "gated_repo"

    def __init__(self, repo: str):
        super().__init__(
            f"{repo} is gated on Hugging Face: accept its license on the model page "
            f"(https://huggingface.co/{repo}) and set KRONK_HF_TOKEN (or HF_TOKEN)"
        )
        self.repo = repo


class RepoNotFound(KronkError):
    """The repository, revision or file does not exist on the hub."""

    kind = ErrorKind.NOT_FOUND
    code = "repo_not_found"


class HubError(KronkError):
    """The hub could not be reached or answered with an unexpected error."""

    kind = ErrorKind.UNAVAILABLE
    code = "hub_error"


class ModelInUse(KronkError):
    """A served model's files cannot be deleted (its replicas map them)."""

    kind = ErrorKind.CONFLICT
    code = "model_in_use"


class PullCancelled(KronkError):
    kind = ErrorKind.CONFLICT
    code = "pull_cancelled"
