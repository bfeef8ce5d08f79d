"""Object references, resource discovery, and the one raw request path every verb uses.

Everything goes through `ApiClient.param_serialize` + `call_api`, so one implementation serves
core kinds and custom resources alike, and every error is translated in `errors.translate`.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from llm_rollout.errors import PermanentError
from llm_rollout.kube.errors import CONNECTION_ERRORS, NotFoundError, translate

JsonDict = dict[str, Any]
Query = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ObjectRef:
    """Identifies one object. `namespace` is None only for cluster-scoped kinds."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The reference of a manifest or of an object read back from the server."""
        metadata = obj.get("metadata") or {}
        try:
            return cls(
                api_version=str(obj["apiVersion"]),
                kind=str(obj["kind"]),
                namespace=metadata.get("namespace"),
                name=str(metadata["name"]),
            )
        except KeyError as exc:
            raise PermanentError(
                f"object without {exc.args[0]!r}: cannot address it on the server"
            ) from exc

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclass(frozen=True)
class ResourceInfo:
    """What discovery says about one kind: the URL plural and whether it is namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """URL path of the collection (name None) or of one object."""
        prefix = "/apis/" if "/" in self.api_version else "/api/"
        base = prefix + self.api_version
        if self.namespaced:
            if not namespace:
                raise PermanentError(
                    f"{self.kind} is namespaced: a namespace is required (none is assumed)"
                )
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        return base


_DISCOVERY: weakref.WeakKeyDictionary[k8s_client.ApiClient, dict[tuple[str, str], ResourceInfo]]
_DISCOVERY = weakref.WeakKeyDictionary()
_DISCOVERY_LOCK = threading.Lock()


def _auth_headers(api: k8s_client.ApiClient, headers: dict[str, str]) -> dict[str, str]:
    # refresh_api_key_hook runs inside get_api_key_with_prefix, so expiring tokens renew here.
    out = dict(headers)
    out.update(api.default_headers)
    token = api.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    if token:
        out["authorization"] = token
    return out


def raw_request(
    api: k8s_client.ApiClient,
    method: str,
    path: str,
    *,
    target: str,
    query: Query = (),
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | tuple[float, float] | None = 30.0,
    stream: bool = False,
    as_text: bool = False,
    ref: ObjectRef | None = None,
) -> Any:
    """Send one request; return the urllib3 response (`stream`), the body as text (`as_text`)
    or the decoded JSON body.

    Non-2xx answers and socket failures become `RolloutError`s via `errors.translate`.
    """
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    url = api.configuration.host + path
    if query:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    verb = method if not stream else "watch"
    try:
        response: Any = api.call_api(
            method,
            url,
            header_params=_auth_headers(api, headers),
            body=body,
            _request_timeout=timeout_s,
        )
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        if stream:
            return response.response
        data = response.read()
    except ApiException as exc:
        raise translate(exc, verb=verb, target=target, ref=ref) from exc
    except CONNECTION_ERRORS as exc:
        raise translate(exc, verb=verb, target=target, ref=ref) from exc
    if as_text:
        return data.decode("utf-8", errors="replace")
    if not data:
        return {}
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")


def request_json(
    api: k8s_client.ApiClient,
    method: str,
    path: str,
    *,
    target: str,
    query: Query = (),
    body: Any = None,
    content_type: str | None = None,
    timeout_s: float | None = 30.0,
    ref: ObjectRef | None = None,
) -> JsonDict:
    """`raw_request` for endpoints that answer a JSON object."""
    result = raw_request(
        api,
        method,
        path,
        target=target,
        query=query,
        body=body,
        content_type=content_type,
        timeout_s=timeout_s,
        ref=ref,
    )
    if not isinstance(result, dict):
        raise PermanentError(f"{method} {target}: the API server did not answer a JSON object")
    return cast(JsonDict, result)


def _kinds_served(api_version: str, listing: Mapping[str, Any]) -> dict[str, ResourceInfo]:
    """The kinds a group-version's discovery document (`APIResourceList`) serves, by kind;
    subresources (`deployments/status`, `pods/log`) are entries of their own there and are
    skipped, since they share their parent's kind."""
    found: dict[str, ResourceInfo] = {}
    for resource in listing.get("resources") or []:
        name = str(resource.get("name", ""))
        if "/" in name:
            continue
        kind = str(resource.get("kind", ""))
        found[kind] = ResourceInfo(api_version, kind, name, bool(resource.get("namespaced")))
    return found


