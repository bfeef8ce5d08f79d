"""Node objects the way a GPU node pool on ACK reports itself (capacity, allocatable, labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.kube.controllers._base import now_iso

Obj = dict[str, Any]

GPU = "nvidia.com/gpu"
ERDMA = "aliyun/erdma"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: int = 64
    memory_gi: int = 512
    gpus: int = 8
    erdma: int = 2
    gpu_product: str = "NVIDIA-A10"
    instance_type: str = "ecs.gn7i-c32g1.32xlarge"
    zone: str = "cn-hangzhou-k"
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Obj, ...] = ()
    pods: int = 110


def node_object(spec: NodeSpec, index: int) -> Obj:
    """A Node as the kubelet would register it (address 127.0.1.<index+1>)."""
    capacity = {
        "cpu": str(spec.cpu),
        "memory": f"{spec.memory_gi}Gi",
        "pods": str(spec.pods),
        "ephemeral-storage": "1Ti",
    }
    if spec.gpus:
        capacity[GPU] = str(spec.gpus)
    if spec.erdma:
        capacity[ERDMA] = str(spec.erdma)
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": spec.instance_type,
        "topology.kubernetes.io/zone": spec.zone,
        "topology.kubernetes.io/region": spec.zone.rsplit("-", 1)[0],
    }
    if spec.gpus:
        labels["nvidia.com/gpu.product"] = spec.gpu_product
        labels["nvidia.com/gpu.count"] = str(spec.gpus)
        labels["aliyun.accelerator/nvidia_name"] = spec.gpu_product
    labels.update(spec.labels)
    stamp = now_iso()
    node: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {"podCIDR": f"10.244.{index}.0/24"},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "addresses": [
                {"type": "InternalIP", "address": f"127.0.1.{index + 1}"},
                {"type": "Hostname", "address": spec.name},
            ],
            "conditions": [
                _cond("MemoryPressure", "False", "KubeletHasSufficientMemory", stamp),
                _cond("DiskPressure", "False", "KubeletHasNoDiskPressure", stamp),
                _cond("PIDPressure", "False", "KubeletHasSufficientPID", stamp),
                _cond("Ready", "True", "KubeletReady", stamp, "kubelet is posting ready status"),
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "Alibaba Cloud Linux 3",
                "kernelVersion": "5.10.134-16.al8.x86_64",
                "containerRuntimeVersion": "containerd://1.6.28",
                "kubeletVersion": "v1.32.1-aliyun.1",
                "kubeProxyVersion": "v1.32.1-aliyun.1",
                "machineID": f"sandbox-{index}",
                "systemUUID": f"sandbox-{index}",
                "bootID": f"sandbox-{index}",
            },
        },
    }
    if spec.taints:
        node["spec"]["taints"] = [dict(t) for t in spec.taints]
    return node


def _cond(ctype: str, status: str, reason: str, stamp: str, message: str = "") -> Obj:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message or reason,
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def node_ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_ip(node: Obj) -> str:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP":
            return str(addr.get("address"))
    return "127.0.0.1"


_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes resource quantity as a number (cpu in cores, memory in bytes)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text:
        return 0.0
    if text.endswith("m") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) / 1000
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIX[suffix]
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"quantities must match the regular expression: {text!r}") from exc
