"""API faults between the product and the real API server, injected by a proxy that keeps the
caller's identity (``sandbox/cluster/api_proxy.py``; issue 14, item 7).

What the product's Kubernetes client does about each fault is asserted by what the proxy saw
(how many requests, which answers) and by results, never by how long it took. Ported from the
imitation's tests/reliability/test_watch_gone.py and test_kube_faults_secrets.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from llm_rollout.errors import PermanentError, RolloutError, is_transient
from llm_rollout.kube.errors import KubeTransientError, UnauthorizedError
from llm_rollout.kube.objects import apply, get
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.kube.watching import Selector, call_with_retry, watching
from sandbox.cluster.api_proxy import ApiFaultProxy, FaultRule
from sandbox.cluster.control_plane import Cluster
from tests.cluster.faults_support import (
    admin_via,
    config_map,
    faults,
    product_client,
    proxy,
    seen,
    service_account_token,
    statuses,
)

__all__ = ["faults", "proxy"]  # fixtures used by name

WORKER = "worker"
FAKE_SECRET = "sk-real-cluster-fault-test-5f2c9a"


@pytest.fixture
def worker_via_proxy(
    cluster: Cluster, admin: k8s.ApiClient, namespace: str, proxy: ApiFaultProxy
) -> Iterator[k8s.ApiClient]:
    """A ServiceAccount allowed to read and apply ConfigMaps in ``namespace`` only, talking
    through the proxy with its bearer token."""
    core = k8s.CoreV1Api(admin)
    rbac = k8s.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": WORKER}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmaps"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch", "create", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "configmaps"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": WORKER, "namespace": namespace}],
        },
    )
    token = service_account_token(admin, namespace, WORKER)
    path = cluster.token_kubeconfig(f"worker-proxy-{namespace}", token, server=proxy.url)
    api = product_client(path)
    yield api
    api.close()  # type: ignore[no-untyped-call]


def _user(api: k8s.ApiClient) -> tuple[str, list[str]]:
    info = k8s.AuthenticationV1Api(api).create_self_subject_review({}).status.user_info
    return info.username, list(info.groups or [])


def test_a_call_forbidden_to_the_worker_token_is_still_403_through_the_proxy(
    faults: ApiFaultProxy, worker_via_proxy: k8s.ApiClient, namespace: str
) -> None:
    user = f"system:serviceaccount:{namespace}:{WORKER}"
    assert _user(worker_via_proxy)[0] == user
    core = k8s.CoreV1Api(worker_via_proxy)
    # kube-controller-manager's root-ca-cert-publisher put its ConfigMap in every namespace.
    names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
    assert names == ["kube-root-ca.crt"]
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_secret(namespace)
    assert caught.value.status == 403
    body = json.loads(caught.value.body)
    assert body["message"] == (
        f'secrets is forbidden: User "{user}" cannot list resource "secrets" in API group "" '
        f'in the namespace "{namespace}"'
    )
    # The product sees a permanent error naming what it addressed, not a retryable one.
    with pytest.raises(UnauthorizedError) as product_error:
        get(worker_via_proxy, ObjectRef("v1", "Secret", namespace, "anything"))
    assert product_error.value.status == 403
    assert not is_transient(product_error.value)
    # Every call went through the proxy as a token call.
    assert faults.records() and {r.identity for r in faults.records()} == {"token"}


def test_identity_headers_sent_by_a_client_are_not_trusted(
    faults: ApiFaultProxy, worker_via_proxy: k8s.ApiClient, namespace: str
) -> None:
    """A token caller naming itself admin in X-Remote-* headers stays itself: the proxy drops
    the headers, and the API server would only read them from the front-proxy certificate."""
    worker_via_proxy.default_headers["X-Remote-User"] = "llm-rollout-admin"
    worker_via_proxy.default_headers["X-Remote-Group"] = "system:masters"
    user, groups = _user(worker_via_proxy)
    assert user == f"system:serviceaccount:{namespace}:{WORKER}"
    assert "system:masters" not in groups
    with pytest.raises(ApiException) as caught:
        k8s.CoreV1Api(worker_via_proxy).list_namespaced_secret(namespace)
    assert caught.value.status == 403


def test_an_admin_certificate_call_succeeds_through_the_proxy_as_the_same_user(
    cluster: Cluster, faults: ApiFaultProxy, namespace: str
) -> None:
    api = admin_via(cluster, faults)
    try:
        # The API server authenticated the proxy's front-proxy certificate and took the user
        # from X-Remote-User/X-Remote-Group (requestheader.go): the admin's own name and group.
        user, groups = _user(api)
        assert user == "llm-rollout-admin"
        assert sorted(groups) == ["system:authenticated", "system:masters"]
        created = apply(api, config_map(namespace, "by-admin"))
        managers = {m["manager"] for m in created["metadata"]["managedFields"]}
        assert managers == {"llm-rollout"}
    finally:
        api.close()  # type: ignore[no-untyped-call]
    assert {r.identity for r in faults.records()} == {"cert:llm-rollout-admin"}


def test_throttling_surfaces_retry_after_and_the_retry_helper_honours_it(
    cluster: Cluster, faults: ApiFaultProxy, admin: k8s.ApiClient, namespace: str
) -> None:
    k8s.CoreV1Api(admin).create_namespaced_config_map(namespace, config_map(namespace, "cm"))
    api = admin_via(cluster, faults)
    ref = ObjectRef("v1", "ConfigMap", namespace, "cm")
    try:
        get(api, ref)  # discovery cached before the faults
        faults.clear()
        faults.plan.add(FaultRule("throttle", r"/configmaps/cm$", times=1, retry_after_s=2))
        # urllib3 is told not to retry 429 itself (llm_rollout/kube/client.py): the product
        # sees the throttling with the server's Retry-After.
        with pytest.raises(KubeTransientError) as caught:
            get(api, ref)
        assert caught.value.retry_after_s == 2.0
        assert "HTTP 429" in str(caught.value)
        assert statuses(seen(faults, path_suffix="/configmaps/cm")) == [429]

        faults.clear()
        faults.plan.add(FaultRule("throttle", r"/configmaps/cm$", times=2, retry_after_s=1))
        found = call_with_retry(lambda: get(api, ref))
        assert found is not None and found["metadata"]["name"] == "cm"
        assert statuses(seen(faults, path_suffix="/configmaps/cm")) == [429, 429, 200]
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_server_errors_are_retried_and_permanent_errors_are_not(
    cluster: Cluster,
    faults: ApiFaultProxy,
    admin: k8s.ApiClient,
    worker_via_proxy: k8s.ApiClient,
    namespace: str,
) -> None:
    k8s.CoreV1Api(admin).create_namespaced_config_map(namespace, config_map(namespace, "cm"))
    ref = ObjectRef("v1", "ConfigMap", namespace, "cm")
    get(worker_via_proxy, ref)
    faults.clear()
    faults.plan.add(FaultRule("error", r"/configmaps/cm$", status=500, times=2))
    found = call_with_retry(lambda: get(worker_via_proxy, ref))
    assert found is not None
    assert statuses(seen(faults, path_suffix="/configmaps/cm")) == [500, 500, 200]

    # A 403 is answered by the real server and is never retried (issue 19: asserted by the
    # count of requests, not by how long it took).
    faults.clear()
    secret = ObjectRef("v1", "Secret", namespace, "s")
    with pytest.raises(UnauthorizedError):
        call_with_retry(lambda: get(worker_via_proxy, secret))
    assert statuses(seen(faults, path_suffix="/secrets/s")) == [403]

    # Persistent 500s end in a transient error after the helper's bounded attempts.
    faults.clear()
    faults.plan.add(FaultRule("error", r"/configmaps/cm$", status=503, times=None))
    with pytest.raises(KubeTransientError):
        call_with_retry(lambda: get(worker_via_proxy, ref), attempts=3)
    assert statuses(seen(faults, path_suffix="/configmaps/cm")) == [503, 503, 503]


def test_a_reset_get_is_retried_by_the_client_and_a_reset_apply_is_not(
    faults: ApiFaultProxy, worker_via_proxy: k8s.ApiClient, namespace: str
) -> None:
    obj = config_map(namespace, "reset-me", {"v": "1"})
    apply(worker_via_proxy, obj)
    ref = ObjectRef.of(obj)
    faults.clear()
    faults.plan.add(FaultRule("reset", r"/configmaps/reset-me$", method="GET", times=1))
    # The product's client retries connection failures of idempotent requests
    # (CONNECTION_RETRIES in llm_rollout/kube/client.py): the caller never sees the reset.
    found = get(worker_via_proxy, ref)
    assert found is not None and found["data"] == {"v": "1"}
    assert statuses(seen(faults, path_suffix="/configmaps/reset-me")) == [0, 200]

    # Server-side apply is a PATCH, which urllib3 does not resend after a broken connection:
    # the product gets a transient error (its Prefect tasks retry those) and the object is
    # unchanged, since the proxy never forwarded the request.
    faults.clear()
    faults.plan.add(FaultRule("reset", r"/configmaps/reset-me$", method="PATCH", times=1))
    with pytest.raises(KubeTransientError):
        apply(worker_via_proxy, config_map(namespace, "reset-me", {"v": "2"}))
    assert statuses(seen(faults, path_suffix="/configmaps/reset-me", method="PATCH")) == [0]
    assert (get(worker_via_proxy, ref) or {})["data"] == {"v": "1"}
    assert apply(worker_via_proxy, config_map(namespace, "reset-me", {"v": "2"}))["data"] == {
        "v": "2"
    }


def test_errors_while_applying_a_secret_never_carry_its_value(
    cluster: Cluster, faults: ApiFaultProxy, namespace: str
) -> None:
    api = admin_via(cluster, faults)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "oss", "namespace": namespace},
        "stringData": {"AccessKeySecret": FAKE_SECRET},
    }
    caught: list[RolloutError] = []
    rules = [
        FaultRule("error", r"/secrets/oss$", status=500),
        FaultRule("throttle", r"/secrets/oss$"),
        FaultRule("reset", r"/secrets/oss$"),
    ]
    try:
        for rule in rules:
            faults.plan.add(rule)
            with pytest.raises(KubeTransientError) as err:
                apply(api, secret)
            caught.append(err.value)
        # And the real server's own refusal (a data key it rejects) names the key, not the
        # value.
        bad = {**secret, "stringData": {"bad key!": FAKE_SECRET}}
        with pytest.raises(PermanentError) as refused:
            apply(api, bad)
        caught.append(refused.value)
        assert "bad key!" in str(refused.value)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    assert [r.hits for r in rules] == [1, 1, 1]
    for error in caught:
        chain: list[BaseException] = []
        current: BaseException | None = error
        while current is not None:
            chain.append(current)
            current = current.__cause__
        assert all(FAKE_SECRET not in str(e) for e in chain), error


def test_an_injected_410_is_an_error_event_inside_an_open_watch(
    faults: ApiFaultProxy, cluster: Cluster, namespace: str
) -> None:
    """The shape the API server's watch cache gives an expired version: the watch opens (200)
    and its one event is an ERROR carrying a 410 Status, reason Expired, "too old resource
    version: <asked> (<oldest>)" (k8s.io/apiserver pkg/storage/cacher/watch_cache.go,
    ``errors.NewResourceExpired``). A real one needs an etcd compaction past the version
    watched from, which the harness does not force."""
    rule = faults.plan.add(
        FaultRule("gone", rf"/namespaces/{namespace}/configmaps$", watch=True, times=None)
    )
    api = admin_via(cluster, faults)
    try:
        core = k8s.CoreV1Api(api)
        # A plain list of the same path is answered by the API server: the rule is for watches.
        listing = core.list_namespaced_config_map(namespace)
        assert rule.hits == 0
        with pytest.raises(ApiException) as caught:
            for _event in k8s_watch.Watch().stream(
                core.list_namespaced_config_map,
                namespace,
                resource_version=listing.metadata.resource_version,
                timeout_seconds=5,
                _request_timeout=15,
            ):
                pass
    finally:
        api.close()  # type: ignore[no-untyped-call]
    # kubernetes' Watch raises the ERROR event's Status (it does not retry when a timeout is
    # given, as the product's watches give one).
    assert caught.value.status == 410
    assert caught.value.reason is not None and "Expired" in caught.value.reason
    assert rule.hits == 1
    watches = seen(faults, path_suffix=f"/namespaces/{namespace}/configmaps", watch=True)
    assert [(r.status, r.fault) for r in watches] == [(200, "gone")]


def _drain_resyncs(group: object, count: int) -> list[str]:
    from llm_rollout.kube.watching import WatchGroup

    assert isinstance(group, WatchGroup)
    notes: list[str] = []
    while len(notes) < count:
        message = group.next(30.0)
        assert message is not None, f"no re-list after the fault (notes so far {notes})"
        if message.kind == "resync":
            notes.append(message.note)
    return notes


def _changes_still_arrive(group: object, api: k8s.ApiClient, namespace: str, name: str) -> None:
    from llm_rollout.kube.watching import WatchGroup

    assert isinstance(group, WatchGroup)
    apply(api, config_map(namespace, name))
    spec = group.specs[0]
    while name not in group.cache[spec]:
        assert group.next(30.0) is not None, f"{name} created after the re-list never arrived"


def test_product_watch_relists_after_410_and_still_sees_changes(
    faults: ApiFaultProxy, worker_via_proxy: k8s.ApiClient, namespace: str
) -> None:
    rule = faults.plan.add(
        FaultRule("gone", rf"/namespaces/{namespace}/configmaps$", watch=True, times=2)
    )
    spec = Selector("v1", "ConfigMap", namespace)
    with watching(worker_via_proxy, [spec]) as group:
        notes = _drain_resyncs(group, 2)
        _changes_still_arrive(group, worker_via_proxy, namespace, "after-gone")
    assert notes == ["410 Gone; re-listing"] * 2
    assert rule.hits == 2
    lists = seen(faults, path_suffix=f"/namespaces/{namespace}/configmaps", watch=False)
    assert statuses(lists) == [200, 200, 200]  # the first list and one per 410


def test_product_watch_relists_after_a_cut_stream_and_still_sees_changes(
    faults: ApiFaultProxy, worker_via_proxy: k8s.ApiClient, namespace: str
) -> None:
    apply(worker_via_proxy, config_map(namespace, "before-cut"))
    # The cut comes after one relayed event: the real server's first event of a watch from
    # the listed version is the change made below, so the stream breaks right after it.
    rule = faults.plan.add(
        FaultRule("cut", rf"/namespaces/{namespace}/configmaps$", watch=True, events_before_cut=1)
    )
    spec = Selector("v1", "ConfigMap", namespace)
    with watching(worker_via_proxy, [spec]) as group:
        while spec not in group.synced:
            assert group.next(30.0) is not None, "the first list never arrived"
        apply(worker_via_proxy, config_map(namespace, "during-cut"))
        notes = _drain_resyncs(group, 1)
        _changes_still_arrive(group, worker_via_proxy, namespace, "after-cut")
        assert {"before-cut", "during-cut", "after-cut"} <= set(group.cache[spec])
    assert rule.hits == 1
    assert len(notes) == 1 and notes[0].endswith("re-listing") and "connection" in notes[0]
    lists = seen(faults, path_suffix=f"/namespaces/{namespace}/configmaps", watch=False)
    assert statuses(lists) == [200, 200]
