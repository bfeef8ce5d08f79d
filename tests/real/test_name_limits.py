"""Finding B5 (../shared/research/stand-in-fidelity-audit.md) on the REAL cluster: names too long
for the StatefulSets the real LeaderWorkerSet operator (sigs.k8s.io/lws v0.9.0) derives, with
the real kube-controller-manager (k8s.io/kubernetes v1.36.3) creating the pods.

Upstream: the StatefulSet controller labels each pod `controller-revision-hash: <name of the
StatefulSet's current ControllerRevision>` (pkg/controller/statefulset/stateful_set_utils.go
newRevision, setPodRevision), named `<statefulset>-<hash>` (pkg/controller/history/
controller_history.go ControllerRevisionName; HashControllerRevision: a 32-bit FNV sum in
decimal, safe-encoded, so 1-10 characters). A label value holds at most 63 characters, so the
pod create of a StatefulSet of 53 or more characters fails whenever the hash has 10 characters
(about 3 hashes in 4), of 55 or more whenever it has 8 or more. LWS names the leaders'
StatefulSet `<lws>` and each group's workers' `<lws>-<group>` (pkg/controllers/
leaderworkerset_controller.go, pod_controller.go); the product names the LWS
`<name>-<release>`, with a deploy's 12-character release id (llm_rollout/strategy.py
new_release_id), so names of 38 characters or more can break the worker StatefulSet.

Shown here with the SGLang LWS example (no engine process runs: the pods are created, never
scheduled, as the model claim is not made):
- the longest name the product accepts for the shape (37 characters) gets its leader and
  worker pods created;
- the spec's longest name (40 characters), rendered past the product's check as it would be
  applied without it, gets a StatefulSet's FailedCreate event naming the too-long label value,
  and no pod of that StatefulSet; readiness fails on it at once, naming the StatefulSet;
- the deploy flow refuses a 38-character name in preflight, naming `name`, before any write.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flows.deploy import deploy
from llm_rollout import render
from llm_rollout.errors import SpecError
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import WorkloadFailed, wait_ready
from llm_rollout.spec import MAX_RELEASE_LEN, MAX_SERVICE_NAME_LEN, ServiceSpec, load_spec
from sandbox.cluster.waits import wait_for
from tests.real_deploy import RealStores, write_real_spec

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-lws"
# A deploy's release id has MAX_RELEASE_LEN characters; this one is fixed so that the objects
# are the same on every run.
RELEASE = "rb5" + "0" * (MAX_RELEASE_LEN - 3)
# <name>-<release>-0 within 52 characters (llm_rollout/render.py STATEFULSET_NAME_MAX).
LONGEST_ACCEPTED = 37
REVISION_LABEL = "controller-revision-hash"
LABEL_VALUE_MAX = 63
# lws api/leaderworkerset/v1/leaderworkerset_types.go SetNameLabelKey.
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
TIMEOUT_S = 90


def _name(length: int) -> str:
    return ("b5-" + "n" * length)[:length]


def _spec(stores: RealStores, tmp_path: Path, namespace: str, length: int) -> ServiceSpec:
    path, _ = write_real_spec(stores, EXAMPLE, tmp_path, namespace=namespace, name=_name(length))
    return load_spec(path)


def _unchecked_lws(spec: ServiceSpec) -> dict[str, Any]:
    """The LeaderWorkerSet the product renders for ``spec``, without its name-length check:
    what it would apply if it did not refuse the name."""
    ctx = render._Ctx(spec, RELEASE, "v0.6")
    docs = render._render_docs(render._environment(), render.template_for(spec), ctx)
    (lws,) = [d for d in docs if d["kind"] == "LeaderWorkerSet"]
    return lws


def _create(admin: k8s.ApiClient, namespace: str, lws: dict[str, Any]) -> str:
    k8s.CustomObjectsApi(admin).create_namespaced_custom_object(*LWS[:2], namespace, LWS[2], lws)
    return str(lws["metadata"]["name"])


def _revision_names(admin: k8s.ApiClient, namespace: str, statefulset: str) -> list[str]:
    """Names of the ControllerRevisions the StatefulSet controller made for ``statefulset``."""
    items = k8s.AppsV1Api(admin).list_namespaced_controller_revision(namespace).items
    return [
        r.metadata.name
        for r in items
        if any(
            o.kind == "StatefulSet" and o.name == statefulset
            for o in r.metadata.owner_references or []
        )
    ]


@pytest.mark.timeout(300, func_only=True)
def test_a_name_too_long_for_the_revision_label_breaks_pod_creation_and_is_refused(
    real_deploy_env: RealStores,
    real_admin: k8s.ApiClient,
    real_namespace: str,
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    core = k8s.CoreV1Api(real_admin)
    namespace = real_namespace

    # The longest accepted name: the product renders it, and LWS's StatefulSets create both pods.
    accepted = _spec(real_deploy_env, tmp_path, namespace, LONGEST_ACCEPTED)
    rendered = render.render(accepted, release=RELEASE, rbg_flavor="v0.6").workload
    fits = _create(real_admin, namespace, rendered)
    assert len(f"{fits}-0") == render.STATEFULSET_NAME_MAX
    pods = wait_for(
        core.list_namespaced_pod,
        lambda items: len(items) == 2,
        namespace=namespace,
        label_selector=f"{LWS_NAME_LABEL}={fits}",
        timeout_s=TIMEOUT_S,
        what=f"the leader and worker pods of {fits}",
    )
    assert sorted(p.metadata.owner_references[0].name for p in pods) == [fits, f"{fits}-0"]
    for pod in pods:
        assert len(pod.metadata.labels[REVISION_LABEL]) <= LABEL_VALUE_MAX

    # The spec's longest name, past the product's check: a StatefulSet of the group cannot
    # create its pod (the leaders' one, of 53 characters, when its hash has 10 characters,
    # else the workers' one, of 55).
    too_long = _spec(real_deploy_env, tmp_path, namespace, MAX_SERVICE_NAME_LEN)
    with pytest.raises(SpecError) as refused:
        render.render(too_long, release=RELEASE, rbg_flavor="v0.6")
    assert refused.value.field == "name"
    broken = _create(real_admin, namespace, _unchecked_lws(too_long))
    events = wait_for(
        core.list_namespaced_event,
        lambda items: any(
            e.reason == "FailedCreate" and e.involved_object.name.startswith(broken) for e in items
        ),
        namespace=namespace,
        field_selector="involvedObject.kind=StatefulSet",
        timeout_s=TIMEOUT_S,
        what=f"a FailedCreate event on a StatefulSet of {broken}",
    )
    (failed,) = {e.involved_object.name for e in events if e.reason == "FailedCreate"}
    assert failed in (broken, f"{broken}-0")
    (revision,) = _revision_names(real_admin, namespace, failed)
    assert revision.startswith(f"{failed}-") and len(revision) > LABEL_VALUE_MAX, revision
    messages = [e.message for e in events if e.involved_object.name == failed]
    # apimachinery validation.LabelValueMaxLength, reported by pod validation as "must be no
    # more than 63 bytes" (k8s.io/apimachinery pkg/util/validation/field/errors.go TooLong).
    assert any(revision in m and f"no more than {LABEL_VALUE_MAX}" in m for m in messages), messages
    owned = [
        p.metadata.name
        for p in core.list_namespaced_pod(namespace).items
        if any(o.name == failed for o in p.metadata.owner_references or [])
    ]
    assert owned == []
    # Readiness says so at once, naming the StatefulSet and the API server's refusal, instead of
    # waiting out its timeout: an invalid pod is refused again on every retry.
    with pytest.raises(WorkloadFailed) as not_created:
        wait_ready(
            real_admin,
            ObjectRef(f"{LWS[0]}/{LWS[1]}", "LeaderWorkerSet", namespace, broken),
            timeout_s=TIMEOUT_S,
        )
    assert not_created.value.reason == "FailedCreate", not_created.value
    assert not_created.value.pod == ObjectRef("apps/v1", "StatefulSet", namespace, failed)
    assert f"no more than {LABEL_VALUE_MAX}" in not_created.value.detail
    assert "(persisted " not in not_created.value.detail  # no tolerance for it

    # The deploy flow refuses the shortest name too long for the shape before any write: its
    # namespace is never created.
    refused_ns = f"{namespace}-refused"
    with pytest.raises(SpecError) as caught:
        deploy(_spec(real_deploy_env, tmp_path, refused_ns, LONGEST_ACCEPTED + 1))
    assert caught.value.field == "name"
    assert "controller-revision-hash" in str(caught.value)
    assert f"use at most {LONGEST_ACCEPTED} characters" in str(caught.value)
    names = [n.metadata.name for n in core.list_namespace().items]
    assert refused_ns not in names
    print(
        f"REAL_DEPLOY_FIGURES B5: {failed} ({len(failed)} characters) FailedCreate with revision "
        f"{revision} ({len(revision)}); {time.monotonic() - t0:.0f} s"
    )
