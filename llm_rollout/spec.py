"""The one spec a user writes for a model service, validated at entry.

`ServiceSpec` is both what `llm-rollout plan/deploy` read from YAML and the Prefect flow
parameter, so every field carries a description and units live in field names (`*_s`, `*_ms`,
`*_gib`, `*_bytes`). Every model forbids unknown fields.

Entry points:
- `load_spec(path)` reads a YAML file; `spec_from_dict(data)` validates an already-parsed
  mapping. Both raise `InvalidSpecError` (a `SpecError`) whose `field` is the dotted path of the
  first offending field and whose `problems` lists every `(field, problem)` found.
- `spec_hash(spec)` is a stable SHA-256 over the canonical JSON form of the spec.
- `ServiceSpec` helpers used by rendering and the flows: `model_bucket`, `model_object_prefix`
  (where the weights live in OSS), `model_dir_name`, `model_mount_path`, `pv_name`,
  `pvc_name`, `oss_secret_name`, `pv_capacity_gib`, `served_model_name`, `gpus_per_replica`.

Where mirrored weights live: a ModelScope source is mirrored to
`oss://<storage.bucket>/<storage.prefix>/<model_id>/<revision>/`; an `oss_uri` source is used
as-is. The PV mounts exactly that prefix, read-only.

Credentials are references only: a Prefect Secret block name or environment variable *names*
for the OSS keys, or an RRSA role for the CSI mount; the API key is a Kubernetes Secret name and
key. No field of this module ever holds a secret value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llm_rollout import kuberay, kv_cache
from llm_rollout.errors import SpecError

GIB = 1024**3

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Room is left for the release suffix and the pod-name suffixes that LWS, RBG and KubeRay append;
# the stable Service, workloads and labels must all stay within 63 characters.
MAX_SERVICE_NAME_LEN = 40
MAX_RELEASE_LEN = 12
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OSS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
OSS_URI = re.compile(r"^oss://(?P<bucket>[a-z0-9][a-z0-9-]{1,61}[a-z0-9])/(?P<prefix>[^\s]+?)/?$")
MODELSCOPE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*[A-Za-z0-9_.-]$", re.IGNORECASE)
# Engine args end up inside a `sh -c` script for the Ray/LWS shapes, so only characters that
# carry no shell meaning are accepted (they are also shell-quoted when rendered).
SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:=,+@%-]+$")
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,127}$")
K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
# Object key prefixes reach the CSI mount's `path` attribute (and its FUSE command line): only
# characters without shell or URL meaning.
SAFE_PREFIX = re.compile(r"^[A-Za-z0-9._/-]*$")
# An AccessKey ID (LTAI...), an STS token id, or a long mixed-case alphanumeric run with no
# separator looks like key material, not like the name of a variable that holds it.
SECRET_LIKE = re.compile(
    r"^(LTAI[0-9A-Za-z]{8,}|STS\..*|(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])"
    r"(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{16,})$"
)
# Control characters other than tab/newline/CR in free text: terminal escape sequences and NULs
# would reach logs, terminals and artifacts.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

MAX_MODEL_BYTES = 8 * 1024**4  # 8 TiB: larger than any open-weights checkpoint served today
MAX_SMOKE_CONTENT_CHARS = 16_000
# A rank needs its shard of the weights plus activations and KV cache; refusing layouts whose
# shard alone exceeds this share of GPU memory catches the impossible ones without guessing.
WEIGHTS_GPU_MEMORY_SHARE = 0.9

DnsLabel = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=DNS1123_LABEL.pattern),
]


class StrictModel(BaseModel):
    """Base for every spec model: unknown fields are errors; assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _rule(problems: list[tuple[str, str]]) -> None:
    """Raise the collected cross-field problems as one pydantic error keeping each field path."""
    if problems:
        summary = "; ".join(f"{field}: {problem}" for field, problem in problems)
        raise PydanticCustomError(
            "spec_rule", "{summary}", {"summary": summary, "problems": problems}
        )


# --- model -------------------------------------------------------------------------------------


class ModelScopeSource(StrictModel):
    """A model on the ModelScope hub."""

    model_id: str = Field(
        description='ModelScope model id "owner/name", e.g. "Qwen/Qwen3-32B".',
        pattern=MODELSCOPE_ID.pattern,
        max_length=200,
    )
    revision: str = Field(
        default="master",
        description="Hub revision (branch or tag) to mirror; also the folder name in OSS.",
        pattern=REVISION.pattern,
    )
    allow_patterns: list[str] = Field(
        default_factory=list,
        description="Glob patterns of files to mirror; empty means every file.",
        max_length=100,
    )
    ignore_patterns: list[str] = Field(
        default_factory=list,
        description="Glob patterns of files to skip when mirroring.",
        max_length=100,
    )
    allow_plain_http_hub: bool = Field(
        default=False,
        description="Accept a plain-HTTP (not HTTPS) hub endpoint on a non-loopback host. "
        "RISK: the hub's listing carries the sha256 every mirrored file is checked against; "
        "over plain HTTP anyone on the network path can rewrite the listing and the files "
        "together, so the mirror's verification proves nothing. Only for a trusted network.",
    )


