"""Preflight: everything a rollout needs, checked with reads only, reported all at once.

Each check appends human-readable problems instead of raising, so a user with a missing CRD,
too few GPUs and wrong OSS keys learns about all three from one run. `run_preflight` raises one
`PreflightError` listing every problem, before the flow writes anything anywhere.

Checks:
- the cluster answers and is Kubernetes >= 1.28;
- the APIs the shape needs are served (LWS for multi-node, RBG for pd-disaggregated with its
  flavor chosen from the served versions, KubeRay for ray-cluster);
- the namespace exists;
- schedulable nodes have the GPUs (and eRDMA) the new release needs, for the chosen strategy;
- OSS credentials resolve and the bucket answers an authenticated request;
- the model and revision exist on the hub;
- (vLLM) one GPU holds its shard of the weights plus the KV cache of one max-length sequence,
  sized from the model's config.json read from the hub (or from OSS for an `oss_uri` model)
  and checked like any upstream data (`llm_rollout.kv_cache`); when config.json cannot be
  read the report says "KV fit not checked" instead of guessing.

Every cluster read goes through `_read`: a throttled (429 + Retry-After), failing (5xx) or
reset request is retried with backoff (`call_with_retry`) before it counts as a problem, so one
bad answer from a busy API server does not refuse a good spec. A permanent answer (403, 404,
a missing API) is a problem at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client as k8s_client

from llm_rollout import kv_cache
from llm_rollout.crds import crds_from_cluster
from llm_rollout.credentials import CredentialsRef, resolve_oss_credentials
from llm_rollout.errors import PreflightError, RolloutError
from llm_rollout.hub import HubClient, HubFile, HubSource
from llm_rollout.kinds import ApiRequirement, RbgFlavor, kind_for, kind_for_shape
from llm_rollout.kinds.rbg import RoleBasedGroup
from llm_rollout.kube.client import server_version
from llm_rollout.kube.errors import NotFoundError
from llm_rollout.kube.resources import list_objects, request_json, versions_serving_kind
from llm_rollout.kube.views import ObjectView, PodView
from llm_rollout.kube.watching import call_with_retry
from llm_rollout.mirror.inputs import hub_source_of
from llm_rollout.oss import OssTarget, open_bucket, oss_call, plain_http_warning
from llm_rollout.render import RenderedRelease
from llm_rollout.spec import ModelScopeSource, ServiceSpec
from llm_rollout.strategy import (
    ERDMA_RESOURCE,
    GPU_RESOURCE,
    NodeCapacity,
    PodDemand,
    StrategyDecision,
    choose_strategy,
    container_demand,
    pod_demands,
)

MIN_SERVER_VERSION = (1, 28)

_T = TypeVar("_T")


def _read(fn: Callable[[], _T]) -> _T:
    """One read-only API call, retried while it fails transiently (bounded, with backoff)."""
    result: _T = call_with_retry(fn)
    return result


def required_apis(shape: str) -> list[ApiRequirement]:
    """The custom resources a serving shape renders (core kinds are always present)."""
    need = kind_for_shape(shape).required_api()
    return [need] if need is not None else []


def rbg_flavor_from_versions(versions: Sequence[str]) -> RbgFlavor | None:
    """The RoleBasedGroup convention the cluster runs, from the versions it serves."""
    return RoleBasedGroup().flavor_from_versions(versions)


@dataclass(frozen=True)
class ServingRelease:
    """The release the stable Service points at, as read from the cluster."""

    release: str | None
    pods_by_node: Mapping[str, PodDemand]


@dataclass
class PreflightReport:
    """What preflight found; the flow carries it into later stages and the summary."""

    server_version: str = ""
    rbg_flavor: RbgFlavor | None = None
    decision: StrategyDecision | None = None
    nodes: list[NodeCapacity] = field(default_factory=list)
    namespace_exists: bool = False
    serving_release: str | None = None
    model_files: int | None = None
    # The sequence length the KV fit was checked for (vLLM), for rendering --max-model-len.
    max_model_len: int | None = None
    # What the workload kind's installed CRD offers (`WorkloadKind.crd_features`).
    crd_features: frozenset[str] = frozenset()
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # The new release as rendered for the capacity check; the release plan adopts it.
    rendered: RenderedRelease | None = None

    @property
    def strategy(self) -> str | None:
        return self.decision.strategy if self.decision else None

    @property
    def gpus_free(self) -> int:
        return sum(node.gpus_free for node in self.nodes)


# -- cluster --------------------------------------------------------------------------------


def _node_ready(node: ObjectView) -> bool:
    ready = node.condition("Ready")
    return ready is not None and ready.is_true


def _int_quantity(value: Any) -> int:
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


def node_capacities(
    nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> list[NodeCapacity]:
    """Free GPU/eRDMA per schedulable, Ready node: allocatable minus what bound pods request."""
    requested: dict[str, list[int]] = {}
    for pod in map(PodView, pods):
        node_name = pod.node_name
        if not node_name or pod.phase in ("Succeeded", "Failed"):
            continue  # unbound pods hold nothing; finished pods released their devices
        demand = container_demand(pod.spec)
        totals = requested.setdefault(node_name, [0, 0])
        totals[0] += demand.gpus
        totals[1] += demand.erdma
    result: list[NodeCapacity] = []
    for node in map(ObjectView, nodes):
        name = node.metadata.name
        if node.spec.get("unschedulable") or not _node_ready(node):
            continue
        allocatable = node.at("status", "allocatable")
        used = requested.get(name, [0, 0])
        result.append(
            NodeCapacity(
                name=name,
                gpus_allocatable=_int_quantity(allocatable.get(GPU_RESOURCE)),
                gpus_requested=used[0],
                erdma_allocatable=_int_quantity(allocatable.get(ERDMA_RESOURCE)),
                erdma_requested=used[1],
            )
        )
    return result


def pods_by_node(pods: Sequence[Mapping[str, Any]]) -> dict[str, PodDemand]:
    """Sum the GPU/eRDMA requests of running pods per node (what removing them would free)."""
    totals: dict[str, PodDemand] = {}
    for pod in map(PodView, pods):
        node_name = pod.node_name
        if not node_name or pod.phase in ("Succeeded", "Failed"):
            continue
        demand = container_demand(pod.spec)
        old = totals.get(node_name, PodDemand(gpus=0))
        totals[node_name] = PodDemand(old.gpus + demand.gpus, old.erdma + demand.erdma)
    return totals


def check_crd_features(
    api: k8s_client.ApiClient, spec: ServiceSpec, report: PreflightReport
) -> None:
    """The operator-version features the workload kind's installed CRD offers (the rendering
    follows them); a CRD list that cannot be read renders without them, with a warning."""
    kind = kind_for(spec)
    if not kind.reads_crd_schema:
        return
    try:
        catalog = _read(lambda: crds_from_cluster(api))
    except RolloutError as exc:
        _, note = kind.crd_features(None)
        report.warnings.append(f"{note}: cannot list the cluster's CRDs ({exc})")
        return
    report.crd_features, note = kind.crd_features(catalog)
    report.checks.append(note)


def check_cluster(
    api: k8s_client.ApiClient,
    spec: ServiceSpec,
    report: PreflightReport,
    *,
    render_workloads: Callable[[RbgFlavor | None], Sequence[Mapping[str, Any]]],
    find_serving: Callable[[k8s_client.ApiClient], ServingRelease | None],
) -> None:
    """Version, APIs, namespace, capacity and strategy; reads only.

    `render_workloads(flavor)` gives the new release's workload objects (their pods' GPU asks
    decide capacity); `find_serving` reads the currently serving release from the cluster.
    """
    try:
        major, minor = _read(lambda: server_version(api))
    except RolloutError as exc:
        report.problems.append(f"cluster: cannot reach the API server ({exc})")
        return
    report.server_version = f"{major}.{minor}"
    if (major, minor) < MIN_SERVER_VERSION:
        report.problems.append(
            f"cluster: Kubernetes {major}.{minor} is older than the minimum "
            f"{MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]}"
        )
    else:
        report.checks.append(f"Kubernetes {major}.{minor}")

    apis_ok = True
    for need in required_apis(spec.serving.shape):
        try:
            versions = _read(functools.partial(versions_serving_kind, api, need.group, need.kind))
        except RolloutError as exc:
            report.problems.append(f"cluster: cannot discover API group {need.group} ({exc})")
            apis_ok = False
            continue
        usable = [v for v in need.versions if v in versions]
        if not usable:
            served = ", ".join(versions) or "nothing"
            report.problems.append(
                f"cluster: {need.why} needs CRD {need.kind}.{need.group} "
                f"({' or '.join(need.versions)}); the cluster serves {served}"
            )
            apis_ok = False
            continue
        report.checks.append(f"{need.kind}.{need.group} served at {', '.join(usable)}")
        flavor = kind_for(spec).flavor_from_versions(versions)
        if flavor is not None:
            report.rbg_flavor = flavor

    try:
        _read(
            lambda: request_json(
                api,
                "GET",
                f"/api/v1/namespaces/{spec.namespace}",
                target=f"Namespace {spec.namespace}",
            )
        )
        report.namespace_exists = True
    except NotFoundError:
        report.warnings.append(f"Namespace {spec.namespace} does not exist; it will be created")
    except RolloutError as exc:
        report.problems.append(f"cluster: cannot read Namespace {spec.namespace} ({exc})")

    try:
        nodes, _ = _read(lambda: list_objects(api, "v1", "Node", None))
        # Every namespace's pods hold GPUs; list_objects addresses one namespace at a time.
        listing = _read(
            lambda: request_json(api, "GET", "/api/v1/pods", target="Pod list in all namespaces")
        )
        pods = list(listing.get("items") or [])
    except RolloutError as exc:
        report.problems.append(f"cluster: cannot list nodes and pods ({exc})")
        return
    report.nodes = node_capacities(nodes, pods)
    if not apis_ok:
        return  # without the API the rendering flavor (and so the demand) is unknown
    check_crd_features(api, spec, report)

    serving = _read(lambda: find_serving(api)) if report.namespace_exists else None
    report.serving_release = serving.release if serving else None
    demands = pod_demands(render_workloads(report.rbg_flavor))
    decision = choose_strategy(
        spec.rollout.strategy,
        demands,
        report.nodes,
        dict(serving.pods_by_node) if serving is not None else None,
    )
    report.decision = decision
    report.problems.extend(decision.problems)
    report.warnings.extend(decision.warnings)
    if decision.strategy:
        report.checks.append(
            f"capacity for {decision.strategy}: {sum(d.gpus for d in demands)} "
            f"{GPU_RESOURCE} needed, {report.gpus_free} free"
        )


# -- OSS ------------------------------------------------------------------------------------


def credentials_ref(spec: ServiceSpec) -> CredentialsRef | None:
    """The spec's credentials reference in the shape the credentials module resolves."""
    creds = spec.storage.credentials
    if creds is None:
        return None
    return CredentialsRef(
        secret_block=creds.secret_block,
        access_key_id_env=creds.access_key_id_env,
        access_key_secret_env=creds.access_key_secret_env,
    )


