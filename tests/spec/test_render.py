"""Engine-side facts of the rendered objects, per shape, and the release/stable contract."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from llm_rollout.errors import SpecError
from llm_rollout.kinds import kind_of
from llm_rollout.render import (
    RbgFlavor,
    default_release,
    render,
    render_oss_secret,
    stable_selector,
)
from llm_rollout.spec import ServiceSpec, spec_from_dict
from llm_rollout.validation import validate_objects
from llm_rollout.vocabulary import RELEASE_LABEL

from .conftest import EXAMPLES, example_dict


def _spec(example: str, **serving: Any) -> ServiceSpec:
    data = example_dict(example)
    data["serving"].update(serving)
    return spec_from_dict(data)


def _container(template: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = template["spec"]["containers"]
    return containers[0]


def test_release_groups_and_apply_order() -> None:
    spec = _spec("seed-vllm-lws")
    rendered = render(spec, release="b2")
    kinds = [obj["kind"] for obj in rendered.all()]
    assert kinds == [
        "Secret",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "LeaderWorkerSet",
        "Service",
        "Service",
    ]
    assert rendered.workload["metadata"]["name"] == "qwen3-32b-vllm-b2"
    assert rendered.workload_objects[1]["metadata"]["name"] == "qwen3-32b-vllm-b2-api"
    assert rendered.stable_service["metadata"]["name"] == "qwen3-32b-vllm"
    assert rendered.stable_service["spec"]["selector"] == stable_selector(spec, "b2")
    for obj in rendered.workload_objects:
        assert obj["metadata"]["labels"][RELEASE_LABEL] == "b2"
        assert obj["metadata"]["annotations"]["llm-rollout.io/model-revision"] == "master"
        assert len(obj["metadata"]["annotations"]["llm-rollout.io/spec-hash"]) == 64
    for obj in rendered.storage_objects:
        assert RELEASE_LABEL not in obj["metadata"]["labels"]


def test_two_releases_share_storage_and_differ_in_workload() -> None:
    spec = _spec("seed-sglang-lws")
    blue, green = render(spec, release="blue"), render(spec, release="green")
    assert blue.storage_objects == green.storage_objects
    assert blue.workload["metadata"]["name"] != green.workload["metadata"]["name"]
    validate_objects([*blue.all(), *green.workload_objects])


@pytest.mark.parametrize("release", ["", "Blue", "a" * 13, "r_1"])
def test_bad_release_ids_are_rejected(release: str) -> None:
    with pytest.raises(SpecError, match="release"):
        render(_spec("seed-vllm-lws"), release=release)


def test_default_release_is_deterministic() -> None:
    spec = _spec("seed-vllm-lws")
    assert default_release(spec) == default_release(_spec("seed-vllm-lws"))
    assert default_release(spec).startswith("r") and len(default_release(spec)) == 8


def test_oss_pv_pvc_follow_the_csi_driver() -> None:
    spec = _spec("seed-vllm-lws")
    secret, pv, pvc = render(spec, release="r1").storage_objects
    csi = pv["spec"]["csi"]
    assert csi["driver"] == "ossplugin.csi.alibabacloud.com"
    assert csi["volumeHandle"] == pv["metadata"]["name"]
    assert csi["nodePublishSecretRef"] == {
        "name": secret["metadata"]["name"],
        "namespace": "llm-serving",
    }
    assert csi["volumeAttributes"] == {
        "bucket": "llm-models-example",
        # alibaba-cloud-csi-driver pkg/oss/utils.go setTransmissionProtocol: a bare
        # *-internal.aliyuncs.com endpoint is mounted over http inside the VPC.
        "url": "oss-cn-hangzhou-internal.aliyuncs.com",
        "path": "/models/Qwen/Qwen3-32B/master/",
        "otherOpts": "-o umask=022 -o max_stat_cache_size=0 -o allow_other",
    }
    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pvc["spec"]["selector"]["matchLabels"] == {"alicloud-pvname": pv["metadata"]["name"]}
    assert pvc["spec"]["storageClassName"] == ""
    assert "data" not in secret and "stringData" not in secret


def test_rrsa_and_ossfs2_variants() -> None:
    data = example_dict("seed-vllm-ray-tp8-pp2")
    del data["storage"]["credentials"]
    data["volume"]["rrsa_role"] = "llm-model-reader"
    rendered = render(spec_from_dict(data), release="r1")
    assert [obj["kind"] for obj in rendered.storage_objects] == [
        "PersistentVolume",
        "PersistentVolumeClaim",
    ]
    csi = rendered.storage_objects[0]["spec"]["csi"]
    assert "nodePublishSecretRef" not in csi
    assert csi["volumeAttributes"]["authType"] == "rrsa"
    assert csi["volumeAttributes"]["roleName"] == "llm-model-reader"
    assert csi["volumeAttributes"]["fuseType"] == "ossfs2"
    assert csi["volumeAttributes"]["path"] == "/models/Qwen/Qwen3-235B-A22B/master/"
    validate_objects(rendered.all())


def test_oss_secret_values_only_through_render_oss_secret() -> None:
    spec = _spec("seed-vllm-lws")
    secret = render_oss_secret(spec, "AKID-example", "AKSECRET-example")
    assert secret["stringData"] == {"akId": "AKID-example", "akSecret": "AKSECRET-example"}
    assert secret["metadata"]["name"] == spec.oss_secret_name
    validate_objects([secret])
    plan_text = repr(render(spec, release="r1").all())
    assert "AKSECRET-example" not in plan_text


def test_vllm_lws_leader_runs_ray_head_and_workers_join() -> None:
    rendered = render(_spec("seed-vllm-lws"), release="r1")
    lwt = rendered.workload["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    assert lwt["leaderTemplate"]["metadata"]["labels"]["role"] == "leader"
    leader = _container(lwt["leaderTemplate"])
    script = leader["command"][-1]
    assert "ray start --head --port=6379" in script
    assert "$(LWS_GROUP_SIZE)" in script
    serve = shlex.split(script.splitlines()[-1])
    assert serve[:3] == ["exec", "vllm", "serve"]
    assert serve[serve.index("--tensor-parallel-size") + 1] == "2"
    assert serve[serve.index("--distributed-executor-backend") + 1] == "ray"
    assert leader["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    worker = _container(lwt["workerTemplate"])
    assert "--address=$(LWS_LEADER_ADDRESS):6379" in worker["command"][-1]
    assert "readinessProbe" not in worker
    api = rendered.workload_objects[1]
    assert api["spec"]["selector"]["role"] == "leader"
    assert api["spec"]["selector"]["leaderworkerset.sigs.k8s.io/name"] == "qwen3-32b-vllm-r1"


def test_sglang_lws_ranks_rendezvous_at_leader() -> None:
    lwt = render(_spec("seed-sglang-lws"), release="r1").workload["spec"]["leaderWorkerTemplate"]
    for template in (lwt["leaderTemplate"], lwt["workerTemplate"]):
        args = _container(template)["args"]
        assert args[args.index("--dist-init-addr") + 1] == "$(LWS_LEADER_ADDRESS):20000"
        assert args[args.index("--nnodes") + 1] == "$(LWS_GROUP_SIZE)"
        assert args[args.index("--node-rank") + 1] == "$(LWS_WORKER_INDEX)"
        assert args[args.index("--tp") + 1] == "2"
    assert (
        _container(lwt["leaderTemplate"])["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    )


def test_startup_probe_allows_a_long_weight_load() -> None:
    leader = _container(
        render(_spec("seed-vllm-lws"), release="r1").workload["spec"]["leaderWorkerTemplate"][
            "leaderTemplate"
        ]
    )
    probe = leader["startupProbe"]
    # 65 GB over a FUSE mount at ~100 MB/s is ~11 minutes; the default allows 30.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1800


def test_tensor_parallel_uses_mp_backend_and_shm() -> None:
    deployment = render(_spec("seed-vllm-tp4"), release="r1").workload
    container = _container(deployment["spec"]["template"])
    args = container["args"]
    assert args[args.index("--distributed-executor-backend") + 1] == "mp"
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes["model"]["persistentVolumeClaim"]["readOnly"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True
    assert mounts["dshm"]["mountPath"] == "/dev/shm"


def test_api_key_is_referenced_and_probed_with_header() -> None:
    container = _container(
        render(_spec("seed-vllm-single-gpu"), release="r1").workload["spec"]["template"]
    )
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["VLLM_API_KEY"] == {"name": "qwen3-8b-api-key", "key": "token"}
    readiness = container["readinessProbe"]["exec"]["command"]
    assert "Authorization" in readiness[-1] and "/v1/models" in readiness[-1]
    # Liveness stays on /health, which needs no key.
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_pd_router_passes_bootstrap_ports_and_depends_on_servers() -> None:
    data = example_dict("seed-sglang-pd-rbg")
    data["serving"]["pd"]["router"] = "sglang_router"
    rbg = render(spec_from_dict(data), release="r1").workload
    roles = {role["name"]: role for role in rbg["spec"]["roles"]}
    assert (roles["prefill"]["replicas"], roles["decode"]["replicas"]) == (2, 1)
    assert sorted(roles["router"]["dependencies"]) == ["decode", "prefill"]
    cmd = _container(roles["router"]["template"])["command"]
    assert cmd[:4] == ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    prefill_at = [i for i, token in enumerate(cmd) if token == "--prefill"]
    assert len(prefill_at) == 2
    for i in prefill_at:
        assert cmd[i + 1].startswith("http://qwen3-32b-pd-r1-prefill-")
        assert cmd[i + 2] == "34000"
    prefill = _container(roles["prefill"]["template"])
    assert prefill["resources"]["limits"]["aliyun/erdma"] == "1"
    assert prefill["args"][prefill["args"].index("--disaggregation-bootstrap-port") + 1] == "34000"
    labels = roles["router"]["template"]["metadata"]["labels"]
    assert labels["rolebasedgroup.workloads.x-k8s.io/role"] == "router"


def test_pd_mini_lb_and_v07_conventions() -> None:
    data = example_dict("seed-sglang-pd-rbg")
    data["serving"]["pd"]["router"] = "mini_lb"
    rendered = render(spec_from_dict(data), release="r1", rbg_flavor="v0.7")
    rbg = rendered.workload
    assert rbg["apiVersion"] == "workloads.x-k8s.io/v1alpha2"
    router = next(role for role in rbg["spec"]["roles"] if role["name"] == "router")
    template = router["standalonePattern"]["template"]
    cmd = _container(template)["command"]
    assert cmd[2] == "sglang.srt.disaggregation.mini_lb"
    ports_at = cmd.index("--prefill-bootstrap-ports")
    assert cmd[ports_at + 1 : ports_at + 3] == ["34000", "34000"]
    assert template["metadata"]["labels"]["rbg.workloads.x-k8s.io/role-name"] == "router"
    assert (
        rendered.workload_objects[1]["spec"]["selector"]["rbg.workloads.x-k8s.io/role-name"]
        == "router"
    )
    validate_objects(rendered.all())


def test_kuberay_params_are_strings_and_head_serves() -> None:
    rendered = render(_spec("seed-vllm-ray-tp8-pp2"), release="r1")
    cluster = rendered.workload
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"] == {
        "dashboard-host": "0.0.0.0",
        "num-gpus": "8",
        "port": "6379",
        "metrics-export-port": "8080",
    }
    workers = cluster["spec"]["workerGroupSpecs"][0]
    assert workers["rayStartParams"] == {"num-gpus": "8", "metrics-export-port": "8080"}
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 1
    script = _container(head["template"])["command"][-1]
    serve = shlex.split(script.splitlines()[-1])
    assert serve[serve.index("--pipeline-parallel-size") + 1] == "2"
    assert serve[serve.index("--tensor-parallel-size") + 1] == "8"
    assert (
        "--address=qwen3-235b-ray-r1-head-svc.llm-serving.svc.cluster.local:6379"
        in (_container(workers["template"])["command"][-1])
    )
    assert rendered.workload_objects[1]["spec"]["selector"]["ray.io/node-type"] == "head"


def test_extra_args_are_shell_quoted_in_scripts() -> None:
    spec = _spec("seed-qwen14b-ray-tp2", extra_args=["--override-generation-config=a,b"])
    head = render(spec, release="r1").workload["spec"]["headGroupSpec"]["template"]
    last = _container(head)["command"][-1].splitlines()[-1]
    assert shlex.split(last)[-1] == "--override-generation-config=a,b"


def test_sglang_single_node_shapes_render_and_validate() -> None:
    data = example_dict("seed-vllm-tp4")
    data["serving"]["engine"] = "sglang"
    rendered = render(spec_from_dict(data), release="r1")
    args = _container(rendered.workload["spec"]["template"])["args"]
    assert args[args.index("--tp") + 1] == "4"
    validate_objects(rendered.all())


def test_sglang_api_key_is_expanded_from_the_secret_env() -> None:
    spec = _spec("seed-sglang-lws", api_key={"secret_name": "llm-key", "key": "token"})
    rendered = render(spec, release="r1")
    leader = _container(rendered.workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"])
    assert leader["args"][leader["args"].index("--api-key") + 1] == "$(LLM_API_KEY)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in leader["env"]}
    assert env == {"LLM_API_KEY": {"name": "llm-key", "key": "token"}}
    assert "/health_generate" in leader["readinessProbe"]["exec"]["command"][-1]
    validate_objects(rendered.all())


@pytest.mark.parametrize(
    ("example", "flavor"),
    [(path.stem, "v0.6") for path in EXAMPLES] + [("seed-sglang-pd-rbg", "v0.7")],
)
def test_every_pod_template_disables_service_links(example: str, flavor: RbgFlavor) -> None:
    # The kubelet sets <SERVICE>_PORT=tcp://<ip>:<port> for each Service of the namespace
    # unless enableServiceLinks is false (kubernetes pkg/kubelet/envvars/envvars.go
    # FromServices; kubelet_pods.go getServiceEnvVarMap). Named `vllm`, the spec's stable
    # Service would make that VLLM_PORT, which vLLM refuses ("appears to be a URI",
    # vllm-project/vllm vllm/envs.py get_vllm_port) before serving.
    data = example_dict(example)
    data["name"] = "vllm"
    rendered = render(spec_from_dict(data), release="r1", rbg_flavor=flavor)
    assert rendered.stable_service["metadata"]["name"] == "vllm"
    templates: dict[str, bool | None] = {}
    for obj in rendered.workload_objects:
        kind = kind_of(obj)
        if kind is None:
            continue
        for path, template in kind.pod_templates(obj):
            pod_spec = template.get("spec") or {}
            templates[f"{obj['kind']} {path}"] = pod_spec.get("enableServiceLinks")
    assert templates, "no pod template rendered"
    assert {path: links for path, links in templates.items() if links is not False} == {}
