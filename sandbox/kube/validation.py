"""Admission for the sandbox API server: defaulting, unknown-field handling, schema validation.

- Built-in kinds are validated against the strict JSON schemas shipped by `kubernetes-validate`
  for the served Kubernetes minor version (loaded once per kind, all errors collected).
- Custom resources are validated against the openAPIV3Schema of the CRD version they are
  written in (translated to JSON Schema: `nullable`, `x-kubernetes-int-or-string`), and get
  the schema's `default`s applied, like the real structural-schema defaulting.
- Unknown fields follow the real server's `fieldValidation` query parameter: `Strict` rejects
  them (400 BadRequest, "strict decoding error: unknown field ..."), `Warn` (the server default
  since 1.27, and what the python client gets since it sends nothing) drops them and returns a
  warning, `Ignore` drops them silently. Subtrees marked `x-kubernetes-preserve-unknown-fields`
  keep everything.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
from collections.abc import Iterable
from importlib import resources
from typing import Any

import jsonschema
import referencing

from sandbox.kube.store import BadRequest, Invalid, Obj, ResourceType, clone

KUBE_MINOR = "1.30"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Names that must be DNS-1035 labels (the real server is stricter for these).
_DNS_LABEL_KINDS = frozenset({"Service", "Namespace"})
_SERVICE_IPS = iter(range(10 * 2**24 + 96 * 2**16 + 10, 10 * 2**24 + 97 * 2**16))


def _path_str(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _cause(err: jsonschema.ValidationError) -> tuple[str, str]:
    """A jsonschema error worded like the apiserver's field errors."""
    path = _path_str(err.absolute_path)
    value = err.instance
    if err.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", err.message)
        name = missing.group(1) if missing else "?"
        return (f"{path}.{name}" if path else name, "Required value")
    if err.validator == "type":
        expected = err.validator_value
        if isinstance(expected, list):
            expected = next((t for t in expected if t != "null"), expected[0])
        return (
            path,
            f"Invalid value: {_shown(value)}: {path} in body must be of type {expected}: "
            f'"{_type_name(value)}"',
        )
    if err.validator == "enum":
        allowed = ", ".join(_shown(v) for v in err.validator_value if v is not None)
        return (path, f"Unsupported value: {_shown(value)}: supported values: {allowed}")
    if err.validator in ("minimum", "maximum"):
        word = "greater than or equal to" if err.validator == "minimum" else "less than or equal to"
        return (
            path,
            f"Invalid value: {_shown(value)}: {path} in body should be {word} "
            f"{err.validator_value}",
        )
    return (path, f"Invalid value: {_shown(value)}: {err.message}")


# ------------------------------------------------------------------ OpenAPI v3 -> JSON Schema


