"""One rollout per service at a time: a Kubernetes `coordination.k8s.io/v1` Lease per service.

Why a Lease rather than a Prefect concurrency limit keyed by the service:
- the lock lives next to what it protects (the service's namespace), so every writer of that
  service takes the same lock whether it runs as a Prefect deployment, a local flow or a CLI
  command talking to an ephemeral API, and whichever Prefect server it reports to;
- the holder is readable by anyone (`kubectl get lease`): a run that cannot get the lock says
  who holds it, since when, and when the hold expires -- Prefect 3.9's API has no call that
  names the holder of a concurrency slot;
- a crashed holder stops renewing and its hold expires after `duration_s`, without any cleanup.

Taking the lease is a compare-and-swap: create (409 if someone else created it first) or
replace with the `resourceVersion` read (409 if it changed in between). Server-side apply
cannot express "only if still free", so the Lease is the one object written with create and
replace instead of the field manager's apply.

Waiting for a held lease watches it (a release or a takeover is an event) and retries when the
current hold would expire; nothing polls. A hold is re-entrant for the same `owner` (the root
flow run), so a flow holding it can call a subflow that asks for it again.

Renewal and loss follow client-go's leader election (kubernetes/client-go
`tools/leaderelection/leaderelection.go`): the holder renews every retry period and, when no
renewal has succeeded for a renew deadline shorter than the lease duration (`renew` loop,
`RenewDeadline` < `LeaseDuration`), it stops leading before anyone else may take the lease
over; a renewal that finds another holder stops it at once. Like client-go's `Run`, which
cancels the context handed to `OnStartedLeading` when `renew` returns, the loss is handed to
the guarded work cooperatively: `check_lease` (called before every API stage, see
`tasks.policy.api_task`) raises `LeaseLostError` naming the Lease and its new holder, so no
further stage starts and nothing more is written; and a wait already in progress (readiness,
the bake, given the hold as their `kube.watching.Interrupt`) is woken by the keeper the moment
it gives up (`ServiceLock.subscribe`) and ends with the same error, rather than at its own
timeout, as do the smoke test's HTTP calls, whose connections it shuts
(`llm_rollout.interruptible_http`). As
client-go's package comment says, this is not fencing: a write already in flight when the
lease is lost still lands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client

from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.errors import ConflictError, NotFoundError
from llm_rollout.kube.objects import FIELD_MANAGER, apply, get
from llm_rollout.kube.resources import JsonDict, ObjectRef, request_json, resolve_resource
from llm_rollout.kube.views import ObjectView
from llm_rollout.kube.watching import Done, Verdict, Waiting, WaitTimeout, wait_until
from llm_rollout.vocabulary import MANAGED_BY_LABEL, OWNER_ANNOTATION, PART_OF_LABEL

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_NAME_PREFIX = "llm-rollout-"
DEFAULT_DURATION_S = 60
# client-go's defaults are LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s
# (tools/leaderelection/leaderelection.go); the same ratios of our duration.
RENEW_DEADLINE_FRACTION = 2 / 3
RETRY_PERIOD_FRACTION = 2 / 15
_MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class ServiceLockedError(PermanentError):
    """Another run holds the service's rollout lease; the message names it."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLostError(PermanentError):
    """The hold was taken over, or could not be renewed within its renew deadline."""


def lease_name(service: str) -> str:
    """Name of the Lease guarding rollouts of `service`."""
    return LEASE_NAME_PREFIX + service


def lease_ref(namespace: str, service: str) -> ObjectRef:
    return ObjectRef(LEASE_API_VERSION, "Lease", namespace, lease_name(service))


def _now_micro() -> str:
    return datetime.now(UTC).strftime(_MICROTIME)


