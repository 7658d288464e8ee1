"""The resolution SQL on hand-made relations: the concept rule's order, deterministic ids,
and the Spark dialect's spelling."""

from __future__ import annotations

import duckdb
import pytest

from ehds.connectors.resolve import code_map_sql, new_ids_sql, normalize_sql, resolve_sql

CONCEPTS = """
CREATE TABLE concept AS SELECT * FROM (VALUES
    (10, 'SNOMED', 'std', 'S'),
    (11, 'SNOMED', 'nonstd', NULL),
    (12, 'SNOMED', 'deadend', NULL),
    (13, 'SNOMED', 'two', NULL),
    (20, 'SNOMED', 'target20', 'S'),
    (21, 'SNOMED', 'target21', 'S'),
    (30, 'ICD10', 'nonstd', NULL)
) AS t(concept_id, vocabulary_id, concept_code, standard_concept);
CREATE TABLE concept_relationship AS SELECT * FROM (VALUES
    (11, 20, 'Maps to', NULL),
    (13, 21, 'Maps to', NULL),
    (13, 20, 'Maps to', NULL),
    (12, 21, 'Maps to', 'D'),
    (30, 21, 'Maps to', NULL)
) AS t(concept_id_1, concept_id_2, relationship_id, invalid_reason);
CREATE TABLE source_to_concept_map AS SELECT * FROM (VALUES
    ('nonstd', 0, 'ICD10', 10, NULL),
    ('L1', 0, 'LOCAL', 21, NULL),
    ('L2', 0, 'LOCAL', 20, 'D'),
    ('L3', 0, 'LOCAL', 0, NULL)
) AS t(source_code, source_concept_id, source_vocabulary_id, target_concept_id, invalid_reason);
CREATE TABLE codes AS SELECT * FROM (VALUES
    ('SNOMED', 'std'), ('SNOMED', 'nonstd'), ('SNOMED', 'deadend'), ('SNOMED', 'two'),
    ('ICD10', 'nonstd'), ('LOCAL', 'L1'), ('LOCAL', 'L2'), ('LOCAL', 'L3'), ('SNOMED', 'nope'),
    ('SNOMED', 'std')
) AS t(vocabulary_id, code);
"""


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(CONCEPTS)
    return connection


def test_code_map_rule(conn: duckdb.DuckDBPyConnection) -> None:
    sql = code_map_sql(
        "codes",
        concept="concept",
        concept_relationship="concept_relationship",
        source_to_concept_map="source_to_concept_map",
        dialect="duckdb",
    )
    got = {(v, c): (s, t, how) for v, c, s, t, how in conn.execute(sql).fetchall()}
    assert got == {
        ("SNOMED", "std"): (10, 10, "standard"),
        ("SNOMED", "nonstd"): (11, 20, "maps_to"),
        ("SNOMED", "deadend"): (12, 0, "unmapped"),  # its only 'Maps to' is invalid
        ("SNOMED", "two"): (13, 20, "maps_to"),  # two targets: the smallest id
        ("ICD10", "nonstd"): (30, 10, "source_to_concept_map"),  # beats its 'Maps to' (21)
        ("LOCAL", "L1"): (0, 21, "source_to_concept_map"),
        ("LOCAL", "L2"): (0, 0, "unmapped"),  # invalid mapping row
        ("LOCAL", "L3"): (0, 0, "unmapped"),  # target 0 ignored
        ("SNOMED", "nope"): (0, 0, "unmapped"),
    }


def test_new_ids_are_deterministic_and_respect_map_and_offset(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    conn.execute("CREATE TABLE staged AS SELECT * FROM (VALUES ('b'), ('a'), ('c'), ('a')) t(_key)")
    conn.execute("CREATE TABLE id_map (table_name VARCHAR, source_key VARCHAR, id BIGINT)")
    sql = new_ids_sql("person", "staged", "id_map", 100, "duckdb")
    assert conn.execute(sql + " ORDER BY id").fetchall() == [
        ("person", "a", 101),
        ("person", "b", 102),
        ("person", "c", 103),
    ]
    conn.execute("INSERT INTO id_map VALUES ('person', 'b', 500), ('visit_occurrence', 'a', 900)")
    assert conn.execute(sql + " ORDER BY id").fetchall() == [
        ("person", "a", 501),
        ("person", "c", 502),
    ]


def test_spark_dialect_spelling() -> None:
    sql = resolve_sql(
        "condition_occurrence",
        staged="stg",
        ids="ids",
        fk_ids="fk_ids",
        code_map="code_map",
        dialect="spark",
    )
    assert "`condition_concept_id__code`" in sql
    assert '"' not in sql
    assert "AS STRING" not in sql or "VARCHAR" not in sql
    normalized = normalize_sql("person", "raw", ["_key", "year_of_birth"], "spark")
    assert "CAST(s.`year_of_birth` AS INT)" in normalized
    assert "CAST(NULL AS STRING) AS `person_source_value`" in normalized
