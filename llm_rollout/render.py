"""Render a `ServiceSpec` into the Kubernetes objects of one release.

Call `render(spec, release="r1a2b3", rbg_flavor="v0.6")` (the flavour defaults to
`kinds.DEFAULT_RBG_FLAVOR`); it returns a `RenderedRelease`:

- `storage_objects`: shared by every release that serves the same weights, in apply order:
  the OSS AccessKey `Secret` (only when the mount uses keys, i.e. no `volume.rrsa_role`; the
  rendered object carries NO values, see below), the static OSS `PersistentVolume`
  (CSI `ossplugin.csi.alibabacloud.com`, `volumeHandle` == PV name) and its
  `PersistentVolumeClaim` (bound through the `alicloud-pvname` label selector, empty
  storageClassName so no provisioner steps in). These carry no release label.
- `workload_objects`: release-scoped, in apply order: the workload named `<name>-<release>`
  (a `Deployment`, `LeaderWorkerSet`, `RoleBasedGroup` or `RayCluster`, by `serving.shape`) and
  the release Service `<name>-<release>-api`, which selects only this release's entry pods
  (LWS leaders via `role: leader`, the RBG router role, the Ray head, or the Deployment pods).
- `stable_service`: the Service `<name>` clients use. Its selector is
  `{app.kubernetes.io/part-of: <name>, llm-rollout.io/release: <release>,
  llm-rollout.io/entrypoint: "true"}`; switching traffic to another release means patching the
  `llm-rollout.io/release` value of that selector (see `stable_selector`).
- `all()`: storage, workload, then stable Service: the apply order. Delete in reverse.

Labels on every object: `app.kubernetes.io/name` (engine), `app.kubernetes.io/instance`
(`<name>-<release>` for release objects, `<name>` for storage), `app.kubernetes.io/component`,
`app.kubernetes.io/part-of` (`<name>`), `app.kubernetes.io/managed-by` (`llm-rollout`),
`app.kubernetes.io/version` (image tag); release objects and their pods also carry
`llm-rollout.io/release`. Annotations record `llm-rollout.io/model-source`,
`llm-rollout.io/model-revision`, `llm-rollout.io/spec-hash` and `llm-rollout.io/release`.

Secrets: plan output never holds secret values. The deploy flow resolves the AccessKey pair from
the references in `storage.credentials` and calls `render_oss_secret(spec, id, secret)` at apply
time; that is the only function that puts values into an object. The API key is referenced by
`secretKeyRef` only.

RBG flavors: `v0.6` renders `workloads.x-k8s.io/v1alpha1` with `rolebasedgroup.workloads.x-k8s.io/*`
labels and `GROUP_NAME`/`ROLE_NAME` env; `v0.7` renders `v1alpha2` (`standalonePattern`) with
`rbg.workloads.x-k8s.io/*` labels and `RBG_*` env.

Templates live in `manifests/` (Jinja2 producing YAML); this module computes names, labels,
commands and probe numbers, and the templates lay them out.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import jinja2
import yaml

from llm_rollout import kuberay, kv_cache
from llm_rollout.errors import SpecError
from llm_rollout.kinds import DEFAULT_RBG_FLAVOR, RbgFlavor, kind_for, raycluster, rbg
from llm_rollout.kinds.rbg import RoleServiceError
from llm_rollout.spec import DNS1123_LABEL, MAX_RELEASE_LEN, ServiceSpec
from llm_rollout.spec import spec_hash as hash_of_spec
from llm_rollout.templates import template_loader
from llm_rollout.vocabulary import (
    ANN_MODEL,
    ANN_RELEASE,
    ANN_REVISION,
    ANN_SPEC_HASH,
    COMPONENT_LABEL,
    ENTRYPOINT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    RELEASE_LABEL,
    SECRET_VALUES_ANNOTATION,
    VERSION_LABEL,
)

K8sObject = dict[str, Any]

RAY_GCS_PORT = kuberay.GCS_PORT
SGLANG_DIST_PORT = 20000
# sglang-router's pause between health-check rounds while it waits for its servers
# (`--worker-startup-check-interval`, default 10 s: sgl-router `py_src/sglang_router/
# launch_router.py` `RouterArgs`); the rendered command keeps the default.
ROUTER_CHECK_INTERVAL_S = 10
SHM_VOLUME = "dshm"
MODEL_VOLUME = "model"
API_KEY_ENV = "LLM_API_KEY"

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class RenderedRelease:
    """Objects of one release, grouped by lifetime (see the module docstring)."""

    release: str
    storage_objects: list[K8sObject]
    workload_objects: list[K8sObject]
    stable_service: K8sObject
    # The hash of the spec rendered (`spec.spec_hash`), in the storage objects' annotations.
    spec_hash: str
    # What the objects were rendered for, so a caller can tell whether they still fit.
    rbg_flavor: RbgFlavor = DEFAULT_RBG_FLAVOR
    max_model_len: int | None = None
    # Operator-version features read from the installed CRD (`WorkloadKind.crd_features`).
    crd_features: frozenset[str] = frozenset()
    # RBG role -> headless Service the router's backend URLs name (see `bind_role_services`).
    role_services: Mapping[str, str] = field(default_factory=dict)

    def all(self) -> list[K8sObject]:
        """Every object in apply order; delete in reverse."""
        return [*self.storage_objects, *self.workload_objects, self.stable_service]

    @property
    def workload(self) -> K8sObject:
        """The Deployment/LeaderWorkerSet/RoleBasedGroup/RayCluster of this release."""
        return self.workload_objects[0]


def stable_selector(spec: ServiceSpec, release: str) -> dict[str, str]:
    """Selector of the stable Service when `release` receives the traffic."""
    return {PART_OF_LABEL: spec.name, RELEASE_LABEL: release, ENTRYPOINT_LABEL: "true"}


def workload_name(spec: ServiceSpec, release: str) -> str:
    return f"{spec.name}-{release}"


def release_service_name(spec: ServiceSpec, release: str) -> str:
    # Workload controllers create Services named after the workload (LWS: the workload's own
    # name; see `WorkloadKind.controller_services`), hence the suffix.
    return f"{spec.name}-{release}-api"


def default_release(spec: ServiceSpec) -> str:
    """Deterministic release id for a spec: "r" + the first 7 hex digits of its hash."""
    return "r" + hash_of_spec(spec)[:7]


def check_release(release: str) -> None:
    """Reject release ids that cannot be embedded in object names and label values."""
    if len(release) > MAX_RELEASE_LEN or not DNS1123_LABEL.match(release):
        raise SpecError(
            "release",
            f"must be a DNS-1123 label of at most {MAX_RELEASE_LEN} characters, got {release!r}",
        )


# --- name lengths the workload controllers derive -------------------------------------------------

# The StatefulSet controller labels every pod `controller-revision-hash: <statefulset>-<hash>`
# (kubernetes `pkg/controller/history/controller_history.go`: `ControllerRevisionName` is
# "prefix-hash", `HashControllerRevision` a 32-bit FNV sum, safe-encoded: at most 10
# characters), and a label value holds at most 63 characters; a longer StatefulSet name makes
# every pod create fail while the rollout waits for pods that never come.
LABEL_VALUE_MAX = 63
REVISION_HASH_MAX = 10
STATEFULSET_NAME_MAX = LABEL_VALUE_MAX - 1 - REVISION_HASH_MAX


def check_name_lengths(spec: ServiceSpec, release: str, rbg_flavor: RbgFlavor) -> None:
    """Refuse a name whose derived StatefulSet names break pod creation (see above).

    Checked for the longest release id, whatever `release` is: a deploy names each release
    with `strategy.new_release_id` (MAX_RELEASE_LEN characters) while `plan` renders a shorter
    default one, and both must give a name the same verdict.
    """
    check_release(release)
    placeholder = "<release>"
    workload = workload_name(spec, placeholder)
    for statefulset, made_by in kind_for(spec).derived_statefulsets(spec, workload, rbg_flavor):
        length = len(statefulset) - len(placeholder) + MAX_RELEASE_LEN
        excess = length - STATEFULSET_NAME_MAX
        if excess > 0:
            raise SpecError(
                "name",
                f"{spec.name!r} is {excess} character(s) too long for {spec.serving.shape}: "
                f"{made_by} would be named {statefulset!r}, {length} characters with a "
                f"{MAX_RELEASE_LEN}-character release id, and its pods' "
                f"controller-revision-hash label '<statefulset>-<hash of up to "
                f"{REVISION_HASH_MAX} characters>' must fit in {LABEL_VALUE_MAX}, or the "
                f"StatefulSet controller cannot create them; use at most "
                f"{len(spec.name) - excess} characters",
            )


# --- engine commands ---------------------------------------------------------------------------


def _shell(args: Iterable[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in args)


def _vllm_args(
    spec: ServiceSpec, *, backend: str | None, max_model_len: int | None = None
) -> list[str]:
    serving = spec.serving
    args = [
        spec.model_mount_path,
        "--served-model-name",
        spec.served_model_name,
        "--host",
        "0.0.0.0",  # noqa: S104 - the server must listen on the pod IP
        "--port",
        str(serving.port),
        "--tensor-parallel-size",
        str(serving.tp),
    ]
    if serving.pp > 1:
        args += ["--pipeline-parallel-size", str(serving.pp)]
    if backend is not None:
        args += ["--distributed-executor-backend", backend]
    if serving.trust_remote_code:
        args.append("--trust-remote-code")
    if (
        max_model_len is not None
        and kv_cache.engine_flag(serving.extra_args, "--max-model-len") is None
    ):
        # The length the KV fit was checked for, pinned so vLLM cannot derive a longer one.
        args += ["--max-model-len", str(max_model_len)]
    return args + list(serving.extra_args)


def _sglang_args(spec: ServiceSpec, *, tp: int) -> list[str]:
    serving = spec.serving
    args = [
        "--model-path",
        spec.model_mount_path,
        "--served-model-name",
        spec.served_model_name,
        "--tp",
        str(tp),
        "--host",
        "0.0.0.0",  # noqa: S104
        "--port",
        str(serving.port),
        "--enable-metrics",
    ]
    if serving.pp > 1:
        args += ["--pp-size", str(serving.pp)]
    if serving.trust_remote_code:
        args.append("--trust-remote-code")
    if serving.api_key is not None:
        # Kubernetes expands $(VAR) from the container env, so the key never appears in specs.
        args += ["--api-key", f"$({API_KEY_ENV})"]
    return args


def _sglang_extra(spec: ServiceSpec) -> list[str]:
    return list(spec.serving.extra_args)


# --- probes ------------------------------------------------------------------------------------


def api_key_env_name(spec: ServiceSpec) -> str:
    """Container env var holding the API key: vLLM reads VLLM_API_KEY itself; SGLang gets it
    through `--api-key $(LLM_API_KEY)`."""
    return "VLLM_API_KEY" if spec.serving.engine == "vllm" else API_KEY_ENV


# SGLang's /health and /health_generate are one handler that submits a one-token generation
# and waits up to SGLANG_HEALTH_CHECK_TIMEOUT (default 20 s) for the scheduler
# (sgl-project/sglang `python/sglang/srt/entrypoints/http_server.py`); a busy prefill can take
# that long while healthy, so a probe must wait longer than the server does before it counts
# a failure.
SGLANG_HEALTH_CHECK_TIMEOUT_S = 20
SGLANG_PROBE_TIMEOUT_S = SGLANG_HEALTH_CHECK_TIMEOUT_S + 5


def probe_timeout_s(spec: ServiceSpec) -> int:
    """Per-probe timeout: the user's, raised for SGLang to outlast its own health timeout."""
    timeout_s = spec.serving.probes.timeout_s
    if spec.serving.engine == "sglang":
        return max(timeout_s, SGLANG_PROBE_TIMEOUT_S)
    return timeout_s


