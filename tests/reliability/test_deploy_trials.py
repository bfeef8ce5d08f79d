"""Deploy-flow trials of `bench/reliability.py`, a few each: Kubernetes API fault classes,
workload faults with traffic through the stable Service, and simultaneous runs of one service."""

from __future__ import annotations

import random

import pytest

from bench.reliability import (
    KUBE_CLASSES,
    WORKLOAD_KINDS,
    InputWorld,
    KubeFault,
    _cli,
    run_kube_class,
    trial_concurrent_pair,
    trial_workload,
    workload_baseline,
    write_deploy_spec,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.parametrize(("name", "fault"), KUBE_CLASSES, ids=[n for n, _ in KUBE_CLASSES])
def test_kube_api_fault_class_deploys(world: InputWorld, name: str, fault: KubeFault) -> None:
    _, results = run_kube_class(world, name, fault, 1, seed=5)
    # The trial itself, not the bench's table row counting it.
    (result,) = results
    assert result.survived, result.detail  # promoted, routed, ready
    assert result.fired >= 1  # the fault did fire during the deploy
    assert result.leaks == 0


@pytest.fixture(scope="module")
def baseline(world: InputWorld) -> str:
    return workload_baseline(world)


@pytest.mark.parametrize("kind", list(WORKLOAD_KINDS))
def test_workload_fault_fails_fast_and_traffic_never_fails(
    world: InputWorld, baseline: str, kind: str
) -> None:
    result = trial_workload(world, kind, random.Random(kind), f"t-work-{kind.replace(' ', '')}")
    # Survived: exit 1 naming the reason (and the lost Node), the previous release still
    # routed and ready, no failed request. It also bounds the run by FAIL_FAST_S (25 s, under
    # the spec's 60 s ready timeout): a run waiting out the timeout must not pass.
    assert result.survived, result.detail
    assert result.fired > 0  # requests went through the Service during the rollout
    assert result.leaks == 0
    if kind == "node lost":
        # Readiness itself reported the loss (a log record naming NodeLost), although a spare
        # node had room for the replacement pod. How soon is bench/reliability.py's figure.
        assert result.reported_s is not None, result.detail


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
        world.kube_log.clear()
        code, output = _cli(["deploy", str(path)])
        writes = [f"{r.method} {r.path}" for r in world.kube_log.writes()]
        assert code == 1, output
        assert "being rolled out by another run" in output and "someone-else" in output, output
        assert writes == [], writes  # the Lease read said "held": nothing was written
        deployments = k8s_client.AppsV1Api(api).list_namespaced_deployment(namespace)
        assert deployments.items == []
    finally:
        api.close()  # type: ignore[no-untyped-call]