def check_oss(
    spec: ServiceSpec, report: PreflightReport, environ: Mapping[str, str] | None = None
) -> Any:
    """Credentials resolve and the model bucket answers one authenticated, cheap request.

    Returns the opened `oss2.Bucket` when it answered (for reading the model's config.json),
    else None.
    """
    insecure = plain_http_warning(spec.storage.endpoint)
    if insecure is not None:
        report.warnings.append(insecure)
    ref = credentials_ref(spec)
    if ref is None:
        report.checks.append("OSS: no AccessKeys (RRSA mount); bucket access not checked here")
        return None
    try:
        credentials = resolve_oss_credentials(ref, os.environ if environ is None else environ)
    except RolloutError as exc:
        report.problems.append(f"OSS credentials: {exc}")
        return None
    target = OssTarget(
        endpoint=spec.storage.endpoint, bucket=spec.model_bucket, region=spec.storage.region
    )
    bucket = open_bucket(target, credentials, connect_timeout_s=10.0, pool_size=1)
    try:
        oss_call(
            f"list bucket {spec.model_bucket}",
            lambda: bucket.list_objects_v2(prefix=spec.model_object_prefix, max_keys=1),
        )
    except RolloutError as exc:
        report.problems.append(f"OSS bucket {spec.model_bucket} at {spec.storage.endpoint}: {exc}")
        return None
    report.checks.append(f"OSS bucket {spec.model_bucket} readable with the configured keys")
    return bucket


