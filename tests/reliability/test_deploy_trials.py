"""Deploy-flow trials of `bench/reliability.py`, a few each: workload faults with traffic
through the stable Service to real pods, and simultaneous runs of one service, on the session's
real cluster. The lost-node class needs the node-lifecycle
controller's timings shortened, which the session cluster does not have: the bench runs it on its
own cluster, and tests/reliability/test_node_lost.py covers readiness's report of the loss.
The Kubernetes API fault classes run together in one deploy in test_kube_faults_secrets.py
(each deploy of a new release costs ~30 s of the area's budget); one deploy per class is the
bench's."""

from __future__ import annotations

import random

import pytest

from bench.reliability import (
    SESSION_WORKLOAD_KINDS,
    InputWorld,
    _cli,
    trial_concurrent_pair,
    trial_workload,
    workload_baseline,
    write_deploy_spec,
)

# A deploy on the shared 2-core machine: the whole flow with a real pod (see the figures in
# bench/reliability.py's table); the session cluster's start is outside (func_only).
pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(240, func_only=True)]


@pytest.fixture(scope="module")
def baseline(world: InputWorld) -> str:
    return workload_baseline(world)


@pytest.mark.parametrize("kind", SESSION_WORKLOAD_KINDS)
def test_workload_fault_fails_fast_and_traffic_never_fails(
    world: InputWorld, baseline: str, kind: str
) -> None:
    result = trial_workload(world, kind, random.Random(kind), f"t-work-{kind.replace(' ', '')}")
    # Survived: exit 1 naming the reason, the previous release still routed and ready, no
    # failed request. It also bounds the run by FAIL_FAST_S (25 s, under the spec's 60 s ready
    # timeout): a run waiting out the timeout must not pass.
    assert result.survived, result.detail
    assert result.fired > 0  # requests went through the Service during the rollout
    assert result.leaks == 0


def test_two_simultaneous_deploys_never_interleave(world: InputWorld) -> None:
    result = trial_concurrent_pair(world, 900)
    assert result.survived, result.detail
    (_, first_end), (second_start, _) = sorted(result.windows.values())
    assert second_start >= first_end
    assert len(result.holders) == 2 and result.holders[0] != result.holders[1]


def test_second_deploy_fails_fast_naming_the_holder_when_told_not_to_wait(
    world: InputWorld,
) -> None:
    """A Lease held by someone else (lock_wait_s 0): refused at once, holder named, no write
    to the workload's namespace beyond the read-only preflight."""
    from kubernetes import client as k8s_client

    from llm_rollout.kube.client import load_api_client
    from llm_rollout.locking import try_acquire

    namespace = name = "rel-conc-held"
    holder = "deploy-model/someone-else (flow run 00000000-0000-0000-0000-000000000000) on ci"
    api = load_api_client()
    try:
        taken, _, _ = try_acquire(
            api, namespace, name, holder=holder, owner="another-root", duration_s=300
        )
        assert taken
        path = write_deploy_spec(world, "held", namespace, name, rollout={"lock_wait_s": 0})
        world.proxy.clear()
        code, output = _cli(["deploy", str(path)])
        writes = [f"{r.method} {r.path}" for r in world.product_writes()]
        assert world.proxy.records(), "the deploy's requests did not go through the proxy"
        assert code == 1, output
        assert "being rolled out by another run" in output and "someone-else" in output, output
        assert writes == [], writes  # the Lease read said "held": nothing was written
        deployments = k8s_client.AppsV1Api(api).list_namespaced_deployment(namespace)
        assert deployments.items == []
    finally:
        api.close()  # type: ignore[no-untyped-call]
