"""Models on (possibly shared) disk: references, pull, verify, manifests, reconcile, locks, jobs."""

from kronk.store.errors import (
    ChecksumMismatch,
    GatedRepo,
    HubError,
    InsufficientStorage,
    InvalidRef,
    ModelNotFound,
    PullCancelled,
    RepoNotFound,
    SizeMismatch,
    StoreError,
    UnknownModel,
)
from kronk.store.jobs import PullJob, PullJobManager
from kronk.store.maintenance import CheckResult, ReconcileReport
from kronk.store.manifest import Manifest, ManifestFile
from kronk.store.progress import PullProgress
from kronk.store.refs import ModelRef, parse_ref, store_dirname
from kronk.store.store import ModelStore

__all__ = [
    "CheckResult",
    "ChecksumMismatch",
    "GatedRepo",
    "HubError",
    "InsufficientStorage",
    "InvalidRef",
    "Manifest",
    "ManifestFile",
    "ModelNotFound",
    "ModelRef",
    "ModelStore",
    "PullCancelled",
    "PullJob",
    "PullJobManager",
    "PullProgress",
    "ReconcileReport",
    "RepoNotFound",
    "SizeMismatch",
    "StoreError",
    "UnknownModel",
    "parse_ref",
    "store_dirname",
]
