"""A watch of the job pods only, filtered by the API server (a label selector).

kopf filters the pods it watches in the operator process: it would receive, and keep
state for, every pod of the cluster. This thread asks the API server for pods that
carry the job label and hands each event's job to the reconciler; memory grows with
the job pods, not with the cluster. Events are read as plain JSON: all this needs of a
pod is its namespace, labels and resourceVersion, not the client's models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kubetrain_operator import kube, pod_facts

log = logging.getLogger("kubetrain.operator.pods")

_WATCH_SECONDS = 300  # the server ends each watch after this; we start the next
# The fingerprint of a pod nobody has placed yet: Pending, not deleting, no node, no IP,
# no container.
UNPLACED: tuple[object, ...] = ("Pending", False, "", None, ())


class PodWatch:
    """Calls `on_pod(namespace, job name)` for every event of a pod labelled `label`, in
    `namespaces` (all when empty), that changes what the reconcile decides on (its
    `fingerprint`) or deletes it, until `stop()`."""

    def __init__(
        self, label: str, namespaces: list[str], on_pod: Callable[[str, str], None]
    ) -> None:
        self.label = label
        self.namespaces = namespaces or [""]
        self.on_pod = on_pod
        self._stop = threading.Event()
        self._seen: dict[str, tuple[object, ...]] = {}  # pod UID -> its last fingerprint
        self._threads: list[threading.Thread] = []

    def start(self) -> PodWatch:
        for namespace in self.namespaces:
            thread = threading.Thread(
                target=self._loop, args=(namespace,), daemon=True, name=f"pods-{namespace or 'all'}"
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _list(self, namespace: str, **kwargs: Any) -> Any:
        core = kube.core()
        if namespace:
            return core.list_namespaced_pod(namespace, **kwargs)
        return core.list_pod_for_all_namespaces(**kwargs)

    def _loop(self, namespace: str) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listing = kube.read_json(
                        self._list(
                            namespace,
                            label_selector=self.label,
                            _request_timeout=(5, 60),
                            _preload_content=False,
                        )
                    )
                    version = listing["metadata"]["resourceVersion"]
                    pods = listing.get("items") or []
                    self._forget_gone(namespace, pods)  # deleted while nobody watched
                    for pod in pods:
                        self._notify(pod)
                # deserialize=False: each event is the API server's JSON. (With models,
                # the client could not tell the lambda's type and handed over dicts.)
                stream = watch.Watch().stream(
                    lambda **kw: self._list(namespace, **kw),
                    label_selector=self.label,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                    _request_timeout=(5, _WATCH_SECONDS + 30),
                    deserialize=False,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    pod = event.get("object") or {}
                    version = (pod.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._notify(pod, deleted=event.get("type") == "DELETED")
            except ApiException as err:
                if err.status == 410:  # expired: list again
                    version = ""
                    continue
                log.warning("pod watch (%s): %s", namespace or "all namespaces", err)
                version = ""
                time.sleep(2)
            except Exception as err:  # a dropped connection: start over
                log.warning("pod watch (%s): %s", namespace or "all namespaces", err)
                version = ""
                time.sleep(2)

    def _forget_gone(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        listed = {(p.get("metadata") or {}).get("uid") for p in pods}
        for uid, fingerprint in list(self._seen.items()):
            if uid not in listed and (not namespace or fingerprint[0] == namespace):
                del self._seen[uid]

    def _notify(self, pod: dict[str, Any], deleted: bool = False) -> None:
        meta = pod.get("metadata") or {}
        job = (meta.get("labels") or {}).get(self.label)
        namespace = meta.get("namespace") or ""
        uid = str(meta.get("uid") or "")
        if deleted:
            self._seen.pop(uid, None)
        else:
            fingerprint = pod_facts.fingerprint(pod)
            before = self._seen.get(uid)
            self._seen[uid] = (namespace, *fingerprint)
            if before == self._seen[uid]:
                return  # nothing the reconcile decides on changed
            if before is None and fingerprint == UNPLACED:
                return  # a pod just created: the pass that created it counted it Pending
        if job and namespace:
            try:
                self.on_pod(namespace, job)
            except Exception:  # one job's trouble must not stop the watch
                log.exception("reconciling %s/%s after a pod event", namespace, job)
