"""What an OSS error says (``llm_rollout/oss.py`` ``translate_oss_error``): permanent or
transient, and a message made of the action, a hint, the OSS error code, the HTTP status and
the request id, never the server's free text. Real OSS echoes the AccessKey ID and the
string-to-sign in a SignatureDoesNotMatch body, as the sandbox OSS does
(``sandbox.oss._signature_mismatch``); oss2 keeps them in the exception's ``details``
(oss2/exceptions.py ``OssError``), from where nothing may reach a message.

Every error comes from a request of the real oss2 client to the sandbox OSS (wrong keys, a
missing bucket or key, scripted faults): no hub and no mirror run. Plain test (also run by
bench/mutation.py with --noconftest).
"""

from __future__ import annotations

from collections.abc import Iterator

import oss2
import oss2.exceptions
import pytest
from pydantic import SecretStr

from llm_rollout.credentials import OssCredentials
from llm_rollout.errors import RolloutError
from llm_rollout.oss import (
    OssPermanentError,
    OssRequestError,
    OssTarget,
    open_bucket,
    oss_call,
)
from sandbox.oss import OssServer
from tests.mirror.direct_oss import KEY_ID, KEY_SECRET, direct_bucket, fresh_target, running_oss

BUCKET = "errors"
DATA = b"weights"


@pytest.fixture(scope="module")
def oss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssServer]:
    yield from running_oss(tmp_path_factory.mktemp("oss"), BUCKET)


@pytest.fixture
def target(oss: OssServer) -> Iterator[OssTarget]:
    oss.faults.clear()
    yield fresh_target(oss, BUCKET, "e")
    oss.faults.clear()


def _get_fails(bucket: oss2.Bucket, key: str) -> tuple[RolloutError, oss2.exceptions.OssError]:
    """The translated error of a GET of `key` and the oss2 exception it was made from."""
    with pytest.raises(RolloutError) as caught:
        oss_call(f"GET {key}", lambda: bucket.get_object(key).read())
    cause = caught.value.__cause__
    assert isinstance(cause, oss2.exceptions.OssError)
    return caught.value, cause


def test_a_wrong_secret_is_named_without_what_oss_echoed(target: OssTarget) -> None:
    key = target.key("w.bin")
    error, cause = _get_fails(direct_bucket(target, secret="not-the-secret"), key)
    assert isinstance(error, OssPermanentError) and error.code == "SignatureDoesNotMatch"
    assert cause.request_id
    assert str(error) == (
        f"OSS GET {key}: the AccessKey secret is wrong: "
        f"SignatureDoesNotMatch (HTTP 403, request id {cause.request_id})"
    )
    # The server did echo the key id and what it signed; none of it is in the message.
    echoed = (cause.details["OSSAccessKeyId"], cause.details["StringToSign"], cause.message)
    assert echoed[0] == KEY_ID and echoed[1] and echoed[2]
    for text in echoed:
        assert text not in str(error)


# (what goes wrong, code, HTTP status, the hint before the code)
PERMANENT = [
    ("unknown key id", "InvalidAccessKeyId", 403, "the AccessKey ID is not known to OSS: "),
    ("missing bucket", "NoSuchBucket", 404, "the bucket does not exist at this endpoint: "),
    ("denied", "AccessDenied", 403, "the credentials lack permission: "),
    # A permanent code without a hint of its own.
    ("bad argument", "InvalidArgument", 400, "request rejected: "),
    # Codes no list names: permanent, with the code alone.
    ("nothing stored there", "NoSuchKey", 404, ""),
    ("clock off", "RequestTimeTooSkewed", 403, ""),
]
# Answered by the sandbox OSS to a valid, authenticated request (its scripted faults).
SCRIPTED = {
    "denied": (403, "AccessDenied"),
    "bad argument": (400, "InvalidArgument"),
    "clock off": (403, "RequestTimeTooSkewed"),
}


