"""A container's environment and command line as the kubelet makes them.

``$(VAR)`` expansion follows k8s.io/kubernetes ``third_party/forked/golang/expansion/expand.go``:
``$(NAME)`` becomes the variable's value when it is defined and stays as written when it is not,
``$$`` is a literal ``$``, an unclosed ``$(`` and a ``$`` before any other character stay as
written. The environment is built as ``makeEnvironmentVariables`` in
``pkg/kubelet/kubelet_pods.go`` builds it: variables in their order, each ``value`` expanded
against the ones defined before it; ``valueFrom`` from the downward API (``fieldRef``), Secrets
and ConfigMaps, ``resourceFieldRef`` (:func:`resource_value`), and the Services' variables
(:func:`service_env`), which ``$(VAR)`` in a value also resolves against and which come after the
container's own. Command and args are then expanded against the whole environment
(``ExpandContainerCommandAndArgs``, ``pkg/kubelet/container/helpers.go``).
Cited sources are k8s.io/kubernetes v1.36.3.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity


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


def _node_unknown() -> Mapping[str, str]:
    raise ContainerConfigError("failed to find node object, expected a node")


@dataclass(frozen=True)
class Sources:
    secrets: ObjectReader
    config_maps: ObjectReader
    # The node's status.allocatable, read when a resourceFieldRef needs it (the kubelet reads
    # its Node, kubelet_resources.go defaultPodLimitsForDownwardAPI).
    allocatable: Callable[[], Mapping[str, str]] = _node_unknown


# pkg/kubelet/kubelet_pods.go: the services whose variables every pod gets, from "default".
_MASTER_SERVICES = ("kubernetes",)


def _env_name(name: str) -> str:
    # envvars.go makeEnvVariableName.
    return name.replace("-", "_").upper()


def service_env(
    services: list[dict[str, Any]], namespace: str, enable_service_links: bool
) -> dict[str, str]:
    """The Services' variables a container of a pod in ``namespace`` starts with, as
    ``getServiceEnvVarMap`` (pkg/kubelet/kubelet_pods.go) picks the Services and
    ``FromServices`` (pkg/kubelet/envvars/envvars.go) names them: ``kubernetes`` from
    ``default`` always, every Service of the pod's namespace when ``enableServiceLinks``
    (which wins over ``default``'s of the same name); no ClusterIP or ``None``: none."""
    chosen: dict[str, dict[str, Any]] = {}
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        if spec.get("clusterIP") in (None, "", "None"):
            continue
        name = str(meta["name"])
        if meta["namespace"] == "default" and name in _MASTER_SERVICES:
            chosen.setdefault(name, service)
        elif meta["namespace"] == namespace and enable_service_links:
            chosen[name] = service
    result: dict[str, str] = {}
    # Go walks a map here (no order); sorted so that a clash of names resolves the same way
    # on every start.
    for name in sorted(chosen):
        spec = chosen[name]["spec"]
        ip = str(spec["clusterIP"])
        ports = spec.get("ports") or []
        prefix = _env_name(name)
        result[f"{prefix}_SERVICE_HOST"] = ip
        result[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                result[f"{prefix}_SERVICE_PORT_{_env_name(str(port['name']))}"] = str(port["port"])
        # Docker-link variables (makeLinkVariables); net.JoinHostPort brackets an IPv6 address.
        host = f"[{ip}]" if ":" in ip else ip
        for index, port in enumerate(ports):
            proto = str(port.get("protocol") or "TCP")
            url = f"{proto.lower()}://{host}:{port['port']}"
            if index == 0:
                result[f"{prefix}_PORT"] = url
            port_prefix = f"{prefix}_PORT_{port['port']}_{proto.upper()}"
            result[port_prefix] = url
            result[f"{port_prefix}_PROTO"] = proto.lower()
            result[f"{port_prefix}_PORT"] = str(port["port"])
            result[f"{port_prefix}_ADDR"] = ip
    return result


# The resources the kubelet fills from the node's allocatable when a container sets no limit
# (pkg/api/v1/resource/helpers.go MergeContainerResourceLimits).
_DEFAULTED_LIMITS = ("cpu", "memory", "ephemeral-storage")


def _find_container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if container["name"] == name:
            return dict(container)
    raise ContainerConfigError(f"container {name} not found")


def resource_value(
    ref: dict[str, Any],
    pod: dict[str, Any],
    container: dict[str, Any],
    allocatable: Mapping[str, str],
) -> str:
    """``resourceFieldRef`` as the kubelet resolves it (kubelet_pods.go
    containerResourceRuntimeValue over kubelet_resources.go defaultPodLimitsForDownwardAPI,
    pkg/api/v1/resource/helpers.go ExtractContainerResourceValue): a limit the container does
    not set (or sets to zero) is the node's allocatable; the value divided by ``divisor``
    (absent or zero: 1), rounded up; cpu counted in millicores first."""
    target = ref.get("containerName")
    if target:
        # findContainerInPod: the pod's containers were defaulted, its init containers not.
        found = _find_container(pod, str(target))
        is_init = all(c["name"] != target for c in pod["spec"].get("containers") or [])
        chosen, default_limits = found, not is_init
    else:
        chosen, default_limits = container, True
    resources = chosen.get("resources") or {}
    limits = dict(resources.get("limits") or {})
    if default_limits:
        for name in _DEFAULTED_LIMITS:
            if (name not in limits or parse_quantity(limits[name]) == 0) and name in allocatable:
                limits[name] = allocatable[name]
    values = {"limits": limits, "requests": dict(resources.get("requests") or {})}
    field_name = str(ref["resource"])
    kind, _, resource = field_name.partition(".")
    if kind not in values or not (
        resource in _DEFAULTED_LIMITS or resource.startswith("hugepages-")
    ):
        raise ContainerConfigError(f"unsupported container resource : {field_name}")
    raw_divisor = ref.get("divisor")
    divisor = parse_quantity(raw_divisor) if raw_divisor not in (None, "") else 0
    if divisor == 0:
        divisor = parse_quantity("1")
    quantity = parse_quantity(values[kind].get(resource, "0"))
    if resource == "cpu":
        # Quantity.MilliValue rounds up; the division is float64 in Go, as here.
        numerator, denominator = math.ceil(quantity * 1000), math.ceil(divisor * 1000)
    else:
        numerator, denominator = math.ceil(quantity), math.ceil(divisor)
    return str(math.ceil(float(numerator) / float(denominator)))


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
    container: dict[str, Any],
    facts: PodFacts,
    sources: Sources,
    services: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The container's variables in order, each resolved as the kubelet resolves it, then the
    Services' variables (:func:`service_env`) it does not define itself."""
    service_vars: Mapping[str, str] = services or {}
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
            # expansion.MappingFuncFor(tmpEnv, serviceEnv): the container's own first.
            value = expand(raw_value, {**service_vars, **defined}) if raw_value else raw_value
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
            elif "resourceFieldRef" in source:
                value = resource_value(
                    source["resourceFieldRef"], facts.pod, container, sources.allocatable()
                )
            else:
                raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
            if value is None:
                continue
        defined[name] = value
        result.append((name, value))
    result.extend((key, value) for key, value in service_vars.items() if key not in defined)
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
