"""Where a pod's container port is really served: a local process on 127.0.0.1.

The kubelet (or a test) binds `(namespace, pod, port)` to the URL of the process standing in for
the container; the API server's service and pod proxies resolve through it.
"""

from __future__ import annotations

import threading


class PodNetwork:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str, int], str] = {}

    def bind(self, namespace: str, pod: str, port: int, url: str) -> None:
        """Serve `pod:port` from `url` (e.g. "http://127.0.0.1:41234")."""
        with self._lock:
            self._routes[(namespace, pod, int(port))] = url.rstrip("/")

    def unbind(self, namespace: str, pod: str, port: int) -> None:
        with self._lock:
            self._routes.pop((namespace, pod, int(port)), None)

    def unbind_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            for key in [k for k in self._routes if k[0] == namespace and k[1] == pod]:
                del self._routes[key]

    def resolve(self, namespace: str, pod: str, port: int) -> str | None:
        with self._lock:
            return self._routes.get((namespace, pod, int(port)))

    def bindings(self) -> dict[tuple[str, str, int], str]:
        with self._lock:
            return dict(self._routes)
