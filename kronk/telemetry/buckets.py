"""Context-size buckets: the label that splits decode speed by how full a sequence's context is."""

from __future__ import annotations

# (upper bound in tokens, label); the last bucket is open-ended.
CONTEXT_BUCKETS: tuple[tuple[int, str], ...] = ((512, "0-512"), (2048, "512-2k"), (8192, "2k-8k"),
                                               (32768, "8k-32k"))
OVERFLOW_BUCKET = "32k+"
BUCKET_LABELS: tuple[str, ...] = (*(label for _, label in CONTEXT_BUCKETS), OVERFLOW_BUCKET)


def context_bucket(tokens: int) -> str:
    """The bucket of a context of ``tokens`` tokens: ≤512, ≤2k, ≤8k, ≤32k (k = 1024) or more."""
    for bound, label in CONTEXT_BUCKETS:
        if tokens <= bound:
            return label
    return OVERFLOW_BUCKET