def _http_check_command(spec: ServiceSpec, path: str) -> list[str]:
    # Used only when the server requires an API key: an httpGet probe cannot send the header
    # without writing the key into the manifest, so the probe reads it from the environment.
    port, timeout_s = spec.serving.port, probe_timeout_s(spec)
    script = (
        "import os,sys,urllib.request;"
        f"r=urllib.request.Request('http://127.0.0.1:{port}{path}',"
        f"headers={{'Authorization':'Bearer '+os.environ['{api_key_env_name(spec)}']}});"
        f"sys.exit(0 if urllib.request.urlopen(r,timeout={timeout_s}).status==200 else 1)"
    )
    return ["python3", "-c", script]


def _probe(
    spec: ServiceSpec, path: str, *, failure_threshold: int, authenticated: bool
) -> K8sObject:
    probes = spec.serving.probes
    handler: K8sObject
    if authenticated and spec.serving.api_key is not None:
        handler = {"exec": {"command": _http_check_command(spec, path)}}
    else:
        handler = {"httpGet": {"path": path, "port": "http"}}
    timeout_s = probe_timeout_s(spec)
    return {
        **handler,
        # The period may be shorter than the timeout: the kubelet probes on a ticker and runs
        # each probe to its end before waiting for the next tick, so a slow probe only delays
        # the next one (kubernetes pkg/kubelet/prober/worker.go, run/doProbe). A longer period
        # would delay each readiness change by up to a period.
        "periodSeconds": probes.period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failure_threshold,
    }


