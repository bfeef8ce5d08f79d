"""ModelScope listing and file addressing through the `modelscope` library (`modelscope_hub`).

`modelscope` 1.40 delegates its hub API to `modelscope_hub`; the legacy `HubApi.get_model_files`
drops the sha256 column, so the listing goes through `modelscope_hub.api.HubApi.list_repo_files`
(the same `GET /api/v1/models/{id}/repo/files?Revision=&Recursive=True` call `snapshot_download`
makes). Downloads use the library's own URL builder and auth conventions (Bearer token plus the
`m_session_id` cookie), so the mirror's ranged GETs look like the library's.

The endpoint is the one given, else `MODELSCOPE_ENDPOINT` as it is when the client is made (the
library itself reads that variable only once per process), else the library's default.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from llm_rollout.errors import PermanentError, TransientError
from llm_rollout.settings import settings
from llm_rollout.upstream_names import (
    UnsafeUpstreamData,
    check_listing,
    check_sha256,
    check_size,
)

_REPO_TYPE_MODEL = "model"
_log = logging.getLogger(__name__)


class HubSource(BaseModel):
    """What to mirror: one revision of one ModelScope model, optionally filtered by globs."""

    model_config = ConfigDict(frozen=True)

    model_id: str = Field(description='ModelScope model id "owner/name".')
    revision: str = Field(default="master", description="Branch, tag or commit to mirror.")
    allow_patterns: tuple[str, ...] = Field(
        default=(), description="Glob patterns of files to mirror; empty means every file."
    )
    ignore_patterns: tuple[str, ...] = Field(
        default=(), description="Glob patterns of files to leave out."
    )
    allow_plain_http_hub: bool = Field(
        default=False,
        description="Accept a plain-HTTP hub endpoint on a non-loopback host (see the spec "
        "field model.modelscope.allow_plain_http_hub for the risk).",
    )


class HubFile(BaseModel):
    """One file of a hub revision as the listing describes it."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Path inside the repository, '/'-separated.")
    size: int = Field(description="Size in bytes.", ge=0)
    sha256: str = Field(description="Lower-case hex sha256 of the content.")


class HubListing(BaseModel):
    """The filtered file list of one revision."""

    model_config = ConfigDict(frozen=True)

    model_id: str = Field(description='ModelScope model id "owner/name".')
    revision: str = Field(description="Revision the listing was taken at.")
    files: tuple[HubFile, ...] = Field(description="Files after allow/ignore filtering.")

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)

    @property
    def content_digest(self) -> str:
        """sha256 over (path, size, sha256) of every file: changes iff the content changes.

        A branch such as `master` moves; the digest tells whether a mirror taken earlier still
        matches what the branch points at now.
        """
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda item: item.path):
            h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
        return h.hexdigest()


class HubNotFoundError(PermanentError):
    """The model or revision does not exist (or is not visible with the current token)."""


class HubAccessError(PermanentError):
    """The hub refused the request: missing or insufficient token."""


class HubUnavailableError(TransientError):
    """The hub did not answer properly (connection, timeout, 5xx, 429)."""


class HubListingError(PermanentError):
    """The listing lacks data the mirror needs (e.g. a file without sha256)."""


