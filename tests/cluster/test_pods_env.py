"""The kubelet's $(VAR) expansion and env resolution, checked against the cases of
k8s.io/kubernetes third_party/forked/golang/expansion/expand_test.go and kubelet_pods.go."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sandbox.cluster import images
from sandbox.cluster.pods import env as podenv
from sandbox.cluster.pods.containers import Backoff, BackoffPolicy

MAPPING = {"VAR_A": "A", "VAR_B": "B", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_B)", "A-B"),
        ("$(VAR_EMPTY)", ""),
        ("$(UNDEFINED)", "$(UNDEFINED)"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("$(VAR_A", "$(VAR_A"),
        ("$VAR_A", "$VAR_A"),
        ("$", "$"),
        ("$$", "$"),
        ("foo$", "foo$"),
        ("$()", "$()"),
        ("$(hostname -i)", "$(hostname -i)"),
    ],
)
def test_expansion_matches_upstream(text: str, expected: str) -> None:
    assert podenv.expand(text, MAPPING) == expected


def _facts() -> podenv.PodFacts:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "web"},
            "annotations": {"note": "n"},
        },
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa"},
    }
    return podenv.PodFacts(pod=pod, pod_ip="10.244.0.7", host_ip="10.244.254.1")


def _sources(secrets: dict[str, dict[str, str]], maps: dict[str, dict[str, str]]) -> podenv.Sources:
    return podenv.Sources(
        secrets=lambda ns, name: secrets.get(name), config_maps=lambda ns, name: maps.get(name)
    )


def test_env_in_order_with_downward_api_secrets_and_config_maps() -> None:
    container = {
        "env": [
            {"name": "LATER_REF", "value": "x-$(POD)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "REF", "value": "$(POD).$(NS_MISSING)"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": True}},
            },
        ]
    }
    secret = {"k": base64.b64encode(b"s3cret").decode()}
    got = podenv.container_env(container, _facts(), _sources({"s": secret}, {"c": {"k": "cm"}}))
    assert got == [
        # Defined after LATER_REF, so not expanded in it (makeEnvironmentVariables).
        ("LATER_REF", "x-$(POD)"),
        ("POD", "p"),
        ("REF", "p.$(NS_MISSING)"),
        ("APP", "web"),
        ("IP", "10.244.0.7"),
        ("HOST", "10.244.254.1"),
        ("S", "s3cret"),
        ("C", "cm"),
    ]


def test_a_missing_secret_is_a_config_error_naming_it() -> None:
    container = {
        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]
    }
    with pytest.raises(podenv.ContainerConfigError, match='secret "gone" not found'):
        podenv.container_env(container, _facts(), _sources({}, {}))


def test_command_and_args_over_the_image_defaults() -> None:
    env = {"A": "1"}
    assert podenv.command_line({"args": ["-c", "$(A)"]}, ("ep",), ("cmd",), env) == [
        "ep",
        "-c",
        "1",
    ]
    assert podenv.command_line({"command": ["x", "$(A)"]}, ("ep",), ("cmd",), env) == ["x", "1"]
    assert podenv.command_line({}, (), ("sh",), env) == ["sh"]


def test_the_shell_image_resolves_in_both_spellings_and_others_do_not() -> None:
    short = images.resolve("busybox:1.36")
    assert short is not None and short == images.resolve("docker.io/library/busybox:1.36")
    found = short.host_argv(["sh", "-c", "true"])
    assert found is not None and found.argv[0].endswith("/sh")
    assert short.host_argv(["no-such-binary-here"]) is None
    assert images.resolve("docker.io/library/busybox:1.35") is None
    assert images.resolve("vllm/vllm-openai:v0.8.5") is None


def test_backoff_restarts_at_once_then_doubles_to_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(base_s=10, max_s=40))
    assert backoff.wait_s(event_mono=100, now=100) == 0
    delays = []
    now = 100.0
    for _ in range(5):
        backoff.next(now)
        delays.append(backoff.current_s)
        now += 1
    assert delays == [10, 20, 40, 40, 40]
    # An exit soon after the last start waits the current back-off from the exit.
    assert backoff.wait_s(event_mono=now, now=now) == 40
    # Idle for more than twice the cap: starts over.
    assert backoff.wait_s(event_mono=now + 81, now=now + 81) == 0


def _service(namespace: str, name: str, ip: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterIP": ip, "ports": ports},
    }


def test_service_variables_as_envvars_from_services_names_them() -> None:
    services = [
        _service("default", "kubernetes", "10.96.0.1", [{"name": "https", "port": 443}]),
        _service("default", "other", "10.96.0.9", [{"port": 80}]),
        _service("ns", "my-svc", "10.96.0.5", [{"port": 53, "protocol": "UDP", "name": "dns"}]),
        _service("ns", "headless", "None", [{"port": 80}]),
        _service("ns", "v6", "fd00::5", [{"port": 80}]),
    ]
    got = podenv.service_env(services, "ns", enable_service_links=True)
    assert got["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert got["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert got["MY_SVC_SERVICE_PORT_DNS"] == "53"
    assert got["MY_SVC_PORT"] == "udp://10.96.0.5:53"
    assert got["MY_SVC_PORT_53_UDP_PROTO"] == "udp"
    assert got["MY_SVC_PORT_53_UDP_ADDR"] == "10.96.0.5"
    # net.JoinHostPort brackets an IPv6 address.
    assert got["V6_PORT_80_TCP"] == "tcp://[fd00::5]:80"
    assert not any(k.startswith(("OTHER_", "HEADLESS_")) for k in got)
    off = podenv.service_env(services, "ns", enable_service_links=False)
    assert {k.split("_")[0] for k in off} == {"KUBERNETES"}
    # A "kubernetes" Service of the pod's own namespace wins over default's.
    mine = [*services, _service("ns", "kubernetes", "10.96.0.77", [{"port": 8080}])]
    assert podenv.service_env(mine, "ns", True)["KUBERNETES_SERVICE_HOST"] == "10.96.0.77"


def test_service_variables_come_after_the_containers_own_and_expand_in_values() -> None:
    container = {
        "env": [
            {"name": "ADDR", "value": "$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)"},
            {"name": "DB_SERVICE_PORT", "value": "override"},
        ]
    }
    services = {"DB_SERVICE_HOST": "10.0.0.3", "DB_SERVICE_PORT": "5432"}
    got = podenv.container_env(container, _facts(), _sources({}, {}), services)
    assert got == [
        ("ADDR", "10.0.0.3:5432"),
        ("DB_SERVICE_PORT", "override"),
        ("DB_SERVICE_HOST", "10.0.0.3"),
    ]


@pytest.mark.parametrize(
    ("resource", "divisor", "expected"),
    [
        ("limits.cpu", "1", "1"),
        ("limits.cpu", "1m", "250"),
        ("limits.cpu", None, "1"),
        ("limits.cpu", "0", "1"),
        ("requests.cpu", "1m", "100"),
        ("limits.memory", "1Mi", "2"),
        ("limits.memory", "1M", "2"),
        ("limits.memory", "1", str(3 * 2**19)),
        # No limit set: the node's allocatable.
        ("limits.ephemeral-storage", "1Gi", "100"),
        ("requests.memory", "1", "0"),
    ],
)
def test_resource_field_refs_round_up_over_their_divisor(
    resource: str, divisor: str | None, expected: str
) -> None:
    container = {
        "name": "c",
        "resources": {"limits": {"cpu": "250m", "memory": "1.5Mi"}, "requests": {"cpu": "100m"}},
    }
    ref: dict[str, Any] = {"resource": resource}
    if divisor is not None:
        ref["divisor"] = divisor
    allocatable = {"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi"}
    pod = {"spec": {"containers": [container]}}
    assert podenv.resource_value(ref, pod, container, allocatable) == expected


def test_resource_field_refs_by_container_name_and_unknown_resources() -> None:
    main = {"name": "main", "resources": {"limits": {"cpu": "2"}}}
    bare = {"name": "bare"}
    init = {"name": "init"}
    pod = {"spec": {"containers": [main, bare], "initContainers": [init]}}
    allocatable = {"cpu": "8", "memory": "16Gi"}
    by_name = {"resource": "limits.cpu", "containerName": "bare"}
    assert podenv.resource_value(by_name, pod, main, allocatable) == "8"
    # The pod's init containers are not defaulted (defaultPodLimitsForDownwardAPI).
    init_ref = {"resource": "limits.cpu", "containerName": "init"}
    assert podenv.resource_value(init_ref, pod, main, allocatable) == "0"
    with pytest.raises(podenv.ContainerConfigError, match="container nope not found"):
        podenv.resource_value({"resource": "limits.cpu", "containerName": "nope"}, pod, main, {})
    with pytest.raises(podenv.ContainerConfigError, match="unsupported container resource"):
        podenv.resource_value({"resource": "limits.nvidia.com/gpu"}, pod, main, allocatable)
