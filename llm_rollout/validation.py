"""Offline validation of rendered objects, before anything could be applied.

`validate_objects(objects)` checks a whole release at once and raises one
`ManifestValidationError` listing every problem as `Kind namespace/name: field.path: problem`:

- core kinds (v1, apps/v1, ...) against the Kubernetes OpenAPI schemas shipped with
  `kubernetes-validate`, strict mode (unknown fields rejected), for Kubernetes `K8S_VERSION`;
- custom resources against the `openAPIV3Schema` of every CRD of the catalog given (the
  cluster's, or a directory's: see `llm_rollout.crds`) that serves their apiVersion; a kind the
  catalog does not define is a problem; without a catalog, custom resources are not checked
  against a schema and `validate_objects` returns which kinds were not;
- admission-webhook style rules the schemas cannot express: names and label values are valid,
  namespaced objects name their namespace, an OSS CSI PV's volumeHandle equals its name, a
  LeaderWorkerSet group has size >= 1, RoleBasedGroup role names are unique and dependencies
  name existing roles, RayCluster worker replicas lie within min/max; and references across the
  set resolve (PVC -> PV by the alicloud-pvname selector, pods -> PVC, PV -> Secret, every
  Service selects some pod template of the set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from functools import cache, lru_cache
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv_utils

from llm_rollout.crds import CrdCatalog, configured_crds
from llm_rollout.errors import ManifestValidationError
from llm_rollout.kinds import all_kinds, kind_of
from llm_rollout.kube.views import ObjectView, mapping_at

K8S_VERSION = "1.30"
OSS_CSI_DRIVER = "ossplugin.csi.alibabacloud.com"

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CLUSTER_SCOPED = {"PersistentVolume", "Namespace", "StorageClass", "ClusterRole"}
# Kinds whose names become DNS labels (Service names, pod hostnames of the workloads).
_LABEL_NAMED = {"Service"} | {k.kind for k in all_kinds() if k.name_is_dns_label}
# Label keys the workload controllers add to pods (absent from the templates).
_CONTROLLER_LABEL_PREFIXES = tuple(p for k in all_kinds() for p in k.controller_label_prefixes)

Obj = dict[str, Any]


def _is_core(api_version: str) -> bool:
    """Built-in API groups: "" (v1), dotless (apps, batch) and *.k8s.io except x-k8s.io."""
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    if group == "" or "." not in group:
        return True
    return group.endswith(".k8s.io") and not group.endswith(".x-k8s.io")


def _where(obj: Obj) -> str:
    meta = ObjectView(obj).metadata
    ns = meta.namespace
    name = meta.name or "<unnamed>"
    return f"{obj.get('kind', '<no kind>')} {ns + '/' if ns else ''}{name}"


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _schema_errors(validator: jsonschema.protocols.Validator, obj: Obj) -> Iterator[str]:
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        # anyOf/oneOf failures are clearer through their most specific sub-error.
        leaf = jsonschema.exceptions.best_match([error]) or error
        yield f"{_path(leaf.absolute_path)}: {leaf.message}"


@cache
def _core_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    version = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= K8S_VERSION][-1]
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv_utils.schema_contents(
            f"{schema_dir}/{kind.lower()}-{group_version}.json", K8S_VERSION
        )
    except FileNotFoundError:
        return None
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", K8S_VERSION)
    registry = kv_utils.Resource.from_contents(definitions) @ (
        kv_utils.Resource.from_contents(schema) @ kv_utils.Registry()
    )
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(
        schema, registry=registry
    )
    return validator


# Bounded: a worker reads a fresh catalog from the cluster for every run.
@lru_cache(maxsize=64)
def _crd_validators(crds: CrdCatalog, api_version: str, kind: str) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (crd.source, jsonschema.Draft7Validator(crd.schema))
        for crd in crds.for_kind(api_version, kind)
    )


def is_custom(obj: Obj) -> bool:
    """Whether the object is a custom resource (its schema comes from a CRD)."""
    return not _is_core(str(obj.get("apiVersion", "")))


def schema_problems(obj: Obj, crds: CrdCatalog | None) -> list[str]:
    """Structural problems of one object against its core or CRD schema (a custom resource
    without a catalog: none, it is not checked)."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    if not api_version or not kind:
        return ["apiVersion and kind are required"]
    if _is_core(api_version):
        validator = _core_validator(api_version, kind)
        if validator is None:
            return [f"{api_version} {kind} is unknown to Kubernetes {K8S_VERSION}"]
        return list(_schema_errors(validator, obj))
    if crds is None:
        return []
    validators = _crd_validators(crds, api_version, kind)
    if not validators:
        group = api_version.split("/", 1)[0]
        kinds = crds.kinds()
        known = sorted(f"{g}/{k}" for g, k in kinds)
        if (group, kind) in kinds:
            return [f"no CRD serves {api_version} for {kind}"]
        return [f"no CRD defines {group} {kind} (known: {', '.join(known)})"]
    problems: list[str] = []
    for source, validator in validators:
        problems += [f"{msg} (CRD {source})" for msg in _schema_errors(validator, obj)]
    return problems


# --- webhook-style rules -----------------------------------------------------------------------


def _metadata_problems(obj: Obj) -> Iterator[str]:
    meta = ObjectView(obj).metadata
    name = meta.name
    kind = obj.get("kind")
    pattern = _DNS1123_LABEL if kind in _LABEL_NAMED else _DNS1123_SUBDOMAIN
    limit = 63 if kind in _LABEL_NAMED else 253
    if not pattern.match(name) or len(name) > limit:
        yield f"metadata.name: {name!r} is not a valid {kind} name (DNS-1123, <= {limit})"
    if kind not in _CLUSTER_SCOPED and not meta.namespace:
        yield "metadata.namespace: required (never left to a default)"
    yield from _label_problems("metadata.labels", meta.labels)