def _matches(path: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        # A trailing "/" means "everything below this folder", as in snapshot_download.
        glob = pattern + "*" if pattern.endswith("/") else pattern
        if fnmatch.fnmatchcase(path, glob):
            return True
    return False


def filter_paths(
    paths: Sequence[str], allow_patterns: Sequence[str], ignore_patterns: Sequence[str]
) -> list[str]:
    """Keep paths matching any allow pattern (all when none) and no ignore pattern."""
    kept = [p for p in paths if not allow_patterns or _matches(p, allow_patterns)]
    return [p for p in kept if not _matches(p, ignore_patterns)]


@dataclass(frozen=True)
class HubAccess:
    """How to reach one hub: endpoint, request headers and cookies for file downloads.

    `headers` may carry the API token; never log it.
    """

    endpoint: str
    headers: dict[str, str]
    cookies: dict[str, str]

    def __repr__(self) -> str:
        return f"HubAccess(endpoint={self.endpoint!r}, authenticated={bool(self.cookies)})"


class HubClient:
    """Lists revisions and addresses files on a ModelScope hub."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        # modelscope_hub is a few hundred ms to import; only pay when a hub is used.
        from modelscope_hub.api import HubApi

        endpoint = endpoint or settings().modelscope_endpoint
        self._api = HubApi(endpoint=endpoint, token=token, user_agent={"invoked_by": "llm-rollout"})

    @property
    def endpoint(self) -> str:
        """The hub base URL in use (explicit, else MODELSCOPE_ENDPOINT, else the default)."""
        return str(self._api.legacy.endpoint)

    def access(self) -> HubAccess:
        """Headers and cookies the library would send with a file download."""
        legacy = self._api.legacy
        headers = {"User-Agent": str(legacy._user_agent)}
        cookies: dict[str, str] = {}
        token = legacy.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
            cookies["m_session_id"] = str(token)
        return HubAccess(endpoint=self.endpoint, headers=headers, cookies=cookies)

    def file_url(self, model_id: str, revision: str, path: str) -> str:
        """Download URL of one file, from the library's own URL builder."""
        return str(self._api.legacy.get_download_url(model_id, _REPO_TYPE_MODEL, path, revision))

    def download_files(
        self, listing: HubListing, files: Sequence[HubFile], local_dir: Path, max_workers: int
    ) -> None:
        """Download exactly `files` (checked entries of `listing`) into `local_dir`.

        The library is handed the checked entries as its `file_list`, so it does not list
        the revision again: a hub answering a second listing differently cannot add, rename
        or resize a file (modelscope_hub/_download.py, `download_repo`: "When provided,
        listing requests are skipped"). Each file is also checked against the listed size
        and sha256 by the library, and again by the mirror before it is uploaded.
        """
        from modelscope_hub import errors as hub_errors

        entries = [
            {"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": "blob"} for f in files
        ]
        try:
            self._api.download_repo(
                listing.model_id,
                _REPO_TYPE_MODEL,
                revision=listing.revision,
                local_dir=local_dir,
                max_workers=max_workers,
                file_list=entries,
            )
        except (hub_errors.NetworkError, hub_errors.ServerError, hub_errors.RateLimitError) as exc:
            raise HubUnavailableError(f"staged download failed ({type(exc).__name__})") from exc
        except hub_errors.HubError as exc:
            raise PermanentError(f"staged download failed ({type(exc).__name__})") from exc

    def list_files(self, source: HubSource) -> HubListing:
        """Resolve `source` to its filtered file list with sizes and sha256.

        Every entry is checked (`llm_rollout.upstream_names`) before anything uses it: the raw
        listing is read, not the library's normalised one, which turns a missing or
        non-numeric size into 0 or a crash (modelscope_hub/api.py, `list_repo_files`).
        """
        from modelscope_hub import errors as hub_errors

        check_hub_endpoint(self.endpoint, allow_plain_http=source.allow_plain_http_hub)
        where = f"{source.model_id}@{source.revision}"
        try:
            raw = self._api.legacy.list_repo_files(
                repo_id=source.model_id,
                repo_type=_REPO_TYPE_MODEL,
                revision=source.revision,
                recursive=True,
            )
        except hub_errors.NotExistError as exc:
            raise HubNotFoundError(f"hub: model or revision not found: {where}") from exc
        except (hub_errors.AuthenticationError, hub_errors.PermissionDeniedError) as exc:
            raise HubAccessError(f"hub: access to {where} denied (check the API token)") from exc
        except (hub_errors.NetworkError, hub_errors.RateLimitError, hub_errors.ServerError) as exc:
            raise HubUnavailableError(
                f"hub: listing {where} failed ({type(exc).__name__})"
            ) from exc
        except hub_errors.APIError as exc:
            status = getattr(exc, "status_code", None)
            if status == 404:
                raise HubNotFoundError(f"hub: model or revision not found: {where}") from exc
            raise HubListingError(f"hub: listing {where} rejected (HTTP {status})") from exc
        files = parse_listing(raw, where=f"hub listing of {where}")
        if not files:
            raise HubNotFoundError(f"hub: {where} lists no files")
        by_path = {f.path: f for f in files}
        kept = filter_paths(sorted(by_path), source.allow_patterns, source.ignore_patterns)
        if not kept:
            raise HubListingError(f"hub: {where}: no file matches allow_patterns/ignore_patterns")
        return HubListing(
            model_id=source.model_id,
            revision=source.revision,
            files=tuple(by_path[p] for p in kept),
        )


def parse_listing(raw: object, *, where: str) -> list[HubFile]:
    """The files of a raw hub listing (`Data.Files` entries), every field checked.

    The whole listing is checked, not only the entries a filter keeps: a listing that tries
    to leave the model is a hostile hub, whatever was asked of it.
    """
    if not isinstance(raw, list):
        raise HubListingError(f"hub: {where}: the listing is not a list of entries")
    blobs: list[dict[str, object]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise HubListingError(f"hub: {where}: a listing entry is not an object")
        # Same field precedence as the library's own reading of an entry
        # (modelscope_hub/_download.py, `download_repo`), so what is checked is what it uses.
        kind = item.get("Type") or item.get("type") or "blob"
        if kind == "tree":
            continue
        if kind != "blob":
            raise UnsafeUpstreamData(where, _entry_path(item), "type", "neither blob nor tree")
        blobs.append(item)
    paths = check_listing([_entry_path(item) for item in blobs], where=where)
    files: list[HubFile] = []
    for path, item in zip(paths, blobs, strict=True):
        sha = item.get("Sha256") or item.get("sha256")
        if not sha:
            raise HubListingError(f"hub: {where}: listing has no sha256 for {path}")
        files.append(
            HubFile(
                path=path,
                size=check_size(item.get("Size", item.get("size")), where=where, entry=path),
                sha256=check_sha256(sha, where=where, entry=path),
            )
        )
    return files


def _entry_path(item: dict[str, object]) -> str:
    path = item.get("Path") or item.get("path") or item.get("Name") or ""
    if not isinstance(path, str):
        raise UnsafeUpstreamData("hub listing", path, "type", "a path must be a string")
    return path


class PlainHttpHubError(PermanentError):
    """The hub endpoint is plain HTTP on a non-loopback host and the spec does not allow it."""


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_hub_endpoint(endpoint: str, *, allow_plain_http: bool) -> None:
    """Refuse a plain-HTTP hub endpoint on a non-loopback host unless explicitly allowed.

    The listing carries the sha256 every file is checked against; over plain HTTP a man in
    the middle rewrites both, and the mirror would verify the attacker's bytes.
    """
    parsed = urlparse(endpoint)
    if parsed.scheme != "http" or is_loopback_host(parsed.hostname or ""):
        return
    if not allow_plain_http:
        raise PlainHttpHubError(
            f"hub endpoint {hub_host(endpoint)} is plain HTTP on a non-loopback host: use "
            "https, or set model.modelscope.allow_plain_http_hub (read its risk first)"
        )
    _log.warning(
        "hub endpoint %s is plain HTTP: the listing's sha256 is not protected", hub_host(endpoint)
    )


def hub_host(endpoint: str) -> str:
    """Host part of an endpoint, for messages (never includes credentials)."""
    return urlparse(endpoint).netloc or endpoint
