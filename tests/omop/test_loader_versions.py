"""CDM version detection and the 5.3 -> 5.4 upgrade on load."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from ehds.omop.database import CdmDatabase
from ehds.omop.loader import UnknownColumnError, UnsupportedVersionError, load_cdm
from ehds.omop.loader.errors import Location
from ehds.omop.loader.versions import (
    CDM_V54_CONCEPT_ID,
    UPGRADE_53_TO_54,
    detect_version,
    parse_version,
)
from ehds.omop.schema.models import metadata

VISIT_53 = (
    "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_end_date,"
    "visit_type_concept_id,admitting_source_concept_id,admitting_source_value,"
    "discharge_to_concept_id,discharge_to_source_value\n"
    "1,1,9201,2020-01-01,2020-01-05,32817,8870,ER,8536,home\n"
    "2,1,9202,2020-02-01,2020-02-01,32817,,,,\n"
)
VISIT_DETAIL_53 = (
    "visit_detail_id,person_id,visit_detail_concept_id,visit_detail_start_date,"
    "visit_detail_end_date,visit_detail_type_concept_id,visit_occurrence_id,"
    "admitting_source_value,admitting_source_concept_id,discharge_to_source_value,"
    "discharge_to_concept_id,visit_detail_parent_id\n"
    "10,1,9201,2020-01-01,2020-01-02,32817,1,ER,8870,ward,0,\n"
    "11,1,9201,2020-01-02,2020-01-05,32817,1,,,home,8536,10\n"
)
METADATA_53 = (
    "metadata_concept_id,metadata_type_concept_id,name,value_as_string,value_as_concept_id,"
    "metadata_date,metadata_datetime\n"
    "0,0,etl,v1,,2020-01-01,\n"
    "0,0,run,42,,2020-01-02,\n"
)
CDM_SOURCE_53 = (
    "cdm_source_name,cdm_source_abbreviation,cdm_holder,source_description,"
    "source_documentation_reference,cdm_etl_reference,source_release_date,cdm_release_date,"
    "cdm_version,vocabulary_version\n"
    "Test,T,Us,,,,2020-01-01,2020-01-02,{version},v5.0\n"
)
PERSON = (
    "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
    "1,8507,1970,0,0\n"
)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("text", "version"),
    [("v5.3.1", "5.3"), ("5.3", "5.3"), ("V5.3", "5.3"), ("5.4", "5.4"), (" v5.4.0 ", "5.4")],
)
def test_parse_version(text: str, version: str) -> None:
    assert parse_version(text, Location("CDM_SOURCE.csv")) == version


@pytest.mark.parametrize("text", ["6.0", "5.2", "v5", "CDM-SECRET-42"])
def test_unsupported_versions_are_refused_without_quoting_them(text: str) -> None:
    with pytest.raises(UnsupportedVersionError) as raised:
        parse_version(text, Location("CDM_SOURCE.csv"))
    assert text not in str(raised.value)
    assert "CDM_SOURCE.csv" in str(raised.value)


def test_detect_from_columns_and_tables() -> None:
    visit_53 = {"visit_occurrence": frozenset({"admitting_source_concept_id"})}
    visit_54 = {"visit_occurrence": frozenset({"admitted_from_concept_id"})}
    assert detect_version(None, None, visit_53, frozenset()).version == "5.3"
    assert detect_version(None, None, visit_54, frozenset()).version == "5.4"
    assert detect_version(None, None, {}, frozenset({"attribute_definition"})).version == "5.3"
    assert detect_version(None, None, {}, frozenset({"episode"})).version == "5.4"
    assumed = detect_version(None, None, {}, frozenset({"person"}))
    assert (assumed.version, assumed.evidence) == ("5.4", "no version marker: assumed 5.4")
    with pytest.raises(UnsupportedVersionError, match=r"mixes CDM 5\.3 and 5\.4"):
        detect_version(None, None, {**visit_53, "episode": frozenset()}, frozenset({"episode"}))


def test_upgrade_data_names_only_real_columns() -> None:
    """Every renamed target, added column and constant exists in the 5.4 models."""
    columns = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    for table, renames in UPGRADE_53_TO_54.renamed.items():
        assert set(renames.values()) <= columns[table]
        assert not set(renames) & columns[table]
    for table, added in UPGRADE_53_TO_54.added_columns.items():
        assert set(added) <= columns[table]
    for table, constants in UPGRADE_53_TO_54.constants.items():
        assert set(constants) <= columns[table]
    for table in UPGRADE_53_TO_54.added_tables:
        assert table in columns
    for table in UPGRADE_53_TO_54.dropped_tables:
        assert table not in columns


def test_53_csv_folder_is_upgraded(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "cdm53",
        {
            "PERSON.csv": PERSON,
            "VISIT_OCCURRENCE.csv": VISIT_53,
            "VISIT_DETAIL.csv": VISIT_DETAIL_53,
            "METADATA.csv": METADATA_53,
            "CDM_SOURCE.csv": CDM_SOURCE_53.format(version="5.3"),
            "ATTRIBUTE_DEFINITION.csv": "attribute_definition_id,attribute_name\n1,x\n",
        },
    )
    target = tmp_path / "node.duckdb"
    report = load_cdm(folder, CdmDatabase.parse(str(target)))
    assert (report.declared_version, report.upgraded_from) == ("5.3", "5.3")
    assert "attribute_definition" in report.skipped
    assert rows(
        target,
        "SELECT visit_occurrence_id, admitted_from_concept_id, admitted_from_source_value, "
        "discharged_to_concept_id, discharged_to_source_value FROM cdm.visit_occurrence "
        "ORDER BY 1",
    ) == [(1, 8870, "ER", 8536, "home"), (2, None, None, None, None)]
    assert rows(
        target,
        "SELECT visit_detail_id, admitted_from_concept_id, discharged_to_source_value, "
        "parent_visit_detail_id FROM cdm.visit_detail ORDER BY 1",
    ) == [(10, 8870, "ward", None), (11, None, "home", 10)]
    assert rows(target, "SELECT metadata_id, name FROM cdm.metadata ORDER BY 1") == [
        (1, "etl"),
        (2, "run"),
    ]
    assert rows(
        target, "SELECT cdm_version, cdm_version_concept_id, cdm_release_date FROM cdm.cdm_source"
    ) == [("5.4", CDM_V54_CONCEPT_ID, dt.date(2020, 1, 2))]
    assert rows(target, "SELECT count(*) FROM cdm.episode") == [(0,)]
    rendered = report.render()
    assert "upgraded from CDM 5.3 to 5.4" in rendered
    assert "visit_detail.visit_detail_parent_id -> parent_visit_detail_id" in rendered


def test_53_detected_from_columns_without_cdm_source(tmp_path: Path) -> None:
    folder = write(tmp_path / "cdm53", {"PERSON.csv": PERSON, "VISIT_OCCURRENCE.csv": VISIT_53})
    report = load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert report.declared_version is None
    assert (report.detected_version, report.upgraded_from) == ("5.3", "5.3")
    assert report.version_evidence == "columns and tables only CDM 5.3 has"


def test_54_source_with_53_column_names_is_refused(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "cdm",
        {"VISIT_OCCURRENCE.csv": VISIT_53, "CDM_SOURCE.csv": CDM_SOURCE_53.format(version="5.4")},
    )
    folder.joinpath("CDM_SOURCE.csv").write_text(
        CDM_SOURCE_53.format(version="5.4")
        .replace("cdm_version,", "cdm_version,cdm_version_concept_id,")
        .replace("5.4,v5.0", "5.4,756265,v5.0"),
        encoding="utf-8",
    )
    with pytest.raises(UnknownColumnError) as raised:
        load_cdm(folder, CdmDatabase.parse(str(tmp_path / "node.duckdb")))
    assert raised.value.column == "admitting_source_concept_id"