def openapi_to_jsonschema(schema: Any, *, root: bool = True) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: openapi_to_jsonschema(v, root=False) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value, root=False)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(v, root=False) for v in value]
        elif key in ("nullable", "x-kubernetes-validations", "default", "format", "description"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if root:
        # ObjectMeta is validated generically, not by the CRD (its schema says only "object").
        out.setdefault("properties", {}).pop("metadata", None)
    return out


def apply_schema_defaults(schema: Any, value: Any) -> None:
    """Structural defaulting: fill `default`s of absent properties, recursively."""
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and isinstance(sub, dict) and "default" in sub:
                value[name] = clone(sub["default"])
            if name in value:
                apply_schema_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in (schema.get("properties") or {}):
                    apply_schema_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_schema_defaults(schema["items"], item)


def prune_unknown(schema: Any, value: Any, path: tuple[Any, ...] = ()) -> list[str]:
    """Remove fields the structural schema does not declare; returns their paths."""
    dropped: list[str] = []
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return dropped
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and extra is None:
            return dropped
        for key in list(value):
            if not path and key in ("apiVersion", "kind", "metadata"):
                continue
            if props is not None and key in props:
                dropped += prune_unknown(props[key], value[key], (*path, key))
            elif isinstance(extra, dict):
                dropped += prune_unknown(extra, value[key], (*path, key))
            elif extra is True:
                continue
            else:
                dropped.append(_path_str((*path, key)))
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            dropped += prune_unknown(schema["items"], item, (*path, i))
    return dropped


# ------------------------------------------------------------------------ built-in defaults


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _canonical_quantities(values: object) -> None:
    """Numbers in a quantity map become the strings the API server serialises them as.

    A real server accepts `nvidia.com/gpu: 8` and hands back `"8"` (and `0.5` CPU as `"500m"`);
    the typed clients read these maps as str -> str. Custom resources keep what was sent.
    """
    if not isinstance(values, dict):
        return
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if float(value).is_integer():
            values[name] = str(int(value))
        else:
            values[name] = f"{round(value * 1000)}m"


def _canonical_resources(resources: object) -> None:
    if isinstance(resources, dict):
        for field in ("limits", "requests"):
            _canonical_quantities(resources.get(field))


def _default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            if isinstance(c, dict):
                c.setdefault("imagePullPolicy", _image_pull_policy(str(c.get("image", ""))))
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                _canonical_resources(c.setdefault("resources", {}))
                for port in c.get("ports") or []:
                    if isinstance(port, dict):
                        port.setdefault("protocol", "TCP")


def _default_template(spec: Obj) -> None:
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        _default_pod_spec(template["spec"])


def default_builtin(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    kind = rt.kind
    spec = obj.get("spec")
    if kind == "Pod" and isinstance(spec, dict):
        _default_pod_spec(spec)
        if old is None:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif kind in ("Deployment", "ReplicaSet", "StatefulSet") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _default_template(spec)
        if kind == "Deployment":
            spec.setdefault(
                "strategy",
                {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
            )
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        elif kind == "StatefulSet":
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault(
                "updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
            )
            spec.setdefault("revisionHistoryLimit", 10)
    elif kind == "Service" and isinstance(spec, dict):
        _default_service(spec, old)
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        _canonical_resources(spec.get("resources"))
        spec.setdefault("volumeMode", "Filesystem")
        if old is None:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif kind == "PersistentVolume" and isinstance(spec, dict):
        _canonical_quantities(spec.get("capacity"))
        spec.setdefault("volumeMode", "Filesystem")
        spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
        if old is None:
            obj.setdefault("status", {}).setdefault("phase", "Pending")


def _default_service(spec: Obj, old: Obj | None) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    old_spec = (old or {}).get("spec") or {}
    if "clusterIP" not in spec and old_spec.get("clusterIP"):
        spec["clusterIP"] = old_spec["clusterIP"]
        spec["clusterIPs"] = old_spec.get("clusterIPs", [old_spec["clusterIP"]])
    if "clusterIP" not in spec:
        n = next(_SERVICE_IPS)
        spec["clusterIP"] = ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    if spec["clusterIP"] != "None":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


# ------------------------------------------------------------------------------ admission


def _validate_meta(rt: ResourceType, obj: Obj) -> list[tuple[str, str]]:
    meta = obj.get("metadata") or {}
    causes: list[tuple[str, str]] = []
    name = str(meta.get("name", ""))
    if rt.kind != "Event":
        ok = _NAME_RE.match(name) and len(name) <= 253
        if rt.kind in _DNS_LABEL_KINDS:
            ok = ok and len(name) <= 63 and "." not in name and name[:1].isalpha()
        if not ok:
            causes.append(
                (
                    "metadata.name",
                    f"Invalid value: {_shown(name)}: a lowercase RFC 1123 "
                    f"{'label' if rt.kind in _DNS_LABEL_KINDS else 'subdomain'} must consist of "
                    "lower case alphanumeric characters, '-' or '.', and must start and end with "
                    "an alphanumeric character",
                )
            )
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE_RE.match(value):
            causes.append(
                (
                    "metadata.labels",
                    f"Invalid value: {_shown(value)}: a valid label must be an empty string or "
                    "consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                    f"with an alphanumeric character (key {key!r}, at most 63 characters)",
                )
            )
    return causes


def _unknown_field_error(rt: ResourceType, paths: list[str]) -> BadRequest:
    listed = ", ".join(f'unknown field "{p}"' for p in paths)
    return BadRequest(
        f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
        f"strict decoding error: {listed}",
        kind=rt.kind,
        group=rt.group,
    )


def _without_crd_schemas(crd: Obj) -> Obj:
    """A CRD with its version schemas reduced to a stub.

    Checking the (recursive) JSONSchemaProps of an upstream CRD against the JSON schema takes
    seconds; the sandbox only needs the CRD's outer shape checked.
    """
    slim = copy.copy(crd)
    spec = dict(slim.get("spec") or {})
    versions = []
    for version in spec.get("versions") or []:
        if isinstance(version, dict) and "schema" in version:
            version = {**version, "schema": {"openAPIV3Schema": {"type": "object"}}}
        versions.append(version)
    spec["versions"] = versions
    slim["spec"] = spec
    return slim


class SchemaValidator:
    """The store's admission hook (see `Store.validator`)."""

    def __init__(self, kube_minor: str = KUBE_MINOR) -> None:
        self._dir = f"v{kube_minor}.0-local-strict"
        self._lock = threading.Lock()
        self._builtin: dict[tuple[str, str], jsonschema.protocols.Validator | None] = {}
        self._custom: dict[int, tuple[Any, jsonschema.protocols.Validator]] = {}
        self._registry: referencing.Registry[Any] | None = None

    def _schema_file(self, name: str) -> Any:
        ref = resources.files("kubernetes_validate").joinpath(
            f"kubernetes-json-schema/{self._dir}/{name}"
        )
        return json.loads(ref.read_text())

    def _builtin_validator(self, rt: ResourceType) -> jsonschema.protocols.Validator | None:
        key = (rt.api_version, rt.kind)
        with self._lock:
            if key in self._builtin:
                return self._builtin[key]
            if self._registry is None:
                defs = referencing.Resource.from_contents(self._schema_file("_definitions.json"))
                self._registry = defs @ referencing.Registry()
            group_short = rt.group.split(".", 1)[0]
            suffix = f"-{group_short}-{rt.version}" if rt.group else f"-{rt.version}"
            try:
                schema = self._schema_file(f"{rt.kind.lower()}{suffix}.json")
            except FileNotFoundError:
                self._builtin[key] = None
                return None
            registry = referencing.Resource.from_contents(schema) @ self._registry
            validator = jsonschema.Draft202012Validator(schema, registry=registry)
            self._builtin[key] = validator
            return validator

    def _custom_validator(self, schema: Obj) -> jsonschema.protocols.Validator:
        with self._lock:
            hit = self._custom.get(id(schema))
            if hit is None or hit[0] is not schema:
                validator = jsonschema.Draft202012Validator(openapi_to_jsonschema(schema))
                hit = (schema, validator)
                self._custom[id(schema)] = hit
            return hit[1]

    def admit(
        self,
        rt: ResourceType,
        obj: Obj,
        old: Obj | None,
        *,
        field_validation: str,
        schema: Obj | None,
    ) -> list[str]:
        warnings: list[str] = []
        causes = _validate_meta(rt, obj)
        if schema is not None:
            apply_schema_defaults(schema, obj)
            probe = clone(obj)
            dropped = prune_unknown(schema, probe)
            if dropped:
                if field_validation == "Strict":
                    raise _unknown_field_error(rt, dropped)
                prune_unknown(schema, obj)
                if field_validation == "Warn":
                    warnings += [f'unknown field "{p}"' for p in dropped]
            validator = self._custom_validator(schema)
        else:
            default_builtin(rt, obj, old)
            maybe = self._builtin_validator(rt)
            if maybe is None:
                if causes:
                    raise Invalid(
                        rt.kind, str(obj["metadata"].get("name", "")), causes, group=rt.group
                    )
                return warnings
            validator = maybe
            probe = _without_crd_schemas(obj) if rt.kind == "CustomResourceDefinition" else obj
            unknown = [
                (e.absolute_path, sorted(set(e.instance) - set(e.schema.get("properties", {}))))
                for e in validator.iter_errors(probe)
                if e.validator == "additionalProperties" and isinstance(e.instance, dict)
            ]
            if unknown:
                paths = [_path_str((*p, k)) for p, keys in unknown for k in keys]
                if field_validation == "Strict":
                    raise _unknown_field_error(rt, paths)
                for p, keys in unknown:
                    holder: Any = obj
                    for part in p:
                        holder = holder[part]
                    for k in keys:
                        holder.pop(k, None)
                if field_validation == "Warn":
                    warnings += [f'unknown field "{p}"' for p in paths]
        target = _without_crd_schemas(obj) if rt.kind == "CustomResourceDefinition" else obj
        errors = sorted(
            validator.iter_errors(target), key=lambda e: list(map(str, e.absolute_path))
        )
        causes += [_cause(e) for e in errors if e.validator != "additionalProperties"]
        if causes:
            raise Invalid(rt.kind, str(obj["metadata"].get("name", "")), causes, group=rt.group)
        return warnings
