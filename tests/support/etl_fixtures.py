"""A tiny in-memory connector for the framework's tests: rows given per table, staged as is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ehds.connectors.rejection import Rejection
from ehds.connectors.staging import StagingArea


@dataclass
class ListConnector:
    rows: Mapping[str, Sequence[Mapping[str, object]]]
    rejections: Sequence[Rejection] = ()
    read: Mapping[str, int] = field(default_factory=dict)
    name: str = "test"
    tables: tuple[str, ...] = ("person", "visit_occurrence", "condition_occurrence", "death")

    def describe(self) -> str:
        return "in-memory rows"

    def stage(self, area: StagingArea) -> None:
        with area.writer("0") as writer:
            for table, rows in self.rows.items():
                for row in rows:
                    writer.add(table, row)
            for rejection in self.rejections:
                writer.reject(rejection)
            for source_type, n in self.read.items():
                writer.count_read(source_type, n)
