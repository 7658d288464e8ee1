"""The parameters of `kaplan_meier`, and the fine grid they define.

Why the fine grid is part of the parameters and not of the data: every node coarsens the same
fine grid (``interval_days`` wide, the last interval ending at ``max_days``), so the cut points
two nodes release are comparable, and the agreed grid (the cut points common to all nodes) is a
coarsening of each node's own grid. A round's cut points must lie on that fine grid: the node
never releases a count over an interval finer than the study declared.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator

from ehds.analyses.age_bands import band_labels, check_age_edges, default_edges
from ehds.analyses.base import AnalysisParameters
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.person_count import SEXES

MAX_FINE_INTERVALS: Final = 1000
"""Fine intervals a study may declare at most (bounds the node's query and what it collects)."""

OVERALL: Final = "overall"
"""The one stratum of an unstratified study, and the name of the sum over strata."""

Strata = Literal["none", "sex", "age_group"]


class KmRound(AnalysisParameters):
    """Round 1's input, set by the coordinator: the agreed grid's cut points (interval end
    days, increasing; the first interval starts at day 0 inclusive)."""

    number: Annotated[int, Field(ge=1)]
    cuts: Annotated[list[int], Field(min_length=1, max_length=MAX_FINE_INTERVALS)]


class KaplanMeierParameters(AnalysisParameters):
    """``target``: the population; a person's index date is the start of their first entry.
    ``outcome``: the event is the person's first ``outcome`` entry starting on or after the
    index date; time is counted in days from the index date. Follow-up ends (censoring) at the
    end of the observation period holding the index date, or at ``max_days``."""

    target: CohortSpec
    outcome: CohortSpec
    strata: Strata = "none"
    age_band_edges: Annotated[list[int], AfterValidator(check_age_edges)] = Field(
        default_factory=default_edges
    )
    interval_days: int = Field(default=30, ge=1, le=36_500)
    max_days: int = Field(default=1825, ge=1, le=36_500)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    round: KmRound | None = None

    @model_validator(mode="after")
    def _grid(self) -> KaplanMeierParameters:
        if len(fine_cuts(self)) > MAX_FINE_INTERVALS:
            raise ValueError(
                f"max_days / interval_days gives more than {MAX_FINE_INTERVALS} intervals"
            )
        if self.round is not None:
            cuts = self.round.cuts
            if any(b <= a for a, b in itertools.pairwise(cuts)):
                raise ValueError("round.cuts must be strictly increasing")
            if not set(cuts) <= set(fine_cuts(self)):
                raise ValueError("round.cuts must lie on the fine grid of interval_days")
        return self


def fine_cuts(params: KaplanMeierParameters) -> list[int]:
    """The fine grid's interval end days: ``interval_days, 2*interval_days, ...``, the last
    one ``max_days``."""
    step = params.interval_days
    cuts = list(range(step, params.max_days, step))
    cuts.append(params.max_days)
    return cuts


def stratum_labels(params: KaplanMeierParameters) -> list[str]:
    """Every stratum the parameters define, in output order (present in the data or not)."""
    if params.strata == "sex":
        return list(SEXES)
    if params.strata == "age_group":
        return band_labels(params.age_band_edges)
    return [OVERALL]


def without_round(params: KaplanMeierParameters) -> KaplanMeierParameters:
    """Round 0's parameters (what defines the population, whatever the round)."""
    return params.model_copy(update={"round": None})
