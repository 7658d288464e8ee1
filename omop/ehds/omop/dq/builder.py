"""Build the check instances for one database from the specification rules and its schema.

Each ``_family`` function turns the rules of one kind of check into :class:`Check` objects:
SQL aggregate expressions over the scanned table ``t``. Which fields get which check follows
the specification (required, datatype, foreign keys, domains, classes) and its naming
conventions (``X_source_value`` is mapped in ``X_concept_id``; ``X_start_date`` ends at
``X_end_date``); thresholds are in :mod:`ehds.omop.dq.catalogue`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.dq import catalogue as cat
from ehds.omop.dq.check import Check
from ehds.omop.dq.live_schema import LiveSchema
from ehds.omop.dq.rules import FieldRule
from ehds.omop.dq.sql import col, count_rows, ident, in_list, literal, standalone, text_not_of_type

# Tables of clinical events: checked against visits, observation periods and persons.
EVENT_TABLES = ("visit_occurrence", "visit_detail", "condition_occurrence", "drug_exposure",
                "procedure_occurrence", "device_exposure", "measurement", "observation", "note",
                "specimen")  # fmt: skip
_ALL_ROWS = "COUNT(*)"
_NOT_STANDARD = (
    "c.standard_concept IS NULL OR c.standard_concept <> 'S' OR c.invalid_reason IS NOT NULL"
)
_FITS = {
    "integer": {"integer"},
    "float": {"integer", "float"},
    "date": {"date", "datetime"},
    "datetime": {"date", "datetime"},
}


@dataclass(frozen=True)
class Context:
    db: CdmDatabase
    live: LiveSchema
    rules: tuple[FieldRule, ...]

    @property
    def backend(self) -> Backend:
        return self.db.backend

    def q(self, table: str) -> str:
        return self.db.qualified(table)

    def fields(self, table: str) -> list[FieldRule]:
        return [r for r in self.rules if r.table == table and self.live.has_column(table, r.field)]

    def present(self) -> list[FieldRule]:
        return [r for r in self.rules if self.live.has_column(r.table, r.field)]

    def check(  # noqa: PLR0917  (a check's identity, in DQD's column order)
        self,
        name: str,
        table: str,
        field: str | None,
        threshold: float,
        violated: str,
        denominator: str,
        *,
        scan: str | None = None,
        concept_id: int | None = None,
        unit_concept_id: int | None = None,
        **params: object,
    ) -> Check:
        kind = cat.KINDS[name]
        scanned = scan or table
        return Check(
            kind=kind,
            table=table,
            field=field,
            threshold=threshold,
            description=kind.description.format(
                table=table,
                field=field,
                concept_id=concept_id,
                unit_concept_id=unit_concept_id,
                **params,
            ),
            scan=scanned,
            violated=violated,
            denominator=denominator,
            query_text=standalone(violated, denominator, self.q(scanned)),
            concept_id=concept_id,
            unit_concept_id=unit_concept_id,
        )


def _person_tables(ctx: Context) -> list[str]:
    """Tables whose rows belong to a person (the person table itself excluded)."""
    tables = dict.fromkeys(r.table for r in ctx.rules if r.field == "person_id")
    return [t for t in tables if t != "person"]


def _main_date(ctx: Context, table: str) -> FieldRule | None:
    """An event's own date: the first required date field of its table, in spec order."""
    return next((r for r in ctx.fields(table) if r.required and r.datatype == "date"), None)


def structure(ctx: Context) -> Iterator[Check]:
    tables = dict.fromkeys(r.table for r in ctx.rules)
    for table in tables:
        missing = 0 if ctx.live.has_table(table) else 1
        yield _static(ctx, "cdmTable", table, None, missing)
        if missing:
            continue
        for rule in (r for r in ctx.rules if r.table == table):
            gone = 0 if ctx.live.has_column(table, rule.field) else 1
            yield _static(ctx, "cdmField", table, rule.field, gone)


def _static(ctx: Context, name: str, table: str, field: str | None, violated: int) -> Check:
    check = ctx.check(name, table, field, cat.ZERO, "", "")
    probe = "information_schema.columns" if field else "information_schema.tables"
    text = f"-- decided from {probe} ({ctx.db.schemas.cdm} schema): {violated} missing"
    return Check(**{**check.__dict__, "static": (violated, 1), "query_text": text})


