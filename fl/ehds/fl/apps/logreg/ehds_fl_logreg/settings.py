"""Typed reads of Flower's run config and config records (their values are untyped scalars)."""

from __future__ import annotations

from collections.abc import Mapping


def number(config: Mapping[str, object], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config key {key!r} must be a number")
    return float(value)


def text(config: Mapping[str, object], key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"config key {key!r} must be a string")
    return value
