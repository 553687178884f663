"""Ray's metrics as the metrics sink of kronk's recorders (kronk.telemetry.metrics.set_metrics_sink).

Inside Ray every value a :class:`~kronk.telemetry.metrics.Recorder` records also
goes to a ``ray.util.metrics`` metric of the same name, which Ray's Prometheus
endpoint exports as ``ray_<name>``. The metrics are created lazily, once per
process. :func:`install_ray_metrics` is called when a replica or actor starts
(``deployments/board.py: start_publisher_in_actor``).
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from ray.util import metrics as rm

from kronk.telemetry.metrics import Method, metrics_sink, set_metrics_sink
from kronk.telemetry.specs import Spec


def in_ray() -> bool:
    """True inside a Ray worker or a driver that called ray.init."""
    try:
        return bool(ray.is_initialized())
    except Exception:
        return False


class RayMetrics:
    """A :class:`~kronk.telemetry.metrics.MetricsSink` over ``ray.util.metrics``: one metric per spec."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def metric(self, spec: Spec) -> Any:
        m = self._metrics.get(spec.name)
        if m is not None:
            return m
        with self._lock:
            if spec.name not in self._metrics:
                if spec.kind == "counter":
                    m = rm.Counter(spec.name, description=spec.help, tag_keys=spec.labels)
                elif spec.kind == "gauge":
                    m = rm.Gauge(spec.name, description=spec.help, tag_keys=spec.labels)
                else:
                    m = rm.Histogram(spec.name, description=spec.help, boundaries=list(spec.bounds),
                                     tag_keys=spec.labels)
                self._metrics[spec.name] = m
            return self._metrics[spec.name]

    def record(self, spec: Spec, method: Method, value: float, tags: dict[str, str]) -> None:
        getattr(self.metric(spec), method)(value, tags=tags)


def install_ray_metrics() -> bool:
    """Make Ray's metrics this process's metrics sink when it runs inside Ray (once); whether they are."""
    if isinstance(metrics_sink(), RayMetrics):
        return True
    if not in_ray():
        return False
    set_metrics_sink(RayMetrics())
    return True
