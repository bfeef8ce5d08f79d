"""RayCluster (ray.io/v1): a head pod, worker pods per group, the head Service, and the status
KubeRay reports (state ``ready`` once every pod is Running and Ready)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sandbox.kube.controllers._base import (
    Controller,
    Key,
    controller_ref,
    inject_env,
    is_deleting,
    key_of,
    list_owned,
    meta,
    now_iso,
    owner_ref,
    pod_is_ready,
    set_condition,
    try_get,
    write_status,
)
from sandbox.kube.controllers.pods import pod_from_template
from sandbox.kube.nodes import parse_quantity
from sandbox.kube.store import AlreadyExists, Store

Obj = dict[str, Any]
COMPONENT = "raycluster-controller"


class RayClusterController(Controller):
    name = "raycluster"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.rc_rt = store.resource_type("ray.io/v1", "RayCluster")
        self.pod_rt = store.resource_type("v1", "Pod")
        self.svc_rt = store.resource_type("v1", "Service")

    def keys_for(self, event: str, obj: Obj) -> Iterable[Key]:
        if obj.get("kind") == "RayCluster":
            return [key_of(obj)]
        if obj.get("kind") == "Pod":
            ref = controller_ref(obj)
            if ref and ref.get("kind") == "RayCluster":
                return [(meta(obj).get("namespace") or "", str(ref.get("name")))]
        return []

    def resync(self) -> None:
        for rc in self.store.list(self.rc_rt)[0]:
            self.queue.add(key_of(rc))

    def _labels(self, rc: Obj, node_type: str, group: str) -> dict[str, str]:
        name = meta(rc)["name"]
        return {
            "ray.io/cluster": name,
            "ray.io/node-type": node_type,
            "ray.io/group": group,
            "ray.io/identifier": f"{name}-{node_type}",
            "ray.io/is-ray-node": "yes",
            "app.kubernetes.io/name": "kuberay",
            "app.kubernetes.io/created-by": "kuberay-operator",
        }

    def reconcile(self, key: Key) -> float | None:
        rc = try_get(self.store, self.rc_rt, key[0], key[1])
        if rc is None or is_deleting(rc):
            return None
        ns, name = key
        spec = rc.get("spec") or {}
        head_spec = spec.get("headGroupSpec") or {}
        self._head_service(rc, head_spec)
        pods = list_owned(self.store, self.pod_rt, rc)
        # KubeRay deletes failed pods and replaces them.
        for pod in pods:
            if (pod.get("status") or {}).get("phase") == "Failed" and not is_deleting(pod):
                self.store.delete(self.pod_rt, ns, meta(pod)["name"])
        pods = [p for p in list_owned(self.store, self.pod_rt, rc) if not is_deleting(p)]
        heads = [p for p in pods if (meta(p).get("labels") or {}).get("ray.io/node-type") == "head"]
        if not heads and not spec.get("suspend"):
            pod = pod_from_template(
                head_spec.get("template") or {},
                rc,
                generate_name=f"{name}-head-",
                extra_labels=self._labels(rc, "head", "headgroup"),
            )
            inject_env(
                pod["spec"],
                [
                    {"name": "RAY_CLUSTER_NAME", "value": name},
                    {"name": "RAY_PORT", "value": "6379"},
                    {"name": "RAY_ADDRESS", "value": "127.0.0.1:6379"},
                ],
            )
            self.store.create(pod)
        desired_workers = 0
        groups = spec.get("workerGroupSpecs") or []
        for group in groups:
            gname = group["groupName"]
            hosts = int(group.get("numOfHosts", 1))
            want = (
                0
                if group.get("suspend")
                else int(group.get("replicas", group.get("minReplicas", 0))) * hosts
            )
            desired_workers += want
            mine = [
                p
                for p in pods
                if (meta(p).get("labels") or {}).get("ray.io/group") == gname
                and (meta(p).get("labels") or {}).get("ray.io/node-type") == "worker"
            ]
            for _ in range(want - len(mine)):
                pod = pod_from_template(
                    group.get("template") or {},
                    rc,
                    generate_name=f"{name}-{gname}-worker-",
                    extra_labels=self._labels(rc, "worker", gname),
                )
                inject_env(
                    pod["spec"],
                    [
                        {"name": "RAY_CLUSTER_NAME", "value": name},
                        {"name": "FQ_RAY_IP", "value": f"{name}-head-svc.{ns}.svc.cluster.local"},
                        {"name": "RAY_IP", "value": f"{name}-head-svc"},
                    ],
                )
                self.store.create(pod)
            for extra in mine[want:] if len(mine) > want else []:
                self.store.delete(self.pod_rt, ns, meta(extra)["name"])
        pods = [p for p in list_owned(self.store, self.pod_rt, rc) if not is_deleting(p)]
        self._status(rc, pods, groups, desired_workers)
        return None

    def _head_service(self, rc: Obj, head_spec: Obj) -> None:
        ns, name = meta(rc).get("namespace"), meta(rc)["name"]
        svc_name = f"{name}-head-svc"
        if try_get(self.store, self.svc_rt, ns, svc_name) is not None:
            return
        ports = []
        containers = ((head_spec.get("template") or {}).get("spec") or {}).get("containers") or []
        for c in containers[:1]:
            for p in c.get("ports") or []:
                entry: Obj = {
                    "port": p["containerPort"],
                    "protocol": p.get("protocol", "TCP"),
                    "targetPort": p["containerPort"],
                }
                if p.get("name"):
                    entry["name"] = p["name"]
                ports.append(entry)
        if not ports:
            ports = [
                {"name": "gcs-server", "port": 6379, "protocol": "TCP", "targetPort": 6379},
                {"name": "dashboard", "port": 8265, "protocol": "TCP", "targetPort": 8265},
                {"name": "client", "port": 10001, "protocol": "TCP", "targetPort": 10001},
            ]
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": svc_name,
                "namespace": ns,
                "labels": {
                    "ray.io/cluster": name,
                    "ray.io/node-type": "head",
                    "app.kubernetes.io/created-by": "kuberay-operator",
                },
                "ownerReferences": [owner_ref(rc)],
            },
            "spec": {
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
                "ports": ports,
                "publishNotReadyAddresses": True,
                "type": "ClusterIP",
            },
        }
        try:
            self.store.create(svc)
        except AlreadyExists:
            return

    def _status(self, rc: Obj, pods: list[Obj], groups: list[Obj], desired_workers: int) -> None:
        name = meta(rc)["name"]
        heads = [p for p in pods if (meta(p).get("labels") or {}).get("ray.io/node-type") == "head"]
        workers = [
            p for p in pods if (meta(p).get("labels") or {}).get("ray.io/node-type") == "worker"
        ]
        ready_workers = [p for p in workers if pod_is_ready(p)]
        head = heads[0] if heads else None
        head_ready = head is not None and pod_is_ready(head)
        all_ready = head_ready and len(ready_workers) >= desired_workers
        old = rc.get("status") or {}
        conds = [dict(c) for c in old.get("conditions") or []]
        if head_ready:
            conds = set_condition(
                conds, "HeadPodReady", "True", "HeadPodRunningAndReady", "Head Pod ready"
            )
        else:
            conds = set_condition(
                conds,
                "HeadPodReady",
                "False",
                "HeadPodNotFound" if head is None else "HeadPodNotReady",
                "Head Pod not ready",
            )
        prov = next((c for c in conds if c["type"] == "RayClusterProvisioned"), None)
        if all_ready:
            conds = set_condition(
                conds,
                "RayClusterProvisioned",
                "True",
                "AllPodRunningAndReadyFirstTime",
                "All Ray Pods are ready for the first time",
            )
        elif prov is None:
            conds = set_condition(
                conds,
                "RayClusterProvisioned",
                "False",
                "RayClusterPodsProvisioning",
                "RayCluster Pods are being provisioned for first time",
            )

        def total(res: str) -> str:
            amount = 0.0
            for tmpl, count in [((rc.get("spec") or {}).get("headGroupSpec") or {}, 1)] + [
                (g, int(g.get("replicas", 0)) * int(g.get("numOfHosts", 1))) for g in groups
            ]:
                for c in ((tmpl.get("template") or {}).get("spec") or {}).get("containers") or []:
                    limits = (c.get("resources") or {}).get("limits") or {}
                    requests = (c.get("resources") or {}).get("requests") or {}
                    value = limits.get(res, requests.get(res))
                    if value is not None:
                        amount += parse_quantity(value) * count
            return str(int(amount)) if amount == int(amount) else str(amount)

        status: Obj = {
            "observedGeneration": meta(rc).get("generation", 1),
            "desiredWorkerReplicas": desired_workers,
            "minWorkerReplicas": sum(int(g.get("minReplicas", 0)) for g in groups),
            "maxWorkerReplicas": sum(int(g.get("maxReplicas", 0)) for g in groups),
            "readyWorkerReplicas": len(ready_workers),
            "availableWorkerReplicas": len(ready_workers),
            "desiredCPU": total("cpu"),
            "desiredMemory": total("memory"),
            "desiredGPU": total("nvidia.com/gpu"),
            "desiredTPU": "0",
            "endpoints": {
                "client": "10001",
                "dashboard": "8265",
                "gcs-server": "6379",
                "metrics": "8080",
            },
            "head": {"serviceName": f"{name}-head-svc"},
            "conditions": conds,
        }
        if head is not None:
            status["head"]["podName"] = meta(head)["name"]
            ip = (head.get("status") or {}).get("podIP")
            if ip:
                status["head"]["podIP"] = ip
                status["head"]["serviceIP"] = ip
        # Upstream keeps state "ready" once reached; HeadPodReady tracks the current head.
        if all_ready or old.get("state") == "ready":
            status["state"] = "ready"
        comparable = {
            k: v for k, v in old.items() if k not in ("lastUpdateTime", "stateTransitionTimes")
        }
        if comparable == status:
            return
        if status.get("state") and old.get("state") != status["state"]:
            status["stateTransitionTimes"] = {
                **(old.get("stateTransitionTimes") or {}),
                status["state"]: now_iso(),
            }
        elif old.get("stateTransitionTimes"):
            status["stateTransitionTimes"] = old["stateTransitionTimes"]
        status["lastUpdateTime"] = now_iso()
        write_status(self.store, rc, status)
