"""Structural-schema pruning and defaulting, as the API server applies them to CRD objects.

A real server drops fields the CRD's schema does not know (unless
``x-kubernetes-preserve-unknown-fields``), drops ``null`` values of non-nullable
fields, and fills in ``default`` values. The dask operator relies on this: without it
``env: null`` reaches it and it fails with ``TypeError: 'NoneType' object is not
iterable``.
"""

from __future__ import annotations

from typing import Any


def prune_and_default(value: Any, schema: dict[str, Any] | None) -> Any:
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        if isinstance(value, dict) and schema:
            return _object(value, schema, keep_unknown=True)
        return value
    kind = schema.get("type")
    if isinstance(value, dict) and (kind == "object" or "properties" in schema
                                    or "additionalProperties" in schema):
        return _object(value, schema, keep_unknown=False)
    if isinstance(value, list) and kind == "array":
        items = schema.get("items")
        return [prune_and_default(v, items) for v in value if v is not None or _nullable(items)]
    return value


def _nullable(schema: dict[str, Any] | None) -> bool:
    return bool(schema and schema.get("nullable"))


def _object(value: dict, schema: dict[str, Any], keep_unknown: bool) -> dict:
    props: dict[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in props:
            sub = props[key]
        elif isinstance(extra, dict):
            sub = extra
        elif extra is True or keep_unknown:
            out[key] = item
            continue
        else:
            continue  # pruned
        if item is None and not _nullable(sub):
            continue
        out[key] = prune_and_default(item, sub)
    for key, sub in props.items():
        if key not in out and "default" in sub:
            out[key] = prune_and_default(sub["default"], sub)
    return out


def unknown_fields(value: Any, schema: dict[str, Any] | None, path: str = "") -> list[str]:
    """Paths in ``value`` that pruning would remove (for tests of manifests)."""
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if key not in props and not isinstance(extra, dict) and extra is not True:
                found.append(f"{path}.{key}")
            elif item is None and not _nullable(sub):
                found.append(f"{path}.{key} (null)")
            else:
                found.extend(unknown_fields(item, sub, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(unknown_fields(item, schema.get("items"), f"{path}[{i}]"))
    return found
