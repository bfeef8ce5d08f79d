"""oss2 helpers: a bucket from endpoint + region + credentials, error translation, CRC64.

Error messages carry the OSS error code, HTTP status and request id, never the server's free
text: real OSS echoes the AccessKey ID and the string-to-sign in SignatureDoesNotMatch bodies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import time
from collections.abc import Callable
from typing import TypeVar

import crcmod
import oss2
import oss2.exceptions
from pydantic import BaseModel, ConfigDict, Field

from llm_rollout.credentials import OssCredentials
from llm_rollout.errors import PermanentError, RolloutError, TransientError
from llm_rollout.upstream_names import check_path

T = TypeVar("T")

# CRC-64/ECMA-182 as OSS computes it (x-oss-hash-crc64ecma); same parameters as oss2.utils.Crc64.
_CRC64_POLY = 0x142F0E1EBA9EA3693
_CRC64_XOROUT = 0xFFFFFFFFFFFFFFFF
_crc64_crcmod = crcmod.mkCrcFun(_CRC64_POLY, initCrc=0, rev=True, xorOut=_CRC64_XOROUT)
_crc64_combine_fun = oss2.utils.Crc64(0).combine


def _load_lzma_crc64() -> Callable[[bytes | bytearray | memoryview, int], int] | None:
    """liblzma's `lzma_crc64` (CRC-64/XZ), or None when liblzma cannot be loaded.

    CRC-64/XZ has OSS's parameters (ECMA-182 polynomial, reflected, all-ones init and xorout)
    and liblzma continues from a previous CRC the way crcmod does, so the values are equal.
    It runs table-driven/CLMUL C code an order of magnitude faster than crcmod, and ctypes
    drops the GIL for the call, so part CRCs run beside the transfer threads.
    """
    name = ctypes.util.find_library("lzma")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        fn = lib.lzma_crc64
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64]
    fn.restype = ctypes.c_uint64

    def crc(data: bytes | bytearray | memoryview, previous: int) -> int:
        if isinstance(data, bytes):
            # c_char_p points at the bytes object's own storage: no copy.
            return int(fn(ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p), len(data), previous))
        view = memoryview(data).cast("B")
        if view.readonly:
            return crc(view.tobytes(), previous)
        array = (ctypes.c_char * view.nbytes).from_buffer(view)
        return int(fn(ctypes.addressof(array), view.nbytes, previous))

    return crc


_crc64_fast = _load_lzma_crc64()
CRC64_IMPLEMENTATION = "liblzma" if _crc64_fast is not None else "crcmod"

# Codes that no retry can fix: wrong keys, missing bucket/permissions, malformed requests.
_PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "InvalidArgument",
        "InvalidObjectName",
        "EntityTooLarge",
        "EntityTooSmall",
        "InvalidPart",
        "InvalidPartOrder",
        "MalformedXML",
        "UserDisable",
    }
)
_TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class OssTarget(BaseModel):
    """Where objects go: one bucket behind one endpoint, under a key prefix."""

    model_config = ConfigDict(frozen=True)

    endpoint: str = Field(
        description="OSS endpoint URL, e.g. https://oss-cn-hangzhou-internal.aliyuncs.com."
    )
    bucket: str = Field(description="Bucket name.")
    region: str | None = Field(
        default=None,
        description="Region id (e.g. cn-hangzhou); when set, requests use signature v4.",
    )
    prefix: str = Field(default="", description="Key prefix under which the model is stored.")

    def key(self, *parts: str) -> str:
        """Join the prefix and `parts` into an object key (no leading or doubled slashes)."""
        pieces = [p.strip("/") for p in (self.prefix, *parts) if p.strip("/")]
        return "/".join(pieces)

    def file_key(self, path: str) -> str:
        """Object key of the model file `path`, which must be a checked relative path: the
        key always lies under the prefix (`upstream_names.check_path`)."""
        check_path(path, where=f"OSS key under {self.prefix or '/'}")
        return self.key(path)

    def uri(self, key: str) -> str:
        """oss:// URI of an object key in this bucket."""
        return f"oss://{self.bucket}/{key}"


def plain_http_warning(endpoint: str) -> str | None:
    """A warning when `endpoint` is plain HTTP: requests are signed, but bodies and answers
    (keys listed, CRC64 headers) are neither encrypted nor protected against rewriting."""
    if not endpoint.lower().startswith("http://"):
        return None
    host = endpoint.split("://", 1)[1].split("/", 1)[0]
    return (
        f"OSS endpoint {host} is plain HTTP: model bytes and OSS answers cross the network "
        "unencrypted and can be rewritten in transit; use an https:// endpoint"
    )


class OssRequestError(TransientError):
    """An OSS request failed in a way that may succeed later (5xx, 429, dropped connection)."""


