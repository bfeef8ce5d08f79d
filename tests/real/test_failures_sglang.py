"""The deploy flow failing the right way on the REAL cluster: each pod failure class fails fast
naming its cause while the serving release keeps serving, and preflight problems that stop the
run before any write. (Too little capacity for blue-green is in tests/real/test_e2e_sglang_lws.py,
whose last release is made too big to run beside the one it replaces.)

The serving release is a one-pod Deployment of the SGLang stand-in (seed-sglang-lws reshaped
to `tensor-parallel`: tp 2 on one node) behind an API key, so each case costs one short deploy.
The key's gate is checked on that release: the smoke test reached the server with the key from
the Secret (through a port-forward), and the server refuses a request without it. (The imitation
also failed the gate after changing the Secret's value; on a real cluster the new release's
server and the smoke test read the same Secret, so they agree, and that case does not exist.)
Every failure is made with real components, each the way a cluster shows it:
- ErrImagePull: an image the node agent's table (sandbox/cluster/images.py) does not know;
- CrashLoopBackOff: a flag the server refuses (SGLang's argparse exits 2, as the stand-in does);
- Unschedulable: more memory than any node has; the real kube-scheduler refuses it (GPUs cannot
  be used for this: preflight's per-node fit, llm_rollout/strategy.py, refuses a pod asking for
  more GPUs than a node has before any write, see the preflight cases below);
- FailedMount: the sandbox OSS refuses the node's reads of a new PV (403), so the node agent's
  OSS CSI stand-in fails NodePublishVolume as ossfs would.
OOMKilled is made in tests/real/test_readiness_classes.py (a Deployment over its 64Mi limit; the
node agent's per-container memory cgroup, sandbox/cluster/pods/memory.py), not in this module's
release flow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from sandbox.cluster.api_proxy import FaultRule
from sandbox.cluster.control_plane import Cluster
from tests.deploy.cli_support import (
    cli,
    deploy_and_check,
    product_via_proxy,
    stable_models,
    task_runs,
    writes_seen,
)
from tests.real_deploy import (
    KEY_SECRET,
    RealStores,
    merge_sections,
    write_real_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

EXAMPLE = "seed-sglang-lws"
NAMESPACE = "fail"
SERVICE = "qwen3-32b-sglang"  # the example's name
API_KEY = "sk-e2e-api-key-0123"
API_KEY_REF = {"secret_name": "llm-api-key", "key": "token"}
# One pod with two GPUs on one node.
ONE_POD: dict[str, Any] = {
    "serving": {
        "shape": "tensor-parallel",
        "tp": 2,
        "nodes": 1,
        "gpus_per_node": 2,
        "api_key": API_KEY_REF,
    }
}
UNKNOWN_IMAGE = "lmsysorg/sglang:v0.0.0-not-in-the-table"


def _spec(
    env: RealStores, tmp_path: Path, namespace: str, changes: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    return write_real_spec(
        env, EXAMPLE, tmp_path, namespace=namespace, **merge_sections(ONE_POD, changes)
    )


@pytest.fixture(scope="module")
def env(real_deploy_module_env: RealStores) -> RealStores:
    return real_deploy_module_env


@pytest.fixture(scope="module")
def serving(
    env: RealStores, real_admin: k8s.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Release 1 serving in NAMESPACE behind an API key (as the single-GPU example asks: the
    user creates the key's Secret first); yields `status` output and the deploy's output."""
    core = k8s.CoreV1Api(real_admin)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NAMESPACE)))
    core.create_namespaced_secret(
        NAMESPACE,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=API_KEY_REF["secret_name"]),
            string_data={API_KEY_REF["key"]: API_KEY},
        ),
    )
    path, data = _spec(env, tmp_path_factory.mktemp("failures"), NAMESPACE, {})
    assert data["name"] == SERVICE
    _, output = deploy_and_check(str(path), data, KEY_SECRET, API_KEY)
    status = cli("status", SERVICE, "-n", NAMESPACE)
    yield status.output, output
    cli("teardown", SERVICE, "-n", NAMESPACE, "--timeout-s", "60")


def test_the_server_requires_the_api_key_the_smoke_test_sent(serving: tuple[str, str]) -> None:
    """The smoke test passed, so its chat calls carried the key from the Secret
    (llm_rollout/smoke.py sends them through a port-forward when a key is set, because the API
    server's service proxy drops the Authorization header); the same server refuses a request
    without the key, which is what a request through the service proxy is. The key is in no
    output."""
    status, deployed = serving
    assert "smoke test answer" in deployed
    response = stable_models(NAMESPACE, SERVICE)
    assert response.status_code == 401, response.text
    assert API_KEY not in status + deployed


