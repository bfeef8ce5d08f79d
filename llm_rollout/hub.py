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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from llm_rollout.errors import PermanentError, TransientError

_REPO_TYPE_MODEL = "model"


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

        endpoint = endpoint or os.environ.get("MODELSCOPE_ENDPOINT") or None
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

    def list_files(self, source: HubSource) -> HubListing:
        """Resolve `source` to its filtered file list with sizes and sha256."""
        from modelscope_hub import errors as hub_errors

        where = f"{source.model_id}@{source.revision}"
        try:
            entries = self._api.list_repo_files(
                source.model_id, _REPO_TYPE_MODEL, revision=source.revision, recursive=True
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
        by_path: dict[str, HubFile] = {}
        for entry in entries:
            if entry.is_dir:
                continue
            if not entry.sha256:
                raise HubListingError(f"hub: {where}: listing has no sha256 for {entry.path}")
            by_path[entry.path] = HubFile(
                path=entry.path, size=int(entry.size), sha256=str(entry.sha256).lower()
            )
        if not by_path:
            raise HubNotFoundError(f"hub: {where} lists no files")
        kept = filter_paths(sorted(by_path), source.allow_patterns, source.ignore_patterns)
        if not kept:
            raise HubListingError(f"hub: {where}: no file matches allow_patterns/ignore_patterns")
        return HubListing(
            model_id=source.model_id,
            revision=source.revision,
            files=tuple(by_path[p] for p in kept),
        )


def hub_host(endpoint: str) -> str:
    """Host part of an endpoint, for messages (never includes credentials)."""
    return urlparse(endpoint).netloc or endpoint