def server_probes(spec: ServiceSpec, *, ready_path: str) -> dict[str, K8sObject]:
    """Startup (weights loading), readiness (the model answers) and liveness probes."""
    probes = spec.serving.probes
    # Each failed startup probe takes at least a period, so this many cover the budget.
    startup_failures = math.ceil(probes.startup_budget_s / probes.period_s)
    return {
        "startupProbe": _probe(
            spec, "/health", failure_threshold=startup_failures, authenticated=False
        ),
        "readinessProbe": _probe(
            spec, ready_path, failure_threshold=probes.failure_threshold, authenticated=True
        ),
        "livenessProbe": _probe(
            spec, "/health", failure_threshold=probes.failure_threshold, authenticated=False
        ),
    }


# --- template context --------------------------------------------------------------------------


def _label_value(value: str) -> str:
    cleaned = _LABEL_VALUE.sub("-", value)[:63].strip("-_.")
    return cleaned or "unknown"


def _image_tag(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return _label_value(tail.split("@", 1)[1].replace("sha256:", "")[:12])
    return _label_value(tail.split(":", 1)[1]) if ":" in tail else "latest"


def _model_source(spec: ServiceSpec) -> str:
    if spec.model.modelscope is not None:
        return f"modelscope:{spec.model.modelscope.model_id}"
    return str(spec.model.oss_uri)


OSSFS_DEFAULT_OPTS = "-o umask=022 -o max_stat_cache_size=0 -o allow_other"


class _Ctx:
    """Names, labels and building blocks handed to the templates."""

    RAY_GCS_PORT = RAY_GCS_PORT
    SGLANG_DIST_PORT = SGLANG_DIST_PORT

    def __init__(
        self,
        spec: ServiceSpec,
        release: str,
        rbg_flavor: RbgFlavor,
        role_services: Mapping[str, str] | None = None,
        max_model_len: int | None = None,
        crd_features: frozenset[str] = frozenset(),
        spec_hash: str | None = None,
    ) -> None:
        self.spec = spec
        self.spec_hash = spec_hash if spec_hash is not None else hash_of_spec(spec)
        self.crd_features = crd_features
        self.role_services = dict(role_services or {})
        self.max_model_len = max_model_len
        self.release = release
        self.rbg_flavor = rbg_flavor
        self.namespace = spec.namespace
        self.workload = workload_name(spec, release)
        self.api_service = release_service_name(spec, release)
        self.storage_annotations = {
            ANN_MODEL: _model_source(spec),
            ANN_REVISION: spec.model_revision,
            ANN_SPEC_HASH: self.spec_hash,
        }
        self.annotations = {**self.storage_annotations, ANN_RELEASE: release}
        if spec.volume.other_opts is not None:
            self.other_opts = spec.volume.other_opts
        else:
            # ossfs2 takes different options; its defaults already suit read-only weights.
            self.other_opts = OSSFS_DEFAULT_OPTS if spec.volume.fuse_type == "ossfs" else ""
        self.base_labels = {
            NAME_LABEL: spec.serving.engine,
            PART_OF_LABEL: spec.name,
            MANAGED_BY_LABEL: MANAGED_BY,
            VERSION_LABEL: _image_tag(spec.serving.image),
        }

    def labels(self, component: str, *, entrypoint: bool = False, **extra: str) -> dict[str, str]:
        """Labels of a release object or pod template; `entrypoint` marks client-facing pods."""
        labels = {
            **self.base_labels,
            INSTANCE_LABEL: self.workload,
            COMPONENT_LABEL: component,
            RELEASE_LABEL: self.release,
        }
        if entrypoint:
            labels[ENTRYPOINT_LABEL] = "true"
        labels.update(extra)
        return labels

    def stable_selector(self) -> dict[str, str]:
        return stable_selector(self.spec, self.release)

    def native_entry_selector(self) -> dict[str, str]:
        """Labels the workload controller sets on the entry pods, narrowing the release Service."""
        return kind_for(self.spec).entry_selector(self.workload, self.rbg_flavor)

    def storage_labels(self) -> dict[str, str]:
        return {
            **self.base_labels,
            INSTANCE_LABEL: self.spec.name,
            COMPONENT_LABEL: "model-storage",
        }

    def secret_annotations(self) -> dict[str, str]:
        return {
            SECRET_VALUES_ANNOTATION: (
                "filled in at apply time from storage.credentials; never rendered"
            )
        }

    def stable_service_labels(self) -> dict[str, str]:
        """The stable Service's labels: the service's, not a release's."""
        return {**self.base_labels, INSTANCE_LABEL: self.spec.name, COMPONENT_LABEL: "api"}

    def stable_service_annotations(self) -> dict[str, str]:
        """The release the stable Service routes to when rendered (promote adds the rest)."""
        return {ANN_RELEASE: self.release}

    def gpu_resources(self, gpus: int) -> K8sObject:
        res = self.spec.serving.resources
        amounts: dict[str, str | int] = {"cpu": res.cpu, "memory": f"{res.memory_gib}Gi"}
        if gpus:
            amounts["nvidia.com/gpu"] = str(gpus)
        if gpus and res.erdma:
            amounts["aliyun/erdma"] = str(res.erdma)
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def cpu_resources(self) -> K8sObject:
        return {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }

    def api_key_env(self) -> list[K8sObject]:
        ref = self.spec.serving.api_key
        if ref is None:
            return []
        source = {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}
        return [{"name": api_key_env_name(self.spec), "valueFrom": source}]

    def model_volume(self) -> K8sObject:
        return {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": self.spec.pvc_name, "readOnly": True},
        }

    def shm_volume(self) -> K8sObject:
        return {
            "name": SHM_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": f"{self.spec.serving.shm_size_gib}Gi"},
        }

    def mounts(self) -> list[K8sObject]:
        return [
            {"name": MODEL_VOLUME, "mountPath": self.spec.model_mount_path, "readOnly": True},
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},  # noqa: S108 - the shm mount point
        ]

    def ready_path(self) -> str:
        # vLLM lists the model only once it is loaded; SGLang generates one token.
        return "/v1/models" if self.spec.serving.engine == "vllm" else "/health_generate"

    def probes(self) -> dict[str, K8sObject]:
        return server_probes(self.spec, ready_path=self.ready_path())

    def signal_forwarding(self) -> str:
        """Shell lines defining `run_child`, which runs a command so that SIGTERM reaches it.

        The container's PID 1 is this bash script, and the kernel drops a signal whose
        disposition is the default for a PID namespace's init (signal(7), pid_namespaces(7)):
        without a trap, bash ignores the kubelet's SIGTERM and the container waits out the
        whole terminationGracePeriodSeconds for its SIGKILL. A trap alone is not enough: bash
        runs it only after the foreground command ends and never passes the signal on. So a
        long command runs in the background, `wait` (which a trapped signal interrupts)
        waits for it, and the trap sends it SIGTERM, waits for its exit and ends the script
        with 143 (128 + SIGTERM, as a shell killed by it would; `|| ...` keeps `set -e` from
        ending it with the child's status first). SIGTERM also for an INT:
        bash starts background commands with SIGINT ignored when job control is off. The
        script's last long-running command is `exec`ed instead, replacing bash.
        """
        return (
            "child=0\n"
            "forward_term() {\n"
            "  code=none\n"
            '  if [ "$child" -ne 0 ]; then\n'
            '    kill -TERM "$child" 2>/dev/null || true\n'
            '    code=0; wait "$child" || code=$?\n'
            "  fi\n"
            '  echo "SIGTERM forwarded to the running command, which exited $code" >&2\n'
            "  exit 143\n"
            "}\n"
            "trap forward_term TERM INT\n"
            'run_child() { "$@" & child=$!; wait "$child"; }'
        )

    def wait_for_ray_nodes(self, count: str) -> str:
        """Shell lines that block until `count` Ray nodes are alive or the startup budget ends
        (through `run_child`, see `signal_forwarding`; `-c`, not a here-document, because
        bash gives a background command /dev/null as its stdin). The line before it tells a
        reader of the leader's log what the leader waits for, since the wait itself is quiet."""
        budget = self.spec.serving.probes.startup_budget_s
        return (
            f'echo "waiting for {count} Ray nodes, up to {budget} s" >&2\n'
            "run_child python3 -c '\n"
            "import sys, time\n"
            "import ray\n"
            "want, deadline = int(sys.argv[1]), time.monotonic() + int(sys.argv[2])\n"
            'ray.init(address="auto", logging_level="ERROR")\n'
            'while sum(1 for n in ray.nodes() if n["Alive"]) < want:\n'
            "    if time.monotonic() > deadline:\n"
            '        sys.exit(f"only part of the {want} Ray nodes joined in time")\n'
            "    time.sleep(5)\n"
            f"' {count} {budget}"
        )

    def ray_join_retrying(self, address: str, flags: str) -> str:
        """Shell lines joining a Ray head, retried every 5 s until the startup budget ends.

        Under LWS `startupPolicy: LeaderCreated` a worker can start before the leader's GCS
        listens (or before its DNS name resolves); a `ray start --address` that exits then
        would, under `RecreateGroupOnPodRestart`, recreate the whole group (issue 16 F5).
        With the vLLM image's ray 2.48.0 a bare start does not exit at once: the non-head
        `Node` makes `RAY_NUM_REDIS_GET_RETRIES` (20) GCS client attempts, each a 5 s channel
        wait plus the `RAY_py_gcs_connect_timeout_s` (30 s) cluster-ID call plus 1 s
        (ray/_private/node.py `_init_gcs_client` L758-800, ray_constants.py L502), then exits
        1: about 720 s, measured 732 s with a closed port; an unresolvable name waits the same
        (tests/real/test_ray_join_bound.py pins it). The loop stays because the startup
        budget it is bounded by (the budget the leader waits for its workers; 1800 s for
        seed-vllm-lws) is longer than ray's own bound, so a head later than ~12 min costs a
        retry instead of a container exit and a group recreation; vLLM's
        `examples/online_serving/multi-node-serving.sh` (LWS's own vLLM example) retries for
        the same reason. `--block` keeps the container alive as long as the raylet.

        Each attempt and each pause runs through `run_child` (see `signal_forwarding`), so a
        deletion's SIGTERM reaches `ray start --block`, which stops its node itself: with
        `--block` it builds its `Node` with `shutdown_at_exit=True` (ray 2.48.0
        ray/scripts/scripts.py L1096-1098), whose SIGTERM handler kills the node's processes
        gracefully and exits 1 (ray/_private/node.py `_register_shutdown_hooks`, L447-462);
        a separate `ray stop` would only repeat that.
        """
        budget = self.spec.serving.probes.startup_budget_s
        join = f"ray start --address={address} {flags} --disable-usage-stats --block"
        return (
            f"until run_child {join}; do\n"
            f'  if [ "$SECONDS" -ge {budget} ]; then\n'
            f'    echo "could not join the Ray head at {address} within {budget} s" >&2\n'
            "    exit 1\n"
            "  fi\n"
            f'  echo "Ray head at {address} not reachable yet; retrying in 5 s" >&2\n'
            "  run_child sleep 5\n"
            "done"
        )

    def vllm_serve(self, backend: str | None) -> str:
        return "exec vllm serve " + _shell(self.vllm_args(backend))

    def vllm_args(self, backend: str | None) -> list[str]:
        return _vllm_args(self.spec, backend=backend, max_model_len=self.max_model_len)

    def sglang_args(self, tp: int) -> list[str]:
        return _sglang_args(self.spec, tp=tp) + _sglang_extra(self.spec)

    # RoleBasedGroup conventions differ between v0.6 (v1alpha1) and v0.7+ (v1alpha2).

    def rbg_role_labels(self, role: str) -> dict[str, str]:
        return rbg.role_labels(self.workload, role, self.rbg_flavor)

    def rbg_role_service(self, role: str) -> str:
        """Headless Service of a role's pods: as read from the cluster when known, else RBG's
        current convention (`kinds.rbg.default_role_service`)."""
        known = self.role_services.get(role)
        if known is not None:
            return known
        return rbg.default_role_service(self.workload, role)

    def rbg_pod_url(self, role: str, index: int) -> str:
        host = rbg.role_pod_host(self.workload, role, index, self.rbg_role_service(role))
        return f"http://{host}.{self.namespace}.svc:{self.spec.serving.port}"

    def router_probes(self) -> dict[str, K8sObject]:
        """Startup, readiness and liveness of the PD router.

        sglang_router's `/health` aggregates the backends (503 while any prefill or decode
        server is unhealthy), so probing it would take the only entry point out of service
        and restart it whenever one backend restarts. The router serves `/liveness` (the
        process answers) and `/readiness` (it can route) of its own, in the actix-web
        generation of sglang-router 0.1.x and the axum one alike (sgl-project/sglang
        `sgl-router/src/server.rs`). mini_lb only has `/health`, answered 200 without asking
        the backends (sglang `python/sglang/srt/disaggregation/mini_lb.py` `health_check`).

        The startup probe exists because sglang-router 0.1.x listens only after
        `PDRouter::new` has waited for every prefill and decode server's `/health`
        (`sgl-router/src/routers/pd_router.rs`, `Router::wait_for_healthy_workers` in
        `src/routers/router.rs`), and an update rolls the router with its servers: with
        liveness alone the kubelet killed it after `failure_threshold` periods while the
        new servers loaded. The kubelet runs neither liveness nor readiness before the
        startup probe succeeds (kubernetes `pkg/kubelet/prober/worker.go` `doProbe`:
        "Disable other probes until container has started"), so its budget is the router's
        own wait (`router_wait_s`) plus one health-check round.
        mini_lb listens without waiting (`mini_lb.run` starts uvicorn at once); the same
        budget only bounds its start, which ends at its first answered probe.
        """
        probes = self.spec.serving.probes
        pd = self.spec.serving.pd
        assert pd is not None
        ready, live = (
            ("/readiness", "/liveness") if pd.router == "sglang_router" else ("/health", "/health")
        )
        timing = {"periodSeconds": probes.period_s, "timeoutSeconds": probes.timeout_s}
        startup_budget_s = self.router_wait_s() + ROUTER_CHECK_INTERVAL_S
        return {
            "startupProbe": {
                "httpGet": {"path": live, "port": "http"},
                **timing,
                "failureThreshold": math.ceil(startup_budget_s / probes.period_s),
            },
            "readinessProbe": {"httpGet": {"path": ready, "port": "http"}, **timing},
            "livenessProbe": {
                "httpGet": {"path": live, "port": "http"},
                **timing,
                "failureThreshold": probes.failure_threshold,
            },
        }

    def router_wait_s(self) -> int:
        """How long the router waits for its servers before it gives up: the servers'
        startup budget, the time their own startup probes allow for loading the weights
        (sglang-router's default of 300 s, `--worker-startup-timeout-secs` in
        `py_src/sglang_router/launch_router.py` `RouterArgs`, is shorter than a large
        model's load: the router would exit and restart, each time waiting anew)."""
        return self.spec.serving.probes.startup_budget_s

    def pd_router_command(self) -> list[str]:
        pd = self.spec.serving.pd
        assert pd is not None
        prefill = [self.rbg_pod_url("prefill", i) for i in range(pd.prefill_replicas)]
        decode = [self.rbg_pod_url("decode", i) for i in range(pd.decode_replicas)]
        listen = ["--host", "0.0.0.0", "--port", str(self.spec.serving.port)]  # noqa: S104
        if pd.router == "sglang_router":
            cmd = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
            for url in prefill:
                # An omitted bootstrap port silently means 8998; always pass ours.
                cmd += ["--prefill", url, str(pd.bootstrap_port)]
            for url in decode:
                cmd += ["--decode", url]
            return [*cmd, "--worker-startup-timeout-secs", str(self.router_wait_s()), *listen]
        cmd = ["python3", "-m", "sglang.srt.disaggregation.mini_lb", "--prefill", *prefill]
        cmd += ["--prefill-bootstrap-ports", *[str(pd.bootstrap_port)] * len(prefill)]
        return [*cmd, "--decode", *decode, *listen]

    def pd_server_args(self, mode: Literal["prefill", "decode"]) -> list[str]:
        pd = self.spec.serving.pd
        assert pd is not None
        tp = pd.prefill_tp if mode == "prefill" else pd.decode_tp
        args = [*_sglang_args(self.spec, tp=tp), "--disaggregation-mode", mode]
        if mode == "prefill":
            # The port the router advertises to decode servers; never leave it to the default.
            args += ["--disaggregation-bootstrap-port", str(pd.bootstrap_port)]
        if pd.transfer_backend is not None:
            args += ["--disaggregation-transfer-backend", pd.transfer_backend]
        return args + _sglang_extra(self.spec)

    # KubeRay's pods: what each helper returns, and why, is in `llm_rollout.kinds.raycluster`.

    def ray_head_params(self) -> dict[str, str]:
        return raycluster.head_start_params(self.spec)

    def ray_worker_params(self) -> dict[str, str]:
        return raycluster.worker_start_params(self.spec)

    def ray_head_ports(self) -> list[dict[str, Any]]:
        return raycluster.head_ports(self.spec)

    def ray_worker_ports(self) -> list[dict[str, Any]]:
        return raycluster.worker_ports(self.spec)

    def ray_worker_probes(self) -> dict[str, K8sObject]:
        return raycluster.worker_probes(self.spec)

    def ray_head_address(self) -> str:
        return raycluster.head_address(self.workload, self.namespace)

    @staticmethod
    def ray_flags(params: dict[str, str]) -> str:
        return " ".join(f"--{key}={shlex.quote(value)}" for key, value in params.items())