def resolve_resource(api: k8s_client.ApiClient, api_version: str, kind: str) -> ResourceInfo:
    """Discover the plural and scope of `kind` in `api_version`, cached per client.

    Misses are not cached: a CRD installed later is found on the next call.
    """
    key = (api_version, kind)
    with _DISCOVERY_LOCK:
        cached = _DISCOVERY.get(api, {}).get(key)
    if cached is not None:
        return cached
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    try:
        listing = request_json(api, "GET", path, target=f"API {api_version} (discovery)")
    except NotFoundError as exc:
        raise NotFoundError(
            f"the cluster does not serve API {api_version} (is the CRD for {kind} installed?)",
            ref=None,
            status=404,
            server_message=exc.server_message,
        ) from exc
    served = _kinds_served(api_version, listing)
    with _DISCOVERY_LOCK:
        _DISCOVERY.setdefault(api, {}).update(
            {(api_version, info.kind): info for info in served.values()}
        )
    if kind not in served:
        raise NotFoundError(
            f"API {api_version} does not serve kind {kind}",
            ref=None,
            status=404,
            server_message="",
        )
    return served[kind]


def served_versions(api: k8s_client.ApiClient, group: str) -> list[str]:
    """The versions the cluster serves for an API group, preferred first; [] if none."""
    try:
        info = request_json(api, "GET", f"/apis/{group}", target=f"API group {group}")
    except NotFoundError:
        return []
    versions = [str(v.get("version")) for v in info.get("versions") or []]
    preferred = (info.get("preferredVersion") or {}).get("version")
    if preferred in versions:
        versions.remove(preferred)
        versions.insert(0, str(preferred))
    return versions


def versions_serving_kind(api: k8s_client.ApiClient, group: str, kind: str) -> list[str]:
    """The versions of `group` that serve `kind`, preferred first; [] if none.

    A group's discovery lists every version any of its CRDs serves (the apiextensions
    server builds it from all the group's CRDs: k8s.io/apiextensions-apiserver
    pkg/apiserver/customresource_discovery_controller.go sync), so a version there need not
    serve this kind: RBG v0.7's RoleInstanceSet and RoleInstance CRDs serve
    workloads.x-k8s.io/v1alpha2 while the RoleBasedGroup CRD may serve v1alpha1 only. Each
    version's resource list is read fresh, not from the per-client cache: the answer decides
    what is rendered, and CRDs change under a long-lived process.
    """
    found: list[str] = []
    for version in served_versions(api, group):
        try:
            listing = request_json(
                api, "GET", f"/apis/{group}/{version}", target=f"API {group}/{version}"
            )
        except NotFoundError:
            continue
        if kind in _kinds_served(f"{group}/{version}", listing):
            found.append(version)
    return found


def object_path(api: k8s_client.ApiClient, ref: ObjectRef) -> str:
    """URL path of one object, checking that the namespace matches the kind's scope."""
    info = resolve_resource(api, ref.api_version, ref.kind)
    if not info.namespaced and ref.namespace:
        raise PermanentError(f"{ref}: {ref.kind} is cluster-scoped but a namespace was given")
    return info.path(ref.namespace, ref.name)


def list_objects(
    api: k8s_client.ApiClient,
    api_version: str,
    kind: str,
    namespace: str | None,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> tuple[list[JsonDict], str]:
    """List objects; returns the items and the list's resourceVersion (to watch from)."""
    info = resolve_resource(api, api_version, kind)
    query: list[tuple[str, str]] = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    where = f" in {namespace}" if namespace else ""
    listing = request_json(
        api, "GET", info.path(namespace), target=f"{kind} list{where}", query=query
    )
    items = [dict(item) for item in listing.get("items") or []]
    for item in items:
        # List items omit apiVersion/kind; restore them so ObjectRef.of works on every item.
        item.setdefault("apiVersion", api_version)
        item.setdefault("kind", kind)
    resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
    return items, resource_version


def read_pod_log(
    api: k8s_client.ApiClient,
    namespace: str,
    pod: str,
    *,
    container: str | None,
    previous: bool,
    tail_lines: int,
) -> list[str]:
    """The last `tail_lines` log lines of a container (`previous`: of its last terminated run)."""
    query: list[tuple[str, str]] = [("tailLines", str(tail_lines))]
    if container:
        query.append(("container", container))
    if previous:
        query.append(("previous", "true"))
    ref = ObjectRef("v1", "Pod", namespace, pod)
    text = raw_request(
        api,
        "GET",
        f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/log",
        target=f"log of Pod {namespace}/{pod}",
        query=query,
        as_text=True,
        ref=ref,
    )
    return str(text).splitlines()[-tail_lines:]
