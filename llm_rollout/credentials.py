"""OSS credentials: resolved from a reference (a Prefect Secret block name or env var NAMES).

The spec and every flow parameter carry only the *reference*; the values are looked up at the
moment they are needed. `OssCredentials` keeps both key parts as `SecretStr`, so repr/str,
logging, pydantic dumps and Prefect parameter rendering show `**********` instead of the key.
Code that must hand the raw values on (the oss2 client, the CSI Secret) calls the explicit
accessors, which makes every place that touches a raw key easy to find.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from llm_rollout.errors import PermanentError

# Accepted key spellings inside a Secret block holding JSON: ours, and the CSI Secret's.
_ID_KEYS = ("access_key_id", "akId", "AccessKeyId")
_SECRET_KEYS = ("access_key_secret", "akSecret", "AccessKeySecret")
_TOKEN_KEYS = ("security_token", "SecurityToken")


class CredentialsError(PermanentError):
    """The credentials reference cannot be resolved (missing variable or block, bad shape)."""


class OssCredentials(BaseModel):
    """Resolved OSS access key pair (optionally an STS token); never rendered in clear."""

    model_config = ConfigDict(frozen=True)

    access_key_id: SecretStr = Field(description="OSS AccessKey ID (masked when rendered).")
    access_key_secret: SecretStr = Field(description="OSS AccessKey secret (masked).")
    security_token: SecretStr | None = Field(
        default=None, description="STS security token for temporary credentials (masked)."
    )

    def csi_secret_data(self) -> dict[str, str]:
        """Raw values keyed the way the OSS CSI driver's `nodePublishSecretRef` Secret expects.

        Only for building the Kubernetes Secret; never log or print the result.
        """
        return {
            "akId": self.access_key_id.get_secret_value(),
            "akSecret": self.access_key_secret.get_secret_value(),
        }


class CredentialsRef(BaseModel):
    """Where to find OSS credentials: a Prefect Secret block, or two environment variable names."""

    model_config = ConfigDict(frozen=True)

    secret_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block whose value is JSON (or a dict) with "
        "access_key_id/access_key_secret (akId/akSecret also accepted).",
    )
    access_key_id_env: str | None = Field(
        default=None, description="Name of the environment variable holding the AccessKey ID."
    )
    access_key_secret_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the AccessKey secret.",
    )
    security_token_env: str | None = Field(
        default=None, description="Name of the environment variable holding an STS token."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> CredentialsRef:
        has_env = self.access_key_id_env is not None or self.access_key_secret_env is not None
        if self.secret_block is not None and has_env:
            raise ValueError("give either secret_block or the *_env names, not both")
        if self.secret_block is None and not (
            self.access_key_id_env and self.access_key_secret_env
        ):
            raise ValueError(
                "give secret_block, or both access_key_id_env and access_key_secret_env"
            )
        return self


def _pick(data: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def credentials_from_mapping(data: Mapping[str, Any], *, origin: str) -> OssCredentials:
    """Build credentials from a dict (a Secret block's value); `origin` names it in errors."""
    key_id = _pick(data, _ID_KEYS)
    secret = _pick(data, _SECRET_KEYS)
    if key_id is None or secret is None:
        raise CredentialsError(
            f"{origin}: expected keys access_key_id and access_key_secret (or akId/akSecret)"
        )
    token = _pick(data, _TOKEN_KEYS)
    return OssCredentials(
        access_key_id=SecretStr(key_id),
        access_key_secret=SecretStr(secret),
        security_token=SecretStr(token) if token else None,
    )


def _from_env(ref: CredentialsRef, environ: Mapping[str, str]) -> OssCredentials:
    names = {
        "access_key_id_env": ref.access_key_id_env,
        "access_key_secret_env": ref.access_key_secret_env,
    }
    values: dict[str, str] = {}
    for field, name in names.items():
        # Validated by CredentialsRef: both names are set on this path.
        assert name is not None
        value = environ.get(name, "")
        if not value:
            raise CredentialsError(f"storage.credentials.{field}: variable {name} is not set")
        values[field] = value
    token: str | None = None
    if ref.security_token_env:
        token = environ.get(ref.security_token_env) or None
        if token is None:
            raise CredentialsError(
                f"storage.credentials.security_token_env: variable {ref.security_token_env} "
                "is not set"
            )
    return OssCredentials(
        access_key_id=SecretStr(values["access_key_id_env"]),
        access_key_secret=SecretStr(values["access_key_secret_env"]),
        security_token=SecretStr(token) if token else None,
    )


def _from_secret_block(name: str) -> OssCredentials:
    # Prefect is heavy and only needed for this path.
    from prefect.blocks.system import Secret

    origin = f"storage.credentials.secret_block {name!r}"
    try:
        # _sync: a plain value even when called from inside an event loop (async flows).
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError as exc:
        raise CredentialsError(f"{origin}: no such Secret block") from exc
    value = block.get()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CredentialsError(f"{origin}: value is not JSON") from exc
    if not isinstance(value, Mapping):
        raise CredentialsError(f"{origin}: value must be a JSON object")
    return credentials_from_mapping(value, origin=origin)


def resolve_oss_credentials(
    ref: CredentialsRef, environ: Mapping[str, str] | None = None
) -> OssCredentials:
    """Resolve a reference to key values. Errors name the variable or block, never a value."""
    if ref.secret_block is not None:
        return _from_secret_block(ref.secret_block)
    return _from_env(ref, os.environ if environ is None else environ)
