"""Analyses by name and version: the one place that lists what this software can run.

A registry is built per process (`default_registry()`), not held in a module global, so a test
can build one with extra analyses without touching anybody else's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ehds.analyses.base import Analysis
from ehds.analyses.characterization import Characterization
from ehds.analyses.counts import Counts
from ehds.analyses.fl.analysis import FederatedLearning
from ehds.analyses.glm import Glm
from ehds.analyses.incidence import Incidence
from ehds.analyses.numeric_summary import NumericSummary
from ehds.analyses.person_count import PersonCount
from ehds.analyses.prevalence import Prevalence
from ehds.analyses.survival import KaplanMeier
from ehds.analyses.testing import BlobAnalysis, RoundsAnalysis, SleepAnalysis
from ehds.core.errors import InputError
from ehds.federation.model import AnalysisRef


class UnknownAnalysisError(InputError):
    """No analysis of this name is registered."""


class UnsupportedAnalysisVersionError(InputError):
    """The analysis exists, but not at this version."""


class Registry:
    def __init__(self, analyses: Iterable[Analysis[Any]]) -> None:
        self._by_ref: dict[AnalysisRef, Analysis[Any]] = {}
        for analysis in analyses:
            ref = analysis.ref()
            if ref in self._by_ref:
                raise ValueError(f"analysis {ref} registered twice")
            self._by_ref[ref] = analysis

    def get(self, ref: AnalysisRef) -> Analysis[Any]:
        try:
            return self._by_ref[ref]
        except KeyError:
            pass
        versions = sorted(r.version for r in self._by_ref if r.name == ref.name)
        if not versions:
            known = ", ".join(sorted({r.name for r in self._by_ref}))
            raise UnknownAnalysisError(f"unknown analysis {ref.name!r} (known: {known})")
        raise UnsupportedAnalysisVersionError(
            f"analysis {ref.name!r} has no version {ref.version!r} "
            f"(available: {', '.join(versions)})"
        )

    def refs(self) -> list[AnalysisRef]:
        return sorted(self._by_ref)


def default_registry() -> Registry:
    """Every analysis shipped with this software, including the test analyses (which a node
    runs only if its policy allows them, as for any other analysis)."""
    return Registry(
        [
            PersonCount(),
            Counts(),
            Characterization(),
            Incidence(),
            Prevalence(),
            NumericSummary(),
            Glm(),
            KaplanMeier(),
            FederatedLearning(),
            SleepAnalysis(),
            BlobAnalysis(),
            RoundsAnalysis(),
        ]
    )
