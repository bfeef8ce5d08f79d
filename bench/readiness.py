"""Benchmark: how fast the rollout notices readiness and pod failure, against 30 s polling.

For each trial a Deployment is applied to a fresh namespace of a sandbox cluster, and two
observers run side by side from the moment of the apply:
- the product's `wait_ready` (watch-based);
- a baseline loop that reads the state every 30 s, the seeds' probe period (its phase is
  random relative to the apply, as it would be for a person or a script re-running kubectl).

The reference moment is taken from the sandbox store's own event subscription: when the
Deployment's status first satisfies the readiness rule, which its controller reports only
once the pods are Ready (ready trials), or when the first Warning event for one of its pods
is committed (failure trials).

Three more measures (issue 16), each against the same store-side reference:
- transient signal that clears: a rate-limited image pull (tolerated) whose fault is cleared
  at the first "tolerating" note; measured from the Deployment turning ready in the store to
  the verdict (the tolerance must not hold a recovered rollout back);
- persistent signal: the same pull error never clears, tolerance `--tolerance-s`; measured from
  the first pull-error Warning event plus the tolerance to the failure verdict (the overshoot);
- crash-looping LWS group (RecreateGroupOnPodRestart, k = `--group-recreations`): measured
  from the k-th recreation (the leader pod's (k+1)-th UID added in the store) to the verdict.

The store runs subscribers after the commit, sometimes after a watcher already received it,
so a verdict can precede its reference by a few milliseconds (a negative figure).

Usage: uv run python bench/readiness.py [--trials N] [--poll-period-s 30] [--tolerance-s 2]
Targets: ready noticed < 1 s after it happens; failing pod reported < 5 s after its event;
transient -> ready verdict < 1 s; persistent and crash-loop verdict < 5 s past their bound.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_rollout.kube.client import load_api_client
from llm_rollout.kube.objects import apply, get
from llm_rollout.kube.resources import ObjectRef, list_objects
from llm_rollout.readiness import (
    WorkloadFailed,
    pod_selector_for,
    wait_ready,
    workload_missing,
)
from llm_rollout.readiness_rules import DEFAULT_TOLERANCES
from sandbox.kube.cluster import ClusterConfig, SandboxCluster

IMAGE_FAIL_REASONS = {"ErrImagePull", "ImagePullBackOff"}
RATE_LIMITED = (
    "unexpected status code https://registry-1.docker.io/v2/vllm/vllm-openai/manifests/"
    "v0.10.0: 429 Too Many Requests - Server message: toomanyrequests"
)


def deployment(namespace: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.10.0",
                            "ports": [{"containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 8000},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        },
    }


def leaderworkerset(namespace: str, name: str) -> dict[str, Any]:
    """One group of a leader (the Deployment's vLLM container) and one worker, recreated on
    any container restart (LWS RecreateGroupOnPodRestart)."""
    leader = deployment(namespace, name)["spec"]["template"]["spec"]["containers"][0]
    worker = {"name": "vllm-worker", "image": "vllm:latest", "command": ["ray", "start"]}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"spec": {"containers": [leader]}},
                "workerTemplate": {"spec": {"containers": [worker]}},
            },
        },
    }


def namespace_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


class Reference:
    """Timestamps the real transition from inside the store (the ground truth)."""

    def __init__(self, cluster: SandboxCluster, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.ready_at: float | None = None
        self.warning_at: float | None = None
        # Subscribers run after the commit, possibly after a watcher already saw it.
        self.recorded = threading.Condition()
        self.unsubscribe = cluster.store.subscribe(self.on_change)

    def on_change(self, type_: str, obj: dict[str, Any]) -> None:
        now = time.time()
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != self.namespace:
            return
        kind = obj.get("kind")
        if kind == "Event" and obj.get("type") == "Warning" and self.warning_at is None:
            involved = obj.get("involvedObject") or {}
            if involved.get("kind") == "Pod" and str(involved.get("name", "")).startswith(
                self.name
            ):
                self.warning_at = now
                with self.recorded:
                    self.recorded.notify_all()
        elif (
            kind == "Deployment"
            and meta.get("name") == self.name
            and self.ready_at is None
            and not workload_missing(obj)
        ):
            # The controller counts a replica ready only after its pod's Ready condition is
            # True, so the first status passing the rule is the moment the workload is ready.
            self.ready_at = now
            with self.recorded:
                self.recorded.notify_all()


def baseline_poller(
    api: Any,
    ref: ObjectRef,
    period_s: float,
    want: str,
    stop: threading.Event,
    out: dict[str, float],
) -> None:
    """Read the state every `period_s` (random phase), like a 30 s probe-period check."""
    stop.wait(random.uniform(0, period_s))
    while not stop.is_set():
        obj = get(api, ref)
        if obj is not None:
            selector, _ = pod_selector_for(obj)
            pods, _ = list_objects(api, "v1", "Pod", ref.namespace, label_selector=selector)
            if want == "ready":
                pods_ready = pods and all(
                    any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (p.get("status") or {}).get("conditions") or []
                    )
                    for p in pods
                )
                if not workload_missing(obj) and pods_ready:
                    out["noticed_at"] = time.time()
                    return
            else:
                for pod in pods:
                    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                        waiting = (cs.get("state") or {}).get("waiting") or {}
                        if waiting.get("reason") in IMAGE_FAIL_REASONS:
                            out["noticed_at"] = time.time()
                            return
        stop.wait(period_s)


def trial(
    cluster: SandboxCluster, api: Any, index: int, mode: str, period_s: float
) -> tuple[float, float]:
    namespace, name = f"bench-{mode}-{index}", f"qwen-{mode}-{index}"
    apply(api, namespace_obj(namespace))
    reference = Reference(cluster, namespace, name)
    ref = ObjectRef("apps/v1", "Deployment", namespace, name)
    if mode == "fail":
        cluster.kubelet.inject_image_pull_error(workload=name)
    stop = threading.Event()
    baseline: dict[str, float] = {}
    apply(api, deployment(namespace, name))
    poller = threading.Thread(
        target=baseline_poller, args=(api, ref, period_s, mode, stop, baseline), daemon=True
    )
    poller.start()
    try:
        if mode == "ready":
            report = wait_ready(api, ref, timeout_s=120)
            noticed = report.noticed_at
            truth = reference.ready_at
        else:
            try:
                wait_ready(api, ref, timeout_s=120)
                raise SystemExit(f"trial {index}: {ref} became ready despite the injected fault")
            except WorkloadFailed:
                noticed = time.time()
            truth = reference.warning_at
        poller.join(timeout=period_s * 2 + 30)
    finally:
        stop.set()
        reference.unsubscribe()
    if truth is None or "noticed_at" not in baseline:
        raise SystemExit(
            f"trial {index} ({mode}): reference {truth}, baseline {baseline} (one is missing)"
        )
    return noticed - truth, baseline["noticed_at"] - truth


class Recreations:
    """Store-side times at which a stable-named pod got a new UID (ADDED)."""

    def __init__(self, cluster: SandboxCluster, namespace: str, pod: str) -> None:
        self.namespace, self.pod = namespace, pod
        self.added: dict[str, float] = {}
        self.recorded = threading.Condition()
        self.unsubscribe = cluster.store.subscribe(self.on_change)

    def on_change(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if (
            obj.get("kind") == "Pod"
            and meta.get("namespace") == self.namespace
            and meta.get("name") == self.pod
            and meta.get("uid") not in self.added
        ):
            self.added[str(meta.get("uid"))] = time.time()
            with self.recorded:
                self.recorded.notify_all()


def transient_trial(
    cluster: SandboxCluster, api: Any, index: int, persistent: bool, tolerance_s: float
) -> float:
    mode = "persist" if persistent else "clear"
    namespace, name = f"bench-{mode}-{index}", f"qwen-{mode}-{index}"
    apply(api, namespace_obj(namespace))
    reference = Reference(cluster, namespace, name)
    ref = ObjectRef("apps/v1", "Deployment", namespace, name)
    rule = cluster.kubelet.inject_image_pull_error(workload=name, message=RATE_LIMITED)
    bound_s = tolerance_s if persistent else 600.0
    tolerances = replace(DEFAULT_TOLERANCES, image_pull_s=bound_s)
    cleared: list[float] = []

    def on_event(_ref: ObjectRef, message: str) -> None:
        if not persistent and not cleared and message.startswith("tolerating"):
            cleared.append(time.time())
            cluster.kubelet.clear(rule)

    apply(api, deployment(namespace, name))
    try:
        if persistent:
            try:
                wait_ready(api, ref, timeout_s=120, tolerances=tolerances)
                raise SystemExit(f"trial {index}: {ref} became ready despite the fault")
            except WorkloadFailed:
                noticed = time.time()
            with reference.recorded:
                reference.recorded.wait_for(lambda: reference.warning_at is not None, 10)
            truth = None if reference.warning_at is None else reference.warning_at + bound_s
        else:
            noticed = wait_ready(
                api, ref, timeout_s=120, tolerances=tolerances, on_event=on_event
            ).noticed_at
            with reference.recorded:
                reference.recorded.wait_for(lambda: reference.ready_at is not None, 10)
            truth = reference.ready_at
    finally:
        reference.unsubscribe()
        cluster.kubelet.clear(rule)
    if truth is None:
        raise SystemExit(f"trial {index} ({mode}): no reference moment recorded")
    return noticed - truth


def group_trial(cluster: SandboxCluster, api: Any, index: int, k: int) -> float:
    namespace, name = f"bench-group-{index}", f"qwen-group-{index}"
    apply(api, namespace_obj(namespace))
    lws = leaderworkerset(namespace, name)
    recreations = Recreations(cluster, namespace, f"{name}-0")
    rule = cluster.kubelet.inject_crash_loop(workload=name)
    apply(api, lws)
    tolerances = replace(DEFAULT_TOLERANCES, group_recreations=k)
    try:
        try:
            wait_ready(api, ObjectRef.of(lws), timeout_s=120, tolerances=tolerances)
            raise SystemExit(f"trial {index}: {name} became ready despite the crash loop")
        except WorkloadFailed as exc:
            noticed = time.time()
            if exc.reason != "GroupCrashLoop" or not exc.log_lines:
                raise SystemExit(f"trial {index}: unexpected verdict {exc}") from exc
        with recreations.recorded:
            recreations.recorded.wait_for(lambda: len(recreations.added) > k, 10)
    finally:
        recreations.unsubscribe()
        cluster.kubelet.clear(rule)
    added = sorted(recreations.added.values())
    if len(added) < k + 1:
        raise SystemExit(f"trial {index}: {len(added) - 1} recreations seen, verdict before k={k}")
    return noticed - added[k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--poll-period-s", type=float, default=30.0)
    parser.add_argument("--tolerance-s", type=float, default=2.0)
    parser.add_argument("--group-recreations", type=int, default=3)
    args = parser.parse_args()
    random.seed(7)
    with tempfile.TemporaryDirectory() as workdir:
        cluster = SandboxCluster(ClusterConfig(), Path(workdir)).start()
        try:
            api = load_api_client(cluster.kubeconfig)
            rows = []
            for mode, target_s in (("ready", 1.0), ("fail", 5.0)):
                watch_s, poll_s = [], []
                for i in range(args.trials):
                    w, p = trial(cluster, api, i, mode, args.poll_period_s)
                    watch_s.append(w)
                    poll_s.append(p)
                    print(f"{mode:5} trial {i}: watch {w * 1000:8.1f} ms   poll {p * 1000:9.1f} ms")
                rows.append((mode, target_s, watch_s, poll_s))
            print()
            print(f"{'measure':32} {'watch (product)':>22} {'30 s polling':>22} {'ratio':>8}")
            for mode, target_s, watch_s, poll_s in rows:
                label = "ready -> noticed" if mode == "ready" else "failing pod -> reported"
                wm, pm = statistics.mean(watch_s), statistics.mean(poll_s)
                verdict = "meets" if max(watch_s) < target_s else "MISSES"
                print(
                    f"{label:32} mean {wm:6.3f}s max {max(watch_s):6.3f}s "
                    f"mean {pm:6.2f}s max {max(poll_s):6.2f}s {pm / max(wm, 1e-6):7.0f}x"
                    f"   target < {target_s:.0f}s: {verdict}"
                )
            print()
            print(f"{'signal measure':48} {'mean':>9} {'max':>9}   target")
            for label, run in (
                (
                    "transient pull cleared: ready -> verdict",
                    lambda i: transient_trial(
                        cluster, api, i, persistent=False, tolerance_s=args.tolerance_s
                    ),
                ),
                (
                    "persistent pull: tolerance end -> verdict",
                    lambda i: transient_trial(
                        cluster, api, i, persistent=True, tolerance_s=args.tolerance_s
                    ),
                ),
                (
                    f"LWS group: recreation #{args.group_recreations} -> verdict",
                    lambda i: group_trial(cluster, api, i, args.group_recreations),
                ),
            ):
                values = [run(i) for i in range(args.trials)]
                target_s = 1.0 if label.startswith("transient") else 5.0
                verdict = "meets" if max(values) < target_s else "MISSES"
                print(
                    f"{label:48} {statistics.mean(values):8.3f}s {max(values):8.3f}s"
                    f"   < {target_s:.0f}s: {verdict}"
                )
            api.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
