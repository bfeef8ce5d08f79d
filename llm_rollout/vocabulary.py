"""Our own words on the cluster, in one ground-floor module: the label and annotation keys
llm-rollout writes and reads back, the selectors built from them, and the order in which a
release's objects are applied and deleted.

Keys a workload controller sets (LeaderWorkerSet's, RoleBasedGroup's, KubeRay's) stay in their
kind's module under `llm_rollout.kinds`. Nothing here talks to the cluster or reads a spec.
"""

from __future__ import annotations

from llm_rollout.kinds import rendered_kinds

# The `app.kubernetes.io/managed-by` value of what we render.
MANAGED_BY = "llm-rollout"

# Kubernetes' recommended labels (kubernetes.io/docs/concepts/overview/working-with-objects/
# common-labels/). `part-of` names the service: every object of every release carries it.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "app.kubernetes.io/version"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

# Our own labels: the release an object belongs to, and the pods the stable Service selects.
RELEASE_LABEL = "llm-rollout.io/release"
ENTRYPOINT_LABEL = "llm-rollout.io/entrypoint"

# Our own annotations. The stable Service's are the source of truth for `status` and
# `rollback` (llm_rollout.record builds them); the storage objects carry the first three.
ANNOTATION_PREFIX = "llm-rollout.io/"
ANN_RELEASE = ANNOTATION_PREFIX + "release"
ANN_PREVIOUS_RELEASE = ANNOTATION_PREFIX + "previous-release"
ANN_REVISION = ANNOTATION_PREFIX + "model-revision"
ANN_MODEL = ANNOTATION_PREFIX + "model-source"
ANN_SPEC_HASH = ANNOTATION_PREFIX + "spec-hash"
ANN_STRATEGY = ANNOTATION_PREFIX + "strategy"
ANN_DEPLOYED_AT = ANNOTATION_PREFIX + "deployed-at"
# On the OSS Secret as rendered: where its values come from (they are never rendered).
SECRET_VALUES_ANNOTATION = ANNOTATION_PREFIX + "values"
# Who holds a service's rollout Lease (llm_rollout.locking).
OWNER_ANNOTATION = ANNOTATION_PREFIX + "lock-owner"
# Set on a pod template to make its controller roll the pods (llm_rollout.redeploy).
RESTARTED_AT_ANNOTATION = ANNOTATION_PREFIX + "restarted-at"


def service_selector(name: str) -> str:
    """Every object of service `name`, of every release, storage included."""
    return f"{PART_OF_LABEL}={name}"


def release_selector(name: str, release: str) -> str:
    """The objects and pods of one release of service `name`."""
    return f"{PART_OF_LABEL}={name},{RELEASE_LABEL}={release}"


# The workload kinds we render (Deployment, LeaderWorkerSet, RoleBasedGroup, RayCluster).
WORKLOAD_KINDS = frozenset(k.kind for k in rendered_kinds())

# Kinds a release may own, in dependency order (a release's Services select its pods, so they
# go after the workload when applying and before it when deleting).
RELEASE_KINDS: tuple[tuple[str, str], ...] = (
    *((api_version, k.kind) for k in rendered_kinds() for api_version in k.api_versions()),
    ("v1", "Service"),
)

# Shared by every release and removed only by teardown, in reverse dependency order.
STORAGE_KINDS_REVERSED: tuple[tuple[str, str], ...] = (
    ("v1", "PersistentVolumeClaim"),
    ("v1", "PersistentVolume"),
    ("v1", "Secret"),
)