def _parse_micro(value: str | None) -> datetime | None:
    if not value:
        return None
    for fmt in (_MICROTIME, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class LeaseState:
    """What the Lease says now; `holder` is "" when free."""

    holder: str
    owner: str
    acquired_at: datetime | None
    renewed_at: datetime | None
    duration_s: int
    resource_version: str

    @classmethod
    def of(cls, obj: Mapping[str, Any] | None) -> LeaseState:
        """The state of the Lease as read; None (no Lease) and an empty one are free."""
        lease = ObjectView(obj if obj is not None else {})
        spec = lease.spec
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            owner=str(lease.metadata.annotations.get(OWNER_ANNOTATION) or ""),
            acquired_at=_parse_micro(spec.get("acquireTime")),
            renewed_at=_parse_micro(spec.get("renewTime")),
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            resource_version=lease.metadata.resource_version,
        )

    def expires_in_s(self, now: datetime) -> float:
        """Seconds until the hold lapses (<= 0 when free or expired)."""
        if not self.holder or self.renewed_at is None:
            return 0.0
        return self.duration_s - (now - self.renewed_at).total_seconds()

    def describe(self, now: datetime) -> str:
        since = self.acquired_at.isoformat() if self.acquired_at else "unknown time"
        return (
            f"held by {self.holder!r} since {since}, expires in "
            f"{max(0.0, self.expires_in_s(now)):.0f}s unless renewed"
        )


def _lease_body(
    namespace: str,
    service: str,
    holder: str,
    owner: str,
    duration_s: int,
    *,
    previous: JsonDict | None,
) -> JsonDict:
    now = _now_micro()
    transitions = 0
    metadata: JsonDict = {
        "name": lease_name(service),
        "namespace": namespace,
        "labels": {
            MANAGED_BY_LABEL: FIELD_MANAGER,
            PART_OF_LABEL: service,
        },
        "annotations": {OWNER_ANNOTATION: owner},
    }
    if previous is not None:
        old = ObjectView(previous)
        transitions = int(old.spec.get("leaseTransitions") or 0) + 1
        metadata["resourceVersion"] = old.metadata.resource_version
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        },
    }


def _write(api: k8s_client.ApiClient, method: str, body: JsonDict) -> JsonDict:
    """POST (create) or PUT (replace, guarded by the body's resourceVersion) the Lease."""
    ref = ObjectRef.of(body)
    info = resolve_resource(api, LEASE_API_VERSION, "Lease")
    path = info.path(ref.namespace) if method == "POST" else info.path(ref.namespace, ref.name)
    return request_json(
        api,
        method,
        path,
        target=str(ref),
        query=[("fieldManager", FIELD_MANAGER)],
        body=body,
        content_type="application/json",
        ref=ref,
    )


def _ensure_namespace(api: k8s_client.ApiClient, namespace: str) -> None:
    # A first deploy may take the lock before anything else created the namespace.
    if get(api, ObjectRef("v1", "Namespace", None, namespace)) is None:
        apply(
            api,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {MANAGED_BY_LABEL: FIELD_MANAGER},
                },
            },
        )


def try_acquire(
    api: k8s_client.ApiClient,
    namespace: str,
    service: str,
    *,
    holder: str,
    owner: str,
    duration_s: int = DEFAULT_DURATION_S,
) -> tuple[bool, LeaseState, bool]:
    """One compare-and-swap attempt: (taken, state now, re-entrant).

    Re-entrant means `owner` already held it: nothing was written and the caller must not
    release it.
    """
    ref = lease_ref(namespace, service)
    current = get(api, ref)
    now = datetime.now(UTC)
    if current is None:
        body = _lease_body(namespace, service, holder, owner, duration_s, previous=None)
        try:
            try:
                created = _write(api, "POST", body)
            except NotFoundError:
                _ensure_namespace(api, namespace)
                # Another run may create the namespace and its Lease between our two POSTs;
                # its 409 is the same lost race as on the first POST, not an error.
                created = _write(api, "POST", body)
        except ConflictError:
            fresh = get(api, ref)
            return False, LeaseState.of(fresh), False
        return True, LeaseState.of(created), False
    state = LeaseState.of(current)
    if state.holder and state.owner == owner:
        return True, state, True
    if state.holder and state.expires_in_s(now) > 0:
        return False, state, False
    body = _lease_body(namespace, service, holder, owner, duration_s, previous=current)
    try:
        replaced = _write(api, "PUT", body)
    except ConflictError:
        fresh = get(api, ref)
        return False, LeaseState.of(fresh), False
    if state.holder:
        log.warning("took over the lease of %s from %s (expired)", ref, state.holder)
    return True, LeaseState.of(replaced), False


