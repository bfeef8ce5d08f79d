"""Spec -> mirror parameters: the one place that reads a `ServiceSpec` for the mirror.

Kept apart from the Prefect edge (`tasks.mirror`) so `llm-rollout sync` does not import Prefect
(about 1 s) to mirror a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_rollout.credentials import CredentialsRef
from llm_rollout.errors import PermanentError
from llm_rollout.hub import HubSource
from llm_rollout.oss import OssTarget
from llm_rollout.spec import ModelScopeSource, ServiceSpec


@dataclass(frozen=True)
class MirrorInputs:
    """What the mirror needs, taken from a spec (credentials as a reference only)."""

    source: HubSource
    target: OssTarget
    credentials: CredentialsRef


def hub_source_of(source: ModelScopeSource) -> HubSource:
    """The hub parameters of a spec's ModelScope source."""
    return HubSource(
        model_id=source.model_id,
        revision=source.revision,
        allow_patterns=tuple(source.allow_patterns),
        ignore_patterns=tuple(source.ignore_patterns),
        allow_plain_http_hub=source.allow_plain_http_hub,
    )


def mirror_inputs(spec: ServiceSpec) -> MirrorInputs:
    """Mirror parameters of a spec with a ModelScope source; SpecError-like message otherwise."""
    source = spec.model.modelscope
    if source is None:
        raise PermanentError("model.modelscope: the spec has no ModelScope source to mirror")
    creds = spec.storage.credentials
    if creds is None:
        raise PermanentError("storage.credentials: mirroring needs OSS AccessKeys")
    return MirrorInputs(
        source=hub_source_of(source),
        target=OssTarget(
            endpoint=spec.storage.endpoint,
            bucket=spec.storage.bucket,
            region=spec.storage.region,
            prefix=spec.model_object_prefix.rstrip("/"),
        ),
        credentials=CredentialsRef(
            secret_block=creds.secret_block,
            access_key_id_env=creds.access_key_id_env,
            access_key_secret_env=creds.access_key_secret_env,
        ),
    )