class ModelSource(StrictModel):
    """Where the weights come from: exactly one of `modelscope` or `oss_uri`."""

    modelscope: ModelScopeSource | None = Field(
        default=None, description="Mirror this ModelScope model into OSS before serving."
    )
    oss_uri: str | None = Field(
        default=None,
        description='Weights already mirrored in OSS, "oss://bucket/prefix"; used as-is.',
        pattern=OSS_URI.pattern,
    )
    size_bytes: int | None = Field(
        default=None,
        gt=0,
        le=MAX_MODEL_BYTES,
        description=(
            "Total size of the weights in bytes when known; sizes the PV and lets the spec "
            "reject GPU layouts that cannot hold the weights."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.modelscope is None) == (self.oss_uri is None):
            _rule([("modelscope", "set exactly one of model.modelscope or model.oss_uri")])
        if self.oss_uri is not None and ".." in self.oss_uri.split("/"):
            _rule([("oss_uri", "must not contain '..' path segments")])
        return self


# --- storage -----------------------------------------------------------------------------------


class OssCredentials(StrictModel):
    """References to the OSS AccessKey pair; never the values."""

    secret_block: str | None = Field(
        default=None,
        description=(
            "Name of a Prefect Secret block whose value is JSON "
            '{"access_key_id": ..., "access_key_secret": ...}.'
        ),
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        max_length=100,
    )
    access_key_id_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the AccessKey ID.",
        pattern=ENV_VAR_NAME.pattern,
    )
    access_key_secret_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the AccessKey secret.",
        pattern=ENV_VAR_NAME.pattern,
    )

    @field_validator("access_key_id_env", "access_key_secret_env")
    @classmethod
    def _a_name_not_a_key(cls, value: str | None) -> str | None:
        if value is not None and SECRET_LIKE.match(value):
            # The value is never echoed: it may be the key itself.
            raise ValueError(
                "looks like key material, not a variable name; give the NAME of the "
                "environment variable that holds the key (e.g. OSS_ACCESS_KEY_ID)"
            )
        return value

    @model_validator(mode="after")
    def _one_way(self) -> OssCredentials:
        env_pair = (self.access_key_id_env, self.access_key_secret_env)
        if (env_pair[0] is None) != (env_pair[1] is None):
            missing = "access_key_secret_env" if env_pair[1] is None else "access_key_id_env"
            _rule([(missing, "both environment variable names must be given together")])
        if self.secret_block is not None and env_pair[0] is not None:
            _rule([("secret_block", "use either secret_block or the *_env names, not both")])
        if self.secret_block is None and env_pair[0] is None:
            _rule(
                [
                    (
                        "secret_block",
                        "give secret_block or access_key_id_env + access_key_secret_env",
                    )
                ]
            )
        return self


class StorageSpec(StrictModel):
    """The OSS bucket that holds mirrored model weights."""

    bucket: str = Field(description="OSS bucket name.", pattern=OSS_BUCKET.pattern)
    endpoint: str = Field(
        description=(
            'OSS endpoint URL, e.g. "https://oss-cn-hangzhou-internal.aliyuncs.com"; also what '
            "the CSI driver mounts from (an https *-internal.aliyuncs.com endpoint is given to "
            "the driver bare, which then mounts over http inside the VPC)."
        ),
        pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$",
    )
    prefix: str = Field(
        default="models",
        description="Object key prefix under which model revisions are mirrored (relative).",
        max_length=512,
    )
    region: str = Field(
        description='OSS region id, e.g. "cn-hangzhou".', pattern=r"^[a-z0-9-]{2,40}$"
    )
    credentials: OssCredentials | None = Field(
        default=None,
        description="How to find the AccessKey pair; omit only when volume.rrsa_role is set.",
    )

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("must be relative (no leading '/')")
        parts = value.strip("/").split("/")
        if any(part in ("..", ".") for part in parts):
            raise ValueError("must not contain '.' or '..' path segments")
        if value.strip("/") and any(part == "" for part in parts):
            raise ValueError("must not contain empty path segments ('//')")
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        if not SAFE_PREFIX.match(value):
            raise ValueError("may contain only letters, digits, '.', '_', '-' and '/'")
        return value.strip("/")


# --- volume ------------------------------------------------------------------------------------


