"""Authorization for the sandbox API server: request attributes and an RBAC authorizer.

Mirrors the real server's pieces closely enough that the same Roles behave the same way:
- `request_info` is `k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory`: verb from
  method and path (`list`/`watch`/`deletecollection` for collection requests), namespace,
  resource, subresource, name (a list or watch with a `metadata.name` field selector carries
  that name, so `resourceNames` rules apply to it), and non-resource paths;
- `RbacAuthorizer` is `plugin/pkg/auth/authorizer/rbac`: ClusterRoleBindings apply
  everywhere, RoleBindings in the request's namespace (to a Role there or a ClusterRole);
  rules match on verbs, apiGroups, resources (`*`, `res/sub`, `*/sub`), resourceNames and
  nonResourceURLs (with a trailing `*` prefix match); bindings to missing roles become the
  `RBAC: ... not found` reason;
- `forbidden_message` is `responsewriters.forbiddenMessage` plus `errors.NewForbidden`.

What a fresh cluster's bootstrap policy grants every authenticated user (system:discovery,
system:basic-user, system:public-info-viewer) is built in as `_AUTHENTICATED_PATHS` rather
than seeded as objects, so the store holds only what tests create.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from sandbox.kube.store import NotFound, Obj, Store

RBAC_GROUP = "rbac.authorization.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
AUTHENTICATED = "system:authenticated"
_METHOD_VERBS = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
# Namespace subresources stay on the namespace (requestinfo.go: namespaceSubresources).
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_AUTHENTICATED_PATHS = (
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/version/",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi",
    "/openapi/*",
)


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def for_name(cls, name: str) -> UserInfo:
        """The groups the real token authenticators give a user of this name."""
        groups = [AUTHENTICATED]
        if name.startswith(SERVICE_ACCOUNT_PREFIX):
            namespace = name[len(SERVICE_ACCOUNT_PREFIX) :].split(":", 1)[0]
            groups[:0] = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        return cls(name, tuple(groups))


def service_account_user(namespace: str, name: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


@dataclass(frozen=True)
class RequestInfo:
    """The authorization attributes of one request."""

    verb: str
    path: str
    resource_request: bool
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def with_verb(self, verb: str) -> RequestInfo:
        return RequestInfo(
            verb,
            self.path,
            self.resource_request,
            self.api_group,
            self.api_version,
            self.namespace,
            self.resource,
            self.subresource,
            self.name,
        )


def request_info(method: str, path: str, raw_query: str) -> RequestInfo:
    """Authorization attributes of a request, as the real RequestInfoFactory derives them."""
    method_verb = _METHOD_VERBS.get(method.upper(), method.lower())
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(method_verb, path, False)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verb = method_verb
    query = {k: v[-1] for k, v in parse_qs(raw_query, keep_blank_values=True).items()}
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        for term in (query.get("fieldSelector") or "").split(","):
            key, sep, value = term.partition("=")
            if sep and key.strip() == "metadata.name" and not value.startswith("="):
                name = value.strip()
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(verb, path, True, group, version, namespace, resource, subresource, name)


def forbidden_message(user: str, info: RequestInfo, reason: str = "") -> str:
    """The message of a 403 for `info` (the real server's wording, byte for byte)."""
    if not info.resource_request:
        message = f'forbidden: User "{user}" cannot {info.verb} path "{info.path}"'
    else:
        where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        denial = (
            f'User "{user}" cannot {info.verb} resource "{info.combined_resource}" in API group '
            f'"{info.api_group}" {where}'
        )
        message = f"{qualified_resource(info)}{name_part(info)} is forbidden: {denial}"
    return f"{message}: {reason}" if reason else message


def qualified_resource(info: RequestInfo) -> str:
    return f"{info.resource}.{info.api_group}" if info.api_group else info.resource


def name_part(info: RequestInfo) -> str:
    return f' "{info.name}"' if info.name else ""


@dataclass
class Decision:
    allowed: bool
    reason: str = ""


@dataclass
class _RuleCheck:
    info: RequestInfo
    allowed: bool = False
    errors: list[str] = field(default_factory=list)


def _matches(values: Iterable[str], wanted: str) -> bool:
    return any(v == "*" or v == wanted for v in values)


def _resource_matches(resources: Iterable[str], info: RequestInfo) -> bool:
    combined = info.combined_resource
    for resource in resources:
        if resource in ("*", combined):
            return True
        if info.subresource and resource == f"*/{info.subresource}":
            return True
    return False


def _path_matches(urls: Iterable[str], path: str) -> bool:
    for url in urls:
        if url in ("*", path):
            return True
        if url.endswith("*") and path.startswith(url[:-1]):
            return True
    return False


def rule_allows(rule: Obj, info: RequestInfo) -> bool:
    verbs = rule.get("verbs") or []
    if not _matches(verbs, info.verb):
        return False
    if not info.resource_request:
        return _path_matches(rule.get("nonResourceURLs") or [], info.path)
    if not _matches(rule.get("apiGroups") or [], info.api_group):
        return False
    if not _resource_matches(rule.get("resources") or [], info):
        return False
    names = rule.get("resourceNames") or []
    return not names or info.name in names


class RbacAuthorizer:
    """Decides from the Role/ClusterRole/RoleBinding/ClusterRoleBinding objects in a store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _objects(self, kind: str, namespace: str | None) -> list[Obj]:
        rt = self.store.resource_type(f"{RBAC_GROUP}/v1", kind)
        items, _ = self.store.list(rt, namespace)
        return items

    def _role_rules(self, ref: Obj, namespace: str | None, check: _RuleCheck) -> list[Obj]:
        kind = str(ref.get("kind") or "")
        name = str(ref.get("name") or "")
        rt = self.store.resource_type(f"{RBAC_GROUP}/v1", kind)
        try:
            role = self.store.get(rt, namespace if kind == "Role" else None, name)
        except NotFound:
            check.errors.append(f'{kind.lower()}.{RBAC_GROUP} "{name}" not found')
            return []
        return list(role.get("rules") or [])

    @staticmethod
    def _subject_applies(subject: Obj, user: UserInfo, binding_namespace: str) -> bool:
        kind = subject.get("kind")
        name = subject.get("name")
        if kind == "User":
            return bool(name == user.name)
        if kind == "Group":
            return name in user.groups
        if kind == "ServiceAccount":
            namespace = subject.get("namespace") or binding_namespace
            return user.name == service_account_user(str(namespace), str(name))
        return False

    def _visit(
        self, binding: Obj, user: UserInfo, namespace: str | None, check: _RuleCheck
    ) -> None:
        subjects = binding.get("subjects") or []
        if not any(self._subject_applies(s, user, namespace or "") for s in subjects):
            return
        for rule in self._role_rules(binding.get("roleRef") or {}, namespace, check):
            if rule_allows(rule, check.info):
                check.allowed = True
                return

    def authorize(self, user: UserInfo, info: RequestInfo) -> Decision:
        if (
            AUTHENTICATED in user.groups
            and not info.resource_request
            and info.verb == "get"
            and _path_matches(_AUTHENTICATED_PATHS, info.path)
        ):
            return Decision(True)
        check = _RuleCheck(info)
        for binding in self._objects("ClusterRoleBinding", None):
            self._visit(binding, user, None, check)
            if check.allowed:
                return Decision(True)
        if info.namespace:
            for binding in self._objects("RoleBinding", info.namespace):
                self._visit(binding, user, info.namespace, check)
                if check.allowed:
                    return Decision(True)
        reason = ""
        if check.errors:
            joined = ", ".join(check.errors)
            reason = f"RBAC: {joined if len(check.errors) == 1 else '[' + joined + ']'}"
        return Decision(False, reason)
