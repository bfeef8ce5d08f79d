"""The sandbox's controller manager: workload controllers fed by store events."""

from __future__ import annotations

from typing import Any

from sandbox.kube.controllers._base import Controller
from sandbox.kube.controllers.deployment import DeploymentController
from sandbox.kube.controllers.lws import LeaderWorkerSetController, lws_pod_mutator
from sandbox.kube.controllers.pods import PodMutator
from sandbox.kube.controllers.raycluster import RayClusterController
from sandbox.kube.controllers.rbg import RoleBasedGroupController
from sandbox.kube.controllers.replicaset import ReplicaSetController
from sandbox.kube.controllers.statefulset import StatefulSetController
from sandbox.kube.controllers.volumes import VolumeBinder
from sandbox.kube.store import NotFound, Store

__all__ = ["Controller", "ControllerManager"]


def _installed(store: Store, api_version: str, kind: str) -> bool:
    try:
        store.resource_type(api_version, kind)
    except NotFound:
        return False
    return True


class ControllerManager:
    """Builds the controllers for the kinds the store serves and routes every store event to
    them (in commit order, like shared informers)."""

    def __init__(
        self, store: Store, *, rbg_version: str = "v0.6", deadline_scale: float = 0.01
    ) -> None:
        self.store = store
        mutators: list[PodMutator] = []
        self.controllers: list[Controller] = [
            DeploymentController(store, deadline_scale),
            ReplicaSetController(store),
            StatefulSetController(store, mutators),
            VolumeBinder(store),
        ]
        if _installed(store, "leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"):
            mutators.append(lws_pod_mutator)
            self.controllers.append(LeaderWorkerSetController(store))
        if any(rt.kind == "RoleBasedGroup" for rt in store.resource_types()):
            self.controllers.append(RoleBasedGroupController(store, rbg_version))
        if _installed(store, "ray.io/v1", "RayCluster"):
            self.controllers.append(RayClusterController(store))
        self._unsubscribe: Any = None

    def add(self, controller: Controller) -> None:
        self.controllers.append(controller)

    def dispatch(self, event: str, obj: dict[str, Any]) -> None:
        for controller in self.controllers:
            controller.on_event(event, obj)

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self.dispatch)
        for controller in self.controllers:
            controller.start()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for controller in self.controllers:
            controller.stop()

    def errors(self) -> list[str]:
        return [e for c in self.controllers for e in c.errors]