def _pod_failure_changes(kind: str, env: RealStores) -> dict[str, Any]:
    if kind == "ErrImagePull":
        # The node agent answers an image it has no entry for as containerd answers one no
        # registry serves (`<ref>: not found`), which readiness treats as final: no tolerance.
        return {"serving": {"image": UNKNOWN_IMAGE}}
    if kind == "CrashLoopBackOff":
        return {"serving": {"extra_args": ["--no-such-flag"]}}
    if kind == "Unschedulable":
        return {"serving": {"resources": {"memory_gib": 1024}}}  # the nodes have 512Gi
    assert kind == "FailedMount"
    # A new PV (another capacity is another volume identity, spec.model_location_id), so the
    # node must publish it afresh from OSS; the mount error is retried by the kubelet, so the
    # tolerance is spent at once here.
    return {"volume": {"capacity_gib": 71}, "rollout": {"mount_tolerance_s": 0}}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("ErrImagePull", ("ErrImagePull", UNKNOWN_IMAGE)),
        ("CrashLoopBackOff", ("CrashLoopBackOff", "--no-such-flag")),
        ("Unschedulable", ("Unschedulable", "Insufficient memory")),
        ("FailedMount", ("FailedMount", "403")),
    ],
)
def test_each_pod_failure_fails_fast_and_the_old_release_keeps_serving(
    env: RealStores,
    serving: tuple[str, str],
    tmp_path: Path,
    kind: str,
    expected: tuple[str, ...],
) -> None:
    path, data = _spec(env, tmp_path, NAMESPACE, _pod_failure_changes(kind, env))
    if kind == "FailedMount":
        # Reading the model's config.json answers 403 until the test ends: the product does
        # not read it for an SGLang release (no KV-fit check), the node's mount reads every
        # object under the prefix.
        hub = data["model"]["modelscope"]
        key = f"{data['storage']['prefix']}/{hub['model_id']}/{hub['revision']}"
        env.oss.faults.fail(
            "GetObject", status=403, code="AccessDenied", key=f"{key}/config.json", times=None
        )
    try:
        result = cli("deploy", str(path))
    finally:
        env.oss.faults.clear()
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.output, result.output
    assert "keeps serving" in result.output
    # A pod failure is permanent: readiness ran once and was not retried (tasks/readiness.py
    # retries transient errors only), counted from the run's task runs, not from the clock.
    runs = task_runs(result.output)
    assert [
        (r.name, r.run_count, r.state_type) for r in runs if r.name.startswith("readiness")
    ] == [("readiness", 1, "FAILED")], runs
    assert [r for r in runs if r.run_count > 1] == [], runs
    after = cli("status", data["name"], "-n", NAMESPACE)
    assert after.exit_code == 0 and after.output == serving[0]  # nothing promoted
    # The stable Service still reaches the old release's server, which answers (refusing the
    # keyless request the service proxy forwards); without a ready endpoint it would be 503.
    assert stable_models(NAMESPACE, data["name"]).status_code == 401


RBG_GROUP = "workloads.x-k8s.io"


@pytest.mark.parametrize(
    ("example", "changes", "wrong_secret", "expected"),
    [
        ("seed-sglang-pd-rbg", {}, False, "needs CRD RoleBasedGroup.workloads.x-k8s.io"),
        (
            EXAMPLE,
            {"serving": {"tp": 24, "nodes": 3, "gpus_per_node": 8}},
            False,
            "capacity: the release needs 24 nvidia.com/gpu",
        ),
        (EXAMPLE, {}, True, "OSS bucket"),
    ],
    ids=["missing-crd", "too-few-gpus", "wrong-keys"],
)
def test_preflight_problem_stops_the_run_before_any_write(
    env: RealStores,
    real_cluster: Cluster,
    real_admin: k8s.ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    example: str,
    changes: dict[str, Any],
    wrong_secret: bool,
    expected: str,
) -> None:
    if wrong_secret:
        monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "notTheSecretOfThisKey000")
    path, data = write_real_spec(env, example, tmp_path, namespace="pre", **changes)
    env.oss.request_log.clear()
    with product_via_proxy(real_cluster) as proxy:
        if example == "seed-sglang-pd-rbg":
            # The session cluster serves RoleBasedGroup (its reconciler runs); the proxy answers
            # the group's discovery as an API server without the CRD does: 404 NotFound for an
            # unregistered /apis/<group> path (k8s.io/apiserver pkg/server/mux/pathrecorder.go).
            proxy.plan.add(
                FaultRule(
                    "error", path=f"^/apis/{RBG_GROUP}$", method="GET", times=None, status=404
                )
            )
        result = cli("deploy", str(path))
        assert proxy.records(), "the product did not go through the proxy"
        assert writes_seen(proxy) == []
    assert result.exit_code == 1, result.output
    assert "preflight failed" in result.output and expected in result.output, result.output
    oss_writes = [
        r for r in env.oss.request_log.snapshot() if r.method in ("PUT", "POST", "DELETE")
    ]
    assert oss_writes == []
    assert KEY_SECRET not in result.output and "notTheSecretOfThisKey000" not in result.output
    assert cli("status", data["name"], "-n", "pre").exit_code == 3
