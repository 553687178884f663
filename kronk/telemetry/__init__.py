"""Observability: metrics (Ray metrics + an in-memory mirror), the stats board, OpenTelemetry tracing.

* :mod:`.specs` — every metric's name, kind, labels and boundaries
* :mod:`.buckets` — context-size buckets
* :mod:`.stats` — per-process metric store, snapshots, aggregation across replicas
* :mod:`.metrics` — :class:`~.metrics.Recorder`: what the serving code calls
* :mod:`.board` — where replicas publish their snapshots (Ray's GCS key-value store)
* :mod:`.prometheus` — Prometheus text from snapshots (``GET /metrics``)
* :mod:`.tracing` — OTel setup from ``OTEL_*`` env vars (off by default), W3C context helpers
* :mod:`.generation` — a replica's per-request metrics and spans

Nothing here imports Ray Serve; Ray itself is imported only where it runs.
"""
