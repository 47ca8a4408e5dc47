"""Leader election on a coordination.k8s.io Lease, so that of several operator replicas
exactly one acts (client-go's protocol, as controller-runtime uses it).

A replica acts only while it holds the Lease. It renews every `renew_seconds`; if it
cannot renew within `renew_deadline_seconds` it exits at once, before any other
replica may take the Lease (`lease_seconds` after the last renewal that replica saw).
Expiry is judged on the local clock from when a Lease was last seen to change, never
from timestamps another machine wrote, so clock skew does not make two leaders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("kubetrain.operator.leader")

TIMEOUT = (5.0, 10.0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, then keep, the Lease `namespace/name` as `identity`."""

    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
        on_lost: Callable[[], None] = lambda: os._exit(1),
    ) -> None:
        if not retry_seconds < renew_deadline_seconds < lease_seconds:
            raise ValueError("need retry < renew deadline < lease duration")
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline_seconds
        self.retry = retry_seconds
        self.on_lost = on_lost
        self._seen: tuple[str | None, str | None] = (None, None)  # (holder, renewTime)
        self._seen_at = time.monotonic()
        self._stop = threading.Event()

    @property
    def _api(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api()

    def _try(self) -> bool:
        """One attempt to take or renew the Lease; True if we hold it now."""
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": _now(),
        }
        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=TIMEOUT
            )
        except ApiException as err:
            if err.status != 404:
                raise
            body = {
                "metadata": {"name": self.name},
                "spec": {**spec, "acquireTime": _now(), "leaseTransitions": 0},
            }
            try:
                self._api.create_namespaced_lease(self.namespace, body, _request_timeout=TIMEOUT)
            except ApiException as conflict:
                if conflict.status == 409:
                    return False  # another replica created it first
                raise
            return True
        holder, renewed = lease.spec.holder_identity, lease.spec.renew_time
        observed = (holder, str(renewed))
        if observed != self._seen:
            self._seen, self._seen_at = observed, time.monotonic()
        expired = time.monotonic() - self._seen_at > (
            lease.spec.lease_duration_seconds or self.lease_seconds
        )
        if holder not in (None, "", self.identity) and not expired:
            return False
        transitions = lease.spec.lease_transitions or 0
        body = {
            "metadata": {"name": self.name, "resourceVersion": lease.metadata.resource_version},
            "spec": {
                **spec,
                "acquireTime": lease.spec.acquire_time if holder == self.identity else _now(),
                "leaseTransitions": transitions if holder == self.identity else transitions + 1,
            },
        }
        try:
            self._api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=TIMEOUT
            )
        except ApiException as conflict:
            if conflict.status == 409:  # changed since we read it: someone else renewed
                return False
            raise
        return True

    def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        log.info("waiting to lead %s/%s as %s", self.namespace, self.name, self.identity)
        while not self._safe_try():
            time.sleep(self.retry)
        log.info("leading %s/%s as %s", self.namespace, self.name, self.identity)

    def _safe_try(self) -> bool:
        try:
            return self._try()
        except Exception as error:  # the API server away: not leading, try again
            log.warning("lease %s/%s: %s", self.namespace, self.name, error)
            return False

    def keep(self) -> threading.Thread:
        """Renew in the background; `on_lost` (default: exit) once renewing fails for
        longer than the renew deadline, before another replica could take over."""

        def renew() -> None:
            last = time.monotonic()
            while not self._stop.wait(self.retry):
                if self._safe_try():
                    last = time.monotonic()
                elif time.monotonic() - last > self.renew_deadline:
                    log.error("lost the lease %s/%s: stopping", self.namespace, self.name)
                    self.on_lost()
                    return

        thread = threading.Thread(target=renew, name="leader-renew", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
