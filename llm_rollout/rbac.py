"""The worker's RBAC objects (ServiceAccount, Role, ClusterRole, bindings) for one namespace.

Rendered from `manifests/rbac/worker.yaml.j2`, which documents which product code needs each
verb. A cluster admin applies them once per namespace, after creating the namespace; the
worker then runs the flows with the ServiceAccount's token.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2
import yaml

from llm_rollout.errors import SpecError
from llm_rollout.kinds import rendered_kinds
from llm_rollout.readiness import AUTOSCALER_STATUS
from llm_rollout.templates import template_loader

DEFAULT_SERVICE_ACCOUNT = "llm-rollout-worker"
DEFAULT_CLUSTER_ROLE = "llm-rollout-worker"
TEMPLATE = "rbac/worker.yaml.j2"
# Names go into YAML unquoted: anything but a DNS label is refused before rendering.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _check(what: str, value: str, pattern: re.Pattern[str]) -> None:
    if not pattern.fullmatch(value):
        raise SpecError(
            what,
            f"{value!r} is not a valid Kubernetes name (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)",
        )


def render_worker_rbac(
    namespace: str,
    *,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    cluster_role: str = DEFAULT_CLUSTER_ROLE,
) -> list[dict[str, Any]]:
    """The objects, in apply order: ServiceAccount, Role, RoleBinding, the Role and RoleBinding
    for cluster-autoscaler's status ConfigMap (in its namespace), ClusterRole, binding."""
    _check("--namespace", namespace, _DNS_LABEL)
    _check("--service-account", service_account, _DNS_SUBDOMAIN)
    _check("--cluster-role", cluster_role, _DNS_SUBDOMAIN)
    env = jinja2.Environment(
        loader=template_loader(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - YAML, not HTML; every value was checked above
    )
    workloads = [(kind.group, kind.plural) for kind in rendered_kinds()]
    children = {
        (child.group, child.plural) for kind in rendered_kinds() for child in kind.child_kinds
    }
    text = env.get_template(TEMPLATE).render(
        namespace=namespace,
        service_account=service_account,
        cluster_role=cluster_role,
        workloads=workloads,
        children=sorted(children - set(workloads)),
        autoscaler_status=(AUTOSCALER_STATUS.namespace, AUTOSCALER_STATUS.name),
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def worker_user(namespace: str, service_account: str = DEFAULT_SERVICE_ACCOUNT) -> str:
    """The user name the API server gives the ServiceAccount's tokens."""
    return f"system:serviceaccount:{namespace}:{service_account}"
