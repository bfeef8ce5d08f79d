"""A rollout whose Lease is taken over stops, says so, and writes nothing more (issue 19:
"let a Lease expire and be taken over while a rollout holds it"); a wait in progress when that
happens (readiness) ends at once instead of running to its own timeout.

The redeploy flow holds the service's rollout Lease (llm_rollout/locking.py ``service_lock``,
taken in tasks/refresh.py ``rollout_lease``). Here, once the flow has applied its change and
waits for the new pods, another holder takes the Lease over, as a second run does once the hold
lapsed (client-go tools/leaderelection/leaderelection.go ``tryAcquireOrRenew``: a record whose
holder is someone else is replaced with the new holder and ``leaseTransitions`` + 1). The
flow's next API stage checks the Lease first (``locking.check_lease`` from
``tasks.policy.api_task``, the cooperative stop client-go's ``Run`` gives the work by
cancelling its context) and fails with ``LeaseLostError`` naming the Lease and its new holder;
the revert a failed stage would run is not written, since the service is the other run's now.
Every request the product made goes through the recording API proxy
(sandbox/cluster/api_proxy.py), which shows no write after the takeover.

The second case takes the Lease over while the deploy flow waits for a release that never
becomes ready: the lease keeper's next renewal finds the other holder (``locking._keep_renewing``)
and wakes the readiness wait (``ServiceLock.subscribe``, ``kube.watching.watch_until``), which
ends with ``LeaseLostError`` long before its 900 s timeout (the test's own bound is far
shorter, so only the interrupt can end it in time).

The third case takes the Lease over while the smoke test's chat call waits for an answer that
never comes (the SGLang stand-in's test knob, sandbox/sglang_standin/server.py
``HOLD_PROMPT``): the keeper's wake shuts the call's connection (llm_rollout/
interruptible_http.py), the smoke stage ends with ``LeaseLostError`` long before its 900 s
limit, the rollback after it writes nothing, and the stand-in sees the call's connection end
through the port-forward (the route whose tunnel carries a close to the pod: the recording
proxy in front of the API server would hold a service-proxy request open until answered).

The engine plays no part, so the service is a Deployment serving the SGLang stand-in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flows.deploy import deploy
from flows.redeploy import RedeployFailed, redeploy
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.kube.watching import Selector, watching
from llm_rollout.locking import LEASE_API_VERSION, LeaseLostError, lease_name
from llm_rollout.redeploy import pod_templates
from llm_rollout.release.removal import teardown
from llm_rollout.spec import load_spec
from llm_rollout.vocabulary import OWNER_ANNOTATION, RELEASE_LABEL
from sandbox.cluster.api_proxy import ApiFaultProxy, ProxyRecord
from sandbox.cluster.control_plane import Cluster
from sandbox.sglang_standin.server import HELD_CLOSED_LOG, HELD_LOG, HOLD_PROMPT
from tests.deploy.cli_support import product_via_proxy
from tests.real_deploy import RealStores, merge_sections, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

NAMESPACE = "lease-taken-over"
NEVER_READY_NAMESPACE = "lease-lost-in-readiness"
# Rank 0 of a two-node group whose other rank never comes: the stand-in (like SGLang) answers
# /health with 503 until every rank joined (sandbox/sglang_standin/server.py `_lead`), so the
# pod runs but never becomes Ready, and no failure signal ends the readiness wait.
NEVER_READY_ARGS = ["--nnodes", "2", "--node-rank", "0", "--dist-init-addr", "127.0.0.1:20000"]
NEVER_READY_TIMEOUT_S = 900
HELD_NAMESPACE = "lease-lost-in-smoke"
HELD_SMOKE_TIMEOUT_S = 900
OTHER_HOLDER = "redeploy/other-run (flow run b) on another-host"
WAIT_S = 120.0


def _take_over(admin: k8s.ApiClient, namespace: str, lease: str) -> None:
    """What a second run writes when it takes the Lease: itself as holder, a new acquire time,
    one more transition (a replace guarded by the resourceVersion read)."""
    api = k8s.CoordinationV1Api(admin)
    current = admin.sanitize_for_serialization(  # type: ignore[no-untyped-call]
        api.read_namespaced_lease(lease, namespace)
    )
    spec = current["spec"]
    assert spec.get("holderIdentity"), "the redeploy run should hold the lease"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec.update(
        holderIdentity=OTHER_HOLDER,
        acquireTime=now,
        renewTime=now,
        leaseDurationSeconds=60,
        leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
    )
    current["metadata"].setdefault("annotations", {})[OWNER_ANNOTATION] = "b"
    api.replace_namespaced_lease(lease, namespace, current)


class _OtherRun(threading.Thread):
    """A second run taking the Lease over as soon as `due` says so of the watched objects;
    `mark` is how many requests the proxy had recorded then."""

    def __init__(
        self,
        admin: k8s.ApiClient,
        proxy: ApiFaultProxy,
        watched: Selector,
        due: Callable[[list[JsonDict]], bool],
        lease: str,
        never: str,
    ) -> None:
        super().__init__(name="other-run")
        self.admin, self.proxy, self.watched, self.due = admin, proxy, watched, due
        self.lease, self.never = lease, never
        self.taken = threading.Event()
        self.mark = 0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        deadline = time.monotonic() + WAIT_S
        try:
            with watching(self.admin, [self.watched]) as group:
                while True:
                    if self.due(list(group.cache[self.watched].values())):
                        self.mark = len(self.proxy.records())
                        assert self.watched.namespace is not None
                        _take_over(self.admin, self.watched.namespace, self.lease)
                        self.taken.set()
                        return
                    remaining = deadline - time.monotonic()
                    assert remaining > 0, self.never
                    group.next(remaining)
        except BaseException as exc:  # reported in the test's thread
            self.failures.append(exc)

    def finish(self) -> None:
        self.join(timeout=WAIT_S)
        assert not self.failures, self.failures
        assert self.taken.is_set()


def _stopped_without_writes(
    lost: BaseException, records: list[ProxyRecord], takeover: int, namespace: str, lease: str
) -> None:
    """The run failed naming the Lease and its new holder, and after the takeover sent
    nothing but, at most, renewals of the Lease, and no smoke request (the service proxy's
    POST).

    A renewal recorded after the mark is either one the takeover beat (refused: 409) or one
    the API server took just before the takeover (200) and the proxy recorded just after the
    mark: it records a request once answered. No renewal can succeed after the takeover: the
    other run's replace is guarded by the resourceVersion it read (a renewal in between would
    have failed it), and a renewal reading the new holder is not sent (`locking.renew`); the
    callers check the other run's hold is intact."""
    message = str(lost)
    assert f"Lease {namespace}/{lease}" in message
    assert repr(OTHER_HOLDER) in message
    after = [r for r in records[takeover:] if r.method not in ("GET", "HEAD")]
    assert all(
        r.method == "PUT" and r.path.endswith(f"/leases/{lease}") and r.status in (200, 409)
        for r in after
    ), [f"{r.method} {r.path} {r.status}" for r in after]
    assert not any("/proxy/" in r.path for r in records[takeover:])


