"""Prometheus text for ``GET /metrics``, rendered from replicas' snapshots.

Names are kronk's (``kronk_*``; Ray exports the same series as ``ray_kronk_*``)
and labels are kronk's (``model``, ``replica``, ...), without the labels Ray adds
(``WorkerId``, ``SessionName``...). Counters, gauges and histogram buckets and
counts equal Ray's; a histogram's ``_sum`` here is exact, while Ray's exporter
reports the sum of bucket midpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from kronk.telemetry.specs import SPECS
from kronk.telemetry.stats import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _le(b: float) -> str:
    return repr(float(b))


def families(snapshots: Iterable[dict[str, Any]]) -> list[Metric]:
    out: dict[str, Any] = {}
    for snap in snapshots:
        for s in snap.get("series", ()):
            spec = SPECS.get(s["name"])
            if spec is None:
                continue
            labels = [str(s["labels"].get(k, "")) for k in spec.labels]
            fam = out.get(spec.name)
            if fam is None:
                cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                       "histogram": HistogramMetricFamily}[spec.kind]
                fam = out[spec.name] = cls(spec.name, spec.help, labels=list(spec.labels))
            if spec.kind == "histogram":
                h = Histogram.from_dict(s)
                cum, buckets = 0, []
                for b, n in zip([*h.bounds, float("inf")], h.counts, strict=True):
                    cum += n
                    buckets.append(("+Inf" if b == float("inf") else _le(b), cum))
                fam.add_metric(labels, buckets, h.sum)
            else:
                fam.add_metric(labels, s["value"])
    return [out[name] for name in SPECS if name in out]


class _Collector:
    def __init__(self, fams: list[Metric]):
        self.fams = fams

    def collect(self) -> Iterable[Metric]:
        return iter(self.fams)


def render(snapshots: Iterable[dict[str, Any]]) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(families(snapshots)))  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def parse(text: str, prefix: str = "kronk_") -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample whose name starts with ``prefix`` (tests, tools)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith(prefix)]
