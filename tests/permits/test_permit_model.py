"""`Permit`: the rules that make a permit well-formed, and what it covers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ehds.permits import Permit, PermitFormatError, format_time, parse_time


def _changed(permit: Permit, **changes: Any) -> Permit:
    return dataclasses.replace(permit, **changes)


def test_lists_become_tuples_and_times_utc(permit: Permit) -> None:
    helsinki = timezone(timedelta(hours=2))
    changed = _changed(
        permit,
        holders=["alice"],
        valid_from=datetime(2026, 11, 25, 2, 0, tzinfo=helsinki),
    )
    assert changed.holders == ("alice",)
    assert changed.valid_from == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    assert changed.valid_from.tzinfo is UTC


def test_coverage_and_validity(permit: Permit) -> None:
    assert permit.held_by("alice")
    assert not permit.held_by("carol")
    assert permit.covers_node("node-fi")
    assert not permit.covers_node("node-dk")
    assert permit.covers_analysis("incidence")
    assert not permit.covers_analysis("prevalence")
    assert permit.valid_at(permit.valid_from)  # the start is included
    assert not permit.valid_at(permit.valid_until)  # the end is not
    assert not permit.valid_at(permit.valid_from - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        permit.valid_at(datetime(2026, 12, 1))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": ""}, "permit.id"),
        ({"id": "-starts-with-dash"}, "permit.id"),
        ({"id": "x" * 101}, "permit.id"),
        ({"issuer": "FI HDAB"}, "permit.issuer"),
        ({"holders": ()}, "permit.holders"),
        ({"holders": ("alice", "Alice")}, "permit.holders[1]"),
        ({"holders": ("alice", "alice")}, "permit.holders[1]"),
        ({"holders": "alice"}, "permit.holders"),
        ({"nodes": ("node_fr",)}, "permit.nodes[0]"),
        ({"analyses": ("counts@1.0.0",)}, "permit.analyses[0]"),
        ({"analyses": ()}, "permit.analyses"),
        ({"purpose": "  "}, "permit.purpose"),
        ({"purpose": "x" * 4001}, "permit.purpose"),
        ({"purpose": "a\rb"}, "permit.purpose"),
        ({"valid_from": datetime(2026, 11, 25)}, "permit.valid_from"),
        ({"issued_at": "2026-11-25T00:00:00Z"}, "permit.issued_at"),
        ({"valid_until": datetime(2026, 11, 25, tzinfo=UTC)}, "permit.valid_until"),
    ],
)
def test_invalid_permits_name_the_field(
    permit: Permit, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(PermitFormatError) as caught:
        _changed(permit, **changes)
    assert str(caught.value).startswith(f"{field}:")


def test_errors_never_echo_the_value(permit: Permit) -> None:
    with pytest.raises(PermitFormatError) as caught:
        _changed(permit, holders=("alice", "<script>evil</script>"))
    assert "evil" not in str(caught.value)


def test_json_round_trip(permit: Permit) -> None:
    data = permit.to_json()
    assert data["valid_from"] == "2026-11-25T00:00:00Z"
    assert data["holders"] == ["alice", "bob"]
    assert Permit.from_json(data) == permit


def test_time_text() -> None:
    precise = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
    assert format_time(precise) == "2026-11-25T10:00:00.123456Z"
    assert parse_time("2026-11-25T10:00:00.123456Z", "f") == precise
    assert parse_time("2026-11-25T12:00:00+02:00", "f") == datetime(2026, 11, 25, 10, tzinfo=UTC)
    for text in ("2026-11-25", "2026-11-25T10:00:00", "20261125T100000Z", "2026-13-01T00:00:00Z"):
        with pytest.raises(PermitFormatError, match=r"^f: "):
            parse_time(text, "f")
