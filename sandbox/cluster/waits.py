"""Wait on the real API server the way controllers do: list, then watch from that version."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client import ApiClient, CoreV1Api


class WaitTimeout(TimeoutError):
    """What was awaited did not happen in time; the message says what was last seen."""


def wait_for(
    list_fn: Callable[..., Any],
    predicate: Callable[[list[Any]], bool],
    *,
    timeout_s: float,
    what: str,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> list[Any]:
    """Return the listed items once ``predicate(items)`` holds; items are kept current by a watch.

    ``list_fn`` is a kubernetes client list method (``CoreV1Api.list_namespaced_pod``...);
    ``namespace`` is required by the namespaced ones and refused by the others.
    """
    list_kwargs: dict[str, str] = {}
    if namespace is not None:
        list_kwargs["namespace"] = namespace
    if label_selector is not None:
        list_kwargs["label_selector"] = label_selector
    if field_selector is not None:
        list_kwargs["field_selector"] = field_selector
    deadline = time.monotonic() + timeout_s
    listed = list_fn(**list_kwargs)
    items = {item.metadata.uid: item for item in listed.items}
    if predicate(list(items.values())):
        return list(items.values())
    version = listed.metadata.resource_version
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(
                f"{what}: not seen within {timeout_s:.0f} s; last seen "
                f"{[item.metadata.name for item in items.values()]}"
            )
        stream = watch.Watch()
        for event in stream.stream(
            list_fn,
            resource_version=version,
            timeout_seconds=max(1, int(remaining)),
            **list_kwargs,
        ):
            obj = event["object"]
            version = obj.metadata.resource_version
            if event["type"] == "DELETED":
                items.pop(obj.metadata.uid, None)
            else:
                items[obj.metadata.uid] = obj
            if predicate(list(items.values())):
                stream.stop()
                return list(items.values())


def wait_pods_bound(
    api: ApiClient,
    *,
    namespace: str,
    label_selector: str,
    count: int,
    node_names: set[str],
    timeout_s: float,
) -> list[Any]:
    """Wait until exactly ``count`` pods match ``label_selector`` and each is bound to a node
    of ``node_names`` (``spec.nodeName``, which only kube-scheduler's binding sets here)."""
    return wait_for(
        CoreV1Api(api).list_namespaced_pod,
        lambda items: len(items) == count and all(p.spec.node_name in node_names for p in items),
        namespace=namespace,
        label_selector=label_selector,
        timeout_s=timeout_s,
        what=f"{count} pods {label_selector} bound to one of {sorted(node_names)}",
    )