def _label_problems(where: str, labels: Mapping[str, Any]) -> Iterator[str]:
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            yield f"{where}.{key}: {value!r} is not a valid label value"


def _pod_templates(obj: Obj) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every pod template inside a workload, with its field path."""
    kind = kind_of(obj)
    if kind is not None:
        yield from kind.pod_templates(obj)


def _kind_rules(obj: Obj) -> Iterator[str]:
    view = ObjectView(obj)
    kind = obj.get("kind")
    name = view.metadata.name
    if kind == "PersistentVolume":
        csi = mapping_at(view.spec, "csi")
        if csi.get("driver") == OSS_CSI_DRIVER:
            if csi.get("volumeHandle") != name:
                yield (
                    f"spec.csi.volumeHandle: {csi.get('volumeHandle')!r} must equal the PV "
                    f"name {name!r} for {OSS_CSI_DRIVER}"
                )
            attrs = mapping_at(csi, "volumeAttributes")
            for key in ("bucket", "url", "path"):
                if not attrs.get(key):
                    yield f"spec.csi.volumeAttributes.{key}: required by the OSS CSI driver"
            if attrs.get("authType") == "rrsa" and not attrs.get("roleName"):
                yield "spec.csi.volumeAttributes.roleName: required with authType rrsa"
            if attrs.get("authType") != "rrsa" and not csi.get("nodePublishSecretRef"):
                yield "spec.csi.nodePublishSecretRef: required unless authType is rrsa"
    workload = kind_of(obj)
    if workload is not None:
        yield from workload.validation_problems(obj)
    for where, template in _pod_templates(obj):
        yield from _label_problems(f"{where}.metadata.labels", ObjectView(template).metadata.labels)


# --- cross-object references -------------------------------------------------------------------


def _pod_specs(objects: list[Obj]) -> Iterator[tuple[Obj, str, Mapping[str, Any]]]:
    for obj in objects:
        for where, template in _pod_templates(obj):
            yield obj, where, template


def _reference_problems(objects: list[Obj]) -> Iterator[tuple[Obj, str]]:
    by_kind: dict[str, dict[str, Obj]] = {}
    for obj in objects:
        by_kind.setdefault(str(obj.get("kind")), {})[obj["metadata"].get("name", "")] = obj
    pvs = by_kind.get("PersistentVolume", {})
    pvcs = by_kind.get("PersistentVolumeClaim", {})
    secrets = by_kind.get("Secret", {})
    for pvc in pvcs.values():
        wanted = mapping_at(pvc, "spec", "selector", "matchLabels").get("alicloud-pvname")
        if pvs and wanted is not None:
            matches = [
                pv
                for pv in pvs.values()
                if ObjectView(pv).metadata.labels.get("alicloud-pvname") == wanted
            ]
            if not matches:
                yield pvc, f"spec.selector.matchLabels.alicloud-pvname: no PV labelled {wanted!r}"
    for pv in pvs.values():
        ref = mapping_at(pv, "spec", "csi").get("nodePublishSecretRef")
        if ref and ref.get("name") not in secrets:
            yield (
                pv,
                f"spec.csi.nodePublishSecretRef.name: Secret {ref.get('name')!r} not in the set",
            )
    templates = list(_pod_specs(objects))
    for owner, where, template in templates:
        for i, volume in enumerate(mapping_at(template, "spec").get("volumes") or []):
            claim = mapping_at(volume, "persistentVolumeClaim").get("claimName")
            if claim is not None and pvcs and claim not in pvcs:
                yield owner, f"{where}.spec.volumes[{i}]: PVC {claim!r} not in the set"
    for service in by_kind.get("Service", {}).values():
        selector = mapping_at(service, "spec", "selector")
        if (
            selector
            and templates
            and not any(
                _selects(selector, ObjectView(template).metadata.labels)
                for _, _, template in templates
            )
        ):
            yield service, "spec.selector: selects no pod template of the set"


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    # Controller-added labels are not in the templates; ignore those keys.
    return all(
        labels.get(key) == value
        for key, value in selector.items()
        if not key.startswith(_CONTROLLER_LABEL_PREFIXES)
    )


# --- entry point -------------------------------------------------------------------------------


def object_problems(obj: Obj, crds: CrdCatalog | None) -> list[str]:
    """Every problem of one object on its own (schema and webhook-style rules)."""
    return [*schema_problems(obj, crds), *_metadata_problems(obj), *_kind_rules(obj)]


def validate_objects(objects: list[Obj], crds: CrdCatalog | None = None) -> list[str]:
    """Raise `ManifestValidationError` listing every problem of the set.

    Custom resources are checked against `crds`, by default the `LLM_ROLLOUT_CRD_DIR`
    directory's. When clean, return the custom kinds that were not checked against a schema
    for want of any catalog (`apiVersion Kind`, sorted; empty when every object was checked).
    """
    catalog = crds if crds is not None else configured_crds()
    problems = [f"{_where(obj)}: {p}" for obj in objects for p in object_problems(obj, catalog)]
    problems += [f"{_where(obj)}: {p}" for obj, p in _reference_problems(objects)]
    if problems:
        raise ManifestValidationError(
            f"{len(problems)} problem(s) in rendered objects:\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    if catalog is not None:
        return []
    return sorted({f"{o.get('apiVersion')} {o.get('kind')}" for o in objects if is_custom(o)})
