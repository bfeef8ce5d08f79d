"""Build a kubernetes `ApiClient` from the standard configuration sources only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as _k8s_config
from kubernetes.config.config_exception import ConfigException
from urllib3.util.retry import Retry

from llm_rollout.errors import PermanentError
from llm_rollout.kube.resources import request_json
from llm_rollout.settings import settings

# The config loaders are untyped; an Any handle keeps the rest of the module strictly typed.
k8s_config: Any = _k8s_config


# urllib3's default retries 429/503 answers itself, sleeping for their Retry-After before our
# error translation sees them; throttling must surface as TransientError(retry_after_s) so the
# caller's policy decides. Connection-level failures of idempotent requests are still retried.
CONNECTION_RETRIES = Retry(
    total=3,
    backoff_factor=0.2,
    status_forcelist=(),
    respect_retry_after_header=False,
    raise_on_status=False,
)


class KubeConfigError(PermanentError):
    """No usable cluster configuration was found."""


def load_api_client(
    kubeconfig: Path | None = None, context: str | None = None
) -> k8s_client.ApiClient:
    """Return a client for the cluster named by the standard sources, in this order.

    1. `kubeconfig` when given (with `context`, else its current context);
    2. `$KUBECONFIG` (read now, not at import) or `~/.kube/config` when that file exists;
    3. the in-cluster service account.

    The configuration is private to the returned client: the library's global default
    configuration is left untouched, so several clusters can be used side by side.
    """
    configuration = k8s_client.Configuration()
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
        source = str(kubeconfig)
    else:
        env_value = settings().kubeconfig
        default_path = Path("~/.kube/config").expanduser()
        if env_value:
            source = env_value
        elif default_path.is_file():
            source = str(default_path)
        else:
            source = ""
    try:
        if source:
            k8s_config.load_kube_config(
                config_file=source,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            if context is not None:
                raise KubeConfigError(
                    f"context {context!r} requested but no kubeconfig found "
                    "(no path given, $KUBECONFIG unset, ~/.kube/config missing)"
                )
            k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException as exc:
        where = source or "in-cluster service account"
        raise KubeConfigError(f"cannot load Kubernetes configuration from {where}: {exc}") from exc
    configuration.retries = CONNECTION_RETRIES
    return k8s_client.ApiClient(configuration=configuration)


def server_version(api: k8s_client.ApiClient) -> tuple[int, int]:
    """The API server's (major, minor), e.g. (1, 31); vendor suffixes like "31+" are dropped."""
    info = request_json(api, "GET", "/version", target="API server version")
    try:
        major = int(re.sub(r"\D.*$", "", str(info["major"])))
        minor = int(re.sub(r"\D.*$", "", str(info["minor"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError("API server /version answered without a usable major/minor") from exc
    return major, minor
