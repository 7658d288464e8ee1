"""Interval tables and the agreed grid: pure functions on counts (no engine, no I/O).

A node's cells, per stratum and interval ``(c_{k-1}, c_k]`` (the first one ``[0, c_1]``):

* ``at_risk``: persons whose time is over ``c_{k-1}`` (still followed at the interval's start);
* ``events``: persons with their event in the interval;
* ``censored``: persons whose follow-up ends in it without an event; in the last interval also
  those followed beyond the last cut (follow-up is truncated there), so that
  ``at_risk[k+1] = at_risk[k] - events[k] - censored[k]``, ending at 0.

This is exactly Kaplan-Meier's risk table for times coarsened to the grid (each time moved to
the end of its interval): what lifelines computes from the pooled rows so coarsened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ehds.analyses.base import JsonObject


@dataclass(frozen=True)
class Cells:
    """One stratum's risk table on a grid (lists aligned with the grid's cuts)."""

    at_risk: list[int]
    events: list[int]
    censored: list[int]

    def as_json(self) -> JsonObject:
        return {"at_risk": self.at_risk, "events": self.events, "censored": self.censored}

    def __add__(self, other: Cells) -> Cells:
        return Cells(
            [a + b for a, b in zip(self.at_risk, other.at_risk, strict=True)],
            [a + b for a, b in zip(self.events, other.events, strict=True)],
            [a + b for a, b in zip(self.censored, other.censored, strict=True)],
        )

    @classmethod
    def zeros(cls, length: int) -> Cells:
        return cls([0] * length, [0] * length, [0] * length)


def cells_from_buckets(buckets: Mapping[int, tuple[int, int]], intervals: int) -> Cells:
    """The risk table from per-bucket ``(persons, events)``: bucket ``k`` (1-based) holds the
    persons whose time falls in interval ``k``; bucket ``intervals + 1`` those followed beyond
    the last cut (their events are past the truncation: censored)."""
    persons = [buckets.get(k, (0, 0))[0] for k in range(1, intervals + 2)]
    events = [buckets.get(k, (0, 0))[1] for k in range(1, intervals + 1)]
    at_risk = [sum(persons[k:]) for k in range(intervals + 1)]
    censored = [at_risk[k] - events[k] - at_risk[k + 1] for k in range(intervals)]
    censored[-1] += at_risk[intervals]
    return Cells(at_risk[:intervals], events, censored)


def meets_thresholds(cells: Cells, threshold: int) -> bool:
    """Every interval holds at least ``threshold`` events and ``threshold`` persons at risk."""
    return all(e >= threshold for e in cells.events) and all(n >= threshold for n in cells.at_risk)


def coarsen(cuts: Sequence[int], strata: Mapping[str, Cells], threshold: int) -> list[int]:
    """The node's acceptable cut points: greedy from day 0, an interval closes as soon as it
    holds ``threshold`` events in every stratum; follow-up stops where a stratum has fewer than
    ``threshold`` persons at risk at the start of an interval (and a last interval that never
    gathers enough events is dropped). Every interval of the result, and of any coarsening of
    it (intervals merged, follow-up truncated), meets the thresholds in every stratum."""
    accepted: list[int] = []
    start = 0
    gathered = dict.fromkeys(strata, 0)
    for k, cut in enumerate(cuts):
        if any(cells.at_risk[start] < threshold for cells in strata.values()):
            break
        for name, cells in strata.items():
            gathered[name] += cells.events[k]
        if all(count >= threshold for count in gathered.values()):
            accepted.append(cut)
            start = k + 1
            gathered = dict.fromkeys(strata, 0)
    return accepted


def common_cuts(node_cuts: Mapping[str, Sequence[int]]) -> list[int]:
    """The cut points every node accepted: a coarsening of each node's grid, ending at the
    smallest of their last cuts or before."""
    sets = [set(cuts) for cuts in node_cuts.values()]
    return sorted(set.intersection(*sets)) if sets else []


class InvalidCellsError(ValueError):
    """A node's released cells do not have the shape or arithmetic the grid defines."""


def parse_cells(raw: Any, intervals: int) -> Cells:
    """A released stratum's cells, checked: lists of ``intervals`` non-negative integers that
    add up (``at_risk[k+1] = at_risk[k] - events[k] - censored[k]``)."""
    if not isinstance(raw, dict) or set(raw) != {"at_risk", "events", "censored"}:
        raise InvalidCellsError("cells must hold exactly at_risk, events, censored")
    columns: list[list[int]] = []
    for name in ("at_risk", "events", "censored"):
        values = raw[name]
        if (
            not isinstance(values, list)
            or len(values) != intervals
            or not all(type(v) is int and v >= 0 for v in values)
        ):
            raise InvalidCellsError(f"{name} must be {intervals} non-negative integers")
        columns.append(values)
    cells = Cells(*columns)
    remaining = [
        n - e - c for n, e, c in zip(cells.at_risk, cells.events, cells.censored, strict=True)
    ]
    if any(r < 0 for r in remaining) or remaining[:-1] != cells.at_risk[1:] or remaining[-1] != 0:
        raise InvalidCellsError("at_risk, events and censored do not add up")
    return cells
