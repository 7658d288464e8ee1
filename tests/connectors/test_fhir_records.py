"""``map_line``: one FHIR resource → staged rows or a rejection, checked against source records
(the Synthea sample in ../shared/data and this folder's Observation fixtures)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import pickle
from pathlib import Path

import pytest

from ehds.connectors.fhir.fields import parse_datetime, reference_key
from ehds.connectors.fhir.records import map_line

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
PATIENT = "6a4160eb-a793-2f86-2302-378626f46cce"


def _sample_line(shared_data: Path, resource_type: str, resource_id: str) -> str:
    path = shared_data / "fhir-synthea-10" / f"{resource_type}.000.ndjson.gz"
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            if f'"id":"{resource_id}"' in line.replace(" ", ""):
                return line
    raise AssertionError(f"{resource_type}/{resource_id} not in the sample")


def _fixture_lines() -> list[str]:
    return (FIXTURES / "observations.ndjson").read_text(encoding="utf-8").splitlines()


def test_patient_maps_to_person_with_birth_gender_race(shared_data: Path) -> None:
    line = _sample_line(shared_data, "Patient", PATIENT)
    source = json.loads(line)
    rows, rejection, resource_type = map_line(line, "Patient.000.ndjson.gz:4")
    assert rejection is None
    assert resource_type == "Patient"
    [(table, person)] = rows
    assert table == "person"
    assert source["birthDate"] == "1963-07-15"
    assert source["gender"] == "female"
    assert person["_key"] == f"Patient/{PATIENT}"
    assert (person["year_of_birth"], person["month_of_birth"], person["day_of_birth"]) == (
        1963,
        7,
        15,
    )
    assert person["gender_concept_id"] == 8532
    assert person["gender_source_value"] == "female"
    assert person["race_concept_id"] == 8527  # ombCategory 2106-3 White
    assert person["ethnicity_concept_id"] == 38003564  # 2186-5 Not Hispanic or Latino
    assert person["_source"] == "Patient.000.ndjson.gz:4"


def test_deceased_patient_also_gives_a_death_row(shared_data: Path) -> None:
    line = _sample_line(shared_data, "Patient", "129c6ac7-8d06-89de-ad63-0204a93e76c3")
    rows, rejection, _ = map_line(line, "p:1")
    assert rejection is None
    death = dict(rows)["death"]
    # deceasedDateTime 1989-05-09T20:35:22-04:00: the wall-clock date and time are kept
    assert death["death_date"] == dt.date(1989, 5, 9)
    assert death["death_datetime"] == dt.datetime(1989, 5, 9, 20, 35, 22)
    assert (
        death["person_id__key"] == death["_key"] == "Patient/129c6ac7-8d06-89de-ad63-0204a93e76c3"
    )


def test_condition_code_date_person_and_visit(shared_data: Path) -> None:
    line = _sample_line(shared_data, "Condition", "102de2ad-1850-047c-93be-1464072f41d9")
    rows, rejection, _ = map_line(line, "c:1")
    assert rejection is None
    [(table, row)] = rows
    assert table == "condition_occurrence"
    assert row["condition_concept_id__vocab"] == "SNOMED"
    assert row["condition_concept_id__code"] == "73595000"
    assert row["condition_source_value"] == "73595000"
    assert row["condition_start_date"] == dt.date(2021, 4, 5)
    assert row["person_id__key"] == f"Patient/{PATIENT}"
    assert row["visit_occurrence_id__key"] == "Encounter/73f0269c-bb03-766c-52e0-48cb714e9f24"
    assert row["condition_type_concept_id"] == 32817


def test_medication_request_to_drug_exposure(shared_data: Path) -> None:
    line = _sample_line(shared_data, "MedicationRequest", "03f0ec12-fbce-86a3-afc9-6bc828de162d")
    [(table, row)] = map_line(line, "m:1")[0]
    assert table == "drug_exposure"
    assert (row["drug_concept_id__vocab"], row["drug_concept_id__code"]) == ("RxNorm", "310798")
    assert row["drug_exposure_start_date"] == dt.date(1995, 9, 25)
    assert row["drug_exposure_end_date"] is not None


def test_encounter_class_gives_the_visit_concept(shared_data: Path) -> None:
    path = shared_data / "fhir-synthea-10" / "Encounter.000.ndjson.gz"
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            source = json.loads(line)
            [(table, row)] = map_line(line, f"e:{number}")[0]
            expected = {"AMB": 9202, "IMP": 9201, "EMER": 9203, "HH": 581476, "VR": 722455}.get(
                source["class"]["code"], 0
            )
            assert table == "visit_occurrence"
            assert row["visit_concept_id"] == expected
            assert row["visit_start_date"] == dt.date.fromisoformat(source["period"]["start"][:10])
            assert row["visit_end_date"] == dt.date.fromisoformat(source["period"]["end"][:10])


def test_observations_route_by_category_and_value_type() -> None:
    lines = _fixture_lines()
    weight = dict(map_line(lines[0], "o:1")[0])["measurement"]
    assert (weight["measurement_concept_id__vocab"], weight["measurement_concept_id__code"]) == (
        "LOINC",
        "29463-7",
    )
    assert weight["value_as_number"] == 72.5
    assert (weight["unit_concept_id__vocab"], weight["unit_concept_id__code"]) == ("UCUM", "kg")
    assert weight["unit_source_value"] == "kg"
    assert weight["measurement_date"] == dt.date(2021, 4, 5)

    pressure = map_line(lines[1], "o:2")[0]
    assert [
        (t, r["_key"], r["measurement_concept_id__code"], r["value_as_number"]) for t, r in pressure
    ] == [
        ("measurement", "Observation/obs-bp/component/0", "8462-4", 81.0),
        ("measurement", "Observation/obs-bp/component/1", "8480-6", 127.0),
    ]

    [(table, hba1c)] = map_line(lines[2], "o:3")[0]
    assert table == "measurement"
    assert (hba1c["range_low"], hba1c["range_high"]) == (4.0, 5.6)
    assert hba1c["operator_concept_id"] == 4171756  # comparator "<"
    # 2020-11-02T09:10:00+01:00: the wall-clock time, not UTC
    assert hba1c["measurement_datetime"] == dt.datetime(2020, 11, 2, 9, 10)

    [(table, smoking)] = map_line(lines[4], "o:5")[0]
    assert table == "observation"
    assert (smoking["value_as_concept_id__vocab"], smoking["value_as_concept_id__code"]) == (
        "SNOMED",
        "266919005",
    )
    assert smoking["observation_date"] == dt.date(2019, 2, 11)

    [(table, note)] = map_line(lines[5], "o:6")[0]
    assert table == "observation"
    assert note["value_as_string"] == "former smoker, quit in 2010"
    assert note["observation_date"] == dt.date(2019, 2, 1)  # partial date 2019-02
    assert note["person_id__key"] == f"Patient/{PATIENT}"  # urn:uuid reference


def test_bad_lines_are_rejected_with_reasons_and_no_values() -> None:
    lines = _fixture_lines()
    rows, malformed, resource_type = map_line(lines[3], "observations.ndjson:4")
    assert rows == []
    assert resource_type == "unknown"
    assert malformed is not None
    assert malformed.reason == "fhir.invalid_json"
    assert (malformed.source, malformed.location) == (
        "observations.ndjson",
        "observations.ndjson:4",
    )
    assert malformed.record == lines[3]

    rows, invalid, resource_type = map_line(lines[6], "observations.ndjson:7")
    assert rows == []
    assert resource_type == "Observation"
    assert invalid is not None
    assert invalid.reason == "fhir.invalid_resource"
    assert "effectiveDateTime" in invalid.detail
    assert "yesterday" not in invalid.detail
    assert invalid.record_key == "Observation/obs-invalid"

    rows, orphan, _ = map_line(lines[7], "observations.ndjson:8")
    assert rows == []
    assert orphan is not None
    assert orphan.reason == "fhir.missing_subject"


def test_without_validation_the_invalid_date_is_still_rejected() -> None:
    rows, rejection, _ = map_line(_fixture_lines()[6], "o:7", validate=False)
    assert rows == []
    assert rejection is not None
    assert rejection.reason == "fhir.invalid_value"
    assert "effectiveDateTime" in rejection.detail
    assert "yesterday" not in rejection.detail


def test_unmapped_types_are_read_but_give_no_rows() -> None:
    line = json.dumps({"resourceType": "Practitioner", "id": "p1", "name": [{"family": "X"}]})
    assert map_line(line, "x:1") == ([], None, "Practitioner")


def test_map_line_results_pickle_for_spark() -> None:
    result = map_line(_fixture_lines()[6], "o:7")
    assert pickle.loads(pickle.dumps(result)) == result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020", (dt.date(2020, 1, 1), None)),
        ("2020-03", (dt.date(2020, 3, 1), None)),
        ("2020-03-04", (dt.date(2020, 3, 4), None)),
        ("2020-03-04T05:06:07.123Z", (dt.date(2020, 3, 4), dt.datetime(2020, 3, 4, 5, 6, 7))),
    ],
)
def test_parse_datetime_forms(text: str, expected: tuple[dt.date, dt.datetime | None]) -> None:
    assert parse_datetime(text, "f") == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/abc", "Patient/abc"),
        ("urn:uuid:abc", "Patient/abc"),
        ("https://server/fhir/Patient/abc/_history/2", "Patient/abc"),
        ("Patient?identifier=x|1", None),
        ("Group/abc", None),
    ],
)
def test_reference_key(reference: str, expected: str | None) -> None:
    assert reference_key({"reference": reference}, "Patient") == expected