class OssPermanentError(PermanentError):
    """An OSS request failed in a way retrying cannot fix (credentials, bucket, request)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class IntegrityError(PermanentError):
    """Stored or received bytes do not match the recorded size, CRC64 or sha256."""


def open_bucket(
    target: OssTarget,
    credentials: OssCredentials,
    *,
    connect_timeout_s: float = 30.0,
    pool_size: int = 16,
    enable_crc: bool = True,
) -> oss2.Bucket:
    """An oss2 Bucket; v4 signatures when the target names a region.

    `enable_crc=False` turns off oss2's own CRC64 (crcmod in the sending thread, holding the
    GIL); only for callers that compare `crc64` of what they send with the
    `x-oss-hash-crc64ecma` of every response themselves, as the mirror does.
    """
    key_id = credentials.access_key_id.get_secret_value()
    secret = credentials.access_key_secret.get_secret_value()
    auth: oss2.AuthBase | oss2.StsAuth
    if credentials.security_token is not None:
        version = oss2.AUTH_VERSION_4 if target.region else oss2.AUTH_VERSION_1
        auth = oss2.StsAuth(
            key_id, secret, credentials.security_token.get_secret_value(), auth_version=version
        )
    elif target.region:
        auth = oss2.AuthV4(key_id, secret)
    else:
        auth = oss2.Auth(key_id, secret)
    return oss2.Bucket(
        auth,
        target.endpoint,
        target.bucket,
        session=oss2.Session(pool_size=pool_size),
        connect_timeout=connect_timeout_s,
        enable_crc=enable_crc,
        region=target.region,
    )


def translate_oss_error(exc: oss2.exceptions.OssError, action: str) -> RolloutError:
    """Map an oss2 exception to Permanent/Transient without copying the server's message text."""
    if isinstance(exc, oss2.exceptions.RequestError):
        return OssRequestError(f"OSS {action}: connection failed ({type(exc.exception).__name__})")
    if isinstance(exc, oss2.exceptions.InconsistentError):
        # A CRC mismatch on the wire: the bytes got corrupted in flight, sending again helps.
        return OssRequestError(f"OSS {action}: CRC64 mismatch between client and server")
    if isinstance(exc, oss2.exceptions.ClientError):
        # oss2 refused the call before sending it, for its arguments (an empty key or key
        # list, an invalid bucket name: oss2/api.py, "raised for a wrong user argument"):
        # the same call fails the same way every time.
        return OssPermanentError(
            f"OSS {action}: oss2 refused the request before sending it", code=""
        )
    status = int(getattr(exc, "status", 0) or 0)
    code = str(getattr(exc, "code", "") or "")
    request_id = str(getattr(exc, "request_id", "") or "")
    detail = f"{code or 'error'} (HTTP {status}, request id {request_id or '-'})"
    if code in _PERMANENT_CODES:
        hint = {
            "NoSuchBucket": "the bucket does not exist at this endpoint",
            "InvalidAccessKeyId": "the AccessKey ID is not known to OSS",
            "SignatureDoesNotMatch": "the AccessKey secret is wrong",
            "AccessDenied": "the credentials lack permission",
        }.get(code, "request rejected")
        return OssPermanentError(f"OSS {action}: {hint}: {detail}", code=code)
    if status in _TRANSIENT_STATUSES:
        retry_after = _retry_after_s(exc)
        return OssRequestError(f"OSS {action}: {detail}", retry_after_s=retry_after)
    return OssPermanentError(f"OSS {action}: {detail}", code=code)


def _retry_after_s(exc: oss2.exceptions.OssError) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def oss_call(action: str, fn: Callable[[], T]) -> T:
    """Run one oss2 call, translating its exceptions (see `translate_oss_error`)."""
    try:
        return fn()
    except oss2.exceptions.OssError as exc:
        raise translate_oss_error(exc, action) from exc


def retry_transient(
    fn: Callable[[], T],
    *,
    attempts: int,
    base_delay_s: float = 0.5,
    max_delay_s: float = 20.0,
    on_retry: Callable[[int, TransientError], None] | None = None,
) -> T:
    """Call `fn` until it succeeds, retrying `TransientError` with jittered exponential backoff.

    Permanent errors propagate at once; the last transient error propagates after `attempts`.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt >= attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1))
            if exc.retry_after_s is not None:
                delay = max(delay, min(exc.retry_after_s, max_delay_s))
            # Backoff between attempts, not a wait for a condition.
            time.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable: attempts must be >= 1")


def crc64(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """CRC-64/ECMA of `data`, continuing from `previous` (the CRC of the bytes before it)."""
    if _crc64_fast is not None:
        return _crc64_fast(data, previous)
    return int(_crc64_crcmod(data, previous))


def crc64_crcmod(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """`crc64` through crcmod only: the fallback, kept callable to check the fast path."""
    return int(_crc64_crcmod(data, previous))


def crc64_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """CRC of A+B from CRC(A), CRC(B) and len(B), as OSS combines multipart part CRCs."""
    if length_b == 0:
        return crc_a
    return int(_crc64_combine_fun(crc_a, crc_b, length_b))


def head_crc64(headers: object) -> int | None:
    """The x-oss-hash-crc64ecma value from response headers, if the server sent one."""
    get = getattr(headers, "get", None)
    raw = get("x-oss-hash-crc64ecma") if get is not None else None
    return int(raw) if raw else None