def acquire(
    api: k8s_client.ApiClient,
    namespace: str,
    service: str,
    *,
    holder: str,
    owner: str,
    wait_s: float,
    duration_s: int = DEFAULT_DURATION_S,
) -> tuple[LeaseState, bool]:
    """Take the lease, waiting up to `wait_s` (0: fail fast) for the current holder.

    Returns the state and whether the hold is re-entrant. Raises `ServiceLockedError` naming
    the holder when the wait runs out. The wait watches the Lease (`kube.watching.wait_until`)
    and tries again on each change of it and when the hold it shows would lapse.
    """
    ref = lease_ref(namespace, service)
    taken, state, reentrant = try_acquire(
        api, namespace, service, holder=holder, owner=owner, duration_s=duration_s
    )
    if taken:
        return state, reentrant
    waited_from = time.monotonic()
    last = state
    told: tuple[str, str, datetime | None] | None = None

    def take(lease: ObjectView | None) -> Verdict[tuple[LeaseState, bool]]:
        nonlocal last, told
        now = datetime.now(UTC)
        seen = LeaseState.of(lease.raw if lease is not None else None)
        # A live hold of another owner is what `try_acquire` would refuse: it is waited out
        # without a request; anything else (free, lapsed, ours) is tried.
        if not (seen.holder and seen.owner != owner and seen.expires_in_s(now) > 0):
            taken, seen, reentrant = try_acquire(
                api, namespace, service, holder=holder, owner=owner, duration_s=duration_s
            )
            if taken:
                return Done((seen, reentrant))
            now = datetime.now(UTC)
        last = seen
        # Said once per hold, not at each renewal of it.
        if told != (seen.holder, seen.owner, seen.acquired_at):
            told = (seen.holder, seen.owner, seen.acquired_at)
            log.info("waiting for lease %s: %s", ref, seen.describe(now))
        # Looked at again on any change of the Lease, or when the current hold would lapse.
        return Waiting((seen.describe(now),), recheck_in_s=max(0.05, seen.expires_in_s(now) + 0.05))

    timed_out: WaitTimeout | None = None
    if wait_s > 0:
        try:
            return wait_until(api, ref, take, wait_s, waiting_for=f"lease {ref}")
        except WaitTimeout as exc:
            timed_out = exc
    message = (
        f"Service {namespace}/{service} is being rolled out by another run: lease "
        f"{ref.name} {last.describe(datetime.now(UTC))}; waited "
        f"{time.monotonic() - waited_from:.0f}s"
    )
    raise ServiceLockedError(message, holder=last.holder) from timed_out


def renew(api: k8s_client.ApiClient, namespace: str, service: str, *, owner: str) -> LeaseState:
    """Move renewTime forward; `LeaseLostError` when someone else holds it now."""
    ref = lease_ref(namespace, service)
    current = get(api, ref)
    state = LeaseState.of(current)
    if current is None or state.owner != owner or not state.holder:
        raise LeaseLostError(f"lease {ref} is no longer ours ({state.holder or 'free'})")
    body = dict(current)
    body["spec"] = {**ObjectView(current).spec, "renewTime": _now_micro()}
    return LeaseState.of(_write(api, "PUT", body))


