"""Observability: metrics (an in-memory store + an optional sink), the stats board, OpenTelemetry tracing.

* :mod:`.specs` — every metric's name, kind, labels and boundaries
* :mod:`.buckets` — context-size buckets
* :mod:`.stats` — per-process metric store, snapshots, aggregation across replicas
* :mod:`.metrics` — :class:`~.metrics.Recorder`: what the serving code calls; ``set_metrics_sink`` (Ray's
  metrics inside Ray: deployments/metrics.py)
* :mod:`.board` — where replicas publish their snapshots (over a key-value store; Ray's GCS one is in
  deployments/board.py)
* :mod:`.prometheus` — Prometheus text from snapshots (``GET /metrics``)
* :mod:`.tracing` — OTel setup from ``OTEL_*`` env vars (off by default), W3C context helpers
* :mod:`.generation` — a replica's per-request metrics and spans

Nothing here imports Ray: deployments/ plugs Ray in (the board's store, the metrics sink).
"""
