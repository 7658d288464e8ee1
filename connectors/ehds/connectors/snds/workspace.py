"""The DuckDB workspace the SNDS mapping runs in: source tables loaded as text, SQL macros
for SNDS dates and codes, and the shared ``rejected`` table.

Every source column is loaded as text (``VARCHAR``) whatever the file type, and parsed by the
macros below, so that CSV and Parquet extracts follow one code path and a value that does not
parse becomes a counted rejection instead of a failed load. Each loaded row keeps ``_file``
and ``_line`` (the CSV line, header being line 1; for Parquet the 1-based row) for ``_source``
and quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb

from ehds.connectors.snds.sources import SndsSourceError, SourceFile, SourceSpec

DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%d%b%Y:%H:%M:%S",  # SAS datetime, as in PMSI extracts (02JAN2019:00:00:00)
    "%d/%m/%Y",
    "%d%m%Y",  # PMSI ENT_DAT / SOR_DAT
    "%Y%m%d",
)
"""Tried in order. Dates outside 1800-2100 are SNDS placeholders (1600-01-01, 2999-12-31...)
and read as absent."""

_MACROS = (
    # A date from SNDS text, or NULL (absent, unparseable or placeholder).
    "CREATE MACRO snds_parse_date(x) AS "
    f"CAST(try_strptime(trim(x), {list(DATE_FORMATS)!r}) AS DATE)",
    "CREATE MACRO snds_date(x) AS CASE WHEN year(snds_parse_date(x)) BETWEEN 1800 AND 2100 "
    "THEN snds_parse_date(x) END",
    # Integer text ("01", "1", "1.0") to its canonical form, NULL when not an integer.
    "CREATE MACRO snds_int(x) AS TRY_CAST(TRY_CAST(trim(x) AS DOUBLE) AS BIGINT)",
    "CREATE MACRO snds_text(x) AS NULLIF(trim(x), '')",
    # A CIM-10 code in the dotted form of Athena's CIM10 vocabulary (C539 -> C53.9), or NULL
    # when the text is not a CIM-10 code (letter, two digits, optional subdivisions).
    "CREATE MACRO cim10_compact(x) AS regexp_replace(upper(trim(x)), '[^A-Z0-9]', '', 'g')",
    "CREATE MACRO cim10(x) AS CASE WHEN "
    "regexp_full_match(cim10_compact(x), '[A-Z][0-9]{2}[0-9A-Z]{0,3}') "
    "THEN CASE WHEN length(cim10_compact(x)) > 3 "
    "THEN substr(cim10_compact(x), 1, 3) || '.' || substr(cim10_compact(x), 4) "
    "ELSE cim10_compact(x) END END",
    # A CCAM act code (4 letters, 3 digits), NULL otherwise.
    "CREATE MACRO ccam(x) AS CASE WHEN regexp_full_match(upper(trim(x)), '[A-Z]{4}[0-9]{3}') "
    "THEN upper(trim(x)) END",
    # A CIP13 pack code (13 digits), NULL otherwise.
    "CREATE MACRO cip13(x) AS CASE WHEN regexp_full_match(CAST(snds_int(x) AS VARCHAR), "
    "'[0-9]{13}') THEN CAST(snds_int(x) AS VARCHAR) END",
    # The person key of the contract: IR_BEN_R/<BEN_NIR_PSA>|<BEN_RNG_GEM>.
    "CREATE MACRO person_key(psa, rng) AS CASE WHEN snds_text(psa) IS NOT NULL "
    "AND snds_int(rng) IS NOT NULL THEN 'IR_BEN_R/' || trim(psa) || '|' "
    "|| CAST(snds_int(rng) AS VARCHAR) END",
)

REJECTED_COLUMNS: tuple[str, ...] = (
    "source",
    "location",
    "record_type",
    "record_key",
    "reason",
    "detail",
    "record",
)


def table_name(spec: SourceSpec) -> str:
    """The workspace table holding every file of ``spec`` (``src_t_mcoaab``...)."""
    return "src_" + spec.name.lower()


def open_workspace(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(database)
    con.execute("SET preserve_insertion_order = true")
    for macro in _MACROS:
        con.execute(macro)
    columns = ", ".join(f"{name} VARCHAR" for name in REJECTED_COLUMNS)
    con.execute(f"CREATE TABLE rejected ({columns})")
    return con


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _reader(file: SourceFile) -> str:
    path = _literal(str(file.path))
    if file.is_parquet:
        return f"read_parquet({path}, file_row_number = true)"
    return f"read_csv({path}, all_varchar = true, header = true)"


def load_sources(
    con: duckdb.DuckDBPyConnection,
    specs: Sequence[SourceSpec],
    files: Mapping[str, list[SourceFile]],
) -> dict[str, int]:
    """Create one table per spec (empty when the extract lacks it) and return rows read.

    A file lacking a required column is an error naming the file and the columns; a missing
    optional column reads as NULL.
    """
    counts: dict[str, int] = {}
    for spec in specs:
        target = table_name(spec)
        columns = ", ".join(f"{_quote(name)} VARCHAR" for name in spec.columns)
        con.execute(
            f"CREATE TABLE {target} ({columns}, _file VARCHAR, _line BIGINT, _year VARCHAR)"
        )
        total = 0
        for file in files.get(spec.name, []):
            total += _load_file(con, target, spec, file)
        counts[spec.name] = total
    return counts


def _load_file(
    con: duckdb.DuckDBPyConnection, target: str, spec: SourceSpec, file: SourceFile
) -> int:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {_reader(file)}").fetchall()
    except duckdb.Error as exc:
        raise SndsSourceError(f"SNDS source {file.relative}: cannot be read ({exc})") from None
    by_upper = {str(row[0]).upper(): str(row[0]) for row in described}
    missing = [name for name in spec.required if name not in by_upper]
    if missing:
        raise SndsSourceError(
            f"SNDS source {file.relative} (table {spec.name}): missing column(s) "
            + ", ".join(missing)
        )
    selected = ", ".join(
        f"CAST({_quote(by_upper[name])} AS VARCHAR)" if name in by_upper else "NULL"
        for name in spec.columns
    )
    if file.is_parquet:
        line = "file_row_number + 1"
        source = _reader(file)
    else:
        # rowid follows the CSV order (insertion order is preserved); +2 skips the header.
        con.execute(f"CREATE OR REPLACE TEMP TABLE _load AS SELECT * FROM {_reader(file)}")
        line = "rowid + 2"
        source = "_load"
    con.execute(
        f"INSERT INTO {target} SELECT {selected}, {_literal(file.relative)}, {line}, "
        f"{_literal(file.year)} FROM {source}"
    )
    con.execute("DROP TABLE IF EXISTS _load")
    count = con.execute(
        f"SELECT count(*) FROM {target} WHERE _file = {_literal(file.relative)}"
    ).fetchone()
    return int(count[0]) if count else 0
