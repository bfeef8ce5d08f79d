"""Rendered objects against what real controllers, drivers and engines do (issue 16).

Each test names the upstream rule and the file it was read from; they stand in for runs
against the real components until those are in the sandbox.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llm_rollout.errors import SpecError
from llm_rollout.kinds.rbg import RoleServiceError
from llm_rollout.kinds.rbg import role_labels as rbg_role_labels
from llm_rollout.kinds.rbg import role_services_from_pods as rbg_role_services_from_pods
from llm_rollout.render import STATEFULSET_NAME_MAX, render
from llm_rollout.spec import MAX_RELEASE_LEN, spec_from_dict

from .conftest import example_dict


def _render(data: dict[str, Any], **kwargs: Any) -> Any:
    return render(spec_from_dict(data), release="r1", **kwargs)


def _container(template: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = template["spec"]["containers"]
    return containers[0]


# --- F5: vLLM on LWS, the worker's join ----------------------------------------------------------


def _worker_script() -> str:
    lwt = _render(example_dict("seed-vllm-lws")).workload["spec"]["leaderWorkerTemplate"]
    script: str = _container(lwt["workerTemplate"])["command"][-1]
    # The kubelet expands $(LWS_LEADER_ADDRESS) from the env LWS injects before bash runs.
    return script.replace("$(LWS_LEADER_ADDRESS)", "lws-0.lws.ns")


def _fake_bin(tmp_path: Path, failures: int) -> Path:
    """`ray` failing `failures` times then succeeding, and an instant `sleep`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    ray = bin_dir / "ray"
    ray.write_text(
        f'#!/bin/bash\necho "$*" >> {calls}\n[ "$(wc -l < {calls})" -gt {failures} ]\n',
        encoding="utf-8",
    )
    sleep = bin_dir / "sleep"
    sleep.write_text("#!/bin/bash\nexit 0\n", encoding="utf-8")
    for tool in (ray, sleep):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _run(script: str, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_lws_worker_retries_ray_start_until_the_head_listens(tmp_path: Path) -> None:
    """vllm-project/vllm examples/online_serving/multi-node-serving.sh retries `ray start`
    because a worker can start before the leader's GCS listens (LWS LeaderCreated)."""
    result = _run(_worker_script(), _fake_bin(tmp_path, failures=3))
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text(encoding="utf-8").splitlines()
    assert len(calls) == 4
    assert all(c.startswith("start --address=lws-0.lws.ns:6379") for c in calls)
    assert all("--block" in c for c in calls)
    assert result.stderr.count("not reachable yet") == 3


def test_lws_worker_gives_up_after_the_startup_budget(tmp_path: Path) -> None:
    # bash's SECONDS counts from its assignment: start the script past its budget.
    result = _run("SECONDS=100000\n" + _worker_script(), _fake_bin(tmp_path, failures=99))
    assert result.returncode == 1
    assert "could not join the Ray head at lws-0.lws.ns:6379" in result.stderr
    assert len((tmp_path / "calls").read_text(encoding="utf-8").splitlines()) == 1


# --- F7/F8: probes ------------------------------------------------------------------------------


def test_pd_router_probes_its_own_liveness_and_readiness() -> None:
    """sgl-project/sglang sgl-router/src/server.rs: /health aggregates the backends,
    /liveness and /readiness are the router's own."""
    data = example_dict("seed-sglang-pd-rbg")
    data["serving"]["pd"]["router"] = "sglang_router"
    roles = {r["name"]: r for r in _render(data).workload["spec"]["roles"]}
    router = _container(roles["router"]["template"])
    assert router["livenessProbe"]["httpGet"]["path"] == "/liveness"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readiness"


@pytest.mark.parametrize("router", ["sglang_router", "mini_lb"])
def test_pd_router_startup_outlasts_its_servers_start(router: str) -> None:
    """sglang-router 0.1.x listens only once every prefill and decode server is healthy
    (sgl-router `src/routers/pd_router.rs` `PDRouter::new`), up to `--worker-startup-timeout-secs`
    (default 300 s, `py_src/sglang_router/launch_router.py`); the kubelet holds liveness and
    readiness until the startup probe succeeds (kubernetes `pkg/kubelet/prober/worker.go`
    `doProbe`). Without a startup probe covering the servers' load, an update that rolls the
    router with its servers had the router killed for liveness."""
    data = example_dict("seed-sglang-pd-rbg")
    data["serving"]["pd"]["router"] = router
    data["serving"]["probes"] = {"startup_budget_s": 2400, "period_s": 7}
    roles = {r["name"]: r for r in _render(data).workload["spec"]["roles"]}
    server_startup = _container(roles["prefill"]["template"])["startupProbe"]
    server_budget_s = server_startup["periodSeconds"] * server_startup["failureThreshold"]
    router = _container(roles["router"]["template"])
    startup = router["startupProbe"]
    assert startup["httpGet"] == router["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= server_budget_s >= 2400
    if data["serving"]["pd"]["router"] == "sglang_router":
        command = router["command"]
        wait_s = int(command[command.index("--worker-startup-timeout-secs") + 1])
        assert wait_s >= server_budget_s - server_startup["periodSeconds"]
        # Its wait plus one round of health checks (RouterArgs.worker_startup_check_interval).
        assert startup["periodSeconds"] * startup["failureThreshold"] >= wait_s + 10


@pytest.mark.parametrize("example", ["seed-sglang-lws", "seed-sglang-pd-rbg"])
def test_sglang_probes_outlast_its_health_check_timeout(example: str) -> None:
    """sglang python/sglang/srt/entrypoints/http_server.py: /health and /health_generate wait
    up to SGLANG_HEALTH_CHECK_TIMEOUT (20 s) for a one-token generation."""
    workload = _render(example_dict(example)).workload
    containers = []
    if workload["kind"] == "LeaderWorkerSet":
        containers.append(_container(workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"]))
    else:
        for role in workload["spec"]["roles"]:
            if role["name"] != "router":
                containers.append(_container(role["template"]))
    for container in containers:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert probe["timeoutSeconds"] > 20
            # The period stays the user's: kubernetes pkg/kubelet/prober/worker.go probes on a
            # ticker, so a probe longer than the period only delays the next tick.
            assert probe["periodSeconds"] == 10
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800


def test_vllm_probe_timeouts_stay_as_given() -> None:
    deployment = _render(example_dict("seed-vllm-tp4")).workload
    assert _container(deployment["spec"]["template"])["livenessProbe"]["timeoutSeconds"] == 5


# --- F6: router backends and RBG's Service names ------------------------------------------------


def test_pd_router_backends_follow_the_role_services_read_from_the_cluster() -> None:
    data = example_dict("seed-sglang-pd-rbg")
    default = _container(
        next(r for r in _render(data).workload["spec"]["roles"] if r["name"] == "router")[
            "template"
        ]
    )["command"]
    assert "http://qwen3-32b-pd-r1-prefill-0.s-qwen3-32b-pd-r1-prefill.llm-serving.svc:8000" in (
        default
    )
    # An older controller (the seed's ack-rbgs) names the role Service "<rbg>-<role>".
    bound = _render(
        data,
        rbg_role_services={
            "prefill": "qwen3-32b-pd-r1-prefill",
            "decode": "qwen3-32b-pd-r1-decode",
        },
    ).workload
    command = _container(
        next(r for r in bound["spec"]["roles"] if r["name"] == "router")["template"]
    )["command"]
    assert (
        "http://qwen3-32b-pd-r1-prefill-1.qwen3-32b-pd-r1-prefill.llm-serving.svc:8000" in command
    )
    assert "http://qwen3-32b-pd-r1-decode-0.qwen3-32b-pd-r1-decode.llm-serving.svc:8000" in command
    assert not any(".s-" in token for token in command)


def _role_pod(role: str, index: int, flavor: Any, subdomain: str | None) -> dict[str, Any]:
    labels = rbg_role_labels("qwen3-32b-pd-r1", role, flavor)
    spec = {"hostname": f"qwen3-32b-pd-r1-{role}-{index}"}
    if subdomain is not None:
        spec["subdomain"] = subdomain
    return {"metadata": {"name": spec["hostname"], "labels": labels}, "spec": spec}


@pytest.mark.parametrize("flavor", ["v0.6", "v0.7"])
def test_role_services_are_read_from_the_pods_subdomain(flavor: Any) -> None:
    """kubernetes pkg/controller/statefulset/stateful_set_utils.go initIdentity sets
    pod.spec.subdomain = serviceName; RBG v0.7 sets it on its RoleInstance pods."""
    pods = [
        _role_pod("prefill", 0, flavor, "qwen3-32b-pd-r1-prefill"),
        _role_pod("prefill", 1, flavor, "qwen3-32b-pd-r1-prefill"),
        _role_pod("decode", 0, flavor, "s-qwen3-32b-pd-r1-decode"),
        _role_pod("router", 0, flavor, None),
    ]
    services = rbg_role_services_from_pods(pods, "qwen3-32b-pd-r1", flavor)
    assert services == {
        "prefill": "qwen3-32b-pd-r1-prefill",
        "decode": "s-qwen3-32b-pd-r1-decode",
    }
    other = "v0.7" if flavor == "v0.6" else "v0.6"
    assert rbg_role_services_from_pods(pods, "qwen3-32b-pd-r1", other) == {}
    pods.append(_role_pod("decode", 1, flavor, None))
    with pytest.raises(RoleServiceError, match="role decode"):
        rbg_role_services_from_pods(pods, "qwen3-32b-pd-r1", flavor)
    with pytest.raises(RoleServiceError, match="not a DNS-1123 label"):
        _render(example_dict("seed-sglang-pd-rbg"), rbg_role_services={"prefill": "a b;rm"})


def test_pd_example_uses_the_seeds_erdma_image() -> None:
    image = example_dict("seed-sglang-pd-rbg")["serving"]["image"]
    assert image.startswith("anolis-registry.cn-zhangjiakou.cr.aliyuncs.com/")
    assert "alinux3" in image


# --- F11/F12/B8: storage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("https://oss-cn-hangzhou-internal.aliyuncs.com", "oss-cn-hangzhou-internal.aliyuncs.com"),
        (
            "http://oss-cn-hangzhou-internal.aliyuncs.com",
            "http://oss-cn-hangzhou-internal.aliyuncs.com",
        ),
        ("https://oss-cn-hangzhou.aliyuncs.com", "https://oss-cn-hangzhou.aliyuncs.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_pv_url_leaves_the_internal_endpoint_to_the_drivers_http(endpoint: str, url: str) -> None:
    """alibaba-cloud-csi-driver pkg/oss/utils.go setTransmissionProtocol: a scheme given is
    kept; a bare *-internal.aliyuncs.com gets http://, any other bare host https://."""
    data = example_dict("seed-vllm-lws")
    data["storage"]["endpoint"] = endpoint
    pv = _render(data).storage_objects[1]
    assert pv["spec"]["csi"]["volumeAttributes"]["url"] == url


def test_oss_uri_in_the_mirror_layout_is_served_under_the_model_name() -> None:
    spec = spec_from_dict(example_dict("seed-vllm-ray-tp8-pp2"))
    assert spec.model_mount_path == "/models/Qwen3-235B-A22B"
    assert spec.served_model_name == "/models/Qwen3-235B-A22B"
    data = example_dict("seed-vllm-ray-tp8-pp2")
    data["model"]["oss_uri"] = "oss://other-bucket/weights/qwen3-235b/"
    assert spec_from_dict(data).model_mount_path == "/models/qwen3-235b"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("volume.other_opts", "-o umask=022 -o allow_other"),
        ("volume.fuse_type", "ossfs2"),
        ("volume.capacity_gib", 500),
        ("volume.oss_secret_name", "other-oss"),
        ("storage.endpoint", "https://oss-cn-beijing-internal.aliyuncs.com"),
    ],
)
def test_changed_mount_options_make_new_pv_and_pvc_names(field: str, value: Any) -> None:
    """A PV's volume source and a PVC's spec (but a growing request) are immutable
    (kubernetes pkg/apis/core/validation/validation.go ValidatePersistentVolumeUpdate /
    ValidatePersistentVolumeClaimUpdate): changed options must not hit an existing object."""
    base = spec_from_dict(example_dict("seed-vllm-lws"))
    data = example_dict("seed-vllm-lws")
    section, key = field.split(".")
    data.setdefault(section, {})[key] = value
    changed = spec_from_dict(data)
    assert changed.pv_name != base.pv_name
    assert changed.pvc_name != base.pvc_name


# --- B5: names the StatefulSet controller cannot label ------------------------------------------


@pytest.mark.parametrize(
    ("example", "flavor", "longest"),
    # <name>-<12-character release>-0 (LWS worker StatefulSet of group 0) and
    # <name>-<12-character release>-prefill (RBG v0.6 role StatefulSet) within 52 characters.
    [("seed-vllm-lws", "v0.6", 37), ("seed-sglang-pd-rbg", "v0.6", 31)],
)
@pytest.mark.parametrize("release", ["r1", "r" * MAX_RELEASE_LEN])
def test_names_too_long_for_the_statefulset_revision_label_are_refused(
    example: str, flavor: str, longest: int, release: str
) -> None:
    """kubernetes pkg/controller/history/controller_history.go: controller-revision-hash is
    "<statefulset>-<hash of up to 10 characters>" and must fit a 63-character label. The
    verdict is the same for `plan`'s short default release and a deploy's 12-character one."""
    data = example_dict(example)
    assert STATEFULSET_NAME_MAX == 52
    data["name"] = "a" * longest
    render(spec_from_dict(data), release=release, rbg_flavor=flavor)  # type: ignore[arg-type]
    data["name"] = "a" * (longest + 1)
    with pytest.raises(SpecError) as caught:
        render(spec_from_dict(data), release=release, rbg_flavor=flavor)  # type: ignore[arg-type]
    assert caught.value.field == "name"
    assert "controller-revision-hash" in str(caught.value)
    assert f"use at most {longest} characters" in str(caught.value)
    assert f"{STATEFULSET_NAME_MAX + 1} characters with a 12-character release id" in str(
        caught.value
    )


def test_rbg_v07_and_deployments_are_not_limited_by_the_statefulset_label() -> None:
    name = "a" * 40  # past both StatefulSet-bound limits above (37 and 31)
    for example, flavor, kind in (
        ("seed-sglang-pd-rbg", "v0.7", "RoleBasedGroup"),
        ("seed-vllm-tp4", "v0.6", "Deployment"),
    ):
        data = example_dict(example)
        data["name"] = name
        rendered = render(spec_from_dict(data), release="r1234567", rbg_flavor=flavor)  # type: ignore[arg-type]
        workload = rendered.workload
        assert workload["kind"] == kind
        assert workload["metadata"]["name"] == f"{name}-r1234567"
