"""What an API error says (``llm_rollout/kube/errors.py``): the class a status maps to, and a
message made of what was addressed, the HTTP status and the server's Status ``message`` only,
never the rest of the answer (``server_status_message``, ``translate``).

The answers come over HTTP from a stand-in on 127.0.0.1 to the real kubernetes client (as
``raw_request`` sends every product request), so ``ApiException`` is built by the client itself
(kubernetes/client/exceptions.py ``ApiException.__init__``: ``body`` is the answer decoded as
UTF-8, left None when it is not UTF-8; ``reason`` the HTTP reason phrase; ``headers`` urllib3's).
The Status bodies are shaped as the API server writes them (k8s.io/apimachinery
pkg/apis/meta/v1/types.go ``Status``: message, reason, details.causes). The other answers are
what an intermediary (a load balancer, an auth proxy) may put in front of it: HTML, truncated
JSON, no body. Plain test: no cluster (also run by bench/mutation.py with --noconftest).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from llm_rollout.errors import PermanentError, RolloutError
from llm_rollout.kube.client import new_api_client
from llm_rollout.kube.errors import (
    BadRequestError,
    ConflictError,
    InvalidObjectError,
    KubeApiError,
    KubeTransientError,
    NotFoundError,
    UnauthorizedError,
    server_status_message,
    translate,
)
from llm_rollout.kube.resources import ObjectRef, request_json
from sandbox.cluster.api_proxy import _status_body

REF = ObjectRef("v1", "Secret", "llm", "oss-creds")
TARGET = "Secret llm/oss-creds"
# What a request body carried: the API server's Status details may quote it back.
PAYLOAD = "c2VjcmV0LWFjY2Vzcy1rZXk="
INVALID = 'Secret "oss-creds" is invalid: data[ak]: Invalid value: a valid config key must ...'


def _status(code: int, reason: str, message: object) -> bytes:
    status: dict[str, object] = {
        **_status_body(code, reason, ""),
        "message": message,
        "details": {
            "name": "oss-creds",
            "kind": "Secret",
            "causes": [{"reason": "FieldValueInvalid", "field": PAYLOAD}],
        },
    }
    return json.dumps(status).encode()


# name -> (status, reason phrase, headers, body)
Answer = tuple[int, str, dict[str, str], bytes]
ANSWERS: dict[str, Answer] = {
    "invalid": (422, "Unprocessable Entity", {}, _status(422, "Invalid", INVALID)),
    "indented": (409, "Conflict", {}, b"\n  " + _status(409, "Conflict", "already exists")),
    "message-not-text": (409, "Conflict", {}, _status(409, "Conflict", 7)),
    "no-message": (404, "Not Found", {}, json.dumps({"kind": "Status", "code": 404}).encode()),
    "truncated": (400, "Bad Request", {}, b'{"kind":"Status","message":"' + PAYLOAD.encode()),
    "json-list": (400, "Bad Request", {}, json.dumps([PAYLOAD]).encode()),
    "html": (
        502,
        "Bad Gateway",
        {"Content-Type": "text/html"},
        f"<html><body>upstream said {PAYLOAD}</body></html>".encode(),
    ),
    "not-utf8": (503, "Service Unavailable", {}, b"\xff\xfe" + PAYLOAD.encode()),
    "no-reason": (418, "", {}, b""),
    "throttled": (429, "Too Many Requests", {"Retry-After": "3"}, b""),
    "throttled-negative": (429, "Too Many Requests", {"Retry-After": "-2"}, b""),
    "throttled-date": (
        429,
        "Too Many Requests",
        {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"},
        b"",
    ),
    "unavailable-after": (503, "Service Unavailable", {"Retry-After": "5"}, b""),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        answer: Answer = (int(name), "", {}, b"") if name.isdigit() else ANSWERS[name]
        status, reason, headers, body = answer
        self.send_response_only(status, reason)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s_client.ApiClient]:
    """The product's client (``new_api_client``) for a kubeconfig naming the stand-in."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    kubeconfig: Path = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    client = new_api_client(kubeconfig)
    yield client
    client.close()  # type: ignore[no-untyped-call]
    server.shutdown()
    server.server_close()
    thread.join()


def _failure(api: k8s_client.ApiClient, answer: str) -> RolloutError:
    with pytest.raises(RolloutError) as caught:
        request_json(api, "GET", f"/answers/{answer}", target=TARGET, ref=REF)
    return caught.value


def test_a_status_answer_gives_its_message_and_nothing_else_of_the_body(
    stand_in: k8s_client.ApiClient,
) -> None:
    error = _failure(stand_in, "invalid")
    assert type(error) is InvalidObjectError
    assert str(error) == f"GET {TARGET}: HTTP 422: {INVALID}"
    assert (error.status, error.server_message, error.ref) == (422, INVALID, REF)
    assert PAYLOAD not in str(error) + repr(error.args)
    # Whitespace before the JSON (as some proxies pass it on) is still a Status answer.
    indented = _failure(stand_in, "indented")
    assert type(indented) is ConflictError
    assert str(indented) == f"GET {TARGET}: HTTP 409: already exists"