def required(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        nulls = count_rows(f"{col(r.field)} IS NULL")
        if r.required:
            yield ctx.check("isRequired", r.table, r.field, cat.ZERO, nulls, _ALL_ROWS)
        threshold = cat.ZERO if r.required else cat.ALWAYS_PASSES
        yield ctx.check("measureValueCompleteness", r.table, r.field, threshold, nulls, _ALL_ROWS)


def datatypes(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        if r.datatype == "varchar":
            continue
        family = ctx.live.family(r.table, r.field)
        if family in _FITS[r.datatype]:
            bad = "FALSE"
        elif family == "float" and r.datatype == "integer":
            bad = f"{col(r.field)} <> FLOOR({col(r.field)})"
        elif family == "text":
            bad = text_not_of_type(col(r.field), r.datatype, ctx.backend)
        else:
            bad = "TRUE"
        present = f"{col(r.field)} IS NOT NULL"
        yield ctx.check(
            "cdmDatatype", r.table, r.field, cat.ZERO,
            count_rows(f"{present} AND {bad}"), count_rows(present), datatype=r.datatype,
        )  # fmt: skip


def primary_keys(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        if r.primary_key:
            repeats = f"COUNT({col(r.field)}) - COUNT(DISTINCT {col(r.field)})"
            yield ctx.check("isPrimaryKey", r.table, r.field, cat.ZERO, repeats, _ALL_ROWS)


def foreign_keys(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        if r.fk_table is None or r.fk_field is None:
            continue
        match = f"fk.{ident(r.fk_field)} = {col(r.field)}"
        orphan = (
            f"{col(r.field)} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {ctx.q(r.fk_table)} AS fk WHERE {match})"
        )
        yield _needing(ctx, r.fk_table, ctx.check(
            "isForeignKey", r.table, r.field, cat.ZERO, count_rows(orphan), _ALL_ROWS,
            fk_table=r.fk_table, fk_field=r.fk_field,
        ))  # fmt: skip


def _concept_test(ctx: Context, rule: FieldRule, condition: str) -> str:
    return count_rows(
        f"EXISTS (SELECT 1 FROM {ctx.q('concept')} AS c WHERE c.concept_id = {col(rule.field)} "
        f"AND c.concept_id <> 0 AND ({condition}))"
    )


def concepts(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        if r.is_concept and r.fk_domain:
            outside = _concept_test(ctx, r, f"c.domain_id NOT IN {in_list(r.fk_domain)}")
            yield _needing(ctx, "concept", ctx.check(
                "fkDomain", r.table, r.field, cat.ZERO, outside, _ALL_ROWS,
                fk_domain=", ".join(r.fk_domain),
            ))  # fmt: skip
        if r.is_concept and r.fk_class:
            outside = _concept_test(ctx, r, f"c.concept_class_id <> {literal(r.fk_class)}")
            yield _needing(ctx, "concept", ctx.check(
                "fkClass", r.table, r.field, cat.ZERO, outside, _ALL_ROWS, fk_class=r.fk_class
            ))  # fmt: skip
        if r.is_standard_concept:
            bad = _NOT_STANDARD
            yield _needing(ctx, "concept", ctx.check(
                "isStandardValidConcept", r.table, r.field, cat.ZERO, _concept_test(ctx, r, bad),
                _ALL_ROWS,
            ))  # fmt: skip


def _needing(ctx: Context, table: str, check: Check) -> Check:
    """``check`` as an error without a query when a table it reads is missing."""
    if ctx.live.has_table(table):
        return check
    return Check(**{**check.__dict__, "static_error": f"table {table} is missing"})


def _concept_threshold(ctx: Context, rule: FieldRule) -> float:
    if not rule.required or rule.field in ("race_concept_id", "ethnicity_concept_id"):
        return cat.ALWAYS_PASSES
    is_event = rule.table in _person_tables(ctx) and not rule.field.endswith("_type_concept_id")
    return cat.MAPPED_EVENT_CONCEPT if is_event else cat.ZERO


def mapping(ctx: Context) -> Iterator[Check]:
    for r in ctx.present():
        if r.is_standard_concept:
            zeros = count_rows(f"{col(r.field)} = 0")
            threshold = _concept_threshold(ctx, r)
            yield ctx.check(
                "standardConceptRecordCompleteness", r.table, r.field, threshold, zeros, _ALL_ROWS
            )
        if r.field.endswith("_source_value"):
            partner = r.field.removesuffix("_source_value") + "_concept_id"
            target = next((p for p in ctx.fields(r.table) if p.field == partner), None)
            if target is None or not target.is_standard_concept:
                continue
            unmapped = f"COUNT(DISTINCT CASE WHEN {col(partner)} = 0 THEN {col(r.field)} END)"
            threshold = cat.SOURCE_VALUE if target.required else cat.ALWAYS_PASSES
            yield ctx.check(
                "sourceValueCompleteness", r.table, r.field, threshold, unmapped,
                f"COUNT(DISTINCT {col(r.field)})", concept_field=partner,
            )  # fmt: skip


def value_ranges(ctx: Context) -> Iterator[Check]:
    event_tables = _person_tables(ctx)
    for r in ctx.present():
        if r.table == "person" and r.field == "year_of_birth":
            low, high = "1850", "EXTRACT(YEAR FROM CURRENT_DATE) + 1"
        elif r.table == "person" and r.field == "birth_datetime":
            low, high = f"DATE '{cat.EARLIEST_BIRTH}'", "CURRENT_DATE + INTERVAL '1 day'"
        elif r.table in event_tables and r.is_temporal:
            low, high = f"DATE '{cat.EARLIEST_EVENT}'", "CURRENT_DATE + INTERVAL '1 day'"
        else:
            continue
        present = count_rows(f"{col(r.field)} IS NOT NULL")
        yield ctx.check("plausibleValueLow", r.table, r.field, cat.PLAUSIBILITY,
                        count_rows(f"{col(r.field)} < {low}"), present, low=low)  # fmt: skip
        yield ctx.check("plausibleValueHigh", r.table, r.field, cat.PLAUSIBILITY,
                        count_rows(f"{col(r.field)} > {high}"), present, high=high)  # fmt: skip
    yield from _measurement_ranges(ctx)


def _measurement_ranges(ctx: Context) -> Iterator[Check]:
    if not all(
        ctx.live.has_column("measurement", c)
        for c in ("measurement_concept_id", "unit_concept_id", "value_as_number")
    ):
        return
    for m in cat.MEASUREMENT_RANGES:
        of_kind = (
            f"t.measurement_concept_id = {m.concept_id} AND t.unit_concept_id = {m.unit_concept_id}"
        )
        present = count_rows(f"{of_kind} AND t.value_as_number IS NOT NULL")
        for name, test in (
            ("conceptPlausibleValueLow", f"t.value_as_number < {m.low}"),
            ("conceptPlausibleValueHigh", f"t.value_as_number > {m.high}"),
        ):
            yield ctx.check(
                name, "measurement", "value_as_number", cat.PLAUSIBILITY,
                count_rows(f"{of_kind} AND {test}"), present, concept_id=m.concept_id,
                unit_concept_id=m.unit_concept_id, low=m.low, high=m.high,
                concept_name=m.concept_name, unit_name=m.unit_name,
            )  # fmt: skip


def temporal(ctx: Context) -> Iterator[Check]:
    event_tables = _person_tables(ctx)
    birth = "COALESCE(CAST(p.birth_datetime AS DATE), MAKE_DATE(p.year_of_birth, 1, 1))"
    for r in ctx.present():
        if r.table not in event_tables or r.datatype != "date":
            continue
        present = count_rows(f"{col(r.field)} IS NOT NULL")
        end = r.field.replace("start", "end")
        if "start" in r.field and ctx.live.has_column(r.table, end):
            yield ctx.check(
                "plausibleStartBeforeEnd", r.table, r.field, cat.PLAUSIBILITY,
                count_rows(f"{col(r.field)} > {col(end)}"),
                count_rows(f"{col(r.field)} IS NOT NULL AND {col(end)} IS NOT NULL"),
                end_field=end,
            )  # fmt: skip
        before_birth = (
            f"EXISTS (SELECT 1 FROM {ctx.q('person')} AS p WHERE p.person_id = t.person_id "
            f"AND {col(r.field)} < {birth})"
        )
        yield _needing(ctx, "person", ctx.check(
            "plausibleAfterBirth", r.table, r.field, cat.PLAUSIBILITY, count_rows(before_birth),
            present,
        ))  # fmt: skip
        if r.table != "death":
            after_death = (
                f"EXISTS (SELECT 1 FROM {ctx.q('death')} AS d WHERE d.person_id = t.person_id "
                f"AND {col(r.field)} > d.death_date + INTERVAL '60 days')"
            )
            yield _needing(ctx, "death", ctx.check(
                "plausibleDuringLife", r.table, r.field, cat.PLAUSIBILITY,
                count_rows(after_death), present,
            ))  # fmt: skip
    yield from _event_windows(ctx)


def _event_windows(ctx: Context) -> Iterator[Check]:
    for table in EVENT_TABLES:
        main = _main_date(ctx, table)
        if main is None:
            continue
        date = col(main.field)
        if table != "visit_occurrence" and ctx.live.has_column(table, "visit_occurrence_id"):
            outside_visit = (
                f"EXISTS (SELECT 1 FROM {ctx.q('visit_occurrence')} AS v "
                "WHERE v.visit_occurrence_id = t.visit_occurrence_id "
                f"AND ({date} < v.visit_start_date - INTERVAL '7 days' "
                f"OR {date} > v.visit_end_date + INTERVAL '7 days'))"
            )
            yield _needing(ctx, "visit_occurrence", ctx.check(
                "withinVisitDates", table, main.field, cat.WITHIN_VISIT,
                count_rows(outside_visit), count_rows("t.visit_occurrence_id IS NOT NULL"),
            ))  # fmt: skip
        outside_periods = (
            f"{date} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {ctx.q('observation_period')} "
            "AS op WHERE op.person_id = t.person_id AND "
            f"{date} BETWEEN op.observation_period_start_date AND op.observation_period_end_date)"
        )
        yield _needing(ctx, "observation_period", ctx.check(
            "withinObservationPeriod", table, main.field, cat.WITHIN_OBSERVATION,
            count_rows(outside_periods), count_rows(f"{date} IS NOT NULL"),
        ))  # fmt: skip


def persons(ctx: Context) -> Iterator[Check]:
    if not ctx.live.has_table("person"):
        return
    for table in ("observation_period", *EVENT_TABLES):
        if not ctx.live.has_column(table, "person_id"):
            continue
        without = f"NOT EXISTS (SELECT 1 FROM {ctx.q(table)} AS e WHERE e.person_id = t.person_id)"
        threshold = cat.ZERO if table == "observation_period" else cat.PERSON_COMPLETENESS
        yield ctx.check(
            "measurePersonCompleteness", table, None, threshold, count_rows(without), _ALL_ROWS,
            scan="person",
        )  # fmt: skip
    if ctx.live.has_table("observation_period"):
        op = ctx.q("observation_period")
        overlapping = (
            f"EXISTS (SELECT 1 FROM {op} AS a JOIN {op} AS b ON a.person_id = b.person_id "
            "AND a.observation_period_id <> b.observation_period_id "
            "WHERE a.person_id = t.person_id "
            "AND a.observation_period_start_date <= "
            "b.observation_period_end_date + INTERVAL '1 day' "
            "AND b.observation_period_start_date <= "
            "a.observation_period_end_date + INTERVAL '1 day')"
        )
        yield ctx.check(
            "measureObservationPeriodOverlap", "observation_period", None, cat.ZERO,
            count_rows(overlapping), _ALL_ROWS, scan="person",
        )  # fmt: skip


FAMILIES: tuple[Callable[[Context], Iterator[Check]], ...] = (
    structure, required, datatypes, primary_keys, foreign_keys, concepts, mapping, value_ranges,
    temporal, persons,
)  # fmt: skip


def build_checks(ctx: Context) -> list[Check]:
    return [check for family in FAMILIES for check in family(ctx)]
