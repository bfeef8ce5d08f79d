"""`wait_until` over several targets at once and as a hold (llm_rollout/kube/watching.py), the
shape a bake waits in (llm_rollout/release/bake.py): time running out is the success, a check
that answers `Failed` ends it at once. Against the session's real cluster.

The checks change the cluster themselves the first time they run, so each wait sees a real
change arrive through its watch without a timer in the test.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client

from llm_rollout.kube.objects import apply
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import (
    Done,
    Failed,
    Holding,
    Selector,
    Verdict,
    WaitFailed,
    wait_until,
)
from tests.kube_edge.conftest import configmap

Picture = tuple[ObjectView | None, list[ObjectView]]


def _labelled(namespace: str, name: str, phase: str) -> dict[str, object]:
    obj = configmap(namespace, name, {"phase": phase})
    obj["metadata"]["labels"] = {"hold": "yes"}
    return obj


def test_a_hold_over_two_targets_returns_what_held_when_its_time_is_up(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    apply(api, configmap(namespace, "anchor", {"phase": "ok"}))
    seen: list[tuple[str | None, list[str]]] = []

    def holds(picture: Picture) -> Verdict[int]:
        anchor, members = picture
        names = [m.metadata.name for m in members]
        seen.append((anchor.metadata.name if anchor is not None else None, names))
        if not members:
            apply(api, _labelled(namespace, "m0", "ok"))
        return Holding(len(members))

    targets = (
        ObjectRef("v1", "ConfigMap", namespace, "anchor"),
        Selector("v1", "ConfigMap", namespace, "hold=yes"),
    )
    assert wait_until(api, targets, holds, timeout_s=60, hold_s=2.0) == 1
    # One picture per target, in order; the member created during the hold was seen arrive.
    assert seen[0] == ("anchor", []) and seen[-1] == ("anchor", ["m0"])


def test_a_hold_ends_at_once_when_the_check_fails(
    api: k8s_client.ApiClient, namespace: str
) -> None:
    apply(api, _labelled(namespace, "m0", "ok"))

    def healthy(members: list[ObjectView]) -> Verdict[None]:
        phases = {m.metadata.name: m.raw["data"]["phase"] for m in members}
        if phases.get("m0") == "ok":
            apply(api, _labelled(namespace, "m0", "broken"))
        if "broken" in phases.values():
            return Failed("m0 broke during the hold")
        return Holding(None)

    selector = Selector("v1", "ConfigMap", namespace, "hold=yes")
    # A hold of ten minutes: only the failure can end this test in time.
    with pytest.raises(WaitFailed, match="m0 broke during the hold"):
        wait_until(api, selector, healthy, timeout_s=600, hold_s=600)


def test_holding_belongs_to_holds_only(api: k8s_client.ApiClient, namespace: str) -> None:
    ref = ObjectRef("v1", "ConfigMap", namespace, "absent")

    def holding(obj: ObjectView | None) -> Verdict[None]:
        return Holding(None)

    def done(obj: ObjectView | None) -> Verdict[None]:
        return Done(None)

    with pytest.raises(TypeError, match="no hold"):
        wait_until(api, ref, holding, timeout_s=60)
    with pytest.raises(ValueError, match="cannot end after its timeout"):
        wait_until(api, ref, done, timeout_s=1.0, hold_s=2.0)