# --- rendering ---------------------------------------------------------------------------------


def _tojson(value: Any) -> str:
    # JSON is valid YAML, and it quotes every string, so no value can break the document.
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=template_loader(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - YAML, not HTML; values are emitted through `j`
    )
    env.filters["j"] = _tojson
    env.filters["sh"] = shlex.quote
    return env


def _render_docs(env: jinja2.Environment, template: str, ctx: _Ctx) -> list[K8sObject]:
    text = env.get_template(template).render(c=ctx, spec=ctx.spec)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template_for(spec: ServiceSpec) -> str:
    """Template path (relative to `manifests/`) of the workload for this engine and shape."""
    key = (spec.serving.engine, spec.serving.shape)
    templates = kind_for(spec).templates
    if key not in templates:
        raise SpecError(
            "serving.shape", f"{spec.serving.shape} is not supported with {spec.serving.engine}"
        )
    return templates[key]


def render(
    spec: ServiceSpec,
    *,
    release: str,
    rbg_flavor: RbgFlavor = DEFAULT_RBG_FLAVOR,
    rbg_role_services: Mapping[str, str] | None = None,
    max_model_len: int | None = None,
    crd_features: frozenset[str] = frozenset(),
    spec_hash: str | None = None,
) -> RenderedRelease:
    """Render every object of `release` (see the module docstring for the grouping).

    `rbg_role_services` maps an RBG role to the headless Service its pods use as subdomain,
    read from the role objects the controller created (late binding of the PD router's
    backend URLs); without it the current RBG naming convention is assumed.
    `max_model_len` (vLLM) is the sequence length the KV fit was checked for
    (`llm_rollout.kv_cache.KvFit.max_len`); it is passed as `--max-model-len` unless
    `serving.extra_args` already sets one. `crd_features` are what the installed CRD of the
    workload kind offers (`WorkloadKind.crd_features`); without them nothing version-dependent
    is rendered. `spec_hash` is the spec's `spec.spec_hash` when the caller has it (a deploy's
    plan computes it once per run); without it, it is computed here.
    """
    check_release(release)
    check_name_lengths(spec, release, rbg_flavor)
    _check_role_services(rbg_role_services or {})
    ctx = _Ctx(spec, release, rbg_flavor, rbg_role_services, max_model_len, crd_features, spec_hash)
    env = _environment()
    storage = _render_docs(env, "storage.yaml.j2", ctx)
    workload = _render_docs(env, template_for(spec), ctx)
    services = _render_docs(env, "services.yaml.j2", ctx)
    release_services = [s for s in services if s["metadata"]["name"] != spec.name]
    stable = [s for s in services if s["metadata"]["name"] == spec.name]
    return RenderedRelease(
        release=release,
        storage_objects=storage,
        workload_objects=workload + release_services,
        stable_service=stable[0],
        spec_hash=ctx.spec_hash,
        rbg_flavor=rbg_flavor,
        max_model_len=max_model_len,
        crd_features=crd_features,
        role_services=dict(rbg_role_services or {}),
    )


