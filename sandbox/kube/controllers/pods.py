"""Building pods from templates, shared by the workload controllers."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.kube.controllers._base import meta, owner_ref

Obj = dict[str, Any]
# Admission-time mutation of a pod about to be created (what LWS's pod webhook does upstream).
PodMutator = Callable[[Obj], None]


def pod_from_template(
    template: Mapping[str, Any],
    owner: Mapping[str, Any],
    *,
    name: str | None = None,
    generate_name: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
    extra_annotations: Mapping[str, str] | None = None,
) -> Obj:
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update(extra_labels or {})
    annotations = dict(tmeta.get("annotations") or {})
    annotations.update(extra_annotations or {})
    md: Obj = {
        "namespace": meta(owner).get("namespace"),
        "labels": labels,
        "ownerReferences": [owner_ref(owner)],
    }
    if annotations:
        md["annotations"] = annotations
    if name:
        md["name"] = name
    else:
        md["generateName"] = generate_name or f"{meta(owner)['name']}-"
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec}


def apply_mutators(pod: Obj, mutators: list[PodMutator]) -> Obj:
    for mutate in mutators:
        mutate(pod)
    return pod


def template_with(
    template: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    out = copy.deepcopy(dict(template))
    md = dict(out.get("metadata") or {})
    if labels:
        md["labels"] = {**(md.get("labels") or {}), **labels}
    if annotations:
        md["annotations"] = {**(md.get("annotations") or {}), **annotations}
    out["metadata"] = md
    return out