# -- hub ------------------------------------------------------------------------------------


def check_hub(spec: ServiceSpec, report: PreflightReport) -> None:
    """The model and revision exist on ModelScope (endpoint from MODELSCOPE_ENDPOINT)."""
    source = spec.model.modelscope
    if source is None:
        report.checks.append("hub: model comes from OSS (oss_uri); hub not consulted")
        return
    # HubClient reads MODELSCOPE_ENDPOINT when made (the library caches it per process).
    client = HubClient()
    try:
        listing = client.list_files(hub_source_of(source))
    except RolloutError as exc:
        report.problems.append(f"{exc} (hub {client.endpoint})")
        return
    report.model_files = len(listing.files)
    report.checks.append(
        f"hub: {source.model_id}@{source.revision} exists "
        f"({len(listing.files)} files, {listing.total_bytes} bytes)"
    )


# -- KV cache fit ---------------------------------------------------------------------------

MODEL_CONFIG_FILE = "config.json"
# A config.json is a few KiB; anything near this is not one.
MAX_MODEL_CONFIG_BYTES = 1024 * 1024


def parse_model_config(raw: bytes, where: str) -> Any:
    """config.json bytes as JSON, refusing oversized or malformed documents."""
    if len(raw) > MAX_MODEL_CONFIG_BYTES:
        raise kv_cache.ModelConfigError(
            f"{where}: config.json is larger than {MAX_MODEL_CONFIG_BYTES} bytes"
        )
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise kv_cache.ModelConfigError(f"{where}: config.json is not valid JSON") from exc


