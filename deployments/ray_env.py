"""Ray settings for the local cluster kronk starts: less background CPU, so llama.cpp keeps the cores.

llama.cpp's decode threads use every core they are given and wait on each other
at every step, so on a small machine each wake-up of another process costs more
than its own CPU time. Measured on 2 cores with one model serving 8 streams
(``benchmarks/README.md``), Ray's defaults keep about 0.1 of a core busy besides
the work itself; these settings take most of that back:

- Serve's controller reconciles every 0.1 s and asks the GCS for the cluster's
  nodes each time (~0.04 cores and the GCS's share); every 0.5 s is still far
  quicker than any autoscaling delay (seconds).
- Ray starts idle worker processes ahead of need; each one wakes ~100 times a
  second. kronk's processes are long-lived actors, started when deployed.
- Ray's log monitor lists the session's log directory every 0.1 s to find new
  log files (~0.01 cores); every 2 s is enough for a new replica's first lines
  to reach the terminal, and nothing is lost (a new file is read from its start).

They are defaults: a value already in the environment wins. Ray reads them when
its processes start, so they are applied before ``ray.init`` (``kronk server
start``, the benchmarks, the tests); for ``serve run serve_config.yaml`` export
them in the shell (see docs/configuration.md).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

RAY_ENV: dict[str, str] = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",  # always the interval below, not only past 1000 files
    "LOG_NAME_UPDATE_INTERVAL_S": "2",
}


def apply_ray_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each of RAY_ENV that is not set yet; returns the values in effect."""
    env = os.environ if environ is None else environ
    for k, v in RAY_ENV.items():
        env.setdefault(k, v)
    return {k: env[k] for k in RAY_ENV}
