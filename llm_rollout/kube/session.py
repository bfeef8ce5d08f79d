"""One Kubernetes session per process: the API client, its discovery cache, our field manager
and the retry policy, with the verbs the pipeline uses and one way to wait.

Every task of a process gets the same session (`process_session()`), so discovery and
connection set-up are paid once per process rather than once per task. The verbs are the
project's own (server-side apply with dry-run, `kube.objects`; errors translated in
`kube.errors`); the session adds the field manager they apply with and retries the transient
failures of single requests, which are all idempotent (GET, LIST, server-side apply, DELETE
that treats 404 as "already gone").

The shape follows lightkube's `Client` (gtsystem/lightkube src/lightkube/core/client.py: one
object holding the connection and a default `field_manager`, `Client.wait` ending on success
conditions and on failure conditions); objects read come back as the typed read-only views of
`kube.views`, after kopf's `kopf/_cogs/structs/bodies.py`.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from kubernetes import client as k8s_client

from llm_rollout.kube import objects
from llm_rollout.kube.client import close_api_client, release_shared_api_client, shared_api_client
from llm_rollout.kube.resources import (
    JsonDict,
    ObjectRef,
    ResourceInfo,
    list_objects,
    resolve_resource,
)
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import (
    TRANSIENT_ATTEMPTS,
    Interrupt,
    Selector,
    Verdict,
    WatchGroup,
    call_with_retry,
    wait_deleted,
    wait_until,
    watching,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often one request is tried when the API server answers with a transient failure
    (throttling, 5xx, a dropped connection), backing off as `watching.backoff_s` says (the
    server's Retry-After first). Permanent errors are never retried."""

    attempts: int = TRANSIENT_ATTEMPTS

    def call(self, fn: Callable[[], _T]) -> _T:
        result: _T = call_with_retry(fn, attempts=self.attempts)
        return result


class Session:
    """The API client and what goes with it; see the module docstring."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        field_manager: str = objects.FIELD_MANAGER,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._api = api
        self.field_manager = field_manager
        self.retry = retry

    @property
    def api(self) -> k8s_client.ApiClient:
        """The underlying client, for helpers that still take one."""
        return self._api

    def resolve(self, api_version: str, kind: str) -> ResourceInfo:
        """Plural and scope of `kind`, from the discovery cache this session's client keys."""
        return self.retry.call(lambda: resolve_resource(self._api, api_version, kind))

    def get(self, ref: ObjectRef) -> ObjectView | None:
        """The object as the server has it, or None when it does not exist."""
        found = self.retry.call(lambda: objects.get(self._api, ref))
        return ObjectView(found) if found is not None else None

    def list(self, selector: Selector) -> list[ObjectView]:
        """The objects `selector` matches, in the server's order."""
        items, _ = self.retry.call(
            lambda: list_objects(
                self._api,
                selector.api_version,
                selector.kind,
                selector.namespace,
                label_selector=selector.label_selector,
                field_selector=selector.field_selector,
            )
        )
        return [ObjectView(item) for item in items]

    def apply(
        self, obj: Mapping[str, Any], *, force: bool = False, dry_run: bool = False
    ) -> JsonDict:
        """Server-side apply `obj` as this session's field manager (`objects.apply`)."""
        return self.retry.call(
            lambda: objects.apply(
                self._api, obj, field_manager=self.field_manager, force=force, dry_run=dry_run
            )
        )

    def apply_all(
        self, manifests: Sequence[Mapping[str, Any]], *, force: bool = False, dry_run: bool = False
    ) -> builtins.list[JsonDict]:
        """Apply `manifests` in order; stops at the first error."""
        return [self.apply(obj, force=force, dry_run=dry_run) for obj in manifests]

    def delete(
        self,
        ref: ObjectRef,
        *,
        propagation: objects.Propagation = "Foreground",
        wait_timeout_s: float | None = None,
    ) -> bool:
        """Delete `ref` (True if it existed); with `wait_timeout_s`, until it is gone."""
        existed = self.retry.call(lambda: objects.delete(self._api, ref, propagation=propagation))
        if existed and wait_timeout_s is not None:
            wait_deleted(self._api, ref, wait_timeout_s)
        return existed

    @contextmanager
    def watch(self, targets: Sequence[ObjectRef | Selector]) -> Iterator[WatchGroup]:
        """Watch streams of `targets` for the block (`watching.WatchGroup`, one per target)."""
        with watching(self._api, [Selector.of(t) for t in targets]) as group:
            yield group

    @overload
    def wait_until(
        self,
        target: ObjectRef,
        check: Callable[[ObjectView | None], Verdict[_T]],
        timeout_s: float,
        *,
        waiting_for: str = "",
        interrupt: Interrupt | None = None,
    ) -> _T: ...

    @overload
    def wait_until(
        self,
        target: Selector,
        check: Callable[[builtins.list[ObjectView]], Verdict[_T]],
        timeout_s: float,
        *,
        waiting_for: str = "",
        interrupt: Interrupt | None = None,
    ) -> _T: ...

    def wait_until(
        self,
        target: ObjectRef | Selector,
        check: Callable[[Any], Verdict[_T]],
        timeout_s: float,
        *,
        waiting_for: str = "",
        interrupt: Interrupt | None = None,
    ) -> _T:
        """Watch `target` until `check` says Done / Failed, or time out: `watching.wait_until`.
        `interrupt` (a held rollout lease) ends the wait early with its own error. A wait on
        several kinds at once (readiness) is `watching.watch_until`, which this one wraps."""
        result: _T = wait_until(
            self._api, target, check, timeout_s, waiting_for=waiting_for, interrupt=interrupt
        )
        return result

    def close(self) -> None:
        """Close the client's connections, the process's shared client included."""
        close_api_client(self._api)


_SESSION: Session | None = None
_SESSION_LOCK = threading.Lock()


def process_session() -> Session:
    """The process's session, over the client the standard sources name (KUBECONFIG, else
    ~/.kube/config, else in-cluster), built on first use and reused by every task after.

    When KUBECONFIG comes to name another file (or the file is rewritten), the next call gets
    a session over a new client (`client.shared_api_client`).
    """
    global _SESSION
    api = shared_api_client()
    with _SESSION_LOCK:
        if _SESSION is None or _SESSION.api is not api:
            _SESSION = Session(api)
        return _SESSION


def reset_process_session() -> None:
    """Close the process's session and its client; the next `process_session()` builds anew.
    For a process that must drop its connections (and for tests that count clients)."""
    global _SESSION
    with _SESSION_LOCK:
        _SESSION = None
    release_shared_api_client()
