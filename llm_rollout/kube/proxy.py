"""Reach a Service through the API server's service proxy, like `kubectl port-forward` does.

The smoke test then works from outside the cluster with nothing but the kubeconfig: the
returned httpx client authenticates to the API server exactly as the kubernetes client does
(bearer token or basic auth header, CA bundle, client certificate, TLS verification).
"""

from __future__ import annotations

import ssl
from urllib.parse import quote

import httpx
from kubernetes import client as k8s_client


def service_proxy_url(
    api: k8s_client.ApiClient, namespace: str, service: str, port: int | str
) -> str:
    """Base URL that proxies to `port` (number or name) of Service `namespace/service`.

    Append the backend path, e.g. `service_proxy_url(...) + "/v1/models"`.
    """
    host = str(api.configuration.host).rstrip("/")
    ns = quote(namespace, safe="")
    target = quote(f"{service}:{port}", safe=":")
    return f"{host}/api/v1/namespaces/{ns}/services/{target}/proxy"


def _tls_verify(configuration: k8s_client.Configuration) -> ssl.SSLContext | bool:
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(
        cafile=configuration.ssl_ca_cert or None,
        cadata=configuration.ca_cert_data or None,
    )
    if configuration.assert_hostname is False:
        context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def auth_headers(api: k8s_client.ApiClient) -> dict[str, str]:
    """The Authorization header the kubernetes client would send ({} when it uses certs)."""
    # get_api_key_with_prefix runs the refresh hook, so an expiring token is renewed first.
    token = api.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    return {"Authorization": str(token)} if token else {}


def httpx_client_for(api: k8s_client.ApiClient, *, timeout_s: float) -> httpx.Client:
    """An httpx client that talks to the API server with the kubernetes client's credentials.

    The headers hold credentials: never log the client's headers.
    """
    configuration = api.configuration
    return httpx.Client(
        headers=auth_headers(api),
        verify=_tls_verify(configuration),
        timeout=httpx.Timeout(timeout_s),
        proxy=configuration.proxy or None,
    )
