"""Scripted backends: simulated model load seen by probes, and scripted failures via the proxy."""

from __future__ import annotations

import time

import httpx

from sandbox.kube.backends import BackendBehavior
from sandbox.kube.cluster import SandboxCluster

from .conftest import Kube, deployment, wait_for


def test_slow_model_load_keeps_the_pod_unready_until_loaded(
    kube: Kube, ns: str, cluster: SandboxCluster
) -> None:
    cluster.scripted.set_behavior({"app": "slow"}, BackendBehavior(load_delay_s=1.0))
    try:
        t0 = time.monotonic()
        kube.apps.create_namespaced_deployment(ns, deployment("slow"))
        wait_for(lambda: kube.available(ns, "slow") == 1, 10, "slow deployment available")
        took = time.monotonic() - t0
    finally:
        cluster.scripted.clear_behaviors()
    assert took >= 1.0
    unhealthy = [e.message for e in kube.events(ns, "Unhealthy")]
    assert any(
        m.startswith('Readiness probe failed: Get "http://') and "connection refused" in m
        for m in unhealthy
    )


def test_scripted_failures_reach_the_client_through_the_proxy(
    kube: Kube, ns: str, cluster: SandboxCluster
) -> None:
    kube.apps.create_namespaced_deployment(ns, deployment("flaky"))
    kube.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "flaky"},
            "spec": {"selector": {"app": "flaky"}, "ports": [{"port": 8000, "targetPort": 8000}]},
        },
    )
    wait_for(lambda: kube.available(ns, "flaky") == 1, 10, "flaky deployment available")
    url = f"{cluster.url}/api/v1/namespaces/{ns}/services/flaky:8000/proxy/v1/completions"
    body = {"prompt": "hi", "max_tokens": 3}
    ok = httpx.post(url, json=body, timeout=10).json()
    assert ok["choices"][0]["finish_reason"] == "length"
    assert ok["usage"]["completion_tokens"] == 3
    try:
        cluster.scripted.set_behavior({"app": "flaky"}, BackendBehavior(failure="http500"))
        assert httpx.post(url, json=body, timeout=10).status_code == 500
        cluster.scripted.set_behavior({"app": "flaky"}, BackendBehavior(failure="wrong_answer"))
        wrong = httpx.post(url, json={"prompt": "hi"}, timeout=10).json()
        assert wrong["choices"][0]["text"] == BackendBehavior().wrong_answer
    finally:
        cluster.scripted.clear_behaviors()
