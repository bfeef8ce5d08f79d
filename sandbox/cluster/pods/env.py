"""A container's environment and command line as the kubelet makes them.

``$(VAR)`` expansion follows k8s.io/kubernetes ``third_party/forked/golang/expansion/expand.go``:
``$(NAME)`` becomes the variable's value when it is defined and stays as written when it is not,
``$$`` is a literal ``$``, an unclosed ``$(`` and a ``$`` before any other character stay as
written. The environment is built as ``makeEnvironmentVariables`` in
``pkg/kubelet/kubelet_pods.go`` builds it: variables in their order, each ``value`` expanded
against the ones defined before it; ``valueFrom`` from the downward API (``fieldRef``), Secrets
and ConfigMaps. Command and args are then expanded against the whole environment
(``ExpandContainerCommandAndArgs``, ``pkg/kubelet/container/helpers.go``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ContainerConfigError(ValueError):
    """A reference the container's environment needs cannot be resolved; the kubelet reports
    it as ``CreateContainerConfigError`` and retries."""


def expand(text: str, mapping: Mapping[str, str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                closer = rest.find(")", 1)
                if closer == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:closer]
                    out.append(mapping.get(name, f"$({name})"))
                    advance = closer + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# metadata.labels['key'] / metadata.annotations['key'] (pkg/apis/core/validation allows these
# subscripts for env; fieldpath.ExtractFieldPathAsString reads them).
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


@dataclass(frozen=True)
class PodFacts:
    """What the downward API reads from the pod and the node it runs on."""

    pod: dict[str, Any]
    pod_ip: str
    host_ip: str


def field_value(facts: PodFacts, path: str) -> str:
    """``fieldRef.fieldPath`` as ``podFieldSelectorRuntimeValue`` (kubelet_pods.go) resolves it."""
    meta = facts.pod["metadata"]
    spec = facts.pod["spec"]
    match = _SUBSCRIPT.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: str(meta["name"]),
        "metadata.namespace": lambda: str(meta["namespace"]),
        "metadata.uid": lambda: str(meta["uid"]),
        "spec.nodeName": lambda: str(spec.get("nodeName", "")),
        "spec.serviceAccountName": lambda: str(spec.get("serviceAccountName", "")),
        "status.hostIP": lambda: facts.host_ip,
        "status.hostIPs": lambda: facts.host_ip,
        "status.podIP": lambda: facts.pod_ip,
        "status.podIPs": lambda: facts.pod_ip,
    }
    if path not in simple:
        raise ContainerConfigError(f"unsupported fieldRef.fieldPath {path!r}")
    return simple[path]()


# How the runner reads a Secret's or ConfigMap's data with the node's identity:
# (namespace, name) -> data, or None when it does not exist.
ObjectReader = Callable[[str, str], "dict[str, str] | None"]


@dataclass(frozen=True)
class Sources:
    secrets: ObjectReader
    config_maps: ObjectReader


def _key_ref(
    ref: dict[str, Any], kind: str, read: ObjectReader, namespace: str, decode: bool
) -> str | None:
    name = str(ref.get("name", ""))
    key = str(ref["key"])
    optional = bool(ref.get("optional", False))
    data = read(namespace, name)
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    value = data[key]
    return base64.b64decode(value).decode() if decode else value


def container_env(
    container: dict[str, Any], facts: PodFacts, sources: Sources
) -> list[tuple[str, str]]:
    """The container's variables in order, each resolved as the kubelet resolves it."""
    namespace = str(facts.pod["metadata"]["namespace"])
    defined: dict[str, str] = {}
    result: list[tuple[str, str]] = []
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        if "configMapRef" in source:
            ref, read, kind, decode = (
                source["configMapRef"],
                sources.config_maps,
                "configmap",
                False,
            )
        else:
            ref, read, kind, decode = source["secretRef"], sources.secrets, "secret", True
        data = read(namespace, str(ref["name"]))
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        for key, raw in data.items():
            decoded = base64.b64decode(raw).decode() if decode else raw
            defined[prefix + key] = decoded
            result.append((prefix + key, decoded))
    for var in container.get("env") or []:
        name = str(var["name"])
        value: str | None = None
        if "valueFrom" not in var:
            raw_value = str(var.get("value", ""))
            value = expand(raw_value, defined) if raw_value else raw_value
        else:
            source = var["valueFrom"]
            if "fieldRef" in source:
                value = field_value(facts, str(source["fieldRef"]["fieldPath"]))
            elif "secretKeyRef" in source:
                value = _key_ref(source["secretKeyRef"], "secret", sources.secrets, namespace, True)
            elif "configMapKeyRef" in source:
                value = _key_ref(
                    source["configMapKeyRef"], "configmap", sources.config_maps, namespace, False
                )
            else:
                raise ContainerConfigError(
                    f"env {name}: unsupported valueFrom {sorted(source)} (resourceFieldRef is "
                    "not implemented by this node agent)"
                )
            if value is None:
                continue
        defined[name] = value
        result.append((name, value))
    return result


def command_line(
    container: dict[str, Any],
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
    env: Mapping[str, str],
) -> list[str]:
    """The argv the runtime starts: the pod's command/args over the image's ENTRYPOINT/CMD
    (a pod ``command`` drops the image's CMD), then ``$(VAR)``-expanded."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    command = [expand(c, env) for c in command]
    args = [expand(a, env) for a in args]
    if command:
        return command + args
    return list(entrypoint) + (args if args else list(cmd))
