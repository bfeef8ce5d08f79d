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