def _get(admin: k8s.ApiClient, api_version: str, kind: str, name: str) -> JsonDict:
    found = get(admin, ObjectRef(api_version, kind, NAMESPACE, name))
    assert found is not None, f"{kind} {NAMESPACE}/{name} is missing"
    return found


@pytest.mark.timeout(600, func_only=True)
def test_a_lease_taken_over_mid_redeploy_stops_the_run_without_further_writes(
    real_deploy_env: RealStores, real_admin: k8s.ApiClient, real_cluster: Cluster, tmp_path: Path
) -> None:
    path, data = write_real_spec(
        real_deploy_env,
        "seed-sglang-lws",
        tmp_path,
        namespace=NAMESPACE,
        serving={"shape": "single-gpu", "tp": 1, "nodes": 1},
        model={"size_bytes": 1 << 30},
    )
    name = data["name"]
    lease = lease_name(name)
    try:
        first = deploy(load_spec(path))
        selector = f"{RELEASE_LABEL}={first.release}"
        (workload,), _ = list_objects(
            real_admin, "apps/v1", "Deployment", NAMESPACE, label_selector=selector
        )
        generation = workload["metadata"]["generation"]

        with product_via_proxy(real_cluster) as proxy:
            other = _OtherRun(
                real_admin,
                proxy,
                Selector("apps/v1", "Deployment", NAMESPACE, label_selector=selector),
                lambda items: bool(items) and items[0]["metadata"]["generation"] > generation,
                lease,
                "the redeploy never applied its change",
            )
            other.start()
            try:
                with pytest.raises(LeaseLostError) as lost:
                    redeploy(
                        name,
                        NAMESPACE,
                        "update",
                        engine_args=["--served-model-name", "tiny-taken"],
                        ready_timeout_s=300,
                    )
            finally:
                other.finish()
            records = proxy.records()

        assert "writes nothing more" in str(lost.value)
        assert not isinstance(lost.value, RedeployFailed)  # no revert was attempted

        # The proxy records a request once the API server has answered it, so the apply whose
        # new generation the other run saw may be recorded just after the mark: the takeover
        # follows that apply (the first PATCH of the Deployment that is not a dry run).
        applied = next(
            i
            for i, r in enumerate(records)
            if r.method == "PATCH" and "/deployments/" in r.path and "dryRun" not in r.query
        )
        takeover = max(other.mark, applied + 1)
        # Before the takeover: the run's own writes (its Lease, the dry run and the apply).
        before = [f"{r.method} {r.path}" for r in records[:takeover] if r.method != "GET"]
        assert any(w.startswith("PATCH ") and "/deployments/" in w for w in before), before
        # After it: nothing more written; the stage check read the Lease after the takeover,
        # and the run stopped there.
        _stopped_without_writes(lost.value, records, takeover, NAMESPACE, lease)
        assert any(
            r.method == "GET" and r.path.endswith(f"/leases/{lease}") for r in records[takeover:]
        )

        # The other run's hold is intact, and the change stays as applied (not reverted).
        held = _get(real_admin, LEASE_API_VERSION, "Lease", lease)
        assert held["spec"]["holderIdentity"] == OTHER_HOLDER
        stored = _get(real_admin, "apps/v1", "Deployment", workload["metadata"]["name"])
        (pod_template,) = pod_templates(stored)
        args = pod_template["spec"]["containers"][0]["args"]
        assert args[args.index("--served-model-name") + 1] == "tiny-taken"
    finally:
        teardown(real_admin, NAMESPACE, name, wait_timeout_s=120)
        k8s.CoreV1Api(real_admin).delete_namespace(NAMESPACE)


