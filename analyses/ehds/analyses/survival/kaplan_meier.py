"""`kaplan_meier`: survival curves on a grid the nodes agree on first, in two rounds.

Why a grid agreed in a first round: a Kaplan-Meier curve at every event day would release
single events (a step of one person). Each node instead finds, on the study's fine grid, the
coarsest cut points it can defend (every interval holding at least the cell threshold of
events and of persons at risk, in every stratum) and releases only those cut points. The
coordinator keeps the cut points common to every node: merging a node's intervals only adds
events, and truncating follow-up only drops intervals, so every node can still release its
risk table on that grid. The pooled curve is then the curve of the pooled rows with each time
moved to the end of its grid interval (truncated at the last cut), which is what the tests
check against lifelines.

Round 0 (node): ``{"cuts": [...]}``, or a refusal (`km.grid_cell`) when no interval meets the
thresholds. Round 1 (node, input ``{"cuts": [...]}``): per stratum ``at_risk``, ``events``,
``censored`` on the agreed grid, after re-checking the thresholds (refusal `km.grid_cell`).
Both rounds ask the node's release guard about the same population (same fingerprint).

Coordinator: per stratum and overall, pooled and per node, survival with Greenwood variance
and the exponential-Greenwood band (lifelines' defaults), and the log-rank test across strata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from ehds.analyses.base import (
    ComputeContext,
    DisclosureRefusedError,
    JsonObject,
    canonical_json,
)
from ehds.analyses.engine import IbisCdm
from ehds.analyses.iteration import Finished, IterationFailedError, IterativeAnalysis, NextRound
from ehds.analyses.person_time import cohort_table, population_fingerprint
from ehds.analyses.survival.estimates import curve, log_rank
from ehds.analyses.survival.grid import (
    Cells,
    InvalidCellsError,
    cells_from_buckets,
    coarsen,
    common_cuts,
    meets_thresholds,
    parse_cells,
)
from ehds.analyses.survival.parameters import (
    OVERALL,
    KaplanMeierParameters,
    fine_cuts,
    stratum_labels,
    without_round,
)
from ehds.analyses.survival.times import interval_buckets, survival_times
from ehds.federation.model import TaskStage

GRID_RULE: Final = "km.grid_cell"
POOLED: Final = "pooled"
TABLE_COLUMNS: Final = (
    "place",
    "stratum",
    "time",
    "at_risk",
    "events",
    "censored",
    "survival",
    "ci_lower",
    "ci_upper",
)


def _refusal(threshold: int) -> DisclosureRefusedError:
    return DisclosureRefusedError(
        GRID_RULE,
        f"every interval of the survival grid must hold at least {threshold} events and "
        f"{threshold} persons at risk in every stratum (try a wider interval_days, a shorter "
        "max_days or fewer strata)",
    )


class KaplanMeier(IterativeAnalysis[KaplanMeierParameters]):
    name = "kaplan_meier"
    version = "1.0.0"
    parameters = KaplanMeierParameters
    description = (
        "Kaplan-Meier survival from a target cohort's index date to an outcome, on a time grid "
        "the nodes agree on; Greenwood bands, log-rank test across strata."
    )
    max_rounds: ClassVar[int] = 2

    def encode_parameters(self, params: KaplanMeierParameters) -> bytes:
        """Without ``round`` when it is unset: round 0's parameters carry no ``round`` key at
        all (the coordinator refuses a submission that has one, and adds it itself)."""
        data = params.model_dump(mode="json")
        if params.round is None:
            del data["round"]
        return canonical_json(data)

    # ------------------------------------------------------------------ node side

    def compute(self, params: KaplanMeierParameters, ctx: ComputeContext) -> JsonObject:
        engine = ctx.require_engine()
        ctx.check_cancelled()
        ctx.report(TaskStage.QUERYING, 0.0)
        cuts = fine_cuts(params) if params.round is None else params.round.cuts
        strata = self._cells(engine, params, ctx, cuts)
        ctx.check_cancelled()
        ctx.report(TaskStage.DISCLOSURE_CHECK, 0.9)
        threshold = ctx.min_cell_count
        if params.round is None:
            accepted = coarsen(cuts, strata, threshold)
            if not accepted:
                raise _refusal(threshold)
            return {"cuts": accepted}
        if not all(meets_thresholds(cells, threshold) for cells in strata.values()):
            raise _refusal(threshold)
        return {"cuts": cuts, "strata": {name: cells.as_json() for name, cells in strata.items()}}

    def _cells(
        self,
        engine: IbisCdm,
        params: KaplanMeierParameters,
        ctx: ComputeContext,
        cuts: list[int],
    ) -> dict[str, Cells]:
        """The node's risk table per stratum present (strata with no person are left out)."""
        labels = stratum_labels(params)
        with (
            cohort_table(engine, params.target) as target,
            cohort_table(engine, params.outcome) as outcome,
        ):
            assert target is not None  # specs are always given
            assert outcome is not None
            times = survival_times(engine, params, target, outcome)
            ctx.check_population(
                times.select("person_id").distinct(),
                fingerprint=population_fingerprint(self.name, without_round(params)),
            )
            ctx.check_cancelled()
            rows = engine.collect(
                interval_buckets(times, cuts, params.max_days),
                max_rows=len(labels) * (len(cuts) + 1),
            )
        buckets: dict[str, dict[int, tuple[int, int]]] = {}
        for row in rows:
            buckets.setdefault(str(row["stratum"]), {})[int(row["bucket"])] = (
                int(row["persons"]),
                int(row["events"] or 0),
            )
        return {
            label: cells_from_buckets(buckets[label], len(cuts))
            for label in labels
            if label in buckets
        }

    # ------------------------------------------------------------------ coordinator

    def advance(
        self,
        params: KaplanMeierParameters,
        round_number: int,
        state: JsonObject | None,
        node_results: Mapping[str, JsonObject],
    ) -> NextRound | Finished:
        if round_number == 0:
            cuts = common_cuts(
                {node: self._released_cuts(params, node, r) for node, r in node_results.items()}
            )
            if not cuts:
                raise IterationFailedError(
                    f"{self.ref()}: the nodes' acceptable survival grids share no cut point "
                    "(try a wider interval_days, a shorter max_days or fewer strata)"
                )
            return NextRound(round_input={"cuts": cuts}, state={"cuts": cuts})
        if state is None or round_number != 1:
            raise IterationFailedError(f"{self.ref()} has two rounds (0 and 1)")
        cuts = list(state["cuts"])
        per_node = {
            node: self._released_cells(params, node, r, cuts) for node, r in node_results.items()
        }
        return Finished(self.summary(params, cuts, per_node))

    def _released_cuts(
        self, params: KaplanMeierParameters, node: str, result: JsonObject
    ) -> list[int]:
        cuts = result.get("cuts") if isinstance(result, dict) else None
        allowed = set(fine_cuts(params))
        if (
            not isinstance(cuts, list)
            or not cuts
            or not all(type(c) is int and c in allowed for c in cuts)
            or cuts != sorted(set(cuts))
        ):
            raise IterationFailedError(
                f"{self.ref()}: node {node!r} released cut points that these parameters do not "
                "define"
            )
        return cuts

    def _released_cells(
        self, params: KaplanMeierParameters, node: str, result: JsonObject, cuts: list[int]
    ) -> dict[str, Cells]:
        problem = f"{self.ref()}: result of node {node!r} does not hold the grid's cells"
        strata = result.get("strata") if isinstance(result, dict) else None
        if (
            result.get("cuts") != cuts
            or not isinstance(strata, dict)
            or not set(strata) <= set(stratum_labels(params))
        ):
            raise IterationFailedError(problem)
        try:
            return {name: parse_cells(raw, len(cuts)) for name, raw in strata.items()}
        except InvalidCellsError as exc:
            raise IterationFailedError(f"{problem} ({exc})") from None

    def summary(
        self,
        params: KaplanMeierParameters,
        cuts: list[int],
        per_node: Mapping[str, Mapping[str, Cells]],
    ) -> JsonObject:
        """The pooled part of the result document: curves and tests, pooled and per node."""
        labels = stratum_labels(params)
        pooled: dict[str, Cells] = {}
        for strata in per_node.values():
            for name, cells in strata.items():
                pooled[name] = pooled.get(name, Cells.zeros(len(cuts))) + cells
        places = {
            POOLED: pooled,
            **{node: dict(strata) for node, strata in sorted(per_node.items())},
        }
        return {
            "cuts": cuts,
            "strata_by": params.strata,
            "confidence": params.confidence,
            "places": {
                place: self._place(params, cuts, {s: strata[s] for s in labels if s in strata})
                for place, strata in places.items()
            },
        }

    def _place(
        self, params: KaplanMeierParameters, cuts: list[int], strata: Mapping[str, Cells]
    ) -> JsonObject:
        total = Cells.zeros(len(cuts))
        for cells in strata.values():
            total = total + cells
        result: JsonObject = {"overall": curve(cuts, total, params.confidence)}
        if params.strata != "none":
            result["strata"] = {
                name: curve(cuts, cells, params.confidence) for name, cells in strata.items()
            }
            result["log_rank"] = log_rank(strata)
        return result

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        header = [*TABLE_COLUMNS]
        pooled = aggregate.get("pooled", aggregate)
        rows: list[list[Any]] = []
        for place, content in pooled.get("places", {}).items():
            curves = {OVERALL: content["overall"], **content.get("strata", {})}
            for stratum, c in curves.items():
                for k, time in enumerate(c["time"]):
                    rows.append([place, stratum, time, *(c[col][k] for col in TABLE_COLUMNS[3:])])
        return header, rows
