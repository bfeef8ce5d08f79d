"""A rollout whose Lease is taken over stops, says so, and writes nothing more (issue 19:
"let a Lease expire and be taken over while a rollout holds it").

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

The engine plays no part, so the service is a Deployment serving the SGLang stand-in.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client as k8s

from flows.deploy import deploy
from flows.redeploy import RedeployFailed, redeploy
from llm_rollout.kube.objects import get
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.kube.watching import Selector, watching
from llm_rollout.locking import LEASE_API_VERSION, OWNER_ANNOTATION, LeaseLostError, lease_name
from llm_rollout.redeploy import pod_templates
from llm_rollout.release import teardown
from llm_rollout.render import RELEASE_LABEL
from llm_rollout.spec import load_spec
from sandbox.cluster.control_plane import Cluster
from tests.deploy.cli_support import product_via_proxy
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

NAMESPACE = "lease-taken-over"
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

        taken = threading.Event()
        mark: list[int] = []
        failures: list[BaseException] = []

        with product_via_proxy(real_cluster) as proxy:

            def take_over_once_applied() -> None:
                spec = Selector("apps/v1", "Deployment", NAMESPACE, label_selector=selector)
                deadline = time.monotonic() + WAIT_S
                try:
                    with watching(real_admin, [spec]) as group:
                        while True:
                            items = list(group.cache[spec].values())
                            if items and items[0]["metadata"]["generation"] > generation:
                                mark.append(len(proxy.records()))
                                _take_over(real_admin, NAMESPACE, lease)
                                taken.set()
                                return
                            remaining = deadline - time.monotonic()
                            assert remaining > 0, "the redeploy never applied its change"
                            group.next(remaining)
                except BaseException as exc:  # reported in the test's thread
                    failures.append(exc)

            other = threading.Thread(target=take_over_once_applied, name="other-run")
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
                other.join(timeout=WAIT_S)
            assert not failures, failures
            assert taken.is_set()
            records = proxy.records()

        message = str(lost.value)
        assert f"Lease {NAMESPACE}/{lease}" in message
        assert repr(OTHER_HOLDER) in message
        assert "writes nothing more" in message
        assert not isinstance(lost.value, RedeployFailed)  # no revert was attempted

        # Before the takeover: the run's own writes (its Lease, the dry run and the apply).
        before = [f"{r.method} {r.path}" for r in records[: mark[0]] if r.method != "GET"]
        assert any(w.startswith("PATCH ") and "/deployments/" in w for w in before), before
        # After it: nothing but, at most, a renewal the takeover beat (refused: 409).
        after = [r for r in records[mark[0] :] if r.method not in ("GET", "HEAD")]
        assert all(r.path.endswith(f"/leases/{lease}") and r.status == 409 for r in after), [
            f"{r.method} {r.path} {r.status}" for r in after
        ]
        # The stage check read the Lease after the takeover, and the run stopped there: no
        # smoke request (the service proxy's POST) was sent after it.
        assert any(
            r.method == "GET" and r.path.endswith(f"/leases/{lease}") for r in records[mark[0] :]
        )
        assert not any("/proxy/" in r.path for r in records[mark[0] :])

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
