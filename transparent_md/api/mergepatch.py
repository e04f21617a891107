"""JSON merge patch (RFC 7396): how PATCH changes a record.

A patch is a JSON object whose members replace the target's; `null` removes a member
and a nested object is merged recursively. Anything but an object replaces the target
whole (so a list is replaced, never merged).
"""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """The result of applying `patch` to `target` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


__all__ = ["merge_patch"]
