"""One pod on a process kubelet: sandbox, containers, restarts, probes, status, deletion.

A PodWorker owns one pod (one uid) from the moment it is bound to the node
until its object is deleted or the node goes away. Its thread runs a small
level-based loop: look at what is wanted (the pod object) and what is (the
processes), act, report status when it changed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localkube.api import STRATEGIC_PATCH, ApiError, KubeApi
from localkube.images import image_repository
from localkube.kubelet.dns import (
    pod_hostname,
)
from localkube.kubelet.env import EnvError, build_env, expand_command
from localkube.kubelet.runtime import ContainerProcess, run_probe, write_spec
from localkube.kubelet.sandbox import PodObjects, PodSandbox
from localkube.kubelet.status import (
    RUNNING,
    TERMINATED,
    WAITING,
    ContainerRecord,
    PodView,
    build_status,
    container_will_restart,
    exit_code_of,
    now_iso,
    pod_phase,
    terminated_reason,
    termination_message,
)
from localkube.kubelet.volumes import (
    Mount,
    VolumeError,
    ensure_mount_points,
    plan_mounts,
)
from localkube.network import NetworkError, PodNetwork

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SETUP_RETRY_SECONDS = 1.0


@dataclass
class NodeContext:
    """What every pod worker of one node shares."""

    api: KubeApi
    network: PodNetwork
    node_name: str
    host_ip: str
    state_dir: Path
    ca_bytes: bytes
    base_env: dict[str, str]
    node_cpu: str
    node_memory: str
    # Cleared when the node "dies": from then on nothing may reach the API server.
    alive: threading.Event
    backoff_base: float
    backoff_cap: float
    created_paths: Callable[[list[Path]], None]
    log: logging.Logger
    image_workdir: str = "/"  # the working directory when the container names none
    # Host directories a container of any uid must reach (the venv, Python, shims).
    image_paths: tuple[str, ...] = ()
    # Image repository -> its ENTRYPOINT, for containers that name no command.
    image_entrypoints: Mapping[str, list[str]] = field(default_factory=dict)
    # Set when the node is cut off from the API server: its pods run on, unseen.
    partitioned: threading.Event = field(default_factory=threading.Event)


def pod_dir(state_dir: Path, namespace: str, name: str) -> Path:
    return state_dir / "pods" / f"{namespace}_{name}"


@dataclass
class _Container:
    """Runtime side of one container: its spec, record, process and probe state."""

    spec: dict[str, Any]
    record: ContainerRecord
    is_init: bool
    proc: ContainerProcess | None = None
    restart_at: float = 0.0
    finished: bool = False  # terminated and not to be restarted
    env: dict[str, str] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    started_mono: float = 0.0
    next_probe: dict[str, float] = field(default_factory=dict)
    probe_runs: dict[str, int] = field(default_factory=dict)  # +n successes / -n failures


class PodWorker:
    """Runs one pod; thread-safe entry points are update, deleted, halt and kill_main."""

    def __init__(self, ctx: NodeContext, pod: dict[str, Any]) -> None:
        self.ctx = ctx
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._pod = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False
        self._halt = False
        self.finished = threading.Event()
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.view = PodView(restart_policy=self.restart_policy, host_ip=ctx.host_ip)
        self._published: dict[str, Any] | None = None
        self._conditions: list[dict[str, Any]] = list(
            (pod.get("status") or {}).get("conditions") or []
        )
        self.dir = pod_dir(ctx.state_dir, self.namespace, self.name)
        self.run_dir = self.dir / self.uid
        self.objects = PodObjects(ctx.api, self.namespace, self.name, self.uid)
        self.sandbox = PodSandbox(
            network=ctx.network,
            objects=self.objects,
            run_dir=self.run_dir,
            hostname=pod_hostname(self.name, spec.get("hostname")),
            host_ip=ctx.host_ip,
            node_name=ctx.node_name,
            ca_bytes=ctx.ca_bytes,
            current_pod=self._pod_now,
        )
        self.hostname = self.sandbox.hostname
        self.init = [
            _Container(c, ContainerRecord(c["name"], reason="PodInitializing"), True)
            for c in spec.get("initContainers") or []
        ]
        self.main = [
            _Container(c, ContainerRecord(c["name"]), False) for c in spec.get("containers") or []
        ]
        if self.init:
            for item in self.main:
                item.record.reason = "PodInitializing"
        self.view.init_containers = [c.record for c in self.init]
        self.view.containers = [c.record for c in self.main]
        self._terminal = False
        self._setup_error = ""
        self._started_mono = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"pod-{self.namespace}/{self.name}"
        )

    # --- entry points (other threads) --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def deleted(self) -> None:
        """The pod object is gone (force deletion): stop at once, write nothing."""
        self._gone = True
        self._wake.set()

    def halt(self) -> None:
        """The node dies or shuts down: kill everything, clean up locally, write nothing."""
        self._halt = True
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def kill_main(self, sig: int) -> bool:
        """Send `sig` to the first running container's main process."""
        for item in self.main:
            if item.proc is not None and item.proc.poll() is None:
                item.proc.signal_main(sig)
                return True
        return False

    def signal_all(self, sig: int) -> bool:
        """Send `sig` to every process of the pod's running containers (SIGSTOP and
        SIGCONT: the cgroup freezer); False if none runs."""
        running = [c.proc for c in self.init + self.main if c.proc and c.proc.poll() is None]
        for proc in running:
            proc.signal_tree(sig)
        return bool(running)

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def has_container(self, name: str) -> bool:
        return any(item.record.name == name for item in self.init + self.main)

    def container_running(self, name: str) -> bool:
        """True while the container runs or will run again (for `kubectl logs -f`)."""
        for item in self.init + self.main:
            if item.record.name == name:
                return not self._terminal and not item.finished and not self.finished.is_set()
        return False

    # --- the loop ------------------------------------------------------------------------

    def _pod_now(self) -> dict[str, Any]:
        with self._lock:
            return self._pod

    def _deletion(self) -> tuple[bool, float]:
        meta = self._pod_now()["metadata"]
        if not meta.get("deletionTimestamp"):
            return False, 0.0
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self._pod_now()["spec"].get("terminationGracePeriodSeconds", 30)
        return True, float(grace)

    def _stopping(self) -> bool:
        return self._halt or self._gone or not self.ctx.alive.is_set()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            self.ctx.log.exception("pod worker %s/%s failed", self.namespace, self.name)
        finally:
            self._kill_all(signal.SIGKILL)
            self._teardown_sandbox()
            self.finished.set()

    def _loop(self) -> None:
        self.view.start_time = now_iso()
        self._started_mono = time.monotonic()
        self._publish()
        while not self._stopping():
            deleting, grace = self._deletion()
            if deleting:
                self._terminate(grace)
                return
            if not self._terminal:
                self._step()
            self._publish()
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        if self._terminal:
            return 5.0
        deadlines = [c.restart_at for c in self.init + self.main if c.restart_at]
        active = self._pod_now()["spec"].get("activeDeadlineSeconds")
        if active is not None:
            deadlines.append(self._started_mono + float(active))
        for item in self.main:
            deadlines.extend(item.next_probe.values())
        if not self.sandbox.ready:
            return SETUP_RETRY_SECONDS
        wait = min(deadlines, default=time.monotonic() + 2.0) - time.monotonic()
        return max(0.05, min(wait, 2.0))

    def _deadline_passed(self) -> bool:
        """activeDeadlineSeconds: the kubelet fails a pod that has been active too long."""
        deadline = self._pod_now()["spec"].get("activeDeadlineSeconds")
        if deadline is None or time.monotonic() - self._started_mono < float(deadline):
            return False
        self.view.failed = True
        self.view.reason = "DeadlineExceeded"
        self.view.message = "Pod was active on the node longer than the specified deadline"
        self._event("Normal", "DeadlineExceeded", self.view.message)
        return True

    def _step(self) -> None:
        if self._deadline_passed():
            self._finish()
            return
        if not self.sandbox.ready and not self._setup_sandbox():
            return
        if not self.init or self._step_init():
            self._step_main()
        phase = pod_phase(
            self.restart_policy,
            self.view.failed,
            all(c.finished for c in self.init),
            [c.record for c in self.main],
        )
        if phase in ("Succeeded", "Failed"):
            self._finish()

    def _finish(self) -> None:
        """The pod reached Succeeded or Failed: stop what runs, report, free the sandbox."""
        self._terminal = True
        self._kill_all(signal.SIGKILL)
        for item in self.init + self.main:
            if item.proc is not None:
                item.proc.wait(5.0)
                self._collect_exit(item)
            item.finished = True
            rec = item.record
            if rec.state == WAITING and rec.last_terminated:
                # Caught between restarts: the last run is the final state.
                rec.state, rec.reason = TERMINATED, rec.last_terminated.get("reason", "Error")
                rec.message = rec.last_terminated.get("message", "")
        self._publish()
        self._teardown_sandbox()

    # --- sandbox -----------------------------------------------------------------------

    def _setup_sandbox(self) -> bool:
        """Set up the pod's sandbox; False (with the reason in the status) to retry later."""
        try:
            self._prepare_logs()
            self.sandbox.setup()
        except (VolumeError, EnvError, ApiError, NetworkError, OSError) as err:
            message = f"{type(err).__name__}: {err}"
            if message != self._setup_error:  # one event per distinct problem, not per retry
                self._setup_error = message
                self._event("Warning", "FailedMount", message)
            for item in self.init + self.main:
                if item.record.state == WAITING:
                    item.record.message = message
            return False
        for item in self.init + self.main:
            item.record.message = ""
        self.view.pod_ip = self.sandbox.ip
        self.view.sandbox_ready = True
        self.ctx.log.info(
            "pod %s/%s: sandbox %s, ip %s",
            self.namespace,
            self.name,
            self.sandbox.netns,
            self.sandbox.ip,
        )
        return True

    def _prepare_logs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.run_dir.exists():
            return
        # A new pod under a reused name (a restarted gang): keep the old logs aside.
        for item in self.init + self.main:
            old = self.log_path(item.record.name)
            if old.exists():
                old.rename(old.with_name(f"{item.record.name}.before-{self.uid[:8]}.log"))

    def _teardown_sandbox(self) -> None:
        self.sandbox.teardown()
        self.view.sandbox_ready = False

    # --- containers -------------------------------------------------------------------

    def _identity(self, container: Mapping[str, Any]) -> tuple[int, int, list[int]]:
        pod_sc = self._pod_now()["spec"].get("securityContext") or {}
        sc = container.get("securityContext") or {}
        uid = int(sc.get("runAsUser", pod_sc.get("runAsUser", 0)))
        gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", 0)))
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False))
        if non_root and uid == 0:
            raise EnvError("container has runAsNonRoot and image will run as root")
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if "fsGroup" in pod_sc:
            groups.append(int(pod_sc["fsGroup"]))
        return uid, gid, groups

    def _launch(self, item: _Container) -> None:
        rec = item.record
        spec = item.spec
        try:
            uid, gid, groups = self._identity(spec)
            env = build_env(
                spec,
                self.sandbox.facts(),
                base_env={**self.ctx.base_env, "HOSTNAME": self.hostname},
                get_secret=self.objects.secret_data,
                get_configmap=self.objects.configmap_data,
                node_cpu=self.ctx.node_cpu,
                node_memory=self.ctx.node_memory,
            )
            env.setdefault("HOME", "/root" if uid == 0 else "/")
            entrypoint = self.ctx.image_entrypoints.get(image_repository(spec.get("image", "")))
            argv = expand_command(spec.get("command"), spec.get("args"), env, entrypoint)
            pod_spec = self._pod_now()["spec"]
            mounts = self.sandbox.file_mounts()
            mounts += plan_mounts(spec, pod_spec.get("volumes") or [], self.run_dir / "volumes")
        except (EnvError, VolumeError, ApiError) as err:
            rec.state, rec.reason, rec.message = WAITING, "CreateContainerConfigError", str(err)
            item.restart_at = time.monotonic() + SETUP_RETRY_SECONDS
            return
        term_file = self.run_dir / "termination" / rec.name
        term_file.write_bytes(b"")
        term_file.chmod(0o666)
        term_path = spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        mounts.append(Mount(str(term_file), term_path, False, True))
        self.ctx.created_paths(ensure_mount_points(mounts))
        spec_path = self.run_dir / "specs" / f"{rec.name}.json"
        security = spec.get("securityContext") or {}
        start_error = self.run_dir / "specs" / f"{rec.name}.start-error"
        write_spec(
            spec_path,
            netns=self.sandbox.netns_path,
            hostname=self.hostname,
            mounts=[vars(m) for m in mounts],
            uid=uid,
            gid=gid,
            groups=groups,
            cwd=spec.get("workingDir") or self.ctx.image_workdir,
            argv=argv,
            env=env,
            start_error_file=start_error,
            no_new_privs=security.get("allowPrivilegeEscalation") is False,
            read_only_root=security.get("readOnlyRootFilesystem") is True,
            image_paths=self.ctx.image_paths,
        )
        item.env, item.uid, item.gid = env, uid, gid
        try:
            item.proc = ContainerProcess(
                spec_path, self.log_path(rec.name), start_error, self._wake.set
            )
        except OSError as err:  # e.g. out of processes: retry like a runtime error
            rec.state, rec.reason, rec.message = WAITING, "CreateContainerError", str(err)
            item.restart_at = time.monotonic() + SETUP_RETRY_SECONDS
            return
        item.started_mono = time.monotonic()
        item.restart_at = 0.0
        item.next_probe = {}
        item.probe_runs = {}
        rec.state, rec.reason, rec.message = RUNNING, "", ""
        rec.started_at = now_iso()
        rec.pid = item.proc.pid
        rec.container_id = f"process://{self.uid[:8]}-{rec.name}-{rec.restart_count}"
        rec.ready = not item.is_init and "readinessProbe" not in spec
        if "readinessProbe" in spec:
            delay = float(spec["readinessProbe"].get("initialDelaySeconds", 0))
            item.next_probe["readinessProbe"] = time.monotonic() + delay
        if "livenessProbe" in spec:
            delay = float(spec["livenessProbe"].get("initialDelaySeconds", 0))
            item.next_probe["livenessProbe"] = time.monotonic() + delay
        self.ctx.log.info(
            "pod %s/%s: started %s (pid %d, uid %d): %s",
            self.namespace,
            self.name,
            rec.name,
            rec.pid,
            uid,
            repr(argv)[:200],
        )
        self._event("Normal", "Started", f"Started container {rec.name}")

    def _collect_exit(self, item: _Container) -> bool:
        """Record a finished process; True if it did finish."""
        proc = item.proc
        if proc is None:
            return False
        returncode = proc.poll()
        if returncode is None:
            return False
        proc.reap()
        rec = item.record
        code, sig = exit_code_of(returncode)
        start_error = proc.start_failed()
        written = self._read(self.run_dir / "termination" / rec.name, 4096, head=True)
        tail = self._read(self.log_path(rec.name), 8192, head=False)
        rec.state, rec.exit_code, rec.signal = TERMINATED, code, sig
        rec.finished_at = now_iso()
        rec.ready = False
        if start_error is not None:
            rec.reason, rec.message = "StartError", start_error.strip()
        else:
            rec.reason = terminated_reason(code)
            rec.message = termination_message(
                written, tail, code, item.spec.get("terminationMessagePolicy")
            )
        item.proc = None
        self.ctx.log.info(
            "pod %s/%s: %s exited %d (%s)", self.namespace, self.name, rec.name, code, rec.reason
        )
        return True

    @staticmethod
    def _read(path: Path, limit: int, *, head: bool) -> bytes:
        try:
            with path.open("rb") as src:
                if not head:
                    size = src.seek(0, 2)
                    src.seek(max(0, size - limit))
                return src.read(limit)
        except OSError:
            return b""

    def _after_exit(self, item: _Container) -> None:
        rec = item.record
        if not container_will_restart(self.restart_policy, rec.exit_code):
            item.finished = True
            return
        delay = min(self.ctx.backoff_base * (2**rec.restart_count), self.ctx.backoff_cap)
        rec.last_terminated = rec.terminated_dict()
        rec.restart_count += 1
        item.restart_at = time.monotonic() + delay
        self._event("Warning", "BackOff", f"Back-off restarting failed container {rec.name}")

    def _restart_due(self, item: _Container) -> None:
        rec = item.record
        if item.restart_at and time.monotonic() >= item.restart_at:
            self._launch(item)
        elif rec.state == TERMINATED and not item.finished and item.restart_at:
            # Between runs: the API shows the back-off, the last run is lastState.
            rec.state, rec.reason = WAITING, "CrashLoopBackOff"
            rec.message = f"back-off restarting failed container={rec.name} pod={self.name}"

    def _step_init(self) -> bool:
        """Run init containers in order; True once all have succeeded."""
        for item in self.init:
            if item.finished:
                continue
            if item.proc is None and not item.restart_at and item.record.state != TERMINATED:
                self._launch(item)
            if self._collect_exit(item):
                if item.record.exit_code == 0:
                    item.finished = True
                    continue
                if self.restart_policy == "Never":
                    item.finished = True
                    self.view.failed = True
                    return False
                self._after_exit(item)
            if item.proc is None and not item.finished:
                self._restart_due(item)
            return False
        for item in self.main:
            if item.record.reason == "PodInitializing":
                item.record.reason = "ContainerCreating"
        return True

    def _step_main(self) -> None:
        for item in self.main:
            if item.finished:
                continue
            if item.proc is None and not item.restart_at and item.record.state != TERMINATED:
                self._launch(item)
            if self._collect_exit(item):
                self._after_exit(item)
            if item.proc is None and not item.finished:
                self._restart_due(item)
            elif item.proc is not None:
                self._probe(item)

    def _probe(self, item: _Container) -> None:
        now = time.monotonic()
        for kind, due in list(item.next_probe.items()):
            if now < due or item.proc is None:
                continue
            probe = item.spec[kind]
            ok = run_probe(
                probe,
                container=item.spec,
                pod_ip=self.view.pod_ip,
                pid=item.proc.pid,
                uid=item.uid,
                gid=item.gid,
                env=item.env,
            )
            runs = item.probe_runs.get(kind, 0)
            runs = (max(runs, 0) + 1) if ok else (min(runs, 0) - 1)
            item.probe_runs[kind] = runs
            item.next_probe[kind] = now + float(probe.get("periodSeconds", 10))
            if kind == "readinessProbe":
                if runs >= int(probe.get("successThreshold", 1)):
                    item.record.ready = True
                elif -runs >= int(probe.get("failureThreshold", 3)):
                    item.record.ready = False
            elif -runs >= int(probe.get("failureThreshold", 3)):
                self._event(
                    "Normal", "Killing", f"Container {item.record.name} failed liveness probe"
                )
                item.proc.signal_group(signal.SIGKILL)

    def _kill_all(self, sig: int) -> None:
        for item in self.init + self.main:
            if item.proc is not None:
                item.proc.signal_group(sig)

    def _terminate(self, grace: float) -> None:
        """Graceful deletion: SIGTERM, wait up to the grace period, SIGKILL, delete the object."""
        self.ctx.log.info("pod %s/%s: deletion, grace %gs", self.namespace, self.name, grace)
        running = [c for c in self.init + self.main if c.proc is not None]
        if running:
            self._event("Normal", "Killing", f"Stopping pod (grace {grace:g}s)")
            self._kill_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not self._stopping():
                if all(c.proc is None or c.proc.poll() is not None for c in running):
                    break
                self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                self._wake.clear()
            self._kill_all(signal.SIGKILL)
            for item in running:
                for _ in range(50):
                    if item.proc is None or item.proc.poll() is not None:
                        break
                    time.sleep(0.02)
                if self._collect_exit(item):
                    item.finished = True
        if self._stopping():
            return
        self._publish()
        self._teardown_sandbox()
        if not self._stopping():
            with contextlib.suppress(ApiError):
                self.ctx.api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )

    # --- API writes ------------------------------------------------------------------

    def _publish(self) -> None:
        if self._stopping() or self.ctx.partitioned.is_set():
            return
        now = now_iso()
        status = build_status(self.view, self._conditions, now)
        if status == self._published:
            return
        try:
            self.ctx.api.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                content_type=STRATEGIC_PATCH,
            )
        except ApiError as err:
            if err.status in (404, 409, 422):
                # Gone or replaced by a new pod of the same name: this worker is done.
                self.ctx.log.info(
                    "pod %s/%s status not written: %s", self.namespace, self.name, err
                )
                if err.status == 404:
                    self._gone = True
                return
            self.ctx.log.warning(
                "pod %s/%s status update failed: %s", self.namespace, self.name, err
            )
            return
        self._published = status
        self._conditions = status["conditions"]

    def _event(self, kind: str, reason: str, message: str) -> None:
        if self._stopping() or self.ctx.partitioned.is_set():
            return
        now = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.ctx.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.ctx.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiError):
            self.ctx.api.request("POST", f"/api/v1/namespaces/{self.namespace}/events", body)
