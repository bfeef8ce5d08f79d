"""The API client the tasks use: the process's Kubernetes session's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kubernetes import client as k8s_client

from llm_rollout.kube.session import process_session


@contextmanager
def cluster_api() -> Iterator[k8s_client.ApiClient]:
    """The client of the process's Kubernetes session (`kube.session.process_session`: the
    standard sources, KUBECONFIG else in-cluster), shared by every task of the process and
    left open for the next one."""
    yield process_session().api