@pytest.mark.parametrize(
    ("answer", "expected", "kind"),
    [
        # A Status whose message is not text, or that has none: the HTTP reason phrase.
        ("message-not-text", "HTTP 409: Conflict", ConflictError),
        ("no-message", "HTTP 404: Not Found", NotFoundError),
        # Bodies that are no Status: never quoted, whatever they hold.
        ("truncated", "HTTP 400: Bad Request", BadRequestError),
        ("json-list", "HTTP 400: Bad Request", BadRequestError),
        ("html", "HTTP 502: Bad Gateway", KubeTransientError),
        ("not-utf8", "HTTP 503: Service Unavailable", KubeTransientError),
        # No reason phrase and no body: the status alone.
        ("no-reason", "HTTP 418: ", KubeApiError),
    ],
)
def test_an_answer_without_a_status_message_gives_the_reason_phrase_only(
    stand_in: k8s_client.ApiClient, answer: str, expected: str, kind: type[RolloutError]
) -> None:
    error = _failure(stand_in, answer)
    assert type(error) is kind
    assert str(error) == f"GET {TARGET}: {expected}"
    assert PAYLOAD not in str(error)
    if isinstance(error, KubeApiError):
        assert error.server_message == expected.split(": ", 1)[1]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, UnauthorizedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, InvalidObjectError),
        (405, KubeApiError),
        (499, KubeApiError),
        (429, KubeTransientError),
        (500, KubeTransientError),
        (504, KubeTransientError),
    ],
)
def test_each_status_maps_to_its_class(
    stand_in: k8s_client.ApiClient, status: int, kind: type[RolloutError]
) -> None:
    error = _failure(stand_in, str(status))
    assert type(error) is kind
    assert str(error) == f"GET {TARGET}: HTTP {status}: "
    if isinstance(error, KubeApiError):
        assert (error.status, error.ref) == (status, REF)
    else:
        assert isinstance(error, KubeTransientError) and error.retry_after_s is None


@pytest.mark.parametrize(
    ("answer", "retry_after_s"),
    [
        ("throttled", 3.0),
        ("throttled-negative", 0.0),
        # An HTTP-date Retry-After is not read: the caller's own backoff applies.
        ("throttled-date", None),
        ("unavailable-after", 5.0),
    ],
)
def test_retry_after_is_carried_by_transient_answers(
    stand_in: k8s_client.ApiClient, answer: str, retry_after_s: float | None
) -> None:
    error = _failure(stand_in, answer)
    assert isinstance(error, KubeTransientError)
    assert error.retry_after_s == retry_after_s


def test_what_is_not_an_http_answer_is_named_by_its_type_only() -> None:
    # The client folds TLS and websocket handshake failures into status 0 with the failure's
    # text as the reason (kubernetes/stream/ws_client.py); the text may quote the answer.
    tls = translate(
        ApiException(status=0, reason=f"[SSL] certificate verify failed {PAYLOAD}"),
        verb="GET",
        target=TARGET,
        ref=REF,
    )
    assert type(tls) is KubeApiError
    assert str(tls) == f"GET {TARGET}: TLS error talking to the API server"
    assert (tls.status, tls.server_message, tls.ref) == (0, "", REF)
    # No answer headers at all (an exception built without a response): no Retry-After.
    throttled = translate(
        ApiException(status=429, reason="Too Many Requests"), verb="GET", target=TARGET, ref=REF
    )
    assert isinstance(throttled, KubeTransientError) and throttled.retry_after_s is None
    reset = translate(ConnectionResetError(PAYLOAD), verb="watch", target=TARGET, ref=REF)
    assert type(reset) is KubeTransientError
    assert str(reset) == f"watch {TARGET}: connection failed (ConnectionResetError)"
    odd = translate(ValueError(PAYLOAD), verb="GET", target=TARGET, ref=REF)
    assert type(odd) is PermanentError
    assert str(odd) == f"GET {TARGET}: unexpected client error (ValueError)"
    ours = NotFoundError("already translated", ref=REF, status=404, server_message="")
    assert translate(ours, verb="GET", target=TARGET, ref=REF) is ours


def test_a_body_given_as_bytes_is_read_as_text() -> None:
    """``ApiException.body`` is typed text, but it is a public attribute any caller may set
    (llm_rollout/kube/portforward.py sets it from the handshake answer)."""
    answer = ApiException(status=422, reason="Unprocessable Entity")
    answer.body = _status(422, "Invalid", INVALID)  # type: ignore[assignment]
    assert server_status_message(answer) == INVALID
    answer.body = b"\xff{" + PAYLOAD.encode()  # type: ignore[assignment]
    assert server_status_message(answer) == "Unprocessable Entity"