def release(api: k8s_client.ApiClient, namespace: str, service: str, *, owner: str) -> bool:
    """Clear the holder if it is still us (the Lease object stays for the next run)."""
    ref = lease_ref(namespace, service)
    for _ in range(3):
        current = get(api, ref)
        state = LeaseState.of(current)
        if current is None or state.owner != owner or not state.holder:
            return False
        body = dict(current)
        body["spec"] = {**ObjectView(current).spec, "holderIdentity": ""}
        try:
            _write(api, "PUT", body)
        except ConflictError:
            continue  # a renewal raced us; read again
        return True
    return False


@dataclass
class ServiceLock:
    """A held lease; `lost` turns true when a renewal found someone else holding it or no
    renewal succeeded within the renew deadline (`lost_to` says who holds it then)."""

    namespace: str
    service: str
    holder: str
    owner: str
    reentrant: bool
    acquired_at: datetime
    lost_to: str = ""
    lost_why: str = ""
    api: k8s_client.ApiClient | None = field(default=None, repr=False)
    # Set once, when the hold is found lost; what a waiter blocks on.
    lost_event: threading.Event = field(default_factory=threading.Event, repr=False)
    # Waits in progress to wake when the hold is lost (`subscribe`), under `_guard`.
    _wakers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    @property
    def ref(self) -> ObjectRef:
        return lease_ref(self.namespace, self.service)

    def mark_lost(self, holder: str, why: str) -> None:
        with self._guard:
            if self.lost:
                return
            self.lost_to, self.lost_why = holder, why
            self.lost_event.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Have `wake` called once the hold is lost (at once if it is already), so a wait in
        progress (readiness: `kube.watching.watch_until`) ends with `interrupted()` without
        waiting for its next event; returns the call that unsubscribes. The cooperative stop
        of client-go's `Run`, which cancels the context the guarded work runs in."""
        with self._guard:
            if not self.lost:
                self._wakers.append(wake)
                return lambda: self._unsubscribe(wake)
        wake()
        return lambda: None

    def _unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._guard:
            if wake in self._wakers:
                self._wakers.remove(wake)

    def interrupted(self) -> LeaseLostError | None:
        """`LeaseLostError` once the hold is lost: what a wait in progress ends with."""
        return self.lost_error() if self.lost else None

    def lost_error(self) -> LeaseLostError:
        ref = self.ref
        now = (
            f"it is held by {self.lost_to!r} now"
            if self.lost_to
            else "another run may take it over once it expires"
        )
        return LeaseLostError(
            f"the rollout lease of Service {self.namespace}/{self.service} "
            f"({ref.kind} {ref.namespace}/{ref.name}) was lost while this run held it: "
            f"{self.lost_why}; {now}. The run stops here and writes nothing more; the service "
            "may be changed by another run meanwhile"
        )


# The outermost hold of this context (flow run): what `check_lease` answers for.
_HELD: ContextVar[ServiceLock | None] = ContextVar("llm_rollout_held_lease", default=None)


def held_lease() -> ServiceLock | None:
    """The rollout lease this context holds, if any."""
    return _HELD.get()


def check_lease() -> None:
    """Raise `LeaseLostError` if the rollout lease this context holds is no longer ours.

    Called before each guarded stage: besides what the renewer already noticed, the Lease is
    read once, so a takeover between two renewals stops the next stage too. Outside a hold it
    does nothing. A failed read is left to the renewer's deadline (it is no evidence of loss).
    """
    lock = _HELD.get()
    if lock is None:
        return
    if not lock.lost and lock.api is not None:
        try:
            current = get(lock.api, lock.ref)
        except RolloutError as exc:
            log.warning("could not read lease %s before a stage: %s", lock.ref, exc)
        else:
            reason = _not_ours(current, lock.owner)
            if reason:
                lock.mark_lost(LeaseState.of(current).holder, reason)
    if lock.lost:
        raise lock.lost_error()


def _not_ours(current: JsonDict | None, owner: str) -> str:
    """Why the Lease as read is not `owner`'s hold ("" when it is)."""
    if current is None:
        return "the Lease was deleted"
    state = LeaseState.of(current)
    if not state.holder:
        return "the Lease was released by someone else"
    if state.owner != owner:
        return "another run holds it now"
    return ""


