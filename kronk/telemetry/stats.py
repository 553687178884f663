"""The numbers of one process, in memory: a mirror of what it sends to Ray, snapshotted and merged.

Every value recorded through :class:`kronk.telemetry.metrics.Recorder` lands in a
:class:`MetricStore` as well as in Ray's metric of the same name, so kronk's own
``/metrics`` (rendered from the stores' snapshots) and Ray's Prometheus endpoint
count the same observations. Histograms use the same fixed boundaries as the Ray
metric, so p50/p95 are computed like Prometheus' ``histogram_quantile`` and merge
across replicas exactly (bucket counts add up).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from kronk.telemetry import specs
from kronk.telemetry.buckets import BUCKET_LABELS

LabelKey = tuple[tuple[str, str], ...]


class Histogram:
    """Fixed-boundary histogram (Prometheus ``le`` semantics: bucket i counts values <= bounds[i])."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float], counts: list[int] | None = None, sum_: float = 0.0):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = list(counts) if counts is not None else [0] * (len(self.bounds) + 1)
        self.sum = float(sum_)
        self.count = sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def add(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different boundaries do not merge")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """Like PromQL ``histogram_quantile``: linear inside the bucket; the last finite bound for +Inf."""
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1] if self.bounds else None
                lo = self.bounds[i - 1] if i > 0 else 0.0
                hi = self.bounds[i]
                return lo + (hi - lo) * (rank - seen) / n
            seen += n
        return self.bounds[-1] if self.bounds else None

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        return cls(d["bounds"], d["counts"], d["sum"])


class MetricStore:
    """Counters, gauges and histograms by (name, labels); thread-safe, cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, LabelKey], float | Histogram] = {}

    def inc(self, name: str, labels: LabelKey, value: float) -> None:
        with self._lock:
            self._values[(name, labels)] = float(self._values.get((name, labels), 0.0)) + value  # type: ignore[arg-type]

    def set(self, name: str, labels: LabelKey, value: float) -> None:
        with self._lock:
            self._values[(name, labels)] = float(value)

    def observe(self, name: str, labels: LabelKey, value: float, bounds: tuple[float, ...]) -> None:
        with self._lock:
            h = self._values.get((name, labels))
            if not isinstance(h, Histogram):
                h = self._values[(name, labels)] = Histogram(bounds)
            h.observe(value)

    def series(self) -> list[dict[str, Any]]:
        """Plain data: ``{"name", "labels", "value"}`` or ``{"name", "labels", "bounds", "counts", "sum", "count"}``."""
        with self._lock:
            items = list(self._values.items())
            out = []
            for (name, labels), v in items:
                d: dict[str, Any] = {"name": name, "labels": dict(labels)}
                d.update(v.to_dict() if isinstance(v, Histogram) else {"value": v})
                out.append(d)
        return out


# ---------------------------------------------------------------------- aggregation


def _hist(series: Iterable[dict[str, Any]], bounds: tuple[float, ...]) -> Histogram:
    h = Histogram(bounds)
    for s in series:
        h.add(Histogram.from_dict(s))
    return h


def _summary(h: Histogram, digits: int = 4) -> dict[str, Any]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {"count": h.count, "mean": r(h.mean), "p50": r(h.quantile(0.5)), "p95": r(h.quantile(0.95))}


