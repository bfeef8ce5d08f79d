"""The three patch formats of the Kubernetes API: JSON merge, JSON patch, strategic merge."""

from __future__ import annotations

from typing import Any

from sandbox.kube.store import BadRequest, Conflict, clone

# Merge keys of the lists strategic merge patch (and server-side apply) merge element-wise.
# Lists not named here are atomic: a patch replaces them whole. Keys are tried in order and the
# first one present in an element is used (container ports vs service ports).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
    "finalizers": (),  # a set of scalars: merged by value
}


def merge_key(field: str, items: list[Any]) -> str | None:
    """The key the elements of list `field` are merged by, None for an atomic list."""
    candidates = MERGE_KEYS.get(field)
    if not candidates or not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in candidates:
        if all(key in item for item in items):
            return key
    return None


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge: like a merge patch, but lists with a merge key merge per element.

    Supports the `$patch: replace|delete` directives on maps and list elements and
    `$retainKeys`-free patches, which is what clients send in practice.
    """
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: clone(v) for k, v in patch.items() if k != "$patch"}
        if directive == "delete":
            return None
        result = clone(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
                continue
            merged = strategic_merge_patch(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        return result
    if isinstance(patch, list):
        if field == "finalizers" and isinstance(target, list):
            return list(dict.fromkeys([*target, *patch]))
        key = merge_key(field, [p for p in patch if not _is_directive(p)])
        if key is None or not isinstance(target, list):
            return [clone(p) for p in patch if not _is_directive(p)]
        result_list = [clone(t) for t in target]
        for item in patch:
            if item.get("$patch") == "replace" and len(item) == 1:
                result_list = []
                continue
            index = next(
                (
                    i
                    for i, t in enumerate(result_list)
                    if isinstance(t, dict) and t.get(key) == item.get(key)
                ),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    del result_list[index]
                continue
            if index is None:
                result_list.append(strategic_merge_patch({}, item))
            else:
                result_list[index] = strategic_merge_patch(result_list[index], item)
        return result_list
    return clone(patch)


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise BadRequest(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str], op: str) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise BadRequest(
                f"the server rejected our request due to an error in our request: "
                f"jsonpatch {op} operation does not apply: doc is missing path: "
                f"/{'/'.join(parts)}"
            )
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) on a copy of `doc`."""
    if not isinstance(ops, list):
        raise BadRequest("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = clone(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"invalid JSON patch operation: {op!r}")
        name = op["op"]
        parts = _pointer(op["path"])
        if name == "test":
            if _container(result, parts, name) != op.get("value"):
                raise Conflict(
                    "the server rejected our request due to an error in our request: "
                    f"testing value {op['path']} failed"
                )
            continue
        if name in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = clone(_container(result, src, name))
            if name == "move":
                result = _remove(result, src)
            result = _add(result, parts, value)
        elif name == "add":
            result = _add(result, parts, clone(op.get("value")))
        elif name == "remove":
            result = _remove(result, parts)
        elif name == "replace":
            _container(result, parts, name)
            result = _remove(result, parts)
            result = _add(result, parts, clone(op.get("value")))
        else:
            raise BadRequest(f"Unexpected kind: {name}")
    return result


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _container(doc, parts[:-1], "add")
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise BadRequest(f"add operation does not apply: index {last} out of range")
    else:
        raise BadRequest("add operation does not apply: parent is not a container")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _container(doc, parts[:-1], "remove")
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise BadRequest(
            f"jsonpatch remove operation does not apply: doc is missing key: /{'/'.join(parts)}"
        )
    return doc
