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

This test pins that behaviour cheaply: the two bounds' knobs are shrunk through ray's own
environment variables (2 attempts, 2 s cluster-ID timeout; the 5 s channel wait is kept), and
the commands are the LWS worker's, rendered from the template before the F5 fix
(tests/real/old_templates, commit 818048d^) and from today's. Showing the group recreation
itself with the old template would take the full ~12 min bound: this test stands in for point 7's
F5 old-template case (issue 15).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from llm_rollout import render
from llm_rollout.spec import load_spec
from sandbox.cluster.waits import wait_for
from tests.real.ray_support import OLD_MULTI_NODE_LWS, render_old_workload

EXAMPLE = Path(__file__).parents[2] / "examples" / "seed-vllm-lws.yaml"
IMAGE = "vllm/vllm-openai:v0.10.0"
ATTEMPTS = 2
# ray's messages, one per failed attempt and one at the end (see the module doc for where).
CHANNEL_WAIT = "Failed to connect to GCS at address"
CLUSTER_ID_TIMEOUT = "Failed to get cluster ID from GCS server"
GAVE_UP = "Failed to connect to GCS. Last connection error"
# llm_rollout/render.py ray_join_retrying's line between two attempts.
RETRYING = "not reachable yet; retrying in 5 s"
# Bounds, not expectations: each pod ends (or retries) in ~25 s on an idle machine.
POD_TIMEOUT_S = 150


def _worker_commands() -> tuple[list[str], list[str]]:
    """The seed-vllm-lws worker container's command before the F5 fix and today."""
    spec = load_spec(EXAMPLE)

    def command(workload: dict[str, Any]) -> list[str]:
        (container,) = workload["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"][
            "containers"
        ]
        return list(container["command"])

    old = command(render_old_workload(spec, "f5", OLD_MULTI_NODE_LWS))
    new = command(render.render(spec, release="f5").workload)
    return old, new


def _pod(name: str, command: list[str], leader: dict[str, Any]) -> dict[str, Any]:
    """A worker pod whose `$(LWS_LEADER_ADDRESS)` names a head that does not listen."""
    env = [
        {"name": "LWS_LEADER_ADDRESS", **leader},
        {"name": "RAY_NUM_REDIS_GET_RETRIES", "value": str(ATTEMPTS)},
        {"name": "RAY_py_gcs_connect_timeout_s", "value": "2"},
    ]
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


def _wait_terminated(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    (pod,) = wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 1 and _terminated(items[0]) is not None,
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        timeout_s=POD_TIMEOUT_S,
        what=f"pod {name}'s worker to exit",
    )
    return _terminated(pod)


def _log(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    text: str = core.read_namespaced_pod_log(name, namespace, container="worker")
    print(f"--- {name}/worker:\n" + "\n".join(text.splitlines()[-30:]))
    return text


def _log_once(core: k8s.CoreV1Api, namespace: str, name: str, wanted: tuple[str, ...]) -> str:
    """The worker's log once every line of ``wanted`` is in it, or at POD_TIMEOUT_S. Polled:
    a followed log would hold a stream open on a container that keeps running."""
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        text: str = core.read_namespaced_pod_log(name, namespace, container="worker")
        if all(w in text for w in wanted) or time.monotonic() > deadline:
            print(f"--- {name}/worker:\n" + "\n".join(text.splitlines()[-30:]))
            return text
        time.sleep(1)


@pytest.mark.timeout(300, func_only=True)
def test_bare_ray_start_waits_a_bounded_number_of_gcs_attempts_then_exits_and_the_loop_retries(
    real_admin: k8s.ApiClient, real_namespace: str
) -> None:
    core = k8s.CoreV1Api(real_admin)
    old, new = _worker_commands()
    assert "exec ray start --address=$(LWS_LEADER_ADDRESS):6379" in old[-1]
    assert "until ray start --address=$(LWS_LEADER_ADDRESS):6379" in new[-1]
    own_ip = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    # A leader whose pod has no DNS record yet (LWS makes the worker under LeaderCreated).
    unresolvable = {"value": f"no-leader-yet.{real_namespace}.svc.cluster.local"}
    pods = {
        "old-closed-port": _pod("old-closed-port", old, own_ip),
        "old-no-dns": _pod("old-no-dns", old, unresolvable),
        "new-closed-port": _pod("new-closed-port", new, own_ip),
    }
    for body in pods.values():
        core.create_namespaced_pod(real_namespace, body)

    logs = {}
    for name in ("old-closed-port", "old-no-dns"):
        terminated = _wait_terminated(core, real_namespace, name)
        logs[name] = log = _log(core, real_namespace, name)
        # Neither a closed port nor an unresolvable name makes it exit at once: it makes
        # exactly RAY_NUM_REDIS_GET_RETRIES attempts, each with the 5 s channel wait.
        assert log.count(CLUSTER_ID_TIMEOUT) == ATTEMPTS, name
        assert log.count(CHANNEL_WAIT) == ATTEMPTS, name
        assert "within 5 seconds" in log, name
        assert GAVE_UP in log, name
        assert "Ray runtime started." not in log, name
        # The container exits non-zero: under RecreateGroupOnPodRestart, the group's end.
        assert terminated.exit_code == 1, (name, terminated)
    # With an unresolvable leader name the node IP is taken before any GCS attempt, and
    # services.node_ip_address_from_perspective (ray/_private/services.py L615-645) falls back
    # to 127.0.0.1 on the resolution error; it becomes the node's `node_ip_address`. What a
    # worker started that way does once the name resolves and a head listens was not traced
    # here.
    assert "Local node IP: 127.0.0.1" in logs["old-no-dns"]

    # Today's worker under the same bound: ray start gave up the same way, and the loop
    # started it again instead of letting the container exit.
    log = _log_once(core, real_namespace, "new-closed-port", (GAVE_UP, RETRYING))
    assert GAVE_UP in log and RETRYING in log, log[-2000:]
    (pod,) = core.list_namespaced_pod(
        real_namespace, field_selector="metadata.name=new-closed-port"
    ).items
    (status,) = pod.status.container_statuses
    assert status.state.running is not None and status.restart_count == 0, status