def summarize(snapshots: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, across every replica's snapshot: requests, tokens, TTFT, tok/s per context bucket, KV use.

    ``snapshots`` are :meth:`kronk.telemetry.metrics.Recorder.snapshot` dicts (from any component).
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    replicas: dict[str, list[str]] = {}
    engines: dict[str, list[dict[str, Any]]] = {}
    for snap in snapshots:
        if snap.get("component") == "llm" and snap.get("model"):
            replicas.setdefault(snap["model"], []).append(snap["replica"])
            if snap.get("engine"):
                engines.setdefault(snap["model"], []).append(snap["engine"])
        for s in snap.get("series", ()):
            model = s["labels"].get("model")
            if model and not s["name"].startswith("kronk_pull_"):  # pulls are not serving numbers
                by_model.setdefault(model, []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for model in sorted(set(by_model) | set(replicas)):
        series = by_model.get(model, [])

        def named(spec: specs.Spec, ss: list[dict[str, Any]] = series) -> list[dict[str, Any]]:
            return [s for s in ss if s["name"] == spec.name]

        def total(spec: specs.Spec) -> int:
            return int(sum(s["value"] for s in named(spec)))

        by_route: dict[str, dict[str, int]] = {}
        for s in named(specs.REQUESTS):
            ep = by_route.setdefault(s["labels"].get("route", ""), {})
            ep[s["labels"].get("status", "")] = ep.get(s["labels"].get("status", ""), 0) + int(s["value"])
        n_req = sum(n for ep in by_route.values() for n in ep.values())
        errors = sum(n for ep in by_route.values() for st, n in ep.items() if not st.startswith(("1", "2", "3")))
        prompt, reused = total(specs.PROMPT_TOKENS), total(specs.REUSED_TOKENS)
        decode = {}
        for b in BUCKET_LABELS:
            h = _hist([s for s in named(specs.DECODE_TPS) if s["labels"].get("context_bucket") == b],
                      specs.DECODE_TPS.bounds)
            if h.count:
                decode[b] = _summary(h, 2)
        used, cells = total(specs.KV_USED), total(specs.KV_TOTAL)
        out[model] = {
            "replicas": len(replicas.get(model, [])),
            "replica_ids": sorted(replicas.get(model, [])),
            "requests": {"total": n_req, "errors": errors, "by_route": by_route},
            "tokens": {"prompt": prompt, "prompt_reused": reused, "prompt_shared": total(specs.SHARED_TOKENS),
                       "completion": total(specs.COMPLETION_TOKENS)},
            "prefix_cache_reuse_ratio": round(reused / prompt, 4) if prompt else None,
            "queue_wait_s": _summary(_hist(named(specs.QUEUE_WAIT), specs.QUEUE_WAIT.bounds)),
            "ttft_s": _summary(_hist(named(specs.TTFT), specs.TTFT.bounds)),
            "inter_token_latency_s": _summary(_hist(named(specs.ITL), specs.ITL.bounds), 5),
            "decode_tok_s": decode,
            "prefill_tok_s": _summary(_hist(named(specs.PREFILL_TPS), specs.PREFILL_TPS.bounds), 1),
            "kv": {"cells_used": used, "cells_total": cells, "usage": round(used / cells, 4) if cells else None},
            "active": total(specs.ACTIVE), "waiting": total(specs.WAITING),
            "speculative": _speculative(total(specs.SPEC_DRAFTED), total(specs.SPEC_ACCEPTED)),
            "prefix_cache": _tiers(series),
            "engine": _sum_engines(engines.get(model, [])),
        }
    return out


_ENGINE_SUMS = ("n_slots", "active", "waiting", "kv_cells_used", "kv_cells_total", "kv_bytes", "prompt_tokens",
                "prompt_tokens_reused", "prompt_tokens_shared", "completion_tokens", "requests", "spec_draft_tokens",
                "spec_accepted_tokens")


def _tiers(series: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Each prefix cache tier's numbers over the model's replicas: hits, misses, tokens, evictions, bytes."""
    out: dict[str, dict[str, int]] = {}
    for spec, field in (*specs.PREFIX_COUNTERS, (specs.PREFIX_BYTES, "bytes")):
        for s in series:
            if s["name"] == spec.name:
                tier = out.setdefault(s["labels"].get("tier", ""), dict.fromkeys(
                    ("hits", "misses", "tokens", "evictions", "bytes"), 0))
                tier[field] += int(s["value"])
    return out


def _speculative(drafted: int, accepted: int) -> dict[str, Any]:
    """Speculative decoding's numbers: draft tokens verified, accepted, and the acceptance rate."""
    return {"draft_tokens": drafted, "accepted_tokens": accepted,
            "acceptance_rate": round(accepted / drafted, 4) if drafted else None}


def _sum_engines(engines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The replicas' EngineStats counters added up (sampled every few seconds, not live)."""
    if not engines:
        return None
    d: dict[str, Any] = {k: sum(int(e.get(k) or 0) for e in engines) for k in _ENGINE_SUMS}
    d["n_ctx_slot"] = max(int(e.get("n_ctx_slot") or 0) for e in engines)
    d["speculative"] = sorted({str(e.get("speculative") or "off") for e in engines})
    drafted = d["spec_draft_tokens"]
    d["spec_acceptance_rate"] = round(d["spec_accepted_tokens"] / drafted, 4) if drafted else None
    return d