def _hub_model_config(source: ModelScopeSource) -> tuple[HubFile | None, bytes]:
    """config.json as the hub listing describes it, and its bytes as the hub serves them.

    Listed without the spec's allow/ignore patterns: the check is of the file the hub serves
    for this revision, whatever the mirror keeps. Nothing is downloaded when the listing has
    no config.json or lists one too large to be one.
    """
    import httpx

    client = HubClient()
    listing = client.list_files(
        HubSource(
            model_id=source.model_id,
            revision=source.revision,
            allow_plain_http_hub=source.allow_plain_http_hub,
        )
    )
    listed = next((f for f in listing.files if f.path == MODEL_CONFIG_FILE), None)
    if listed is None or listed.size > MAX_MODEL_CONFIG_BYTES:
        return listed, b""
    access = client.access()
    url = client.file_url(source.model_id, source.revision, MODEL_CONFIG_FILE)
    with httpx.Client(timeout=30.0, follow_redirects=True, cookies=access.cookies) as http:
        response = http.get(url, headers=access.headers)
    response.raise_for_status()
    return listed, response.content[: MAX_MODEL_CONFIG_BYTES + 1]


def check_listed_config(raw: bytes, listed: HubFile, where: str) -> None:
    """config.json's bytes are the ones the hub listing describes (size bound, sha256), else
    a permanent error naming the file and both digests' prefixes, never the content."""
    if listed.size > MAX_MODEL_CONFIG_BYTES:
        raise kv_cache.ModelConfigError(
            f"{where}: {MODEL_CONFIG_FILE} is listed with {listed.size} bytes, larger than "
            f"{MAX_MODEL_CONFIG_BYTES}"
        )
    got = hashlib.sha256(raw).hexdigest()
    if got != listed.sha256:
        raise kv_cache.ModelConfigError(
            f"{where}: {MODEL_CONFIG_FILE} served with sha256 {got[:12]}... but the hub "
            f"listing says {listed.sha256[:12]}...; not sizing the KV cache from it"
        )


