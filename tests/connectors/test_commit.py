"""``commit_staging`` end to end on the Synthea27Nj vocabulary: ids, concepts, quarantine,
modes, atomicity and the report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehds.connectors.commit import CommitError, commit_staging
from ehds.connectors.connector import run_connector
from ehds.connectors.rejection import Rejection
from ehds.connectors.staging import StagingArea
from ehds.omop.database import CdmDatabase
from ehds.omop.vocabulary import load_vocabulary
from etl_fixtures import ListConnector

# Synthea27Nj vocabulary facts the assertions rely on.
DIABETES = ("44054006", 201826)  # SNOMED standard
MAPPED = ("275272006", 4166590, 4132546)  # non-standard SNOMED 'Maps to' a standard concept
DEAD_END = ("316744009", 40521057)  # non-standard, no 'Maps to'
HYPERTENSION = 260139  # a standard concept used as a partner's mapping target


def person(key: str, year: int) -> dict[str, object]:
    return {
        "_key": key,
        "_source": f"people.csv:{key}",
        "gender_concept_id": 8507,
        "year_of_birth": year,
        "race_concept_id": 0,
        "ethnicity_concept_id": 0,
    }


def condition(
    key: str, person_key: str, code: str, vocab: str = "SNOMED", visit: str | None = None
) -> dict[str, object]:
    return {
        "_key": key,
        "_source": f"conditions.csv:{key}",
        "person_id__key": person_key,
        "visit_occurrence_id__key": visit,
        "condition_concept_id__vocab": vocab,
        "condition_concept_id__code": code,
        "condition_start_date": dt.date(2020, 1, 2),
        "condition_type_concept_id": 32817,
    }


def rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def add_stcm(db_path: Path, vocab: str, code: str, target: int) -> None:
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(
            "INSERT INTO vocab.source_to_concept_map (source_code, source_concept_id, "
            "source_vocabulary_id, target_concept_id, target_vocabulary_id, valid_start_date, "
            "valid_end_date) VALUES (?, 0, ?, ?, 'SNOMED', DATE '1970-01-01', DATE '2099-12-31')",
            [code, vocab, target],
        )


def test_concept_resolution_order(vocab_db: Path) -> None:
    add_stcm(vocab_db, "CIM10", "I10", HYPERTENSION)
    add_stcm(vocab_db, "SNOMED", MAPPED[0], HYPERTENSION)  # beats 'Maps to'
    connector = ListConnector(
        {
            "person": [person("P/1", 1970)],
            "condition_occurrence": [
                condition("C/1", "P/1", DIABETES[0]),
                condition("C/2", "P/1", MAPPED[0]),
                condition("C/3", "P/1", DEAD_END[0]),
                condition("C/4", "P/1", "I10", vocab="CIM10"),
                condition("C/5", "P/1", "0000000"),
            ],
        }
    )
    report = run_connector(connector, CdmDatabase.parse(str(vocab_db)))
    got = rows(
        vocab_db,
        "SELECT condition_occurrence_id, condition_concept_id, condition_source_concept_id "
        "FROM cdm.condition_occurrence ORDER BY 1",
    )
    assert got == [
        (1, DIABETES[1], DIABETES[1]),  # standard itself
        (2, HYPERTENSION, MAPPED[1]),  # source_to_concept_map beats 'Maps to'
        (3, 0, DEAD_END[1]),  # non-standard without 'Maps to': 0, source concept kept
        (4, HYPERTENSION, 0),  # local vocabulary through source_to_concept_map
        (5, 0, 0),  # unknown code
    ]
    [stats] = report.concepts
    assert (stats.with_code, stats.mapped) == (5, 3)
    assert stats.unmapped_rate == pytest.approx(0.4)
    assert [(u.vocabulary_id, u.code, u.rows) for u in stats.top_unmapped] == [
        ("SNOMED", "0000000", 1),
        ("SNOMED", DEAD_END[0], 1),
    ]


def test_maps_to_without_partner_mapping(vocab_db: Path) -> None:
    connector = ListConnector(
        {
            "person": [person("P/1", 1970)],
            "condition_occurrence": [condition("C/1", "P/1", MAPPED[0])],
        }
    )
    run_connector(connector, CdmDatabase.parse(str(vocab_db)))
    assert rows(
        vocab_db,
        "SELECT condition_concept_id, condition_source_concept_id FROM cdm.condition_occurrence",
    ) == [(MAPPED[2], MAPPED[1])]


def test_ids_are_stable_across_runs_and_offset(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    first = ListConnector({"person": [person("P/b", 1980), person("P/a", 1970)]})
    run_connector(first, db, id_offset=1000)
    ids = "SELECT person_id, year_of_birth FROM cdm.person ORDER BY 1"
    assert rows(vocab_db, ids) == [(1001, 1970), (1002, 1980)]  # ordered by key
    second = ListConnector(
        {"person": [person("P/c", 1990), person("P/a", 1971), person("P/b", 1980)]}
    )
    report = run_connector(second, db, id_offset=1000)
    assert rows(vocab_db, ids) == [(1001, 1971), (1002, 1980), (1003, 1990)]
    assert report.run_id == 2
    assert rows(vocab_db, "SELECT run_id, connector, mode FROM etl.run ORDER BY 1") == [
        (1, "test", "replace"),
        (2, "test", "replace"),
    ]


def test_replace_mode_drops_what_is_not_staged_again(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    run_connector(ListConnector({"person": [person("P/a", 1970), person("P/b", 1980)]}), db)
    run_connector(ListConnector({"person": [person("P/b", 1980)]}), db)
    assert rows(vocab_db, "SELECT person_id FROM cdm.person") == [(2,)]
    # A condition naming the dropped person is quarantined: replace mode resolves against
    # this run's persons only.
    report = run_connector(
        ListConnector(
            {
                "person": [person("P/b", 1980)],
                "condition_occurrence": [condition("C/1", "P/a", DIABETES[0])],
            }
        ),
        db,
    )
    assert report.tables["condition_occurrence"].rejected == {"fk.person_missing": 1}


def test_incremental_replaces_known_keys_and_appends_new_ones(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    run_connector(
        ListConnector(
            {
                "person": [person("P/a", 1970), person("P/b", 1980)],
                "condition_occurrence": [condition("C/1", "P/a", DIABETES[0])],
            }
        ),
        db,
    )
    report = run_connector(
        ListConnector(
            {
                "person": [person("P/b", 1981), person("P/c", 1990)],
                # names a person of the earlier run: resolved through the id map
                "condition_occurrence": [condition("C/2", "P/a", DIABETES[0])],
            }
        ),
        db,
        mode="incremental",
    )
    assert rows(vocab_db, "SELECT person_id, year_of_birth FROM cdm.person ORDER BY 1") == [
        (1, 1970),
        (2, 1981),
        (3, 1990),
    ]
    assert rows(
        vocab_db,
        "SELECT condition_occurrence_id, person_id FROM cdm.condition_occurrence ORDER BY 1",
    ) == [(1, 1), (2, 1)]
    assert report.tables["person"].written == 2
    assert report.mode == "incremental"


def test_fk_quarantine_and_report_counts(vocab_db: Path) -> None:
    bad_json = Rejection(
        "Condition.ndjson",
        "Condition.ndjson:7",
        "Condition",
        None,
        "fhir.invalid_json",
        "line is not JSON",
        record="{oops",
    )
    connector = ListConnector(
        {
            "person": [person("P/1", 1970)],
            "condition_occurrence": [
                condition("C/1", "P/1", DIABETES[0], visit="V/none"),
                {**condition("C/2", "P/missing", DIABETES[0]), "_source": "conditions.csv:2"},
                # same key again: the row with the smaller _source is the one kept
                {**condition("C/2", "P/1", DIABETES[0]), "_source": "conditions.csv:3"},
            ],
        },
        rejections=[bad_json],
        read={"Condition": 4, "Patient": 1},
    )
    report = run_connector(connector, CdmDatabase.parse(str(vocab_db)))
    table = report.tables["condition_occurrence"]
    assert (table.staged, table.written) == (3, 1)
    assert table.rejected == {"fk.person_missing": 1, "key.duplicate": 1}
    assert table.fk_unresolved == {"fk.visit_missing": 1}
    assert report.sources["Condition"].read == 4
    assert report.sources["Condition"].rejected == {"fhir.invalid_json": 1}
    assert report.rejected_total() == 3
    assert rows(vocab_db, "SELECT visit_occurrence_id FROM cdm.condition_occurrence") == [(None,)]
    quarantined = rows(
        vocab_db,
        "SELECT run_id, omop_table, location, record_key, reason, record FROM etl.quarantine "
        "ORDER BY reason",
    )
    assert [q[:5] for q in quarantined] == [
        (1, None, "Condition.ndjson:7", None, "fhir.invalid_json"),
        (1, "condition_occurrence", "conditions.csv:2", "C/2", "fk.person_missing"),
        (1, "condition_occurrence", "conditions.csv:3", "C/2", "key.duplicate"),
    ]
    assert quarantined[0][5] == "{oops"
    assert json.loads(str(quarantined[1][5]))["person_id__key"] == "P/missing"
    rendered = report.render()
    assert "fk.person_missing 1" in rendered
    assert "fk.visit_missing (NULL) 1" in rendered
    stored = json.loads(str(rows(vocab_db, "SELECT counts FROM etl.run")[0][0]))
    assert stored["tables"]["condition_occurrence"]["written"] == 1


def test_required_value_missing_is_quarantined(vocab_db: Path) -> None:
    no_year = person("P/1", 1970)
    del no_year["year_of_birth"]
    report = run_connector(ListConnector({"person": [no_year]}), CdmDatabase.parse(str(vocab_db)))
    assert report.tables["person"].rejected == {"omop.required_missing": 1}
    assert rows(vocab_db, "SELECT detail FROM etl.quarantine") == [("year_of_birth is required",)]


def test_death_keyed_by_person(vocab_db: Path) -> None:
    death = {"_key": "P/1", "death_date": dt.date(2021, 5, 6), "death_type_concept_id": 32817}
    run_connector(
        ListConnector({"person": [person("P/1", 1970)], "death": [death]}),
        CdmDatabase.parse(str(vocab_db)),
    )
    assert rows(vocab_db, "SELECT person_id, death_date FROM cdm.death") == [
        (1, dt.date(2021, 5, 6))
    ]


def test_new_ids_stay_above_rows_loaded_by_other_means(vocab_db: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    run_connector(ListConnector({"person": [person("P/a", 1970)]}), db)
    with duckdb.connect(str(vocab_db)) as conn:
        conn.execute(
            "INSERT INTO cdm.person (person_id, gender_concept_id, year_of_birth, "
            "race_concept_id, ethnicity_concept_id) VALUES (2, 8532, 1950, 0, 0)"
        )
    run_connector(ListConnector({"person": [person("P/b", 1980)]}), db, mode="incremental")
    assert rows(vocab_db, "SELECT person_id, year_of_birth FROM cdm.person ORDER BY 1") == [
        (1, 1970),
        (2, 1950),
        (3, 1980),
    ]


def test_failed_commit_changes_nothing(vocab_db: Path, tmp_path: Path) -> None:
    db = CdmDatabase.parse(str(vocab_db))
    run_connector(ListConnector({"person": [person("P/a", 1970)]}), db)
    before = {
        t: rows(vocab_db, f"SELECT * FROM {t} ORDER BY ALL")
        for t in ("cdm.person", "etl.id_map", "etl.run", "etl.quarantine")
    }
    area = StagingArea(tmp_path / "stage")
    with area.writer("0") as writer:
        writer.add("person", person("P/b", 1980))
    # A part written behind the staging API's back: a year that is not a number fails the
    # commit after the id map and the tables were already touched in its transaction.
    broken = pa.table({"_key": ["P/c"], "year_of_birth": ["nineteen"]})
    pq.write_table(broken, area.root / "person" / "part-broken.parquet")
    with pytest.raises(duckdb.ConversionException):
        commit_staging(area, db, connector="t", source="s", tables=["person"])
    after = {t: rows(vocab_db, f"SELECT * FROM {t} ORDER BY ALL") for t in before}
    assert after == before


def test_staged_table_outside_the_connector_tables_is_refused(
    vocab_db: Path, tmp_path: Path
) -> None:
    area = StagingArea(tmp_path / "stage")
    with area.writer("0") as writer:
        writer.add("measurement", {"_key": "M/1"})
    with pytest.raises(CommitError, match="staged table 'measurement'"):
        commit_staging(
            area, CdmDatabase.parse(str(vocab_db)), connector="t", source="s", tables=["person"]
        )


@pytest.mark.postgres
def test_commit_into_postgres(fresh_postgres_url: str, shared_data: Path) -> None:
    db = CdmDatabase.parse(fresh_postgres_url)
    load_vocabulary(shared_data / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip", db)
    connector = ListConnector(
        {
            "person": [person("P/1", 1970)],
            "condition_occurrence": [
                condition("C/1", "P/1", DIABETES[0]),
                condition("C/2", "P/1", MAPPED[0]),
                condition("C/3", "P/none", DIABETES[0]),
            ],
        }
    )
    report = run_connector(connector, db)
    assert report.tables["condition_occurrence"].rejected == {"fk.person_missing": 1}
    run_connector(connector, db, mode="incremental")
    with db.connect() as conn:
        got = conn.exec_driver_sql(
            "SELECT condition_occurrence_id, person_id, condition_concept_id, "
            "condition_source_concept_id FROM cdm.condition_occurrence ORDER BY 1"
        ).fetchall()
        quarantined = conn.exec_driver_sql("SELECT count(*) FROM etl.quarantine").scalar()
    assert [tuple(r) for r in got] == [
        (1, 1, DIABETES[1], DIABETES[1]),
        (2, 1, MAPPED[2], MAPPED[1]),
    ]
    assert quarantined == 2