def _bucket_where(what: str, oss: OssServer, target: OssTarget) -> oss2.Bucket:
    if what == "unknown key id":
        nobody = OssCredentials(
            access_key_id=SecretStr("LTAI-nobody"), access_key_secret=SecretStr(KEY_SECRET)
        )
        return open_bucket(target, nobody, enable_crc=False)
    if what == "missing bucket":
        return direct_bucket(target.model_copy(update={"bucket": "no-such-bucket"}))
    if what in SCRIPTED:
        status, code = SCRIPTED[what]
        oss.faults.fail("GetObject", status=status, code=code)
    return direct_bucket(target)


@pytest.mark.parametrize(
    ("what", "code", "status", "hint"), PERMANENT, ids=[p[0] for p in PERMANENT]
)
def test_credentials_bucket_and_request_problems_are_permanent_with_their_code(
    oss: OssServer, target: OssTarget, what: str, code: str, status: int, hint: str
) -> None:
    key = target.key("w.bin")
    error, cause = _get_fails(_bucket_where(what, oss, target), key)
    assert (cause.status, cause.code) == (status, code)  # what OSS answered
    assert isinstance(error, OssPermanentError) and error.code == code
    assert str(error) == (
        f"OSS GET {key}: {hint}{code} (HTTP {status}, request id {cause.request_id})"
    )
    assert "LTAI-nobody" not in str(error)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (408, "RequestTimeout"),
        (409, "OperationConflict"),
        (429, "TooManyRequests"),
        (500, "InternalError"),
        (502, "BadGateway"),
        (503, "ServiceUnavailable"),
        (504, "GatewayTimeout"),
    ],
)
def test_throttling_and_server_faults_are_transient(
    oss: OssServer, target: OssTarget, status: int, code: str
) -> None:
    key = target.key("w.bin")
    oss.faults.fail("GetObject", status=status, code=code)
    error, cause = _get_fails(direct_bucket(target), key)
    assert oss.faults.fired() == 1
    assert isinstance(error, OssRequestError) and error.retry_after_s is None
    assert str(error) == f"OSS GET {key}: {code} (HTTP {status}, request id {cause.request_id})"


def test_a_dropped_connection_and_a_crc_mismatch_are_transient(
    oss: OssServer, target: OssTarget
) -> None:
    key = target.key("w.bin")
    bucket = direct_bucket(target)
    oss.faults.reset("PutObject", times=None)
    with pytest.raises(OssRequestError) as dropped:
        oss_call(f"PUT {key}", lambda: bucket.put_object(key, DATA))
    assert isinstance(dropped.value.__cause__, oss2.exceptions.RequestError)
    assert str(dropped.value) == f"OSS PUT {key}: connection failed (ConnectionError)"
    oss.faults.clear()
    # oss2's own CRC64 check (on for this bucket) finds the byte damaged on the way.
    checking = open_bucket(
        target,
        OssCredentials(access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET)),
        enable_crc=True,
    )
    oss.faults.damage("PutObject", when="in_transit")
    with pytest.raises(OssRequestError) as damaged:
        oss_call(f"PUT {key}", lambda: checking.put_object(key, DATA))
    assert isinstance(damaged.value.__cause__, oss2.exceptions.InconsistentError)
    assert str(damaged.value) == f"OSS PUT {key}: CRC64 mismatch between client and server"


def test_a_call_oss2_refuses_before_sending_is_permanent(target: OssTarget) -> None:
    """oss2 raises ClientError for its arguments before any request (oss2/api.py
    ``Bucket.__do_object``: an empty key); it was retried as transient before the mutation
    run of issue 19 showed the branch."""
    bucket = direct_bucket(target)
    with pytest.raises(OssPermanentError) as refused:
        oss_call("GET (no key)", lambda: bucket.get_object(""))
    assert type(refused.value.__cause__) is oss2.exceptions.ClientError
    assert str(refused.value) == "OSS GET (no key): oss2 refused the request before sending it"
    assert refused.value.code == ""
