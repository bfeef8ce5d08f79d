"""Finding F5 (shared research/real-cluster-audit.md): what a worker's bare `ray start
--address` does when the head's GCS is not listening yet, with the ray the vLLM image ships
(2.48.0, sandbox/runtimes/ray-requirements.txt), run in real pods.

The audit expected it to give up soon, and at once when the leader's name does not resolve
yet (so that LWS's RecreateGroupOnPodRestart recreates the group over and over). ray 2.48.0
does neither: a non-head `Node` retries its GCS client a bounded number of times, the same for
a closed port and an unresolvable name, and only then `ray start` exits non-zero. Read in
ray 2.48.0's own code (the wheel the image table runs):
- ray/scripts/scripts.py L1089-1098 (`start`, worker branch): the node IP is taken with
  `services.get_node_ip_address(bootstrap_address)`, then `Node(ray_params, head=False)`;
- ray/_private/node.py L165-167: a non-head `Node.__init__` calls `_init_gcs_client()`, which
  (L758-780) builds a `GcsClient` up to `NUM_REDIS_GET_RETRIES` times, sleeping 1 s after each
  failure, then raises `RuntimeError("Failed to connect to GCS. ...")` (L800);
- ray/_private/ray_constants.py L502: `NUM_REDIS_GET_RETRIES` = env `RAY_NUM_REDIS_GET_RETRIES`,
  default 20;
- one attempt (`GcsClient.__cinit__`, python/ray/_raylet.pyx L2775 ->
  `InnerGcsClient.standalone`, python/ray/includes/gcs_client.pxi L65, as this build's
  traceback names them) first waits for the channel ("Failed to connect to GCS at address ...
  within 5 seconds", gcs_rpc_client.h L151 as this build's log names it; the 5 s is
  `RAY_gcs_rpc_server_connect_timeout_s`: set to 1 it logged "within 1 seconds"), then asks
  the cluster ID with the timeout `py_gcs_connect_timeout_s` (env
  `RAY_py_gcs_connect_timeout_s`, default 30; "Failed to get cluster ID from GCS server",
  gcs_client.cc L183 as the log names it).
So with the defaults the wait is bounded at about 20 x (5 + 30 + 1) s = 720 s. Measured here once
with the defaults (the image's ray, a closed port, no RAY_* variables): exit status 1 after
732 s, 20 attempts logged.

What that means for F5: the failure the audit describes needs a head that does not listen within
those ~12 min of the worker's start (a leader whose image pull or start is that much slower);
a bare start covers anything shorter. The product's LWS worker keeps its retry loop
(llm_rollout/render.py `_Ctx.ray_join_retrying`): the loop is bounded by the spec's startup
budget (1800 s for seed-vllm-lws), longer than ray's own 720 s, so it covers a head later than
ray's bound without a container exit, hence without a group recreation.

Two tests pin it cheaply, with ray's own environment variables shrinking the two bounds
(2 attempts, 2 s cluster-ID timeout; the 5 s channel wait is kept) and the LWS worker commands
rendered from the template before the F5 fix (tests/real/old_templates, commit 818048d^) and
from today's:
- both LeaderWorkerSets, whole, under the real LWS operator (v0.9.0,
  sandbox/cluster/go/lws/go.mod), whose leaders' Ray heads start late (the leader pod is
  there, its port 6379 closed): the old worker exits 1 after the 2 attempts and the operator
  recreates the group; today's worker retries with 0 restarts and joins once the head
  listens. See that test's docstring for what LWS does and what the test adapts;
- a bare pod, for a leader name that does not resolve: the old command makes the same
  attempts and exits 1.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from llm_rollout import render
from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.spec import load_spec
from sandbox.cluster.waits import wait_for
from tests.real.ray_support import OLD_MULTI_NODE_LWS, RAY_STARTED, delete_now, render_old_workload

EXAMPLE = Path(__file__).parents[2] / "examples" / "seed-vllm-lws.yaml"
IMAGE = "vllm/vllm-openai:v0.10.0"
ATTEMPTS = 2
# ray's messages, one per failed attempt and one at the end (see the module doc for where).
CHANNEL_WAIT = "Failed to connect to GCS at address"
CLUSTER_ID_TIMEOUT = "Failed to get cluster ID from GCS server"
GAVE_UP = "Failed to connect to GCS. Last connection error"
# llm_rollout/render.py ray_join_retrying's line between two attempts.
RETRYING = "not reachable yet; retrying in 5 s"
# ray's own knobs of a worker's GCS wait (see the module doc), shrunk for every worker here.
RAY_BOUND_ENV = [
    {"name": "RAY_NUM_REDIS_GET_RETRIES", "value": str(ATTEMPTS)},
    {"name": "RAY_py_gcs_connect_timeout_s", "value": "2"},
]
# Bounds, not expectations: each pod ends (or retries) in ~25 s on an idle machine.
POD_TIMEOUT_S = 150
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
# lws pkg/controllers/pod_controller.go L264: the event handleRestartPolicy records on the LWS.
RECREATE_GROUP = "RecreateGroup"


def _workloads(old_release: str, new_release: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The seed-vllm-lws LeaderWorkerSet before the F5 fix and today."""
    spec = load_spec(EXAMPLE)
    old = render_old_workload(spec, old_release, OLD_MULTI_NODE_LWS)
    return old, render.render(spec, release=new_release).workload


