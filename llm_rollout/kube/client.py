"""Kubernetes `ApiClient`s from the standard configuration sources only, under two names for
two meanings: the one client the whole process shares (`shared_api_client`; closing it does
nothing), or a new one of its own that the caller closes (`new_api_client`, for an explicitly
named kubeconfig or context)."""

from __future__ import annotations

import re
import threading
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


class _ProcessApiClient(k8s_client.ApiClient):
    """The client every caller of the process shares (`shared_api_client`).

    Its `close()` does nothing: callers written for a client of their own close it after use
    (`with api:`, `api.close()`), and the next caller still needs it. `release_shared_api_client`
    closes it for real.
    """

    def close(self) -> None:
        return None

    def close_for_real(self) -> None:
        super().close()  # type: ignore[no-untyped-call]


def _config_source(kubeconfig: Path | None) -> str:
    """The kubeconfig path to read, or "" for the in-cluster service account."""
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
        return str(kubeconfig)
    env_value = settings().kubeconfig
    default_path = Path("~/.kube/config").expanduser()
    if env_value:
        return env_value
    if default_path.is_file():
        return str(default_path)
    return ""


def _configuration(source: str, context: str | None) -> k8s_client.Configuration:
    configuration = k8s_client.Configuration()
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
    return configuration


def new_api_client(
    kubeconfig: Path | None = None, context: str | None = None
) -> k8s_client.ApiClient:
    """A new client of its own for the cluster named by the standard sources, in this order.

    1. `kubeconfig` when given (with `context`, else its current context);
    2. `$KUBECONFIG` (read now, not at import) or `~/.kube/config` when that file exists;
    3. the in-cluster service account.

    The configuration is private to the returned client: the library's global default
    configuration is left untouched, so several clusters can be used side by side. The caller
    closes it.
    """
    return k8s_client.ApiClient(configuration=_configuration(_config_source(kubeconfig), context))


# (source, its modification time): a KUBECONFIG pointing elsewhere, or the file rewritten for
# another cluster, gets a client of its own instead of the stale one.
_SharedKey = tuple[str, int]
_SHARED: tuple[_SharedKey, _ProcessApiClient] | None = None
_SHARED_LOCK = threading.Lock()


def _shared_key() -> _SharedKey:
    source = _config_source(None)
    try:
        stamp = Path(source).stat().st_mtime_ns if source else 0
    except OSError:
        stamp = -1  # unreadable: building the client below says why
    return source, stamp


def shared_api_client() -> k8s_client.ApiClient:
    """The process's one client for the cluster the standard sources name (as `new_api_client`
    with no arguments), built on first use and reused by every later caller: discovery and
    connections are paid once per process, not once per task. Closing it is a no-op."""
    global _SHARED
    key = _shared_key()
    with _SHARED_LOCK:
        if _SHARED is not None and _SHARED[0] == key:
            return _SHARED[1]
        stale = _SHARED
        api = _ProcessApiClient(configuration=_configuration(key[0], None))
        _SHARED = (key, api)
    if stale is not None:
        stale[1].close_for_real()
    return api


def release_shared_api_client() -> None:
    """Close the process's shared client; the next `shared_api_client()` builds a new one."""
    global _SHARED
    with _SHARED_LOCK:
        stale, _SHARED = _SHARED, None
    if stale is not None:
        stale[1].close_for_real()


def close_api_client(api: k8s_client.ApiClient) -> None:
    """Close `api`'s connections, even when it is the process's shared client."""
    if isinstance(api, _ProcessApiClient):
        api.close_for_real()
    else:
        api.close()  # type: ignore[no-untyped-call]


def server_version(api: k8s_client.ApiClient) -> tuple[int, int]:
    """The API server's (major, minor), e.g. (1, 31); vendor suffixes like "31+" are dropped."""
    info = request_json(api, "GET", "/version", target="API server version")
    try:
        major = int(re.sub(r"\D.*$", "", str(info["major"])))
        minor = int(re.sub(r"\D.*$", "", str(info["minor"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError("API server /version answered without a usable major/minor") from exc
    return major, minor