def _standin_spec(stores: RealStores, dest: Path, namespace: str, **changes: Any) -> Path:
    """seed-sglang-lws as one single-GPU stand-in pod (a Deployment), with `changes`."""
    single = {
        "serving": {"shape": "single-gpu", "tp": 1, "nodes": 1},
        "model": {"size_bytes": 1 << 30},
    }
    path, _ = write_real_spec(
        stores, "seed-sglang-lws", dest, namespace=namespace, **merge_sections(single, changes)
    )
    return path


@dataclass(frozen=True)
class _Lost:
    """How a deploy whose Lease was taken over ended: its error, every request the product
    made, and how many the proxy had recorded at the takeover."""

    error: LeaseLostError
    records: list[ProxyRecord]
    takeover: int


@contextmanager
def _deploy_taken_over(
    admin: k8s.ApiClient,
    cluster: Cluster,
    path: Path,
    due: Callable[[list[JsonDict]], bool],
    never: str,
) -> Iterator[_Lost]:
    """Deploy the spec at `path` while another run takes its Lease over once `due` says so of
    the namespace's pods; the deploy must fail with `LeaseLostError`. Yields how it ended for
    the test's own checks, then checks that nothing was written after the takeover and the
    other run's hold is intact, and removes the service and its namespace."""
    spec = load_spec(path)
    namespace, lease = spec.namespace, lease_name(spec.name)
    try:
        with product_via_proxy(cluster) as proxy:
            other = _OtherRun(admin, proxy, Selector("v1", "Pod", namespace), due, lease, never)
            other.start()
            try:
                with pytest.raises(LeaseLostError) as lost:
                    deploy(spec)
            finally:
                other.finish()
            records = proxy.records()
        yield _Lost(lost.value, records, other.mark)
        # After the takeover: no rollback of the release (the service is the other run's now),
        # no smoke call, nothing written.
        _stopped_without_writes(lost.value, records, other.mark, namespace, lease)
        held = get(admin, ObjectRef(LEASE_API_VERSION, "Lease", namespace, lease))
        assert held is not None and held["spec"]["holderIdentity"] == OTHER_HOLDER
    finally:
        teardown(admin, namespace, spec.name, wait_timeout_s=120)
        k8s.CoreV1Api(admin).delete_namespace(namespace)