def _keep_renewing(
    api: k8s_client.ApiClient, lock: ServiceLock, stop: threading.Event, duration_s: int
) -> None:
    """Renew every retry period until `stop`; mark `lock` lost on another holder or when no
    renewal succeeded for the renew deadline (client-go `renew`)."""
    ref = lock.ref
    retry_s = duration_s * RETRY_PERIOD_FRACTION
    deadline_s = duration_s * RENEW_DEADLINE_FRACTION
    # Local monotonic time, as client-go does: the Lease's timestamps come from other clocks.
    renewed_at = time.monotonic()
    while not stop.wait(retry_s):
        try:
            renew(api, lock.namespace, lock.service, owner=lock.owner)
        except LeaseLostError:
            try:
                current = get(api, ref)
            except RolloutError as exc:
                log.warning("reading lease %s after losing it failed: %s", ref, exc)
                lock.mark_lost("", "a renewal found it no longer ours")
            else:
                reason = _not_ours(current, lock.owner) or "a renewal found it no longer ours"
                lock.mark_lost(LeaseState.of(current).holder, reason)
            log.error("lost lease %s to %r", ref, lock.lost_to)
            return
        except RolloutError as exc:
            failing_s = time.monotonic() - renewed_at
            if failing_s < deadline_s:
                # One failed renewal is not fatal: the hold lasts `duration_s`.
                log.warning("renewing lease %s failed: %s", ref, exc)
                continue
            lock.mark_lost(
                "",
                f"no renewal succeeded for {failing_s:.0f}s (renew deadline {deadline_s:.0f}s "
                f"of a {duration_s}s lease; last error: {exc})",
            )
            log.error("lost lease %s: %s", ref, lock.lost_why)
            return
        renewed_at = time.monotonic()


@contextmanager
def service_lock(
    api: k8s_client.ApiClient,
    namespace: str,
    service: str,
    *,
    holder: str,
    owner: str,
    wait_s: float,
    duration_s: int = DEFAULT_DURATION_S,
) -> Iterator[ServiceLock]:
    """Hold the service's rollout lease for the block, renewing it every retry period.

    While the block runs, `check_lease` in this context raises once the hold is lost. Raises
    `LeaseLostError` on exit too if the hold was lost meanwhile (the work in the block may
    have overlapped another run, which must be said loudly).
    """
    _, reentrant = acquire(
        api, namespace, service, holder=holder, owner=owner, wait_s=wait_s, duration_s=duration_s
    )
    lock = ServiceLock(namespace, service, holder, owner, reentrant, datetime.now(UTC), api=api)
    if reentrant:
        yield lock
        return
    log.info("lease %s acquired by %s", lock.ref, holder)
    stop = threading.Event()
    renewer = threading.Thread(
        target=_keep_renewing, args=(api, lock, stop, duration_s), name="lease-renew", daemon=True
    )
    renewer.start()
    token = _HELD.set(lock)
    try:
        yield lock
    finally:
        _HELD.reset(token)
        stop.set()
        renewer.join(timeout=10)
        try:
            released = release(api, namespace, service, owner=owner)
        except RolloutError as exc:
            # The hold then lapses by itself after `duration_s`; the block's outcome stands.
            log.warning("releasing lease %s failed: %s", lock.ref, exc)
            released = False
        if not released and not lock.lost:
            # Taken over after the last renewal or check: still a loss to report.
            try:
                current = get(api, lock.ref)
            except RolloutError as exc:
                log.warning("reading lease %s after its release failed: %s", lock.ref, exc)
            else:
                reason = _not_ours(current, owner)
                if reason:
                    lock.mark_lost(LeaseState.of(current).holder, reason)
        log.info(
            "lease %s released by %s%s",
            lock.ref,
            holder,
            "" if released else " (it was no longer ours)",
        )
    if lock.lost:
        raise lock.lost_error()
