"""Upstream CustomResourceDefinitions, read from disk for offline validation.

The CRDs are upstream data and stay outside the repository: the directory comes from the
`LLM_ROLLOUT_CRD_DIR` environment variable, or `<repo root>/../shared/crds` by default.

`crd_schemas(api_version, kind)` returns the JSON schema of every CRD file that serves that
`group/version` of the kind (for example both the v0.6.0 and v0.10.0 LeaderWorkerSet CRDs serve
`leaderworkerset.x-k8s.io/v1`), converted from `openAPIV3Schema` so that `jsonschema` enforces
what the API server enforces structurally: unknown fields are rejected unless the schema sets
`x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string` accepts both, `nullable`
accepts null. CEL rules and list-map keys are not checked here.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from llm_rollout.errors import PermanentError

CRD_DIR_ENV = "LLM_ROLLOUT_CRD_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent


class CrdDirError(PermanentError):
    """The CRD directory is missing or holds no readable CRDs."""


@dataclass(frozen=True)
class CrdSchema:
    """One served version of one CRD file, as a JSON schema for the whole object."""

    group: str
    kind: str
    version: str
    source: str
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def crd_dir() -> Path:
    """Directory holding the CRD YAML files; raises `CrdDirError` when it does not exist."""
    configured = os.environ.get(CRD_DIR_ENV)
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "crds"
    if not path.is_dir():
        how = f"${CRD_DIR_ENV}" if configured else f"the default (set ${CRD_DIR_ENV} to override)"
        raise CrdDirError(f"CRD directory {path} from {how} does not exist")
    return path


_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf")


def structural_to_jsonschema(node: Any) -> Any:
    """Translate an `openAPIV3Schema` node into an equivalent strict JSON schema."""
    if isinstance(node, list):
        return [structural_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-validations", "x-kubernetes-list-map-keys"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: structural_to_jsonschema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_KEYS and isinstance(value, dict | list):
            out[key] = structural_to_jsonschema(value)
        else:
            out[key] = copy.deepcopy(value)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if out.pop("x-kubernetes-embedded-resource", False):
        # Embedded objects carry apiVersion/kind/metadata even when the schema omits them.
        preserve = True
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


def _object_schema(version_schema: dict[str, Any]) -> dict[str, Any]:
    schema = structural_to_jsonschema(version_schema)
    props = schema.setdefault("properties", {})
    # The API server validates metadata as ObjectMeta, not via the CRD schema; the webhook
    # rules in validation.py check name/labels, so metadata may carry any ObjectMeta field.
    props["metadata"] = {"type": "object"}
    # Status is written by controllers; rendered objects never carry it.
    props.pop("status", None)
    return {str(k): v for k, v in schema.items()}


@cache
def _load_dir(path: Path) -> tuple[CrdSchema, ...]:
    schemas: list[CrdSchema] = []
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    for file in files:
        with file.open("rb") as handle:
            doc = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loader
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            raw = version.get("schema", {}).get("openAPIV3Schema")
            if raw is None:
                continue
            schemas.append(
                CrdSchema(
                    group=spec["group"],
                    kind=spec["names"]["kind"],
                    version=version["name"],
                    source=file.name,
                    schema=_object_schema(raw),
                )
            )
    if not schemas:
        raise CrdDirError(f"no CustomResourceDefinition found in {path}")
    return tuple(schemas)


def load_crds(path: Path | None = None) -> tuple[CrdSchema, ...]:
    """Every served version of every CRD in `path` (default: `crd_dir()`); cached per path."""
    return _load_dir((path or crd_dir()).resolve())


def crd_schemas(api_version: str, kind: str, path: Path | None = None) -> list[CrdSchema]:
    """Schemas of every CRD file serving `api_version` for `kind` (empty when none does)."""
    return [s for s in load_crds(path) if s.api_version == api_version and s.kind == kind]


def known_custom_kinds(path: Path | None = None) -> set[tuple[str, str]]:
    """`(group, kind)` pairs the CRD directory defines."""
    return {(s.group, s.kind) for s in load_crds(path)}