@pytest.mark.timeout(300, func_only=True)
def test_a_lease_taken_over_during_readiness_ends_the_wait_without_further_writes(
    real_deploy_env: RealStores, real_admin: k8s.ApiClient, real_cluster: Cluster, tmp_path: Path
) -> None:
    namespace = NEVER_READY_NAMESPACE
    path = _standin_spec(
        real_deploy_env,
        tmp_path,
        namespace,
        serving={"extra_args": NEVER_READY_ARGS},
        rollout={"ready_timeout_s": NEVER_READY_TIMEOUT_S},
    )
    with _deploy_taken_over(
        real_admin,
        real_cluster,
        path,
        # The release's pod runs (applied, so the flow is at or entering readiness).
        lambda pods: any(p.get("status", {}).get("phase") == "Running" for p in pods),
        "the release's pod never ran",
    ) as lost:
        # The readiness wait was running: its watch of the namespace's Events (only readiness
        # watches them before the smoke test) was opened.
        assert any(
            r.watch and r.path == f"/api/v1/namespaces/{namespace}/events" for r in lost.records
        ), "the readiness wait never started"


def _log_shows(admin: k8s.ApiClient, namespace: str, pod: JsonDict, line: str) -> bool:
    """Follow the log of `pod`'s server container from its start until `line` arrives (True)
    or the log ends with the container (False)."""
    container = pod["spec"]["containers"][0]["name"]
    stream = k8s.CoreV1Api(admin).read_namespaced_pod_log(
        pod["metadata"]["name"],
        namespace,
        container=container,
        follow=True,
        _preload_content=False,
        _request_timeout=WAIT_S,
    )
    received = b""
    try:
        while line.encode() not in received:
            chunk = stream.read1(4096)
            if not chunk:
                return False
            received += chunk
    finally:
        stream.release_conn()
    return True


@pytest.mark.timeout(300, func_only=True)
def test_a_lease_taken_over_during_the_smoke_test_cuts_its_call_without_further_writes(
    real_deploy_env: RealStores, real_admin: k8s.ApiClient, real_cluster: Cluster, tmp_path: Path
) -> None:
    namespace = HELD_NAMESPACE
    path = _standin_spec(
        real_deploy_env,
        tmp_path,
        namespace,
        smoke={"via": "port-forward", "messages": [{"role": "user", "content": HOLD_PROMPT}]},
        rollout={"smoke_timeout_s": HELD_SMOKE_TIMEOUT_S},
    )
    with _deploy_taken_over(
        real_admin,
        real_cluster,
        path,
        # The stand-in holds the smoke test's chat call: the smoke stage waits on it.
        lambda pods: any(
            p.get("status", {}).get("phase") == "Running"
            and _log_shows(real_admin, namespace, p, HELD_LOG)
            for p in pods
        ),
        "the smoke test's call never reached the stand-in",
    ) as lost:
        # The smoke test had opened its port-forward before the takeover.
        assert any(r.path.endswith("/portforward") for r in lost.records[: lost.takeover])
        # The held call was cut, not left running: the stand-in saw its connection end.
        (pod,), _ = list_objects(real_admin, "v1", "Pod", namespace)
        assert _log_shows(real_admin, namespace, pod, HELD_CLOSED_LOG)
