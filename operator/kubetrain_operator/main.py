"""`kubetrain operator`: the process around kopf's loop (logs, endpoints, leadership)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import kopf

from kubetrain_operator import handlers, kube, operator_metrics
from kubetrain_operator.leader import LeaderElector

log = logging.getLogger("kubetrain.operator")


def run_operator(
    namespaces: list[str],
    health_port: int,
    metrics_port: int,
    leader_elect: bool = False,
    verbose: bool = False,
) -> int:
    """JSON logs, /metrics, /healthz, /readyz, then (as the leader, with leader_elect)
    kopf's loop over the handlers."""
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=verbose, debug=verbose)
    # A tenant's spec may nest deep inside the free-form pod template fields (up to the
    # API server's own JSON depth limit). Parsing it, in kopf and in the client, recurses:
    # room for that, so that one such job fails with InvalidSpec (spec_limits.py) instead
    # of breaking the watch of every job. Threads get the stack that depth needs.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    threading.stack_size(64 * 1024 * 1024)
    operator_metrics.serve_metrics(metrics_port)
    handlers.HEALTH.serve(health_port)
    started = time.monotonic()
    handlers.WATCHED[:] = namespaces
    if leader_elect:
        kube.load_config()
        elector = LeaderElector(
            os.environ.get("POD_NAMESPACE", "kubetrain-system"),
            "kubetrain-operator",
            os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}",
        )
        elector.acquire()  # followers wait here, alive (/healthz) but not ready
        elector.keep()
    log.info("starting kubetrain operator (namespaces: %s)", namespaces or "all")
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=True)
    log.info("operator stopped after %.0f s", time.monotonic() - started)
    return 0
