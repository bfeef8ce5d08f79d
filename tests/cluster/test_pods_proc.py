"""A container sees its own PID namespace in /proc, as under a container runtime.

Without it a process reading ``/proc/<its own pid>`` reads the host's process of that number
or fails: vLLM's CPU worker reads ``/proc/{os.getpid()}/status`` at start
(``vllm/utils/cpu_resource_utils.py``, ``get_memory_affinity``) and died with
``FileNotFoundError: /proc/35/status`` when the host had no PID 35.
"""

from __future__ import annotations

from kubernetes import client as k8s

from tests.cluster.pod_helpers import is_ready, make_pod, shell_container, wait_for_log, wait_pod


def test_a_containers_proc_is_its_own_pid_namespace(admin: k8s.ApiClient, namespace: str) -> None:
    # $$$$: the kubelet's expansion turns $$ into $ (k8s.io/kubernetes
    # third_party/forked/golang/expansion/expand.go), leaving the shell its $$.
    script = (
        "echo pid=$$$$; echo comm1=$(cat /proc/1/comm); "
        "echo processes=$(ls /proc | grep -c '^[0-9][0-9]*$'); echo done; exec sleep 3600"
    )
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, make_pod("proc", [shell_container("main", script)]))
    # The log exists once the container runs (read before, it is empty).
    wait_pod(admin, namespace, "proc", "Ready", is_ready)
    lines = wait_for_log(core, namespace, "proc", "main", "done")
    assert "pid=1" in lines
    assert "comm1=sh" in lines  # the container's PID 1, not the host's init
    # sh and the few commands of the line being run: nothing of the host.
    (count,) = [int(line.split("=")[1]) for line in lines if line.startswith("processes=")]
    assert 1 <= count <= 4, lines