class VolumeSpec(StrictModel):
    """The OSS-backed static PV/PVC the serving pods mount read-only."""

    pv_name: str | None = Field(
        default=None,
        description=(
            "PersistentVolume name (also its volumeHandle); default "
            '"<name>-model-<8 hex digest of the namespace and the weights location>" '
            "(PersistentVolumes are cluster-wide)."
        ),
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    pvc_name: str | None = Field(
        default=None,
        description=(
            'PersistentVolumeClaim name; default "<name>-model-<8 hex digest of the weights '
            'location>".'
        ),
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    capacity_gib: int | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description=(
            "Nominal PV/PVC capacity in GiB; default: model.size_bytes plus 10% headroom, "
            "rounded up. Required when the model size is unknown."
        ),
    )
    fuse_type: Literal["ossfs", "ossfs2"] = Field(
        default="ossfs", description="FUSE client the OSS CSI driver mounts with."
    )
    other_opts: str | None = Field(
        default=None,
        description=(
            "Mount options passed as otherOpts; default for ossfs: "
            '"-o umask=022 -o max_stat_cache_size=0 -o allow_other", for ossfs2: none.'
        ),
        pattern=r"^[A-Za-z0-9_=,./ -]*$",
        max_length=1000,
    )
    rrsa_role: str | None = Field(
        default=None,
        description="RAM role name for RRSA authentication of the mount instead of AccessKeys.",
        pattern=r"^[A-Za-z0-9.-]{1,64}$",
    )
    oss_secret_name: str | None = Field(
        default=None,
        description=(
            'Kubernetes Secret (keys akId/akSecret) the CSI mount uses; default "<name>-oss". '
            "Not used with rrsa_role."
        ),
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    mount_path: str | None = Field(
        default=None,
        description='Where the model appears in serving containers; default "/models/<model>".',
        pattern=r"^/[A-Za-z0-9_./-]*$",
        max_length=200,
    )

    @field_validator("mount_path")
    @classmethod
    def _no_dotdot(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError("must not contain '..' path segments")
        return value


# --- serving -----------------------------------------------------------------------------------


class SecretKeyRef(StrictModel):
    """A key inside a Kubernetes Secret in the service namespace."""

    secret_name: str = Field(
        description="Kubernetes Secret name.", max_length=253, pattern=DNS1123_LABEL.pattern
    )
    key: str = Field(description="Key inside the Secret.", pattern=r"^[-._A-Za-z0-9]{1,253}$")


class PdSpec(StrictModel):
    """Prefill/decode disaggregation on a RoleBasedGroup (SGLang)."""

    prefill_replicas: int = Field(ge=1, le=64, description="Number of prefill server pods.")
    prefill_tp: int = Field(ge=1, le=16, description="Tensor-parallel size (GPUs) per prefill pod.")
    decode_replicas: int = Field(ge=1, le=64, description="Number of decode server pods.")
    decode_tp: int = Field(ge=1, le=16, description="Tensor-parallel size (GPUs) per decode pod.")
    router: Literal["sglang_router", "mini_lb"] = Field(
        default="sglang_router",
        description=(
            "PD router: sglang_router (python -m sglang_router.launch_router --pd-disaggregation) "
            "or mini_lb (sglang.srt.disaggregation.mini_lb) for older images."
        ),
    )
    bootstrap_port: int = Field(
        default=34000,
        ge=1024,
        le=65535,
        description="KV-transfer bootstrap port of prefill servers; passed explicitly.",
    )
    transfer_backend: Literal["mooncake", "nixl"] | None = Field(
        default=None,
        description="--disaggregation-transfer-backend; omitted means the engine default.",
    )


class ResourcesSpec(StrictModel):
    """Per-pod CPU/memory/eRDMA for serving pods (GPUs come from the layout)."""

    cpu: str = Field(
        default="4", description='CPU request and limit, a Kubernetes quantity ("8", "500m").'
    )
    memory_gib: int = Field(default=32, ge=1, le=4096, description="Memory request/limit in GiB.")
    erdma: int = Field(
        default=0, ge=0, le=8, description="aliyun/erdma devices per GPU pod; 0 disables."
    )

    @field_validator("cpu")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not K8S_QUANTITY.match(value):
            raise ValueError("must be a Kubernetes quantity such as '4' or '500m'")
        return value


class ProbeSpec(StrictModel):
    """Probe timings, in seconds. Startup allows `startup_budget_s` for loading the weights."""

    startup_budget_s: int = Field(
        default=1800,
        ge=60,
        le=14_400,
        description=(
            "Total time the startup probe allows for loading weights (a 65 GB model over a "
            "FUSE mount can take tens of minutes)."
        ),
    )
    period_s: int = Field(default=10, ge=1, le=300, description="Probe period in seconds.")
    timeout_s: int = Field(default=5, ge=1, le=120, description="Per-probe timeout in seconds.")
    failure_threshold: int = Field(
        default=3, ge=1, le=30, description="Readiness/liveness failures before acting."
    )


class ServingSpec(StrictModel):
    """Engine, parallel layout and pod shape of the serving workload."""

    engine: Literal["vllm", "sglang"] = Field(description="Inference engine.")
    shape: Literal[
        "single-gpu", "tensor-parallel", "multi-node", "pd-disaggregated", "ray-cluster"
    ] = Field(
        description=(
            "single-gpu: one-GPU Deployment; tensor-parallel: one pod with all GPUs of a node; "
            "multi-node: LeaderWorkerSet group; pd-disaggregated: SGLang prefill/decode on a "
            "RoleBasedGroup; ray-cluster: vLLM on a KubeRay RayCluster."
        )
    )
    image: str = Field(description="Container image of the engine.", pattern=IMAGE_REF.pattern)
    tp: int = Field(default=1, ge=1, le=64, description="Tensor-parallel size.")
    pp: int = Field(default=1, ge=1, le=64, description="Pipeline-parallel size.")
    nodes: int = Field(default=1, ge=1, le=64, description="Nodes (pods) per serving replica.")
    gpus_per_node: int = Field(default=1, ge=1, le=16, description="GPUs per node (pod).")
    gpu_memory_gib: float | None = Field(
        default=None,
        gt=0,
        le=1024,
        description="Memory of one GPU in GiB; with model.size_bytes, checks the layout fits.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Serving replicas (Deployment pods or LWS groups); not used by PD/Ray.",
    )
    pd: PdSpec | None = Field(
        default=None, description="Prefill/decode layout; required for pd-disaggregated."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Extra engine arguments appended to the serve command, one token each.",
        max_length=64,
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="CPU, memory and eRDMA per serving pod."
    )
    shm_size_gib: int = Field(
        default=16, ge=1, le=512, description="Size limit of the /dev/shm memory volume in GiB."
    )
    probes: ProbeSpec = Field(default_factory=ProbeSpec, description="Probe timings.")
    served_model_name: str | None = Field(
        default=None,
        description="Model name clients send; default: the mount path (as the seeds do).",
        pattern=SERVED_NAME.pattern,
    )
    api_key: SecretKeyRef | None = Field(
        default=None,
        description="Kubernetes Secret key holding the API key the server requires, if any.",
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="HTTP port of the server.")
    trust_remote_code: bool = Field(
        default=False, description="Pass --trust-remote-code (needed by e.g. Qwen-14B-Chat)."
    )

    @field_validator("extra_args")
    @classmethod
    def _safe_args(cls, values: list[str]) -> list[str]:
        for index, arg in enumerate(values):
            if not SAFE_ARG.match(arg):
                raise ValueError(
                    f"entry {index} contains whitespace or shell metacharacters; "
                    "give each argument as its own plain token"
                )
        return values

    @model_validator(mode="after")
    def _layout(self) -> ServingSpec:
        problems: list[tuple[str, str]] = []
        tp, pp, nodes, gpn = self.tp, self.pp, self.nodes, self.gpus_per_node
        if self.shape == "pd-disaggregated":
            if self.engine != "sglang":
                problems.append(("engine", "pd-disaggregated is only supported with sglang"))
            if self.pd is None:
                problems.append(("pd", "required for shape pd-disaggregated (prefill and decode)"))
            if (tp, pp, nodes) != (1, 1, 1):
                problems.append(("tp", "use pd.prefill_tp / pd.decode_tp for pd-disaggregated"))
        else:
            if self.pd is not None:
                problems.append(("pd", "only valid with shape pd-disaggregated"))
            if tp * pp != nodes * gpn:
                problems.append(
                    (
                        "tp",
                        f"tp*pp = {tp}*{pp} = {tp * pp} must equal nodes*gpus_per_node = "
                        f"{nodes}*{gpn} = {nodes * gpn}",
                    )
                )
        if self.shape == "single-gpu" and (nodes, gpn) != (1, 1):
            problems.append(("gpus_per_node", "single-gpu needs nodes=1 and gpus_per_node=1"))
        if self.shape == "tensor-parallel":
            if nodes != 1:
                problems.append(("nodes", "tensor-parallel runs on one node; use multi-node"))
            elif gpn < 2:
                problems.append(("gpus_per_node", "tensor-parallel needs at least 2 GPUs"))
        if self.shape == "multi-node" and nodes < 2:
            problems.append(("nodes", "multi-node needs at least 2 nodes"))
        if self.shape == "ray-cluster":
            if self.engine != "vllm":
                problems.append(("engine", "ray-cluster is only supported with vllm"))
            if nodes < 2:
                problems.append(("nodes", "ray-cluster needs at least 2 nodes (head + worker)"))
        runs_ray_head = self.shape == "ray-cluster" or (
            self.shape == "multi-node" and self.engine == "vllm"
        )
        port_problem = kuberay.server_port_problem(self.port) if runs_ray_head else None
        if port_problem is not None:
            problems.append(("port", port_problem))
        if self.shape in ("pd-disaggregated", "ray-cluster") and self.replicas != 1:
            problems.append(("replicas", f"must be 1 for {self.shape}"))
        _rule(problems)
        return self


# --- smoke test --------------------------------------------------------------------------------


class ChatMessage(StrictModel):
    """One OpenAI chat message."""

    role: Literal["system", "user", "assistant"] = Field(description="Message role.")
    content: str = Field(
        min_length=1, max_length=MAX_SMOKE_CONTENT_CHARS, description="Message text."
    )

    @field_validator("content")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        return _no_control_chars(value)


def _no_control_chars(value: str) -> str:
    if CONTROL_CHARS.search(value):
        raise ValueError(
            "must not contain control characters (terminal escapes, NUL); tab and newline "
            "are allowed"
        )
    return value


def _seed_messages() -> list[ChatMessage]:
    # The request every seed runbook sends to verify a deployment ("test it once").
    return [ChatMessage(role="user", content="测试一下")]


FinishReason = Literal["stop", "length"]
SmokeVia = Literal["auto", "proxy", "port-forward", "base-url"]


def _any_finish() -> list[FinishReason]:
    return ["stop", "length"]


class SmokeExpectations(StrictModel):
    """What a passing smoke answer looks like."""

    equals: str | None = Field(default=None, description="The answer must be exactly this text.")
    contains: list[str] = Field(
        default_factory=list, description="Substrings the answer must contain.", max_length=32
    )
    starts_with: str | None = Field(default=None, description="The answer must start with this.")
    min_completion_tokens: int = Field(
        default=1, ge=0, le=100_000, description="Minimum completion tokens reported in usage."
    )
    finish_reasons: list[FinishReason] = Field(
        default_factory=_any_finish,
        description="Acceptable finish_reason values.",
        min_length=1,
    )
    max_latency_ms: int | None = Field(
        default=60_000, gt=0, le=3_600_000, description="Upper bound on end-to-end latency (ms)."
    )
    max_ttft_ms: int | None = Field(
        default=None, gt=0, le=3_600_000, description="Upper bound on time to first token (ms)."
    )

    @field_validator("equals", "starts_with")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        return None if value is None else _no_control_chars(value)

    @field_validator("contains")
    @classmethod
    def _plain_texts(cls, values: list[str]) -> list[str]:
        return [_no_control_chars(v) for v in values]


class SmokeSpec(StrictModel):
    """The chat request sent to a new release before it receives traffic."""

    messages: list[ChatMessage] = Field(
        default_factory=_seed_messages,
        min_length=1,
        max_length=32,
        description='Chat messages; default the runbooks\' single user message "测试一下".',
    )
    max_tokens: int = Field(default=30, ge=1, le=4096, description="max_tokens of the request.")
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus sampling top_p.")
    seed: int | None = Field(default=10, ge=0, description="Sampling seed for repeatability.")
    stream: bool = Field(default=True, description="Stream the answer (measures TTFT).")
    base_url: HttpUrl | None = Field(
        default=None,
        description=(
            "Call the new release at this base URL (e.g. from a worker inside the cluster) "
            "instead of through the API server's service proxy, the default. Not part of the "
            "spec hash: how the gate reaches a release does not change what is deployed."
        ),
    )
    via: SmokeVia = Field(
        default="auto",
        description=(
            "How the smoke test reaches the release. proxy: the API server's service proxy "
            "(no API key possible: the API server consumes the Authorization header); "
            "port-forward: a local tunnel to one Ready pod, like `kubectl port-forward` "
            "(needs get and create on pods/portforward); base-url: `base_url`, directly. "
            "auto: base-url when `base_url` is set, else port-forward when serving.api_key "
            "is set, else proxy. Not part of the spec hash."
        ),
    )
    expect: SmokeExpectations = Field(
        default_factory=SmokeExpectations, description="Pass criteria."
    )

    def route(self, *, api_key: bool) -> Literal["proxy", "port-forward", "base-url"]:
        """The transport `via` means for a server that does (not) require an API key."""
        if self.via != "auto":
            return self.via
        if self.base_url is not None:
            return "base-url"
        return "port-forward" if api_key else "proxy"

    @model_validator(mode="after")
    def _via_and_base_url(self) -> SmokeSpec:
        if self.via == "base-url" and self.base_url is None:
            _rule([("smoke.base_url", "required when smoke.via is base-url")])
        if self.via in ("proxy", "port-forward") and self.base_url is not None:
            _rule([("smoke.via", f"{self.via} does not use smoke.base_url; use auto or base-url")])
        return self

    @model_validator(mode="after")
    def _total_size(self) -> SmokeSpec:
        total = sum(len(message.content) for message in self.messages)
        if total > MAX_SMOKE_CONTENT_CHARS:
            _rule(
                [
                    (
                        "messages",
                        f"total content is {total} characters; at most "
                        f"{MAX_SMOKE_CONTENT_CHARS} allowed for a smoke test",
                    )
                ]
            )
        return self


# --- rollout -----------------------------------------------------------------------------------


class RolloutSpec(StrictModel):
    """How a new release replaces the old one, with time limits in seconds."""

    strategy: Literal["auto", "blue-green", "recreate"] = Field(
        default="auto",
        description=(
            "blue-green: new release beside the old, stable Service switched after the smoke "
            "gate; recreate: old release removed first (when GPUs cannot hold both); auto: "
            "blue-green when capacity allows, otherwise recreate."
        ),
    )
    volume_bound_timeout_s: int = Field(
        default=300, ge=1, le=3600, description="Wait for the PVC to be Bound (s)."
    )
    ready_timeout_s: int = Field(
        default=3600, ge=10, le=86_400, description="Wait for the workload to become ready (s)."
    )
    # Readiness tolerances: how long a failure signal that can clear by itself may persist
    # before it fails the rollout. 0 fails on the first sight, as a signal that cannot clear
    # (a missing image, a deleted node, a crash loop) always does.
    image_pull_tolerance_s: int = Field(
        default=330,
        ge=0,
        le=3600,
        description=(
            "Tolerate ErrImagePull/ImagePullBackOff this long (s) when the registry's error is "
            "not a missing image or denied access (rate limit, i/o timeout). The kubelet "
            "retries pulls after 10, 20, 40, 80, 160 s (image back-off, capped at 300 s: "
            "backOffPeriod/MaxContainerBackOff in kubernetes pkg/kubelet/kubelet.go), so 330 s "
            "covers six attempts."
        ),
    )
    mount_tolerance_s: int = Field(
        default=250,
        ge=0,
        le=3600,
        description=(
            "Tolerate FailedMount/FailedAttachVolume on a pod whose containers have not started "
            "this long (s). A slow mount reports FailedMount after podAttachAndMountTimeout "
            "(2 min 3 s, kubernetes pkg/kubelet/volumemanager/volume_manager.go) and is retried; "
            "250 s lets a mount succeed on its second try. A Secret or ConfigMap that does not "
            "exist fails at once (the rollout creates its Secrets before the workload)."
        ),
    )
    node_not_ready_tolerance_s: int = Field(
        default=300,
        ge=0,
        le=3600,
        description=(
            "Tolerate the node of a serving pod being NotReady/Unknown this long (s). Kubernetes "
            "itself keeps such pods for 300 s before evicting them (the API server's "
            "--default-not-ready-toleration-seconds, kubernetes "
            "plugin/pkg/admission/defaulttolerationseconds/admission.go), so a node back "
            "within it keeps its pods. A deleted node fails at once."
        ),
    )
    pod_create_tolerance_s: int = Field(
        default=300,
        ge=0,
        le=3600,
        description=(
            "Tolerate the workload's controller failing to create a pod this long (s) when the "
            "API server's refusal can clear, above all an exceeded ResourceQuota (freed when "
            "other pods of the namespace end). The ReplicaSet and StatefulSet controllers retry "
            "with a per-object back-off doubling from 5 ms up to 1000 s (client-go "
            "util/workqueue/default_rate_limiters.go DefaultTypedControllerRateLimiter), so a "
            "quota freed t s after the first refusal is used by about 2t s: 300 s takes quota "
            "freed within the first 2 min 30 s, the time a recreated release's old pods take to "
            "end (30 s grace by default) several times over. A refusal no retry can change (an "
            "invalid pod such as a label value over 63 bytes, an admission webhook's denial, a "
            "PodSecurity violation, a quota demanding limits the pod lacks) fails at once."
        ),
    )
    scale_up_wait_s: int = Field(
        default=900,
        ge=0,
        le=7200,
        description=(
            "Keep waiting for an Unschedulable pod this long (s) while cluster-autoscaler is "
            "present (its kube-system/cluster-autoscaler-status ConfigMap exists) or reported "
            "TriggeredScaleUp for the pod; 900 s is cluster-autoscaler's own "
            "--max-node-provision-time default (cluster-autoscaler/main.go). Without an "
            "autoscaler, and on NotTriggerScaleUp, an Unschedulable pod fails at once."
        ),
    )
    crash_loop_group_recreations: int = Field(
        default=3,
        ge=1,
        le=50,
        description=(
            "Report a crash loop once a pod with a stable name (a StatefulSet's, e.g. an LWS "
            "group's leader) has been recreated this many times. LWS with "
            "RecreateGroupOnPodRestart deletes the group on the first container restart "
            "(lws pkg/controllers/pod_controller.go), so the kubelet's CrashLoopBackOff never "
            "shows; 3 allows the one or two recreations of a worker started before its leader "
            "listens."
        ),
    )
    smoke_timeout_s: int = Field(
        default=300, ge=1, le=3600, description="Time limit for the smoke test (s)."
    )
    promote_grace_s: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="After switching the stable Service, keep the old release this long (s).",
    )
    lock_wait_s: int = Field(
        default=900,
        ge=0,
        le=86_400,
        description=(
            "Wait this long for another run rolling out the same service (its rollout lease) "
            "before failing with the holder's name (s); 0: fail fast."
        ),
    )


# --- the service -------------------------------------------------------------------------------


class ServiceSpec(StrictModel):
    """One model service: source, storage, volume, serving layout, smoke gate, rollout."""

    name: str = Field(
        description="Service name (DNS-1123 label); names the stable Service and prefixes objects.",
        min_length=1,
        max_length=MAX_SERVICE_NAME_LEN,
        pattern=DNS1123_LABEL.pattern,
    )
    namespace: str = Field(
        description="Kubernetes namespace of every namespaced object (no default).",
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL.pattern,
    )
    model: ModelSource = Field(description="Where the weights come from.")
    storage: StorageSpec = Field(description="OSS bucket holding the weights.")
    volume: VolumeSpec = Field(
        default_factory=VolumeSpec, description="PV/PVC that mounts the weights."
    )
    serving: ServingSpec = Field(description="Engine and layout.")
    smoke: SmokeSpec = Field(default_factory=SmokeSpec, description="Smoke-test gate.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout behaviour.")

    @model_validator(mode="after")
    def _cross_checks(self) -> ServiceSpec:
        problems: list[tuple[str, str]] = []
        if self.storage.credentials is None and self.model.modelscope is not None:
            problems.append(
                ("storage.credentials", "required: mirroring from ModelScope writes to OSS")
            )
        elif self.storage.credentials is None and self.volume.rrsa_role is None:
            problems.append(("storage.credentials", "required unless volume.rrsa_role is set"))
        if self.volume.capacity_gib is None and self.model.size_bytes is None:
            problems.append(("volume.capacity_gib", "required when model.size_bytes is unknown"))
        problems.extend(self._gpu_memory_problems())
        if self.smoke.via == "proxy" and self.serving.api_key is not None:
            problems.append(
                (
                    "smoke.via",
                    "proxy cannot carry serving.api_key (the API server consumes the "
                    "Authorization header); use port-forward, base-url or auto",
                )
            )
        _rule(problems)
        return self

    def _gpu_memory_problems(self) -> list[tuple[str, str]]:
        size, gpu_gib = self.model.size_bytes, self.serving.gpu_memory_gib
        if size is None or gpu_gib is None:
            return []
        share = WEIGHTS_GPU_MEMORY_SHARE
        if self.serving.engine == "vllm":
            # vLLM never uses more than --gpu-memory-utilization of a GPU, weights included.
            try:
                share = kv_cache.gpu_memory_utilization(self.serving.extra_args)
            except kv_cache.EngineArgError as exc:
                return [("serving.extra_args", str(exc).removeprefix("serving.extra_args: "))]
        usable_gib = gpu_gib * share
        layouts: list[tuple[str, int]]
        if self.serving.shape == "pd-disaggregated" and self.serving.pd is not None:
            layouts = [
                ("serving.pd.prefill_tp", self.serving.pd.prefill_tp),
                ("serving.pd.decode_tp", self.serving.pd.decode_tp),
            ]
        else:
            layouts = [("serving.gpu_memory_gib", self.serving.tp * self.serving.pp)]
        problems = []
        for field, gpus in layouts:
            shard_gib = size / gpus / GIB
            if shard_gib > usable_gib:
                problems.append(
                    (
                        field,
                        f"{gpus} GPU(s) of {gpu_gib:g} GiB cannot hold {size / GIB:.1f} GiB of "
                        f"weights ({shard_gib:.1f} GiB per GPU > {usable_gib:.1f} GiB usable "
                        f"at a memory share of {share:g})",
                    )
                )
        return problems

    # Derived names and locations; rendering and the flows use these, never their own defaults.

    @property
    def model_bucket(self) -> str:
        """Bucket holding the weights the PV mounts."""
        if self.model.oss_uri is not None:
            match = OSS_URI.match(self.model.oss_uri)
            assert match is not None  # guaranteed by the field pattern
            return match.group("bucket")
        return self.storage.bucket

    @property
    def model_object_prefix(self) -> str:
        """Object key prefix of the weights, ending in "/" (no leading "/")."""
        if self.model.oss_uri is not None:
            match = OSS_URI.match(self.model.oss_uri)
            assert match is not None
            return match.group("prefix").strip("/") + "/"
        source = self.model.modelscope
        assert source is not None
        parts = [self.storage.prefix, source.model_id, source.revision]
        return "/".join(part for part in parts if part) + "/"

    @property
    def model_dir_name(self) -> str:
        """Path component naming the model, e.g. "Qwen3-32B".

        An `oss_uri` in our own mirror layout `<storage.prefix>/<owner>/<name>/<revision>/`
        is named after `<name>`, not after its revision (otherwise every such model would be
        served as "/models/master"); any other prefix after its last component.
        """
        if self.model.modelscope is not None:
            return self.model.modelscope.model_id.split("/")[-1]
        parts = self.model_object_prefix.rstrip("/").split("/")
        mirror_root = [p for p in self.storage.prefix.split("/") if p]
        if len(parts) == len(mirror_root) + 3 and parts[: len(mirror_root)] == mirror_root:
            return parts[-2]
        return parts[-1]

    @property
    def model_revision(self) -> str:
        """Revision recorded in annotations ("oss" for a pre-mirrored source)."""
        if self.model.modelscope is not None:
            return self.model.modelscope.revision
        return "oss"

    @property
    def model_mount_path(self) -> str:
        """Directory where serving containers see the weights."""
        return self.volume.mount_path or f"/models/{self.model_dir_name}"

    @property
    def model_location_id(self) -> str:
        """Short digest of where the weights live and how they are mounted.

        A PV's volume source (CSI attributes, secret reference) is immutable, and so is a
        PVC's spec except a growing storage request; so any change to what the PV/PVC carry
        (location, endpoint, FUSE type, mount options, RRSA role, Secret, capacity) must make
        new objects under new names instead of an update the API server refuses.
        """
        volume = self.volume
        parts = [
            self.model_bucket,
            self.model_object_prefix,
            self.csi_oss_url,
            volume.fuse_type,
            volume.other_opts or "",
            volume.rrsa_role or "",
            "" if volume.rrsa_role else self.oss_secret_name,
            str(self.pv_capacity_gib),
        ]
        identity = "\n".join(parts)
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:8]

    @property
    def pv_name(self) -> str:
        # A PV is cluster-scoped, so the same service name in two namespaces needs two PVs.
        if self.volume.pv_name:
            return self.volume.pv_name
        scope = f"{self.namespace}/{self.model_location_id}"
        return f"{self.name}-model-{hashlib.sha256(scope.encode('utf-8')).hexdigest()[:8]}"

    @property
    def pvc_name(self) -> str:
        return self.volume.pvc_name or f"{self.name}-model-{self.model_location_id}"

    @property
    def csi_oss_url(self) -> str:
        """The `url` volume attribute of the OSS CSI PV.

        alibaba-cloud-csi-driver `pkg/oss/utils.go` `setTransmissionProtocol` keeps a scheme
        the user gives and otherwise picks http:// for `*-internal.aliyuncs.com` (the VPC
        endpoint) and https:// for the rest; an https internal endpoint is passed bare so
        the FUSE mount reads the weights without TLS inside the VPC, as the seeds do.
        """
        endpoint = self.storage.endpoint.rstrip("/")
        host = endpoint.split("://", 1)[1]
        if endpoint.startswith("https://") and host.endswith("-internal.aliyuncs.com"):
            return host
        return endpoint

    @property
    def oss_secret_name(self) -> str:
        return self.volume.oss_secret_name or f"{self.name}-oss"

    @property
    def uses_access_keys(self) -> bool:
        """True when the CSI mount authenticates with an AccessKey Secret (not RRSA)."""
        return self.volume.rrsa_role is None

    @property
    def pv_capacity_gib(self) -> int:
        if self.volume.capacity_gib is not None:
            return self.volume.capacity_gib
        assert self.model.size_bytes is not None  # enforced by _cross_checks
        return max(1, math.ceil(self.model.size_bytes * 1.1 / GIB))

    @property
    def served_model_name(self) -> str:
        return self.serving.served_model_name or self.model_mount_path.rstrip("/")


# --- entry points ------------------------------------------------------------------------------


class InvalidSpecError(SpecError):
    """A spec with one or more problems; `problems` holds every `(field, problem)`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        first_field, first_problem = problems[0]
        rest = "".join(f"\n  {field}: {problem}" for field, problem in problems[1:])
        super().__init__(first_field, first_problem + rest)
        self.problems = list(problems)


_PATTERN_MEANING = {
    DNS1123_LABEL.pattern: "be a DNS-1123 label (lowercase letters, digits, '-')",
    ENV_VAR_NAME.pattern: "be an environment variable name",
    OSS_BUCKET.pattern: "be an OSS bucket name (3-63 lowercase letters, digits, '-')",
    OSS_URI.pattern: 'be an OSS URI "oss://bucket/prefix"',
    MODELSCOPE_ID.pattern: 'be a ModelScope model id "owner/name"',
    IMAGE_REF.pattern: "be a container image reference without whitespace",
    SERVED_NAME.pattern: "be a model name without whitespace or shell metacharacters",
}


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def problems_from_validation_error(exc: ValidationError) -> list[tuple[str, str]]:
    """Flatten a pydantic ValidationError into `(dotted field, problem)` pairs."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False, include_input=False):
        # pydantic puts union/function-validator names into loc; they are not field names.
        loc = tuple(
            part
            for part in error["loc"]
            if not (isinstance(part, str) and ("[" in part or part.startswith("function-")))
        )
        base = _loc_to_path(loc)
        ctx = error.get("ctx") or {}
        if error["type"] == "spec_rule":
            for field, problem in ctx["problems"]:
                problems.append((f"{base}.{field}" if base else field, problem))
        elif error["type"] == "extra_forbidden":
            problems.append((base, "unknown field"))
        elif error["type"] == "missing":
            problems.append((base, "required field is missing"))
        elif error["type"] == "string_pattern_mismatch":
            expected = _PATTERN_MEANING.get(str(ctx["pattern"]), f"match {ctx['pattern']}")
            problems.append((base, f"must {expected}"))
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append((base or "spec", message))
    return problems


def spec_from_dict(data: Any) -> ServiceSpec:
    """Validate an already-parsed mapping; raise `InvalidSpecError` listing every problem."""
    if not isinstance(data, dict):
        raise InvalidSpecError([("spec", "must be a mapping of fields")])
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpecError(problems_from_validation_error(exc)) from exc


def load_spec(path: Path) -> ServiceSpec:
    """Read and validate a YAML spec file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSpecError([("spec", f"cannot read {path}: {exc.strerror}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidSpecError([("spec", f"{path} is not valid YAML{where}")]) from exc
    return spec_from_dict(data)


# How long readiness waits out a transient signal: how the flow watches, not what it deploys.
READINESS_TOLERANCE_FIELDS = frozenset(
    {
        "image_pull_tolerance_s",
        "mount_tolerance_s",
        "node_not_ready_tolerance_s",
        "pod_create_tolerance_s",
        "scale_up_wait_s",
        "crash_loop_group_recreations",
    }
)


def spec_hash(spec: ServiceSpec) -> str:
    """SHA-256 hex digest of the spec's canonical JSON (sorted keys, defaults included).

    `smoke.base_url` and `smoke.via` are left out: the route the smoke test takes is where
    the flow runs, not what is deployed, so moving the flow into the cluster does not make a
    new release. So is
    `rollout.lock_wait_s`: how long a run waits for another one changes nothing deployed, nor
    do readiness's tolerances of transient signals (`READINESS_TOLERANCE_FIELDS`), nor
    `model.modelscope.allow_plain_http_hub`.
    """
    excluded: dict[str, Any] = {
        "smoke": {"base_url", "via"},
        "rollout": {"lock_wait_s", *READINESS_TOLERANCE_FIELDS},
    }
    if spec.model.modelscope is not None:
        # How the hub is reached, not what is deployed.
        excluded["model"] = {"modelscope": {"allow_plain_http_hub"}}
    data = spec.model_dump(mode="json", exclude=excluded)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of `ServiceSpec` (what `llm-rollout schema` prints)."""
    return ServiceSpec.model_json_schema()