def _check_role_services(role_services: Mapping[str, str]) -> None:
    for role, service in role_services.items():
        # Read from the cluster, and embedded in the router's URLs: a DNS label or nothing.
        if len(service) > 63 or not DNS1123_LABEL.match(service):
            raise RoleServiceError(f"role {role}: Service name {service!r} is not a DNS-1123 label")


def bind_role_services(
    spec: ServiceSpec, rendered: RenderedRelease, role_services: Mapping[str, str]
) -> RenderedRelease:
    """`rendered` with the PD router's backend URLs naming `role_services` (late binding: the
    names are read from the pods the RBG controller created). Only the RoleBasedGroup is
    rendered again, from the workload template and what `rendered` was rendered for; every
    other object is kept as it is."""
    _check_role_services(role_services)
    ctx = _Ctx(
        spec,
        rendered.release,
        rendered.rbg_flavor,
        role_services,
        rendered.max_model_len,
        rendered.crd_features,
        rendered.spec_hash,
    )
    bound = {
        doc["kind"]: doc
        for doc in _render_docs(_environment(), template_for(spec), ctx)
        if doc["kind"] == rbg.RoleBasedGroup.kind
    }
    workload = [bound.get(str(o.get("kind")), o) for o in rendered.workload_objects]
    return replace(rendered, workload_objects=workload, role_services=dict(role_services))


