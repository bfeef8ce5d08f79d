"""Watch machinery: one thread per watched collection, all feeding one queue.

Each stream lists once (to get a consistent snapshot and a resourceVersion), then watches from
that version with `kubernetes.watch.Watch`. When the server expires the version (410 Gone, as
an HTTP status or an ERROR event) or the connection is cut, the stream re-lists and resumes; a
re-list is delivered as a full snapshot so the consumer's cache drops objects deleted while the
stream was down. Consumers block on the queue with a deadline: nothing here sleeps to poll.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from kubernetes import client as k8s_client
from kubernetes import watch as _k8s_watch
from kubernetes.client.exceptions import ApiException

from llm_rollout.errors import PermanentError, RolloutError, TransientError
from llm_rollout.kube.errors import CONNECTION_ERRORS, KubeApiError, translate
from llm_rollout.kube.resources import (
    JsonDict,
    ObjectRef,
    list_objects,
    raw_request,
    resolve_resource,
)
from llm_rollout.kube.views import ObjectView

# How long one watch request stays open before the server ends it and we resume; short enough
# that a silently dead connection is noticed, long enough not to churn the API server.
WATCH_WINDOW_S = 60
# Extra read time over the server-side window before the socket is declared dead.
READ_SLACK_S = 15.0
TRANSIENT_ATTEMPTS = 6
# The watch module is untyped; one Any-typed handle keeps mypy --strict honest elsewhere.
_WATCH_CLASS: Any = _k8s_watch.Watch
_STREAM_ERRORS: tuple[type[BaseException], ...] = (ApiException, *CONNECTION_ERRORS)
BACKOFF_CAP_S = 5.0
_T = TypeVar("_T")


class WaitTimeout(PermanentError):
    """A watch-based wait ran out of time; the message says what was still missing."""

    def __init__(self, message: str, *, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass(frozen=True)
class Selector:
    """Objects of one kind in one namespace (None: cluster-scoped or every namespace), narrowed
    by a label selector and, with `name`, to a single object: what is listed, watched and
    waited on."""

    api_version: str
    kind: str
    namespace: str | None
    label_selector: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, target: ObjectRef | Selector) -> Selector:
        """The selector of one object (`ObjectRef`), or `target` itself."""
        if isinstance(target, ObjectRef):
            return cls(target.api_version, target.kind, target.namespace, name=target.name)
        return target

    @property
    def field_selector(self) -> str | None:
        return f"metadata.name={self.name}" if self.name else None

    def describe(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        if self.name:
            return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"
        sel = f" ({self.label_selector})" if self.label_selector else ""
        return f"{self.kind} objects{where}{sel}"


@dataclass
class StreamMessage:
    """What a stream delivered: a full snapshot (`sync`), one change (`event`), or a fault;
    or `wake`, from no stream (`spec` None): an `Interrupt` asks the waiter to look."""

    spec: Selector | None
    kind: str  # "sync" | "event" | "resync" | "error" | "wake"
    event_type: str = ""
    obj: JsonDict | None = None
    items: list[JsonDict] = field(default_factory=list)
    error: RolloutError | None = None
    note: str = ""
    received_monotonic: float = field(default_factory=time.monotonic)


def backoff_s(attempt: int, retry_after_s: float | None) -> float:
    """Delay before retry `attempt` (1-based): the server's Retry-After wins when given."""
    if retry_after_s is not None:
        return min(retry_after_s, 30.0)
    return float(min(BACKOFF_CAP_S, 0.2 * (2 ** (attempt - 1))))


def call_with_retry(
    fn: Callable[[], Any],
    *,
    attempts: int = TRANSIENT_ATTEMPTS,
    stop: threading.Event | None = None,
) -> Any:
    """Call `fn`, retrying `TransientError`s a bounded number of times with backoff.

    Meant for single API calls inside long waits, where one throttled request should not end
    the whole wait. Permanent errors pass through at once.
    """
    stop = stop or threading.Event()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt == attempts:
                raise
            if stop.wait(backoff_s(attempt, exc.retry_after_s)):
                raise
    raise AssertionError("unreachable")


