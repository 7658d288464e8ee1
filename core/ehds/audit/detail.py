"""What an audit entry's ``detail`` may hold: small identifiers, states, codes and versions.

The audit trail is kept for years, exported to auditors and anchored in other parties' chains:
it must never become a side channel for row-level data or a dump of a result. So ``detail`` is
restricted to JSON scalars and small containers, with caps on nesting, item count and string
length; a blob (a base64 result, a parameter document) is recorded as a digest instead (the
entry's ``digest`` field). The same rules apply when an entry is written and when one is read
back, so a chain that verifies here can always be re-checked by this code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from ehds.core.errors import InputError

MAX_DEPTH: Final = 4
"""Containers inside ``detail`` (``detail`` itself not counted) may nest this deep."""

MAX_ITEMS: Final = 1000
"""Values (scalars and containers, keys not counted) in all of ``detail``."""

MAX_STRING: Final = 1000
"""Characters in one string (a key or a value)."""

MAX_SAFE_INTEGER: Final = 2**53 - 1
"""RFC 8785 serialises numbers as IEEE doubles: larger integers would not round-trip."""


class AuditFormatError(InputError):
    """An audit entry (or a field of one) that does not follow the format; names the field."""


def check_detail(detail: Mapping[str, Any], field: str = "detail") -> dict[str, Any]:
    """A plain-``dict`` copy of ``detail``, or :class:`AuditFormatError` naming the bad path."""
    if not isinstance(detail, Mapping):
        raise AuditFormatError(f"{field}: must be a JSON object, not {type(detail).__name__}")
    budget = [MAX_ITEMS]
    return _object(detail, field, 0, budget)


def _object(value: Mapping[Any, Any], path: str, depth: int, budget: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise AuditFormatError(f"{path}: keys must be strings, not {type(key).__name__}")
        if len(key) > MAX_STRING:
            raise AuditFormatError(f"{path}: a key is longer than {MAX_STRING} characters")
        result[key] = _value(item, f"{path}.{key}", depth, budget)
    return result


def _value(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise AuditFormatError(f"{path}: detail holds more than {MAX_ITEMS} values")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise AuditFormatError(f"{path}: integer outside ±(2**53 - 1)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditFormatError(f"{path}: not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise AuditFormatError(
                f"{path}: string longer than {MAX_STRING} characters "
                "(record a digest of large data, not the data)"
            )
        return value
    if isinstance(value, Mapping | list | tuple):
        if depth >= MAX_DEPTH:
            raise AuditFormatError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            return _object(value, path, depth + 1, budget)
        return [_value(item, f"{path}[{i}]", depth + 1, budget) for i, item in enumerate(value)]
    raise AuditFormatError(
        f"{path}: {type(value).__name__} is not allowed "
        "(only str, int, float, bool, None, lists and objects)"
    )