def _worker_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _pod(name: str, command: list[str], leader: dict[str, Any]) -> dict[str, Any]:
    """A worker pod whose `$(LWS_LEADER_ADDRESS)` names a head that does not listen."""
    env = [{"name": "LWS_LEADER_ADDRESS", **leader}, *RAY_BOUND_ENV]
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "worker", "image": IMAGE, "command": command, "env": env}],
        },
    }


def _terminated(pod: k8s.V1Pod) -> Any:
    (status,) = pod.status.container_statuses or [None]
    return None if status is None else status.state.terminated


def _wait_pod(
    core: k8s.CoreV1Api, namespace: str, name: str, what: str, check: Callable[[k8s.V1Pod], bool]
) -> k8s.V1Pod:
    (pod,) = wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 1 and check(items[0]),
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"pod {name}: {what}",
    )
    return pod


def _wait_terminated(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    pod = _wait_pod(core, namespace, name, "its worker exited", lambda p: bool(_terminated(p)))
    return _terminated(pod)


def _assert_gave_up_after_the_attempts(log: str) -> None:
    """``log`` is one `ray start` run's that exhausted its GCS attempts: exactly
    RAY_NUM_REDIS_GET_RETRIES of them, each with the 5 s channel wait, then ray's last words."""
    assert log.count(CLUSTER_ID_TIMEOUT) == ATTEMPTS, log[-3000:]
    assert log.count(CHANNEL_WAIT) == ATTEMPTS, log[-3000:]
    assert "within 5 seconds" in log, log[-3000:]
    assert GAVE_UP in log and RAY_STARTED not in log, log[-3000:]


def _log(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    text: str = core.read_namespaced_pod_log(name, namespace, container="worker")
    print(f"--- {name}/worker:\n" + "\n".join(text.splitlines()[-30:]))
    return text


def _log_once(
    core: k8s.CoreV1Api,
    namespace: str,
    name: str,
    wanted: tuple[str, ...],
    container: str,
) -> str:
    """The container's log once every line of ``wanted`` is in it, or at POD_TIMEOUT_S.
    Polled: a followed log would hold a stream open on a container that keeps running."""
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        text: str = core.read_namespaced_pod_log(name, namespace, container=container)
        if all(w in text for w in wanted) or time.monotonic() > deadline:
            print(f"--- {name}/{container}:\n" + "\n".join(text.splitlines()[-30:]))
            return text
        time.sleep(1)


@pytest.mark.timeout(300, func_only=True)
def test_bare_ray_start_to_a_leader_name_that_does_not_resolve_waits_the_same_bound_then_exits(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    """A closed port is the next test's, in the LWS groups themselves; an unresolvable
    leader name is this one's: a bare pod running the old worker command."""
    core = k8s.CoreV1Api(real_admin)
    old = list(_worker_container(_workloads("f5", "f5")[0])["command"])
    assert "exec ray start --address=$(LWS_LEADER_ADDRESS):6379" in old[-1]
    # A leader whose pod has no DNS record yet (LWS makes the worker under LeaderCreated).
    unresolvable = {"value": f"no-leader-yet.{real_namespace}.svc.cluster.local"}
    core.create_namespaced_pod(real_namespace, _pod("old-no-dns", old, unresolvable))
    terminated = _wait_terminated(core, real_namespace, "old-no-dns")
    log = _log(core, real_namespace, "old-no-dns")
    # An unresolvable name does not make it exit at once either: the same attempts.
    _assert_gave_up_after_the_attempts(log)
    # The container exits non-zero: under RecreateGroupOnPodRestart, the group's end.
    assert terminated.exit_code == 1, terminated
    # With an unresolvable leader name the node IP is taken before any GCS attempt, and
    # services.node_ip_address_from_perspective (ray/_private/services.py L615-645) falls back
    # to 127.0.0.1 on the resolution error; it becomes the node's `node_ip_address`. What a
    # worker started that way does once the name resolves and a head listens was not traced
    # here.
    assert "Local node IP: 127.0.0.1" in log


# --- the group recreation itself, on the real LWS operator ----------------------------------

GATE_IMAGE = "busybox:1.36"


def _late_head_group(workload: dict[str, Any], namespace: str, gate: Path) -> dict[str, Any]:
    """``workload``, a rendered seed-vllm-lws LeaderWorkerSet, with this test's adaptations;
    nothing else of the template changes:
    - the leader pod gets an init container that waits until ``gate`` exists: it stands for a
      leader whose image pull or start is slower than its worker's, with the delay in the
      test's hands. It is busybox's (host sh and its /tmp, sandbox/cluster/images.py) and
      exits on SIGTERM, so that a deleted leader goes at once;
    - the worker container gets ray's shrunk bounds (``RAY_BOUND_ENV``);
    - the model PVC becomes an emptyDir: nothing reads the model before the test ends (it
      stops once the worker's Ray node joined, before the leader's `vllm serve`).
    """
    lws = copy.deepcopy(workload)
    lws["metadata"]["namespace"] = namespace
    group = lws["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = group[role]["spec"]
        pod["volumes"] = [
            {"name": v["name"], "emptyDir": {}} if "persistentVolumeClaim" in v else v
            for v in pod["volumes"]
        ]
    wait = f"trap 'exit 143' TERM; until [ -e {gate} ]; do sleep 0.2; done"
    group["leaderTemplate"]["spec"]["initContainers"] = [
        {"name": "head-late", "image": GATE_IMAGE, "command": ["sh", "-c", wait]}
    ]
    worker = _worker_container(lws)
    worker["env"] = [*worker.get("env", []), *RAY_BOUND_ENV]
    return lws


def _recreations(core: k8s.CoreV1Api, namespace: str, lws: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={lws}")
    return [e.message for e in events.items if e.reason == RECREATE_GROUP]


def _running(pod: k8s.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and statuses[0].state.running is not None


def _restarted(pod: k8s.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and statuses[0].restart_count >= 1


@pytest.mark.timeout(300, func_only=True)
def test_a_worker_started_before_its_head_recreates_the_old_group_and_joins_today(
    real_admin: k8s.ApiClient, real_namespace: str, tmp_path: Path
) -> None:
    """F5 itself (issue 15 point 7) on the real LWS operator, sigs.k8s.io/lws v0.9.0 (the
    version sandbox/cluster/go/lws/go.mod builds):
    - pkg/controllers/pod_controller.go: Reconcile (L91) calls handleRestartPolicy
      (L204-266) for every pod of a group. Under RecreateGroupOnPodRestart, once a container
      of the pod has restarted (pkg/utils/pod/pod_utils.go ContainerRestarted L29-45:
      restartCount > 0 of any init or app container of a Running or Pending pod), it deletes
      the group's leader pod with Foreground propagation (L258-263) and records
      `RecreateGroup` "Worker pod %s failed, deleted leader pod %s to recreate group %s" on
      the LWS (L264). The worker StatefulSet the leader pod owns goes with it, and the leader
      StatefulSet makes the leader again: the same pod names, new UIDs;
    - the kubelet (here the node agent, sandbox/cluster/pods/containers.py Backoff) restarts
      an exited container at once the first time, so the worker's first exit is its first
      restart.

    Both LeaderWorkerSets run side by side, rendered whole from the template before the F5
    fix and from today's, with the adaptations of ``_late_head_group``: a leader's Ray head
    starts only once the test opens its gate. The old group's gate never opens: its worker
    gives up after ray's (shrunk) bound, exits 1, and its restart makes the operator delete the
    group's leader (the event, and the first leader pod deleting or gone). Today's gate opens
    once its worker has given up once and said it retries: the worker then joins the head
    with no restart, and its group is not recreated.

    The test stops at the operator's deletion: the replacement pods come only once the
    Foreground deletion has ended, which here took about 40 s more. The restarted old worker
    is stopped as it starts, while ray is still being imported; as the container's PID 1
    without a SIGTERM handler yet (ray/_private/node.py registers one in `Node.__init__`) it
    ignores the signal and runs its bound out (seen once: "Stopping container" at the restart,
    GCS attempts logged 9-11 s later). Waiting for the new leader UID, with the product's
    readiness reporting GroupCrashLoop on the worker (finding B6), passed once at 74 s in all;
    B6 stays covered by tests/real/test_readiness_tolerance.py's crash-looping group.
    """
    core = k8s.CoreV1Api(real_admin)
    rendered_old, rendered_new = _workloads("f5old", "f5new")
    gates = {"old": tmp_path / "old-head-may-start", "new": tmp_path / "new-head-may-start"}
    groups = {
        "old": _late_head_group(rendered_old, real_namespace, gates["old"]),
        "new": _late_head_group(rendered_new, real_namespace, gates["new"]),
    }
    names = {key: str(lws["metadata"]["name"]) for key, lws in groups.items()}
    leaders = {key: f"{name}-0" for key, name in names.items()}
    workers = {key: f"{name}-0-1" for key, name in names.items()}
    t0 = time.monotonic()
    try:
        for lws in groups.values():
            apply(real_admin, lws)
        first_uids = {
            key: _wait_pod(core, real_namespace, leader, "created", bool).metadata.uid
            for key, leader in leaders.items()
        }
        worker = _wait_pod(core, real_namespace, workers["new"], "running", _running)
        first_uids["new-worker"] = worker.metadata.uid
        # Today's worker started before its head, ray gave up once and the loop retries:
        # now the head may start.
        log = _log_once(core, real_namespace, workers["new"], (GAVE_UP, RETRYING), "vllm-worker")
        assert RETRYING in log, log[-2000:]
        _assert_gave_up_after_the_attempts(log[: log.index(RETRYING)])
        gates["new"].touch()
        retrying_s = time.monotonic() - t0

        # The old group: ray gave up, the worker exited 1, and that first restart made the
        # operator delete the group's leader to recreate the group.
        worker = _wait_pod(core, real_namespace, workers["old"], "restarted", _restarted)
        (status,) = worker.status.container_statuses
        assert status.last_state.terminated.exit_code == 1, status
        previous = core.read_namespaced_pod_log(
            workers["old"], real_namespace, container="vllm-worker", previous=True
        )
        _assert_gave_up_after_the_attempts(previous)
        recreated = (
            f"Worker pod {workers['old']} failed, deleted leader pod {leaders['old']} "
            "to recreate group 0"
        )
        wait_for(
            core.list_namespaced_event,
            lambda items: any(e.message == recreated for e in items),
            namespace=real_namespace,
            field_selector=f"involvedObject.name={names['old']},reason={RECREATE_GROUP}",
            timeout_s=POD_TIMEOUT_S,
            what=f"LWS {names['old']}'s RecreateGroup event",
        )
        wait_for(
            core.list_namespaced_pod,
            lambda items: all(
                p.metadata.uid != first_uids["old"] or p.metadata.deletion_timestamp for p in items
            ),
            namespace=real_namespace,
            field_selector=f"metadata.name={leaders['old']}",
            timeout_s=POD_TIMEOUT_S,
            what=f"the first {leaders['old']} deleted",
        )
        recreated_s = time.monotonic() - t0

        # Today's group: the worker joined once the head listened, nothing restarted.
        log = _log_once(core, real_namespace, workers["new"], (RAY_STARTED,), "vllm-worker")
        joined_s = time.monotonic() - t0
        assert RAY_STARTED in log, log[-3000:]
        assert log.index(GAVE_UP) < log.index(RETRYING) < log.index(RAY_STARTED)
        for key, name in (("new", leaders["new"]), ("new-worker", workers["new"])):
            (pod,) = core.list_namespaced_pod(
                real_namespace, field_selector=f"metadata.name={name}"
            ).items
            assert pod.metadata.uid == first_uids[key], pod.metadata
            (status,) = pod.status.container_statuses
            assert status.restart_count == 0, (name, status)
        assert _recreations(core, real_namespace, names["new"]) == []
        print(
            f"F5_FIGURES from the groups' creation: today's worker retrying {retrying_s:.0f} s;"
            f" old group's leader deleted by the operator {recreated_s:.0f} s; today's "
            f"worker joined {joined_s:.0f} s"
        )
    finally:
        for key, lws in groups.items():
            delete_now(real_admin, ObjectRef.of(lws), f"{LWS_NAME_LABEL}={names[key]}")
