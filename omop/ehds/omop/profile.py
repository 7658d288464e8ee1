"""A CDM at a glance: what an operator checks after loading or generating one.

Record counts per table, persons by sex and age band, the date range of each event table, and
the CDM and vocabulary versions. Computed with SQLAlchemy Core on the models, so the same code
profiles DuckDB and PostgreSQL. Ages are taken at the CDM's reference date (the latest
observation period end), not today: a CDM extracted years ago keeps its age structure.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from ehds.core.errors import StateError
from ehds.omop.database import Backend, CdmDatabase
from ehds.omop.schema.layout import CDM_TABLES, RESULTS_TABLES, VOCAB_TABLES
from ehds.omop.schema.models import CdmSource, ObservationPeriod, Person, Vocabulary, metadata

AGE_BAND_YEARS = 10
_SEX = {8507: "male", 8532: "female"}


@dataclass(frozen=True)
class DateRange:
    table: str
    column: str
    first: dt.date | None
    last: dt.date | None


@dataclass(frozen=True)
class CdmProfile:
    database: str
    cdm_version: str | None
    vocabulary_version: str | None
    reference_date: dt.date | None
    counts: dict[str, int]
    missing_tables: list[str]
    persons_by_sex_age: dict[tuple[str, str], int]
    date_ranges: list[DateRange]

    @property
    def persons(self) -> int:
        return self.counts.get("person", 0)

    def render(self) -> str:
        lines = [
            f"OMOP CDM profile of {self.database}",
            f"  CDM version         {self.cdm_version or 'unknown'}",
            f"  vocabulary version  {self.vocabulary_version or 'unknown'}",
            f"  reference date      {self.reference_date or 'no observation periods'}",
            "",
            "Records per table",
        ]
        for table, count in self.counts.items():
            if count:
                lines.append(f"  {table:<24}{count:>14,}")
        empty = [t for t, c in self.counts.items() if not c]
        if empty:
            lines.append(f"  ({len(empty)} empty tables: {', '.join(empty)})")
        if self.missing_tables:
            lines.append(
                f"  ({len(self.missing_tables)} tables missing from the database: "
                f"{', '.join(self.missing_tables)})"
            )
        lines += ["", "Persons by sex and age band (age at the reference date)"]
        sexes = sorted({sex for sex, _ in self.persons_by_sex_age})
        bands = sorted({band for _, band in self.persons_by_sex_age}, key=_band_order)
        lines.append("  " + f"{'age':<10}" + "".join(f"{s:>12}" for s in sexes))
        for band in bands:
            cells = "".join(f"{self.persons_by_sex_age.get((s, band), 0):>12,}" for s in sexes)
            lines.append(f"  {band:<10}{cells}")
        lines += ["", "Date ranges"]
        for r in self.date_ranges:
            if r.first is not None:
                lines.append(f"  {r.table:<24}{r.column:<34}{r.first} .. {r.last}")
        return "\n".join(lines)


def _band_order(band: str) -> int:
    return int(band.split("-", maxsplit=1)[0].rstrip("+")) if band[0].isdigit() else 10_000


def _age_band(age: int | None) -> str:
    if age is None:
        return "unknown"
    if age >= 90:
        return "90+"
    low = max(age, 0) // AGE_BAND_YEARS * AGE_BAND_YEARS
    return f"{low}-{low + AGE_BAND_YEARS - 1}"


def _first_date_column(table: sa.Table) -> sa.Column[dt.date] | None:
    for column in table.columns:
        if column.name.endswith("_date") and isinstance(column.type, sa.Date):
            return column
    return None


def _tables_in_spec_order() -> list[sa.Table]:
    by_name = {t.name: t for t in metadata.sorted_tables}
    return [by_name[n] for n in (*CDM_TABLES, *VOCAB_TABLES, *RESULTS_TABLES)]


class NoCdmError(StateError):
    pass


_EXISTING_SQL = sa.text(
    "SELECT table_schema, table_name FROM information_schema.tables "
    "WHERE table_schema IN (:cdm, :vocab, :results)"
)


def profile_cdm(db: CdmDatabase) -> CdmProfile:
    if db.backend is Backend.DUCKDB and not db.duckdb_path.exists():
        raise NoCdmError(f"{db.describe()} does not exist: create it with ehds omop init or load")
    with db.connect(read_only=True) as conn:
        names = db.schemas
        existing = {
            (row.table_schema, row.table_name)
            for row in conn.execute(
                _EXISTING_SQL,
                {"cdm": names.cdm, "vocab": names.vocab, "results": names.results},
            )
        }
        tables: list[sa.Table] = []
        missing: list[str] = []
        for table in _tables_in_spec_order():
            if (db.table(table.name).schema, table.name) in existing:
                tables.append(table)
            else:
                missing.append(table.name)
        absent_required = sorted({"person", "observation_period", "cdm_source"} & set(missing))
        if absent_required:
            raise NoCdmError(
                f"no OMOP CDM in {db.describe()} (schema {names.cdm!r}): tables "
                f"{absent_required} are missing; create it with ehds omop init or load"
            )
        counts = {
            table.name: int(
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
            for table in tables
        }
        source = conn.execute(
            sa.select(CdmSource.cdm_version, CdmSource.vocabulary_version).limit(1)
        ).first()
        vocab_release = (
            conn.execute(
                sa.select(Vocabulary.vocabulary_version).where(Vocabulary.vocabulary_id == "None")
            ).scalar_one_or_none()
            if "vocabulary" in counts
            else None
        )
        reference = conn.execute(
            sa.select(sa.func.max(ObservationPeriod.observation_period_end_date))
        ).scalar_one_or_none()
        by_sex_age: dict[tuple[str, str], int] = {}
        if reference is not None:
            age = sa.literal(reference.year) - Person.year_of_birth
            rows = conn.execute(
                sa.select(Person.gender_concept_id, age.label("age"), sa.func.count()).group_by(
                    Person.gender_concept_id, age
                )
            )
            for gender, person_age, n in rows:
                key = (_SEX.get(gender, "other/unknown"), _age_band(person_age))
                by_sex_age[key] = by_sex_age.get(key, 0) + int(n)
        ranges = []
        for table in tables:
            column = _first_date_column(table)
            if column is None or not counts[table.name]:
                continue
            first, last = conn.execute(sa.select(sa.func.min(column), sa.func.max(column))).one()
            ranges.append(DateRange(table.name, column.name, first, last))
    return CdmProfile(
        database=db.describe(),
        cdm_version=source.cdm_version if source else None,
        vocabulary_version=(source.vocabulary_version if source else None) or vocab_release,
        reference_date=reference,
        counts=counts,
        missing_tables=missing,
        persons_by_sex_age=by_sex_age,
        date_ranges=ranges,
    )