def plan_checks(spec: ServiceSpec, rendered: RenderedRelease) -> list[str]:
    """What rendering checked for this spec, in words, for `llm-rollout plan` to print."""
    checks = [
        "spec: every field valid; weights per GPU fit the GPU at the engine's memory share",
        # Which CRDs the custom resources met (if any) is the caller's to say.
        f"objects: {len(rendered.all())} validated offline against the Kubernetes schemas",
    ]
    shape = spec.serving.shape
    if shape in ("multi-node", "pd-disaggregated"):
        checks.append(
            f"names: StatefulSets the {shape} controller derives stay within "
            f"{STATEFULSET_NAME_MAX} characters for any release id of up to {MAX_RELEASE_LEN} "
            f"(controller-revision-hash label)"
        )
    checks += kind_for(spec).plan_checks(spec)
    if spec.serving.engine == "sglang":
        checks.append(
            f"SGLang: probe timeouts {probe_timeout_s(spec)} s outlast its "
            f"{SGLANG_HEALTH_CHECK_TIMEOUT_S} s health-check generation"
        )
    if shape == "pd-disaggregated" and spec.serving.pd is not None:
        if spec.serving.pd.router == "sglang_router":
            checks.append("router: probed on /liveness and /readiness, not the aggregate /health")
        checks.append(
            "router backends: planned with RBG's 's-<rbg>-<role>' role Services (RBG >= v0.5); "
            "deploy re-binds them to the Services the created role pods name"
        )
    checks.append(f"PV url: {spec.csi_oss_url} (the CSI driver picks the scheme when bare)")
    checks.append(
        f"storage: PV {spec.pv_name} / PVC {spec.pvc_name} named after everything their "
        "immutable fields hold, so changed mount options make new objects"
    )
    return checks


