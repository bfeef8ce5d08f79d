"""Day-2 actions on a serving service, without its spec: restart, update the engine image / args
/ replicas, scale, or roll back to the previous release.

Everything is read from the cluster: the stable Service names the serving release, whose
workload is read back, changed, and applied whole by the one field manager (server-side apply
with `force`, so the fields stay ours). A change that restarts pods goes through readiness and
the smoke gate; when the gate fails, the workload read before the change is applied again.

A change of the pod templates must reach the running pods, and the redeploy proves it did
(issue 16, B7). Before applying, the workload's kind says what its controller does with such a
change (`WorkloadKind.pod_roll`): a kind that would leave the pods as they are (a RayCluster
without KubeRay's Recreate upgrade strategy, an annotation-only restart of an RBG v0.7 group)
is refused with what to do instead (`NoEffectError`), nothing applied. After readiness,
`wait_rolled` waits until the workload's pods are all new ones (a UID not seen before the
change) or, for in-place kinds, ones whose containers restarted, Ready and as many as the
workload asks for, and fails plainly when they do not.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from kubernetes import client as k8s_client
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llm_rollout.errors import PermanentError
from llm_rollout.kinds import PodRoll, TemplateChange, WorkloadKind, kind_of
from llm_rollout.kinds.base import PodFilter
from llm_rollout.kube.resources import JsonDict, ObjectRef, list_objects
from llm_rollout.kube.views import ObjectView, PodView, items_at, mapping_at
from llm_rollout.kube.watching import (
    Done,
    Interrupt,
    Selector,
    Verdict,
    Waiting,
    WaitTimeout,
    call_with_retry,
    wait_until,
)
from llm_rollout.release.inventory import release_objects
from llm_rollout.release.state import read_release_state
from llm_rollout.spec import DNS1123_LABEL, IMAGE_REF, SAFE_ARG, SecretKeyRef, SmokeSpec
from llm_rollout.vocabulary import COMPONENT_LABEL, RESTARTED_AT_ANNOTATION, WORKLOAD_KINDS

# Server-owned metadata that must not be sent back in an apply.
_SERVER_METADATA = (
    "resourceVersion",
    "uid",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "ownerReferences",
)

Action = Literal["restart", "update", "scale", "rollback"]


class RedeployRequest(BaseModel):
    """What to do to which service (the redeploy flow's parameter)."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(
        description="Service name (the stable Service), as in the spec's `name`.",
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    namespace: str = Field(
        description="Namespace of the service (no default).",
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    action: Action = Field(
        description=(
            "restart: new pods, same settings; update: change image / engine_args / replicas; "
            "scale: change replicas only; rollback: route to the previous release again."
        )
    )
    image: str | None = Field(
        default=None, description="update: new engine image.", pattern=IMAGE_REF.pattern
    )
    engine_args: list[str] = Field(
        default_factory=list,
        description=(
            'update: engine flags to set, one token each, e.g. ["--max-model-len", "4096"]; '
            "an existing flag gets the new value, a new one is appended."
        ),
        max_length=64,
    )
    replicas: int | None = Field(
        default=None, ge=1, le=64, description="update/scale: serving replicas."
    )
    ready_timeout_s: int = Field(
        default=1800, ge=10, le=86_400, description="Wait for the workload to be ready (s)."
    )
    smoke_timeout_s: int = Field(
        default=300, ge=1, le=3600, description="Time limit of the smoke test (s)."
    )
    smoke: SmokeSpec = Field(
        default_factory=SmokeSpec, description="Smoke-test gate after pods restarted."
    )
    lock_wait_s: int = Field(
        default=900,
        ge=0,
        le=86_400,
        description="Wait this long for another rollout of the service to finish (0: fail).",
    )

    @field_validator("engine_args")
    @classmethod
    def _safe_args(cls, values: list[str]) -> list[str]:
        for index, arg in enumerate(values):
            if not SAFE_ARG.match(arg):
                raise ValueError(f"entry {index} contains whitespace or shell metacharacters")
        if values and not values[0].startswith("--"):
            raise ValueError("must start with a flag such as --max-model-len")
        return values

    @model_validator(mode="after")
    def _fits_action(self) -> RedeployRequest:
        changes = self.image is not None or bool(self.engine_args) or self.replicas is not None
        if self.action == "update" and not changes:
            raise ValueError("action update needs image, engine_args or replicas")
        if self.action == "scale" and (self.replicas is None or self.image or self.engine_args):
            raise ValueError("action scale takes replicas only")
        if self.action in ("restart", "rollback") and changes:
            raise ValueError(f"action {self.action} takes no image, engine_args or replicas")
        return self

    @property
    def restarts_pods(self) -> bool:
        return self.action == "restart" or self.image is not None or bool(self.engine_args)


def applyable(obj: JsonDict) -> JsonDict:
    """A workload read back, without status and server-owned metadata, ready to apply whole."""
    result = copy.deepcopy(obj)
    result.pop("status", None)
    metadata = result.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        metadata.pop(key, None)
    return result


def pod_templates(obj: JsonDict) -> list[JsonDict]:
    """Every pod template of a workload (a mapping whose `spec` has `containers`)."""
    found: list[JsonDict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            spec = node.get("spec")
            if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
                found.append(node)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj.get("spec"))
    return found


# The component label render puts on every pod template (llm_rollout/render.py `labels`): the
# PD router's pods carry component "router" (manifests/sglang/pd-rbg.yaml.j2).
ROUTER_COMPONENT = "router"


def engine_templates(templates: list[JsonDict]) -> list[JsonDict]:
    """The templates whose first container is the engine: all but the PD router's, which
    takes no engine flags (sglang-router would refuse them and never start)."""
    return [
        t
        for t in templates
        if ObjectView(t).metadata.labels.get(COMPONENT_LABEL) != ROUTER_COMPONENT
    ]


def _set_flags(args: list[str], flags: list[str]) -> list[str]:
    result = list(args)
    index = 0
    while index < len(flags):
        flag = flags[index]
        value = (
            flags[index + 1]
            if index + 1 < len(flags) and not flags[index + 1].startswith("--")
            else None
        )
        index += 2 if value is not None else 1
        if flag in result:
            position = result.index(flag)
            has_value = position + 1 < len(result) and not result[position + 1].startswith("--")
            if value is None:
                if has_value:
                    del result[position + 1]
            elif has_value:
                result[position + 1] = value
            else:
                result.insert(position + 1, value)
        else:
            result += [flag] if value is None else [flag, value]
    return result


def changed_workload(obj: JsonDict, request: RedeployRequest, now: datetime) -> JsonDict:
    """The serving workload with the request's change applied (input left untouched)."""
    desired = applyable(obj)
    kind = str(desired.get("kind"))
    templates = pod_templates(desired)
    if not templates:
        raise PermanentError(f"{kind} {ObjectRef.of(obj).name} has no pod template to change")
    if request.restarts_pods:
        for template in templates:
            annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
            annotations[RESTARTED_AT_ANNOTATION] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if request.image is not None:
        for template in templates:
            for container in template["spec"]["containers"]:
                container["image"] = request.image
    if request.engine_args:
        for template in engine_templates(templates):
            container = template["spec"]["containers"][0]
            args = container.get("args")
            command = container.get("command") or []
            if not isinstance(args, list) or command[:2] == ["sh", "-c"]:
                raise PermanentError(
                    f"{kind}: the engine starts from a shell script here; change "
                    "serving.extra_args in the spec and run deploy-model instead"
                )
            container["args"] = _set_flags([str(a) for a in args], request.engine_args)
    if request.replicas is not None:
        if "replicas" not in ObjectView(desired).spec:
            raise PermanentError(
                f"{kind} has no spec.replicas (PD and Ray layouts size themselves); change "
                "the spec and run deploy-model instead"
            )
        desired["spec"]["replicas"] = request.replicas
    return desired


def serving_workload(
    api: k8s_client.ApiClient, namespace: str, service: str
) -> tuple[str, JsonDict]:
    """(serving release, its workload as stored), or a PermanentError saying what is missing."""
    state = read_release_state(api, namespace, service)
    if state.current_release is None:
        raise PermanentError(f"Service {namespace}/{service} does not exist or serves nothing")
    for obj in release_objects(api, namespace, service, state.current_release):
        if obj.get("kind") in WORKLOAD_KINDS:
            return state.current_release, obj
    raise PermanentError(
        f"the workload of release {state.current_release} of Service {namespace}/{service} is "
        "missing"
    )


def release_service(
    api: k8s_client.ApiClient, namespace: str, service: str, release: str
) -> tuple[str, int]:
    """Name and port of the release's own Service (what the smoke test talks to)."""
    for obj in release_objects(api, namespace, service, release):
        if obj.get("kind") == "Service":
            ports = items_at(obj, "spec", "ports")
            port = int(ports[0].get("port") or 0) if ports else 0
            return str(obj["metadata"]["name"]), port
    raise PermanentError(f"release {release} of Service {namespace}/{service} has no Service")


def _flag_value(tokens: list[str], flag: str) -> str | None:
    if flag in tokens:
        position = tokens.index(flag)
        if position + 1 < len(tokens):
            return tokens[position + 1]
    return None


def served_model(workload: JsonDict) -> tuple[str, SecretKeyRef | None]:
    """The model name clients send and the API-key Secret reference, from the engine container."""
    templates = pod_templates(workload)
    container = templates[0]["spec"]["containers"][0] if templates else {}
    args = [str(a) for a in container.get("args") or []]
    name = _flag_value(args, "--served-model-name")
    command = [str(c) for c in container.get("command") or []]
    if name is None and len(command) >= 2 and command[-2] == "-c":
        # Ray and multi-node engines start from a shell script (`bash -c`) that runs
        # `vllm serve ... --served-model-name NAME`; the script quotes each argument.
        try:
            name = _flag_value(shlex.split(command[-1]), "--served-model-name")
        except ValueError:
            name = None
    if name is None:
        raise PermanentError("cannot tell the served model name from the engine arguments")
    key: SecretKeyRef | None = None
    for env in items_at(container, "env"):
        ref = mapping_at(env, "valueFrom", "secretKeyRef")
        if str(env.get("name", "")).endswith("API_KEY") and ref:
            key = SecretKeyRef(secret_name=str(ref["name"]), key=str(ref["key"]))
    return name, key


# --- proving the change reached the pods (B7) -----------------------------------------------------

# The proof waits for the new pods to be Ready as well: a kind whose status lags its roll (RBG
# v0.6 keeps a role's status entry while only its updatedReplicas moved) reports ready before
# its last pods were replaced, so the proof may carry a readiness-sized wait. The flow bounds
# it by the request's ready timeout; this is the largest that timeout may be.
ROLL_PROOF_S = 86_400.0

# Per live pod (by UID): each container's "<containerID>#<restartCount>", what an in-place
# restart changes while the UID stays.
PodIncarnations = dict[str, dict[str, str]]


class NoEffectError(PermanentError):
    """A pod-template change that does not (or would not) reach the running pods."""


def template_change(request: RedeployRequest) -> TemplateChange | None:
    """What the request changes in the pod templates; None when it changes none (scale)."""
    if request.engine_args:
        return "spec"
    if request.image is not None:
        return "image"
    if request.action == "restart":
        return "metadata"
    return None


def _kind(workload: Mapping[str, Any]) -> WorkloadKind:
    kind = kind_of(workload)
    if kind is None:
        raise PermanentError(f"{workload.get('kind')} is not a workload kind llm-rollout serves")
    return kind


def expected_roll(workload: Mapping[str, Any], request: RedeployRequest) -> PodRoll | None:
    """How the pods will take the request's change; `NoEffectError` when they would not.

    Called before anything is applied, so a change the controller would ignore is refused
    with the kind's advice instead of reported as done.
    """
    change = template_change(request)
    if change is None:
        return None
    kind = _kind(workload)
    roll = kind.pod_roll(workload, change)
    if roll.mode == "none":
        name = ObjectRef.of(workload).name
        raise NoEffectError(
            f"{request.action} of {kind.kind} {name} not applied: its running pods would keep "
            f"the old template. {roll.advice}"
        )
    return roll


def _live(pods: Iterable[Mapping[str, Any]]) -> list[PodView]:
    """The pods not being deleted."""
    return [pod for pod in map(PodView, pods) if not pod.is_terminating]


def incarnations(pods: Iterable[Mapping[str, Any]]) -> PodIncarnations:
    """The live pods' UIDs with each container's identity and restart count."""
    found: PodIncarnations = {}
    for pod in _live(pods):
        uid = pod.metadata.uid
        if not uid:
            continue
        found[uid] = {c.name: f"{c.container_id}#{c.restart_count}" for c in pod.container_statuses}
    return found


def not_rolled(
    before: PodIncarnations,
    pods: Iterable[Mapping[str, Any]],
    roll: PodRoll,
    expected_pods: int | None = None,
) -> list[str]:
    """What still keeps the pods from all running the change ([] = every pod rolled).

    A pod has taken the change when it is new (a UID not seen before) or, for in-place kinds,
    one of its containers restarted, and it is Ready. With `expected_pods`, that many such
    pods must exist: a controller that replaces pods one role or ordinal at a time (a
    StatefulSet creates the new pod only once the old one is gone) leaves moments where every
    live pod is new but one is missing.
    """
    missing: list[str] = []
    live = _live(pods)
    if not live:
        return ["no live pods yet"]
    now = incarnations(pod.raw for pod in live)
    took = 0
    for pod in live:
        uid, name = pod.metadata.uid, pod.metadata.name
        old = before.get(uid)
        changed = old is None or (
            roll.mode == "in-place"
            and any(old.get(c) not in (None, seen) for c, seen in now.get(uid, {}).items())
        )
        if changed:
            if pod.is_ready:
                took += 1
            else:
                missing.append(f"pod {name} (uid {uid}) runs the change but is not Ready yet")
        elif roll.mode == "in-place":
            missing.append(f"pod {name} (uid {uid}): no container restarted since the change")
        else:
            missing.append(f"pod {name} (uid {uid}) is still the one from before the change")
    if expected_pods is not None and took < expected_pods:
        missing.append(f"{took} of {expected_pods} pods run the change and are Ready")
    return missing


def revert_incarnations(changed: PodIncarnations, now: PodIncarnations) -> PodIncarnations:
    """What a revert must roll: the pods as they are now, less those the change never touched
    (same UID and containers as before it), which already run the template restored."""
    return {uid: seen for uid, seen in now.items() if changed.get(uid) != seen}


def pod_watch(workload: Mapping[str, Any]) -> tuple[Selector, PodFilter]:
    """The watch over a workload's pods and the client-side filter its kind needs."""
    selector, keep = _kind(workload).pod_selector(workload)
    namespace = ObjectRef.of(workload).namespace
    return Selector("v1", "Pod", namespace, label_selector=selector), keep


def workload_incarnations(
    api: k8s_client.ApiClient, workload: Mapping[str, Any]
) -> PodIncarnations:
    """The workload's live pods as they are now (what `wait_rolled` compares against)."""
    spec, keep = pod_watch(workload)
    pods, _ = call_with_retry(
        lambda: list_objects(api, "v1", "Pod", spec.namespace, label_selector=spec.label_selector)
    )
    return incarnations(p for p in pods if keep(p))


def wait_rolled(
    api: k8s_client.ApiClient,
    workload: Mapping[str, Any],
    before: PodIncarnations,
    roll: PodRoll,
    timeout_s: float,
    *,
    interrupt: Interrupt | None = None,
) -> list[str]:
    """Wait until every live pod of `workload` took the change and is Ready, as many as the
    workload asks for; return their names.

    Old pods of a replaced set may still be going when readiness holds (a Deployment counts
    them out once they terminate), and a kind whose status lags its roles (an RBG role rolled
    after the others) may report ready before its last pod was replaced, so this watches
    rather than looks once. A timeout is a `NoEffectError` naming the pods that did not change;
    an `interrupt` (the rollout lease the caller holds, lost meanwhile) ends the wait with its
    error as soon as it fires.
    """
    spec, keep = pod_watch(workload)
    expected = len(_kind(workload).pod_demands(workload))

    def rolled(listed: list[ObjectView]) -> Verdict[list[str]]:
        pods = [pod for pod in (dict(view.raw) for view in listed) if keep(pod)]
        missing = not_rolled(before, pods, roll, expected)
        if missing:
            return Waiting(tuple(missing))
        return Done(sorted(pod.metadata.name for pod in _live(pods)))

    try:
        return wait_until(
            api,
            spec,
            rolled,
            timeout_s,
            waiting_for="the change to reach the pods",
            interrupt=interrupt,
        )
    except WaitTimeout as exc:
        raise NoEffectError(
            f"{ObjectRef.of(workload)}: the change did not reach its pods within "
            f"{timeout_s:.0f}s: " + "; ".join(exc.missing)
        ) from exc
