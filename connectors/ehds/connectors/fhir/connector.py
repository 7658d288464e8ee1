"""``FhirConnector``: FHIR R4 bulk-export NDJSON (plain or gzip) and Bundles → staged OMOP rows.

It implements the framework's ``Connector``: ``stage`` maps every resource into the staging
area (worker processes, see ``pipeline``) and then derives ``observation_period``; the
framework's commit resolves keys and codes and writes the CDM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ehds.connectors.fhir.mappers import MAPPERS, TABLES
from ehds.connectors.fhir.observation_period import stage_observation_periods
from ehds.connectors.fhir.pipeline import stage_sources
from ehds.connectors.fhir.reader import SourceFile, find_sources
from ehds.connectors.staging import StagingArea
from ehds.core.errors import InputError


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class FhirConnector:
    """Stages FHIR resources from ``sources`` (files or folders).

    ``validate=False`` skips the ``fhir.resources`` validation (the documented fast path: a
    resource of the wrong shape is then rejected only where the mapping reads a wrong value).
    """

    sources: Sequence[Path]
    workers: int = field(default_factory=default_workers)
    validate: bool = True
    name: str = "fhir"
    tables: tuple[str, ...] = TABLES

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        self._files: list[SourceFile] = find_sources(Path(p) for p in self.sources)

    @property
    def files(self) -> list[SourceFile]:
        return list(self._files)

    def describe(self) -> str:
        """What will be read, for the report and the run record (no row-level values)."""
        ndjson = sum(1 for f in self._files if f.kind == "ndjson")
        bundles = len(self._files) - ndjson
        return (
            f"FHIR R4: {ndjson} NDJSON and {bundles} Bundle file(s) from "
            f"{', '.join(str(p) for p in self.sources)}; "
            f"types mapped: {', '.join(MAPPERS)}; "
            f"validation {'on (fhir.resources R4B)' if self.validate else 'OFF'}"
        )

    def stage(self, area: StagingArea) -> None:
        workers = self.workers if self._files else 1
        stage_sources(area, self._files, workers=workers, validate=self.validate)
        stage_observation_periods(area)