def render_oss_secret(
    spec: ServiceSpec,
    access_key_id: str,
    access_key_secret: str,
    *,
    spec_hash: str | None = None,
) -> K8sObject:
    """The OSS AccessKey Secret with its values, for the deploy flow to apply; never log it.
    `spec_hash` as for `render`."""
    # Storage objects do not depend on the release; any valid id renders them identically.
    ctx = _Ctx(spec, "storage", DEFAULT_RBG_FLAVOR, spec_hash=spec_hash)
    docs = _render_docs(_environment(), "storage.yaml.j2", ctx)
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    secret["stringData"] = {"akId": access_key_id, "akSecret": access_key_secret}
    return secret


def secret_resource_names(spec: ServiceSpec) -> list[str]:
    """Names of Secrets a release reads (OSS keys when used, the API key when set)."""
    names = [spec.oss_secret_name] if spec.uses_access_keys else []
    if spec.serving.api_key is not None:
        names.append(spec.serving.api_key.secret_name)
    return names


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line strings (shell scripts) as literal blocks so plans read naturally."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _str_representer)


def to_yaml(obj: K8sObject) -> str:
    """One object as YAML, keys in rendering order, scripts as literal blocks."""
    return yaml.dump(obj, Dumper=_BlockStyleDumper, sort_keys=False, allow_unicode=True, width=100)