def read_model_config(spec: ServiceSpec, bucket: Any) -> tuple[Any, str]:
    """The model's parsed config.json, or (None, why it was not read).

    A ModelScope model is read from the hub (the mirror may not exist yet); an `oss_uri`
    model from its OSS prefix through the bucket `check_oss` opened.
    """
    if spec.serving.engine != "vllm":
        return None, "the one-sequence KV rule checked here is vLLM's"
    import httpx
    import oss2

    source = spec.model.modelscope
    # An oss_uri model has no listing to check against: its bytes are taken as stored.
    listed: HubFile | None = None
    try:
        if source is not None:
            where = f"hub {source.model_id}@{source.revision}"
            listed, raw = _hub_model_config(source)
            if listed is None:
                return None, f"{MODEL_CONFIG_FILE} is not in the hub listing"
        elif bucket is not None:
            key = spec.model_object_prefix + MODEL_CONFIG_FILE
            where = f"oss://{spec.model_bucket}/{key}"
            raw = bucket.get_object(key).read(MAX_MODEL_CONFIG_BYTES + 1)
        else:
            return None, "the OSS bucket holding the model could not be read"
    except (httpx.HTTPError, oss2.exceptions.OssError, RolloutError) as exc:
        return None, f"cannot read {MODEL_CONFIG_FILE} ({type(exc).__name__})"
    if listed is not None:
        check_listed_config(raw, listed, where)
    return parse_model_config(raw, where), ""


def check_kv_fit(
    spec: ServiceSpec, report: PreflightReport, config: Any, *, unread_reason: str
) -> None:
    """Weights plus one max-length sequence per GPU (vLLM); see `llm_rollout.kv_cache`."""
    serving = spec.serving
    if config is None:
        report.checks.append(f"KV fit not checked: {unread_reason}")
        return
    if spec.model.size_bytes is None or serving.gpu_memory_gib is None:
        report.checks.append(
            "KV fit not checked: needs model.size_bytes and serving.gpu_memory_gib"
        )
        return
    try:
        shape = kv_cache.model_shape_from_config(config)
        fit = kv_cache.check_fit(
            shape,
            args=serving.extra_args,
            weights_bytes=spec.model.size_bytes,
            gpus=serving.tp * serving.pp,
            tp=serving.tp,
            pp=serving.pp,
            gpu_memory_gib=serving.gpu_memory_gib,
        )
    except kv_cache.EngineArgError as exc:
        report.problems.append(str(exc))
        return
    except kv_cache.ModelConfigError as exc:
        report.problems.append(f"model {exc}")
        return
    if fit.fits:
        report.max_model_len = fit.max_len
        report.checks.append(fit.describe())
    else:
        report.problems.append(f"serving.extra_args: {fit.describe()}")


def run_preflight(
    api: k8s_client.ApiClient,
    spec: ServiceSpec,
    *,
    render_release: Callable[[RbgFlavor | None, int | None, frozenset[str]], RenderedRelease],
    find_serving: Callable[[k8s_client.ApiClient], ServingRelease | None],
) -> PreflightReport:
    """Run every check; raise one `PreflightError` listing all problems, else the report.

    `render_release(rbg_flavor, max_model_len, crd_features)` renders the new release for the
    RBG flavour the cluster serves, the sequence length the KV fit settled and what the
    workload kind's installed CRD offers; the report keeps it
    (`PreflightReport.rendered`) for the release plan."""
    report = PreflightReport()
    # The model's config is read first: the release is rendered once, for the sequence length
    # its KV fit was checked for, and that rendering is what the capacity check sizes.
    bucket = check_oss(spec, report)
    check_hub(spec, report)
    try:
        config, unread = read_model_config(spec, bucket)
    except kv_cache.ModelConfigError as exc:
        report.problems.append(f"model {exc}")
    else:
        check_kv_fit(spec, report, config, unread_reason=unread)

    def render_workloads(flavor: RbgFlavor | None) -> Sequence[Mapping[str, Any]]:
        report.rendered = render_release(flavor, report.max_model_len, report.crd_features)
        return report.rendered.workload_objects

    check_cluster(api, spec, report, render_workloads=render_workloads, find_serving=find_serving)
    if report.problems:
        raise PreflightError(report.problems)
    return report
