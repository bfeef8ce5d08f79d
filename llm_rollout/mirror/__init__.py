"""Model mirror ModelScope -> OSS: streamed, verified end to end, resumable, skip-aware.

Public interface:
- `mirror_model(source, target, credentials, options, progress)` -> `MirrorResult`;
- `is_mirrored(target, credentials, listing=None)` -> `MirrorStatus` (HEADs only);
- parameter objects `HubSource` (what), `OssTarget` (where), `MirrorOptions` (how);
- `validate_mirror_table` (great-expectations suite, usable without Prefect).
"""

from llm_rollout.hub import HubClient, HubFile, HubListing, HubSource
from llm_rollout.mirror.expectations import MirrorValidationError, validate_mirror_table
from llm_rollout.mirror.manifest import check_mirror, is_mirrored, manifest_key, read_manifest
from llm_rollout.mirror.models import (
    FileOutcome,
    FileRecord,
    Manifest,
    MirrorError,
    MirrorOptions,
    MirrorProgress,
    MirrorResult,
    MirrorStatus,
    MirrorTransientError,
    NullProgress,
)
from llm_rollout.mirror.run import mirror_model
from llm_rollout.oss import OssTarget

__all__ = [
    "FileOutcome",
    "FileRecord",
    "HubClient",
    "HubFile",
    "HubListing",
    "HubSource",
    "Manifest",
    "MirrorError",
    "MirrorOptions",
    "MirrorProgress",
    "MirrorResult",
    "MirrorStatus",
    "MirrorTransientError",
    "MirrorValidationError",
    "NullProgress",
    "OssTarget",
    "check_mirror",
    "is_mirrored",
    "manifest_key",
    "mirror_model",
    "read_manifest",
    "validate_mirror_table",
]
