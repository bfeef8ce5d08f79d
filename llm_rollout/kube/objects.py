"""Generic verbs over any kind: server-side apply, get, delete (one implementation for all).

Kinds are resolved through discovery (`resources.resolve_resource`), so Deployments, Secrets,
PersistentVolumes and custom resources (LeaderWorkerSet, RoleBasedGroup, RayCluster) all take
the same path. Errors arrive already translated (see `kube.errors`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError
from llm_rollout.kube.errors import NotFoundError
from llm_rollout.kube.resources import JsonDict, ObjectRef, object_path, request_json
from llm_rollout.kube.views import mapping_at
from llm_rollout.kube.watching import wait_deleted

log = logging.getLogger(__name__)

FIELD_MANAGER = "llm-rollout"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
Propagation = Literal["Foreground", "Background", "Orphan"]


def apply(
    api: k8s_client.ApiClient,
    obj: Mapping[str, Any],
    *,
    field_manager: str = FIELD_MANAGER,
    force: bool = False,
    dry_run: bool = False,
) -> JsonDict:
    """Server-side apply `obj`; returns the object as the server stored (or would store) it.

    `force` takes ownership of fields another manager holds (without it such a clash is a
    `ConflictError`); `dry_run` sends `dryRun=All`, so the server validates, defaults and
    runs admission without persisting. The manifest must name its namespace when the kind is
    namespaced: none is assumed.
    """
    ref = ObjectRef.of(obj)
    query = [("fieldManager", field_manager)]
    if force:
        query.append(("force", "true"))
    if dry_run:
        query.append(("dryRun", "All"))
    result = request_json(
        api,
        "PATCH",
        object_path(api, ref),
        target=str(ref),
        query=query,
        body=dict(obj),
        content_type=APPLY_CONTENT_TYPE,
        ref=ref,
    )
    log.info(
        "%s %s (field manager %s)", "dry-run applied" if dry_run else "applied", ref, field_manager
    )
    return result


def apply_all(
    api: k8s_client.ApiClient,
    objects: Sequence[Mapping[str, Any]],
    *,
    field_manager: str = FIELD_MANAGER,
    force: bool = False,
    dry_run: bool = False,
) -> list[JsonDict]:
    """Apply `objects` one by one in the given (dependency) order; stops at the first error.

    The returned list matches `objects` position by position.
    """
    return [
        apply(api, obj, field_manager=field_manager, force=force, dry_run=dry_run)
        for obj in objects
    ]


def get(api: k8s_client.ApiClient, ref: ObjectRef) -> JsonDict | None:
    """The object as the server has it, or None when it does not exist.

    A missing API (CRD not installed) is still an error: it is not the same as "absent".
    """
    path = object_path(api, ref)
    try:
        return request_json(api, "GET", path, target=str(ref), ref=ref)
    except NotFoundError:
        return None


def delete(
    api: k8s_client.ApiClient,
    ref: ObjectRef,
    *,
    propagation: Propagation = "Foreground",
    wait_timeout_s: float | None = None,
) -> bool:
    """Delete one object; True if it existed. A 404 is not an error.

    With `wait_timeout_s`, block (watch-based) until the object is really gone, which for
    Foreground propagation means after its dependents (pods) are gone too.
    """
    path = object_path(api, ref)
    body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
    started = time.monotonic()
    try:
        request_json(
            api,
            "DELETE",
            path,
            target=str(ref),
            body=body,
            content_type="application/json",
            ref=ref,
        )
        existed = True
        log.info("deleting %s (propagation %s)", ref, propagation)
    except NotFoundError:
        existed = False
        log.info("%s already absent", ref)
    if existed and wait_timeout_s is not None:
        wait_deleted(api, ref, wait_timeout_s)
        log.info("%s gone after %.1fs", ref, time.monotonic() - started)
    return existed


def delete_all(
    api: k8s_client.ApiClient,
    refs: Sequence[ObjectRef],
    *,
    propagation: Propagation = "Foreground",
    wait_timeout_s: float | None = None,
) -> list[ObjectRef]:
    """Delete `refs` in reverse order (dependents before what they depend on).

    With `wait_timeout_s`, each object is waited for before the next is deleted, so a PVC is
    not removed while pods still mount it. Returns the refs that existed.
    """
    deleted: list[ObjectRef] = []
    for ref in reversed(refs):
        if delete(api, ref, propagation=propagation, wait_timeout_s=wait_timeout_s):
            deleted.append(ref)
    return deleted


def secret_value(api: k8s_client.ApiClient, namespace: str, name: str, key: str) -> str:
    """The decoded value of `key` in Secret `namespace/name`. Never log the result."""
    ref = ObjectRef("v1", "Secret", namespace, name)
    secret = get(api, ref)
    if secret is None:
        raise PermanentError(f"{ref} does not exist")
    encoded = mapping_at(secret, "data").get(key)
    if encoded is None:
        plain = mapping_at(secret, "stringData").get(key)
        if plain is None:
            raise PermanentError(f"{ref} has no key {key!r}")
        return str(plain)
    try:
        return base64.b64decode(str(encoded), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise PermanentError(f"{ref}: key {key!r} is not valid base64 UTF-8 text") from exc