class _Stream(threading.Thread):
    def __init__(
        self,
        api: k8s_client.ApiClient,
        spec: Selector,
        out: queue.Queue[StreamMessage],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"watch {spec.describe()}", daemon=True)
        self.api = api
        self.spec = spec
        self.out = out
        self.stop_event = stop
        self._watch: Any = None
        self._response: Any = None
        self.path = resolve_resource(api, spec.api_version, spec.kind).path(spec.namespace)

    def halt(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.stop()
        # `Watch.stop` unblocks a read only once `Watch.stream` holds the response
        # (kubernetes/watch/watch.py): a stream halted while its watch request was in flight
        # would read on until the next event or the end of the window. The response is kept
        # before `_open` looks at the stop flag, and the flag is set before this runs, so one
        # of the two always shuts the connection.
        _shut_down(self._response)

    def _matches(self, obj: JsonDict) -> bool:
        return self.spec.name is None or ObjectView(obj).metadata.name == self.spec.name

    def _list(self) -> str:
        items, resource_version = list_objects(
            self.api,
            self.spec.api_version,
            self.spec.kind,
            self.spec.namespace,
            label_selector=self.spec.label_selector,
            field_selector=self.spec.field_selector,
        )
        self.out.put(StreamMessage(self.spec, "sync", items=[i for i in items if self._matches(i)]))
        return resource_version

    def _open(
        self,
        *,
        watch: bool,
        _preload_content: bool,
        timeout_seconds: int,
        resource_version: str | None = None,
    ) -> Any:
        # `Watch.stream` calls this as a list function, adding watch=True and
        # _preload_content=False: the request below always watches and streams, so both are
        # accepted and implied. The return stays `Any`: `Watch.stream` reads the annotation to
        # pick a model class for the events, and raw dicts are wanted.
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if self.spec.label_selector:
            query.append(("labelSelector", self.spec.label_selector))
        if self.spec.field_selector:
            query.append(("fieldSelector", self.spec.field_selector))
        response = raw_request(
            self.api,
            "GET",
            self.path,
            target=self.spec.describe(),
            query=query,
            timeout_s=(10.0, timeout_seconds + READ_SLACK_S),
            stream=True,
        )
        self._response = response
        if self.stop_event.is_set():
            _shut_down(response)
        return response

    def _watch_from(self, resource_version: str) -> str:
        if self.stop_event.is_set():
            return resource_version
        watch = _WATCH_CLASS()
        self._watch = watch
        try:
            for event in watch.stream(
                self._open, resource_version=resource_version, timeout_seconds=WATCH_WINDOW_S
            ):
                if self.stop_event.is_set():
                    break
                obj = event.get("raw_object") or event.get("object")
                if not isinstance(obj, dict):
                    continue
                rv = ObjectView(obj).metadata.resource_version
                if rv:
                    resource_version = str(rv)
                if event["type"] == "BOOKMARK" or not self._matches(obj):
                    continue
                self.out.put(StreamMessage(self.spec, "event", event_type=event["type"], obj=obj))
        finally:
            self._watch = None
            self._response = None
        return resource_version

    def run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while not self.stop_event.is_set():
            error: RolloutError
            try:
                if resource_version is None:
                    resource_version = self._list()
                resource_version = self._watch_from(resource_version)
                failures = 0
                continue
            except _STREAM_ERRORS as exc:
                error = translate(exc, verb="watch", target=self.spec.describe(), ref=None)
                gone = isinstance(exc, ApiException) and exc.status == 410
            except RolloutError as exc:
                error = exc
                gone = isinstance(exc, KubeApiError) and exc.status == 410
            if self.stop_event.is_set():
                return
            resource_version = None
            if gone:
                # The version we watched from expired: a fresh list is the only way back in.
                self.out.put(StreamMessage(self.spec, "resync", note="410 Gone; re-listing"))
                continue
            failures += 1
            if not isinstance(error, TransientError) or failures > TRANSIENT_ATTEMPTS:
                self.out.put(StreamMessage(self.spec, "error", error=error))
                return
            self.out.put(StreamMessage(self.spec, "resync", note=f"{error}; re-listing"))
            self.stop_event.wait(backoff_s(failures, error.retry_after_s))


def _shut_down(response: Any) -> None:
    """Shut the socket of a streaming urllib3 response, ending a read blocked on it."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class WatchGroup:
    """Several streams and a cache of what they have seen, consumed from one thread.

    `cache[spec][name]` holds the latest version of every object of that stream.
    """

    def __init__(self, api: k8s_client.ApiClient, specs: Sequence[Selector]) -> None:
        self.api = api
        self.specs = list(specs)
        self.queue: queue.Queue[StreamMessage] = queue.Queue()
        self.stop_event = threading.Event()
        self.cache: dict[Selector, dict[str, JsonDict]] = {s: {} for s in self.specs}
        self.synced: set[Selector] = set()
        self.resyncs = 0
        self._streams = [_Stream(api, s, self.queue, self.stop_event) for s in self.specs]

    def start(self) -> None:
        for stream in self._streams:
            stream.start()

    def close(self) -> None:
        self.stop_event.set()
        for stream in self._streams:
            stream.halt()
        for stream in self._streams:
            stream.join(timeout=2.0)

    def wake(self) -> None:
        """Make the consumer's pending `next` return at once (callable from any thread)."""
        self.queue.put(StreamMessage(None, "wake"))

    @property
    def all_synced(self) -> bool:
        return len(self.synced) == len(self.specs)

    def next(self, timeout_s: float) -> StreamMessage | None:
        """The next message (already applied to the cache), or None when `timeout_s` passed.

        A stream's permanent failure is raised here, in the consumer's thread.
        """
        try:
            message = self.queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if message.kind == "error" and message.error is not None:
            raise message.error
        if message.spec is None:
            return message
        objects = self.cache[message.spec]
        if message.kind == "sync":
            objects.clear()
            for item in message.items:
                objects[_name(item)] = item
            self.synced.add(message.spec)
        elif message.kind == "event" and message.obj is not None:
            if message.event_type == "DELETED":
                objects.pop(_name(message.obj), None)
            else:
                objects[_name(message.obj)] = message.obj
        elif message.kind == "resync":
            self.resyncs += 1
        return message


def _name(obj: JsonDict) -> str:
    return ObjectView(obj).metadata.name


@contextmanager
def watching(api: k8s_client.ApiClient, specs: Sequence[Selector]) -> Iterator[WatchGroup]:
    """Run a `WatchGroup` for the duration of the block; streams stop on exit."""
    group = WatchGroup(api, specs)
    group.start()
    try:
        yield group
    finally:
        group.close()


@dataclass(frozen=True)
class Done(Generic[_T]):
    """A `wait_until` check's verdict: the wait is over; `value` is what `wait_until` returns."""

    value: _T


@dataclass(frozen=True)
class Waiting:
    """A `wait_until` check's verdict: not yet; `missing` says what, for the timeout message.
    `recheck_in_s`: look again after that long even if nothing changes (a timer of the check's
    own, such as a tolerance running out); None: only on a change."""

    missing: tuple[str, ...]
    recheck_in_s: float | None = None


@dataclass(frozen=True)
class Failed:
    """A `wait_until` check's verdict: the awaited state will not come; `reason` says why."""

    reason: str


@dataclass(frozen=True)
class Holding(Generic[_T]):
    """A `wait_until` check's verdict in a hold (`hold_s`): all is as it should be so far;
    `value` is what `wait_until` returns if it still is when the hold is over."""

    value: _T


Verdict = Done[_T] | Waiting | Failed | Holding[_T]
# What `wait_until` watches: one object, the objects a selector matches, or several of those
# together (the check then sees one picture per target, in order).
Target = ObjectRef | Selector


class WaitFailed(PermanentError):
    """A `wait_until` check reported a failure: waiting longer cannot help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _views(cache: Mapping[str, JsonDict]) -> list[ObjectView]:
    return [ObjectView(cache[name]) for name in sorted(cache)]


class Interrupt(Protocol):
    """What may end a wait in progress from another thread: a rollout lease lost while the
    wait runs (`locking.ServiceLock`). The wait looks at it before each check, and `subscribe`
    wakes it when that happens, so it ends promptly without polling."""

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` (from any thread) once the wait must end, at once if it must already;
        returns the call that cancels the subscription."""
        ...

    def interrupted(self) -> RolloutError | None:
        """The error the wait ends with, once it must end; None until then."""
        ...


def watch_until(
    api: k8s_client.ApiClient,
    targets: Sequence[ObjectRef | Selector],
    check: Callable[[WatchGroup], Verdict[_T]],
    timeout_s: float,
    *,
    waiting_for: str = "",
    on_message: Callable[[StreamMessage, WatchGroup], None] | None = None,
    interrupt: Interrupt | None = None,
    hold_s: float | None = None,
) -> _T:
    """Watch every target at once until `check` says `Done` (its value is returned) or
    `Failed` (raised as `WaitFailed`); `WaitTimeout` after `timeout_s`, naming what the last
    `Waiting` missed. `check` may raise its own error instead of returning `Failed`.

    `check` sees the group (`cache[Selector.of(target)]` per target) once every stream has
    listed, and again after every message and whenever a `Waiting.recheck_in_s` runs out, never
    on a partial picture. `on_message` sees each message after it reached the cache (progress
    reports). An `interrupt` ends the wait with its error as soon as it fires.

    With `hold_s` the wait is a hold, where time running out is the success (a bake): `check`
    answers `Holding(value)` while all is well, `value` is returned once `hold_s` (counted
    from the start) has passed with the check holding, and `Failed` ends it at once;
    `timeout_s` (not less than `hold_s`) then bounds how long the first full picture may take.
    """
    if hold_s is not None and hold_s > timeout_s:
        raise ValueError(f"a hold of {hold_s}s cannot end after its timeout of {timeout_s}s")
    specs = [Selector.of(t) for t in targets]
    started = time.monotonic()
    deadline = started + timeout_s
    hold_ends = started + hold_s if hold_s is not None else None
    held: Holding[_T] | None = None
    missing: tuple[str, ...] = ()
    with watching(api, specs) as group:
        unsubscribe = interrupt.subscribe(group.wake) if interrupt is not None else None
        try:
            while True:
                error = interrupt.interrupted() if interrupt is not None else None
                if error is not None:
                    raise error
                wake_at = deadline
                if group.all_synced:
                    verdict = check(group)
                    if isinstance(verdict, Done):
                        return verdict.value
                    if isinstance(verdict, Failed):
                        raise WaitFailed(verdict.reason)
                    if isinstance(verdict, Holding):
                        if hold_ends is None:
                            raise TypeError("a check answered Holding in a wait that is no hold")
                        held = verdict
                    else:
                        held, missing = None, verdict.missing
                        if verdict.recheck_in_s is not None:
                            wake_at = min(deadline, time.monotonic() + verdict.recheck_in_s)
                else:
                    missing = tuple(
                        f"{spec.describe()} not listed yet"
                        for spec in specs
                        if spec not in group.synced
                    )
                now = time.monotonic()
                if held is not None and hold_ends is not None:
                    if now >= hold_ends:
                        return held.value
                    wake_at = hold_ends
                elif deadline - now <= 0:
                    about = f" waiting for {waiting_for}" if waiting_for else ""
                    raise WaitTimeout(
                        f"timed out after {timeout_s:.0f}s{about}: " + "; ".join(missing),
                        missing=list(missing),
                    )
                message = group.next(max(wake_at - now, 0.0))
                if message is not None and on_message is not None:
                    on_message(message, group)
        finally:
            if unsubscribe is not None:
                unsubscribe()


def _picture(target: Target, cache: Mapping[str, JsonDict]) -> ObjectView | list[ObjectView] | None:
    """What a check sees of one target: the object (None while absent) or the matches."""
    if isinstance(target, ObjectRef):
        found = cache.get(target.name)
        return ObjectView(found) if found is not None else None
    return _views(cache)


def wait_until(
    api: k8s_client.ApiClient,
    target: Target | tuple[Target, ...],
    check: Callable[[Any], Verdict[_T]],
    timeout_s: float,
    *,
    waiting_for: str = "",
    interrupt: Interrupt | None = None,
    hold_s: float | None = None,
) -> _T:
    """Watch `target` until `check` says `Done` (its value is returned) or `Failed` (raised as
    `WaitFailed`); `WaitTimeout` after `timeout_s`, naming what the last `Waiting` missed.

    `check` sees the object (None while it does not exist) for an `ObjectRef`, the matching
    objects sorted by name for a `Selector` (`Session.wait_until` types the pairing); it runs
    once the first list arrived and after every change, never on a partial picture. Success
    and failure both end the wait, as with lightkube's `Client.wait(for_conditions=...,
    raise_for_conditions=...)` (gtsystem/lightkube src/lightkube/core/client.py), but the
    check may look at anything. A tuple of targets is watched together: `check` then sees a
    tuple of their pictures, in order, once every one was listed. `hold_s` makes it a hold
    (`watch_until`), and `interrupt` may end it early. The targets' case of `watch_until`.
    """
    targets = target if isinstance(target, tuple) else (target,)
    specs = [Selector.of(t) for t in targets]

    def check_pictures(group: WatchGroup) -> Verdict[_T]:
        pictures = tuple(_picture(t, group.cache[s]) for t, s in zip(targets, specs, strict=True))
        return check(pictures if isinstance(target, tuple) else pictures[0])

    return watch_until(
        api,
        specs,
        check_pictures,
        timeout_s,
        waiting_for=waiting_for,
        interrupt=interrupt,
        hold_s=hold_s,
    )


def wait_deleted(api: k8s_client.ApiClient, ref: ObjectRef, timeout_s: float) -> None:
    """Return once `ref` no longer exists (at once if it never did); `WaitTimeout` otherwise."""

    def gone(obj: ObjectView | None) -> Verdict[None]:
        if obj is None:
            return Done(None)
        finalizers = obj.metadata.finalizers
        detail = f" (finalizers: {', '.join(finalizers)})" if finalizers else ""
        return Waiting((f"{ref} still exists{detail}",))

    wait_until(api, ref, gone, timeout_s, waiting_for="deletion")


def wait_pvc_bound(
    api: k8s_client.ApiClient, namespace: str, name: str, timeout_s: float
) -> JsonDict:
    """Return the PersistentVolumeClaim once its phase is Bound.

    Phase Lost fails at once (`WaitFailed`); a timeout names the phase the claim was stuck in.
    """
    ref = ObjectRef("v1", "PersistentVolumeClaim", namespace, name)

    def bound(pvc: ObjectView | None) -> Verdict[JsonDict]:
        phase = str(pvc.status.get("phase") or "") if pvc is not None else ""
        if pvc is not None and phase == "Bound":
            return Done(dict(pvc.raw))
        if phase == "Lost":
            return Failed(f"{ref}: phase Lost (its PersistentVolume is gone)")
        state = f"phase {phase or 'unknown'}" if pvc is not None else "does not exist"
        return Waiting((f"{ref}: {state}, not Bound",))

    return wait_until(api, ref, bound, timeout_s)
