"""The built-in resource types the sandbox API server serves, and the cluster's starting objects."""

from __future__ import annotations

from sandbox.kube.store import Obj, ResourceType, Store

STATUS = frozenset({"status"})
STATUS_SCALE = frozenset({"status", "scale"})

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, STATUS, ("ns",)),
    ResourceType(
        "", "v1", "Pod", "pods", True, frozenset({"status", "log", "proxy"}), ("po",), ("all",)
    ),
    ResourceType(
        "", "v1", "Service", "services", True, frozenset({"status", "proxy"}), ("svc",), ("all",)
    ),
    ResourceType("", "v1", "Endpoints", "endpoints", True, frozenset(), ("ep",)),
    ResourceType("", "v1", "Secret", "secrets", True),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, frozenset(), ("cm",)),
    ResourceType("", "v1", "Event", "events", True, frozenset(), ("ev",)),
    ResourceType("", "v1", "Node", "nodes", False, frozenset({"status", "proxy"}), ("no",)),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, STATUS, ("pv",)),
    ResourceType(
        "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, STATUS, ("pvc",)
    ),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, frozenset(), ("sa",)),
    ResourceType(
        "apps", "v1", "Deployment", "deployments", True, STATUS_SCALE, ("deploy",), ("all",)
    ),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, STATUS_SCALE, ("rs",), ("all",)),
    ResourceType(
        "apps", "v1", "StatefulSet", "statefulsets", True, STATUS_SCALE, ("sts",), ("all",)
    ),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        False,
        STATUS,
        ("crd", "crds"),
    ),
)

# Proxy-like and log subresources are not objects: they are left out of update/patch handling.
NON_OBJECT_SUBRESOURCES = frozenset({"log", "proxy"})


def register_builtins(store: Store) -> None:
    for rt in BUILTIN_TYPES:
        store.register(rt)


def initial_objects() -> list[Obj]:
    """What a fresh cluster holds: the default namespaces."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease")
    ]
