"""Kubernetes API errors, translated in one place into the project's error hierarchy.

Callers see `PermanentError` subclasses for answers that will not change on retry (409, 422,
403/401, 404, 400) and `KubeTransientError` for throttling, server faults and dropped
connections. Messages carry the object's kind/namespace/name and the API server's own Status
message, never the request body: an applied Secret holds credentials.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from llm_rollout.errors import PermanentError, RolloutError, TransientError

if TYPE_CHECKING:
    from llm_rollout.kube.resources import ObjectRef


class KubeApiError(PermanentError):
    """The API server refused a request for a reason retrying cannot fix."""

    def __init__(
        self, message: str, *, ref: ObjectRef | None, status: int, server_message: str
    ) -> None:
        super().__init__(message)
        self.ref = ref
        self.status = status
        self.server_message = server_message


class BadRequestError(KubeApiError):
    """400: the request was malformed (e.g. an unknown apply field type)."""


class UnauthorizedError(KubeApiError):
    """401/403: the credentials are missing, wrong, or lack the needed RBAC verb."""


class NotFoundError(KubeApiError):
    """404: the object, its namespace, or its API (CRD not installed) does not exist."""


class ConflictError(KubeApiError):
    """409: another field manager owns the fields, or the object changed underneath."""


class InvalidObjectError(KubeApiError):
    """422: the server's validation rejected the object."""


class KubeTransientError(TransientError):
    """429, 5xx, timeouts and dropped connections: the same call may succeed later."""


_PERMANENT_BY_STATUS: dict[int, type[KubeApiError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidObjectError,
}

# Socket-level failures: the connection broke or was never made; the server may be fine soon.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def server_status_message(exc: ApiException) -> str:
    """The `message` of the server's Status body, or the HTTP reason when there is none.

    Only the Status message is extracted: the body of an error response is never echoed.
    """
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body.strip().startswith("{"):
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    return str(exc.reason or "")


def _retry_after_s(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        return None


def translate(exc: BaseException, *, verb: str, target: str, ref: ObjectRef | None) -> RolloutError:
    """Map a client exception to a `RolloutError`; `target` names what was addressed.

    `target` is e.g. "LeaderWorkerSet llm/qwen" or "pods in llm": it always names kind and
    namespace so the message is actionable on its own.
    """
    if isinstance(exc, RolloutError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        server_message = server_status_message(exc)
        if status == 0:
            # The client wraps TLS failures as status 0: a bad CA or hostname does not heal.
            return KubeApiError(
                f"{verb} {target}: TLS error talking to the API server",
                ref=ref,
                status=0,
                server_message="",
            )
        message = f"{verb} {target}: HTTP {status}: {server_message}"
        if status == 429:
            return KubeTransientError(message, retry_after_s=_retry_after_s(exc))
        if status >= 500:
            return KubeTransientError(message, retry_after_s=_retry_after_s(exc))
        cls = _PERMANENT_BY_STATUS.get(status, KubeApiError)
        return cls(message, ref=ref, status=status, server_message=server_message)
    if isinstance(exc, CONNECTION_ERRORS):
        return KubeTransientError(f"{verb} {target}: connection failed ({type(exc).__name__})")
    return PermanentError(f"{verb} {target}: unexpected client error ({type(exc).__name__})")
