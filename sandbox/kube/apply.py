"""Server-side apply and field ownership (metadata.managedFields).

Representation: a field set is a set of paths; a path is a tuple of steps, each a map key
(`"spec"`) or a list element identity (`("k", '{"name":"c"}')`) for lists merged by key (see
`patch.MERGE_KEYS`). Leaves are scalars, atomic lists and empty maps; a keyed element is
itself a member (like `".": {}` in fieldsV1). Sets are stored as real FieldsV1 JSON
(`f:spec`, `k:{...}`), so clients see the usual shape.

Semantics kept from the real server:
- an apply that sets a field another manager owns to a different value conflicts (409 with
  one FieldManagerConflict cause per field naming the manager), unless `force` moves the field;
- applying the same value makes the field shared;
- fields a manager no longer applies are removed unless another manager still owns them;
- updates (PUT / non-apply PATCH) take ownership of the fields they change, silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sandbox.kube.patch import merge_key
from sandbox.kube.store import Conflict, Obj, clone, now_iso

Step = str | tuple[str, str]
Path = tuple[Step, ...]

_SYSTEM_META = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "generateName",
    }
)


def _element_id(key: str, item: dict[str, Any]) -> tuple[str, str]:
    return ("k", json.dumps({key: item[key]}, separators=(",", ":"), sort_keys=True))


def _walk(value: Any, path: Path, field: str) -> Iterator[Path]:
    if isinstance(value, dict):
        if not value and path:
            yield path
        for k, v in value.items():
            yield from _walk(v, (*path, k), k)
    elif isinstance(value, list):
        key = merge_key(field, value)
        if key is None:
            yield path
            return
        for item in value:
            element = (*path, _element_id(key, item))
            yield element
            for k, v in item.items():
                yield from _walk(v, (*element, k), k)
    else:
        yield path


def field_set(obj: Obj, *, with_status: bool = False) -> set[Path]:
    """The fields an object (or an applied configuration) sets, system metadata left out."""
    paths: set[Path] = set()
    for top, value in obj.items():
        if top in ("apiVersion", "kind") or (top == "status" and not with_status):
            continue
        if top == "metadata":
            for mk, mv in (value or {}).items():
                if mk not in _SYSTEM_META:
                    paths.update(_walk(mv, ("metadata", mk), mk))
            continue
        paths.update(_walk(value, (top,), top))
    return paths


def _lookup(obj: Any, path: Path) -> tuple[bool, Any]:
    cur = obj
    for step in path:
        if isinstance(step, tuple):
            if not isinstance(cur, list):
                return False, None
            ident = json.loads(step[1])
            ((k, v),) = ident.items()
            cur = next((i for i in cur if isinstance(i, dict) and i.get(k) == v), None)
            if cur is None:
                return False, None
        else:
            if not isinstance(cur, dict) or step not in cur:
                return False, None
            cur = cur[step]
    return True, cur


def _remove_path(obj: Any, path: Path) -> None:
    found, parent = _lookup(obj, path[:-1])
    if not found:
        return
    last = path[-1]
    if isinstance(last, tuple) and isinstance(parent, list):
        ((k, v),) = json.loads(last[1]).items()
        parent[:] = [i for i in parent if not (isinstance(i, dict) and i.get(k) == v)]
    elif isinstance(parent, dict):
        parent.pop(last, None)


def path_str(path: Path) -> str:
    out = ""
    for step in path:
        if isinstance(step, tuple):
            out += f"[{','.join(f'{k}={json.dumps(v)}' for k, v in json.loads(step[1]).items())}]"
        else:
            out += f".{step}"
    return out


# -------------------------------------------------------------------------- FieldsV1 codec


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths, key=lambda p: [str(s) for s in p]):
        node = tree
        for step in path:
            name = f"k:{step[1]}" if isinstance(step, tuple) else f"f:{step}"
            node = node.setdefault(name, {})
        if path and isinstance(path[-1], tuple):
            node.setdefault(".", {})
    return tree


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for name, sub in tree.items():
        if name == ".":
            paths.add(prefix)
            continue
        step: Step = ("k", name[2:]) if name.startswith("k:") else name[2:]
        here = (*prefix, step)
        if sub:
            paths |= from_fields_v1(sub, here)
        if not sub and not isinstance(step, tuple):
            paths.add(here)
    return paths


def managers(obj: Obj) -> list[dict[str, Any]]:
    return list((obj.get("metadata") or {}).get("managedFields") or [])


def _owned(entry: dict[str, Any]) -> set[Path]:
    return from_fields_v1(entry.get("fieldsV1") or {})


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], sub: str) -> Obj:
    entry: Obj = {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now_iso(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(paths),
    }
    if sub:
        entry["subresource"] = sub
    return entry


def _set_entries(obj: Obj, entries: list[Obj]) -> None:
    kept = [e for e in entries if e.get("fieldsV1")]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        obj.setdefault("metadata", {}).pop("managedFields", None)


# --------------------------------------------------------------------------------- merging


def _merge(live: Any, applied: Any, field: str) -> Any:
    if isinstance(applied, dict) and isinstance(live, dict):
        out = clone(live)
        for k, v in applied.items():
            out[k] = _merge(live.get(k), v, k)
        return out
    if isinstance(applied, list) and isinstance(live, list):
        key = merge_key(field, applied)
        if key is None or merge_key(field, live) != key:
            return clone(applied)
        out_list = [clone(i) for i in live]
        for item in applied:
            idx = next((n for n, i in enumerate(out_list) if i.get(key) == item[key]), None)
            if idx is None:
                out_list.append(clone(item))
            else:
                out_list[idx] = _merge(out_list[idx], item, field)
        return out_list
    return clone(applied)


def server_side_apply(
    live: Obj | None,
    applied: Obj,
    *,
    manager: str,
    force: bool,
    api_version: str,
    sub: str = "",
) -> Obj:
    """The object that results from `manager` applying `applied` over `live` (None: create).

    Raises Conflict (409) naming the other managers and fields unless `force`.
    """
    applied_set = field_set(applied, with_status=sub == "status")
    if live is None:
        result = clone(applied)
        _set_entries(result, [_entry(manager, "Apply", api_version, applied_set, sub)])
        return result
    entries = managers(live)
    conflicts: list[tuple[str, Path]] = []
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            continue
        for path in _owned(entry) & applied_set:
            # A keyed element is compared through its fields, not as a whole.
            if isinstance(path[-1], tuple):
                continue
            if _lookup(live, path) != _lookup(applied, path):
                conflicts.append((str(entry.get("manager")), path))
    if conflicts and not force:
        raise apply_conflict(conflicts, api_version)
    moved = {p for _, p in conflicts}
    new_entries: list[Obj] = []
    previous: set[Path] = set()
    for entry in entries:
        owned = _owned(entry)
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            previous = owned
            continue
        if moved & owned:
            entry = {**entry, "fieldsV1": to_fields_v1(owned - moved)}
        new_entries.append(entry)
    result = _merge(live, applied, "")
    others: set[Path] = set()
    for entry in new_entries:
        others |= _owned(entry)
    kept = others | applied_set
    # Shortest first: a dropped list element goes whole; its key field is never removed alone.
    for path in sorted(previous - applied_set, key=len):
        if len(path) >= 2 and isinstance(path[-2], tuple) and path[-1] in json.loads(path[-2][1]):
            continue
        if not any(o[: len(path)] == path for o in kept):
            _remove_path(result, path)
    new_entries.append(_entry(manager, "Apply", api_version, applied_set, sub))
    _set_entries(result, new_entries)
    return result


def apply_conflict(conflicts: list[tuple[str, Path]], api_version: str) -> Conflict:
    lines = [f'conflict with "{m}" using {api_version}: {path_str(p)}' for m, p in conflicts]
    if len(lines) == 1:
        message = f"Apply failed with 1 conflict: {lines[0]}"
    else:
        message = f"Apply failed with {len(lines)} conflicts: " + "\n".join(lines)
    err = Conflict(message)
    err.causes = [
        {"reason": "FieldManagerConflict", "message": line, "field": path_str(p)}
        for line, (_, p) in zip(lines, conflicts, strict=True)
    ]
    return err


def record_update(
    old: Obj | None, new: Obj, *, manager: str, api_version: str, sub: str = ""
) -> None:
    """Give `manager` (operation Update) the fields that differ between `old` and `new`."""
    with_status = sub == "status"
    new_set = field_set(new, with_status=with_status)
    if old is None:
        changed = new_set
    else:
        changed = {
            p
            for p in new_set
            if (not _lookup(old, p)[0])
            or (not isinstance(p[-1], tuple) and _lookup(old, p) != _lookup(new, p))
        }
    entries = managers(old) if old is not None else managers(new)
    out: list[Obj] = []
    mine: set[Path] = set()
    for entry in entries:
        owned = _owned(entry) & new_set if (entry.get("subresource", "") == sub) else _owned(entry)
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Update"
            and (entry.get("subresource", "") == sub)
        ):
            mine = owned
            continue
        if entry.get("subresource", "") == sub:
            owned -= changed
        out.append({**entry, "fieldsV1": to_fields_v1(owned)})
    if changed or mine:
        out.append(_entry(manager, "Update", api_version, mine | changed, sub))
    _set_entries(new, out)
