"""``commit_staging``: a stage folder into a CDM database, in one transaction.

The commit is where ids and concepts are decided (``resolve``), always in a DuckDB workbench:
the target connection itself for a DuckDB target; an in-memory DuckDB for PostgreSQL, into
which only what the run needs is copied (the id-map rows of the tables involved, the concept
rows of the run's distinct codes and their 'Maps to' targets, the matching
``source_to_concept_map`` rows). Steps, all inside ``bulk_writer``'s transaction, so that a
failure anywhere leaves the target exactly as it was:

1. each staged table is read (``read_parquet`` over its parts) and normalized;
2. the run's distinct source codes are mapped to concepts, and rows of an event table whose
   standard concept belongs to another event table's domain move there (``domains``);
3. new source keys get ids (``etl.id_map``), old keys keep theirs;
4. tables are resolved in foreign-key order (person before visits before events), each row
   either written or quarantined with a reason (``fk.person_missing``, ``key.duplicate``,
   ``omop.required_missing``);
5. ``replace`` mode drops and re-creates the connector's tables (and deletes the rows earlier
   runs routed out of them into tables it does not own); ``incremental`` deletes the rows of
   keys staged again (wherever routing put them before), then every mode appends;
6. rejections (staged and commit-time) go to ``etl.quarantine``, a row to ``etl.run``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from typing import Literal

import duckdb
import pyarrow as pa

from ehds.connectors.domains import (
    ROUTE,
    ROUTED_TABLES,
    kept_sql,
    main_concept,
    moved_sql,
    route_sql,
    routed_key_prefix,
)
from ehds.connectors.etl_store import (
    ID_MAP,
    ID_MAP_SCHEMA,
    QUARANTINE,
    QUARANTINE_COLUMNS,
    RUN,
    EtlStore,
)
from ehds.connectors.ids import (
    CODE_SUFFIX,
    FK_TARGETS,
    KEY,
    SOURCE,
    VOCAB_SUFFIX,
    concept_columns,
    fk_columns,
    fk_reason,
    id_column,
    omop_table,
)
from ehds.connectors.rejection import QUARANTINE_DIR
from ehds.connectors.report import (
    TOP_UNMAPPED,
    ConceptCounts,
    EtlReport,
    RoutedCounts,
    SourceCounts,
    TableCounts,
    UnmappedCode,
)
from ehds.connectors.resolve import (
    DETAIL,
    RANK,
    REASON,
    UNRESOLVED_PREFIX,
    code_map_sql,
    new_ids_sql,
    normalize_sql,
    omop_columns,
    quote,
    resolve_sql,
    staged_codes_sql,
)
from ehds.connectors.staging import StagingArea, arrow_type
from ehds.core.errors import InputError
from ehds.omop.bulk import bulk_writer
from ehds.omop.database import CdmDatabase
from ehds.omop.schema.layout import CDM_TABLES, VOCAB_TABLES

Mode = Literal["replace", "incremental"]
_FK_ORDER = ("location", "care_site", "provider", "person", "visit_occurrence", "visit_detail")
_IDS = "__etl_ids"
_FK_IDS = "__etl_fk_ids"
_NEW_IDS = "__etl_new_ids"
_CODES = "__etl_codes"
_CODE_MAP = "__etl_code_map"
_RESTAGED = "__etl_restaged"
_ROUTE_IDS = "__etl_route_ids"
_DOMAINS = "__etl_domain_concept"


class CommitError(InputError):
    """The stage or the options do not allow a commit; nothing was written."""


def _stg(table: str) -> str:
    return f"__etl_stg_{table}"


def _res(table: str) -> str:
    return f"__etl_res_{table}"


def _routed(table: str) -> str:
    return f"__etl_routed_{table}"


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _parquet(paths: Sequence[object]) -> str:
    files = ", ".join(_literal(str(p)) for p in paths)
    return f"read_parquet([{files}], union_by_name = true)"


def resolution_order(tables: Sequence[str]) -> list[str]:
    """Referenced tables before those that reference them, so that each foreign key resolves
    against keys already assigned; the Spark commit follows the same order."""
    first = [t for t in _FK_ORDER if t in tables]
    return first + sorted(t for t in tables if t not in _FK_ORDER)


def commit_staging(
    area: StagingArea,
    db: CdmDatabase,
    *,
    connector: str,
    source: str,
    tables: Sequence[str],
    mode: Mode = "replace",
    id_offset: int = 0,
) -> EtlReport:
    """Commit the rows staged in ``area`` to ``db``; ``tables`` are the CDM tables the
    connector owns (replaced in ``replace`` mode, even when nothing was staged for them)."""
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    clock = time.perf_counter()
    owned = list(dict.fromkeys(tables))
    _check(area, owned, mode, id_offset)
    staged = resolution_order([t for t in area.tables() if t in owned])
    report = EtlReport(0, connector, source, db.describe(), mode)
    with bulk_writer(db) as writer:
        store = EtlStore(writer)
        store.create()
        writer.ensure_tables([*CDM_TABLES, *VOCAB_TABLES])
        run_id = int(str(store.scalar(f"SELECT COALESCE(MAX(run_id), 0) + 1 FROM {RUN}")))
        report.run_id = run_id
        work = writer.workbench
        for table in staged:
            raw = _parquet(area.parts(table))
            present = [str(r[0]) for r in work.execute(f"DESCRIBE SELECT * FROM {raw}").fetchall()]
            work.execute(
                f"CREATE OR REPLACE TEMP TABLE {_stg(table)} AS "
                + normalize_sql(table, raw, present, "duckdb")
            )
        _map_codes(store, db, staged)
        if mode == "incremental":
            _restaged(store, staged)
        staged = _route(store, db, staged, report)
        _assign_ids(store, staged, owned, mode=mode, id_offset=id_offset, run_id=run_id)
        for table in staged:
            _resolve(store, table)
        if mode == "replace":
            writer.replace_tables(owned, defer_primary_keys=True)
            _delete_routed_before(store, db, owned)
        else:
            for table in _deletable(staged):
                _delete_restaged(store, db, table)
        for table in staged:
            columns = omop_columns(table)
            select = ", ".join(quote(c, "duckdb") for c in columns)
            writer.insert_select(
                table, columns, f"SELECT {select} FROM {_res(table)} WHERE {REASON} IS NULL"
            )
            writer.add_primary_key(table)
        _quarantine(store, area, staged, run_id, source)
        _count(store, area, staged, report)
        report.seconds = time.perf_counter() - clock
        finished = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        counts = json.dumps(report.to_json(), sort_keys=True)
        store.push(
            RUN,
            ["run_id", "connector", "source", "mode", "started", "finished", "counts"],
            f"SELECT {run_id}, {_literal(connector)}, {_literal(source)}, {_literal(mode)}, "
            f"TIMESTAMP '{started.isoformat(sep=' ')}', TIMESTAMP '{finished.isoformat(sep=' ')}', "
            f"{_literal(counts)}",
        )
    return report


def _check(area: StagingArea, owned: list[str], mode: str, id_offset: int) -> None:
    if mode not in ("replace", "incremental"):
        raise CommitError(f"mode {mode!r}: expected replace or incremental")
    if id_offset < 0:
        raise CommitError(f"id offset {id_offset}: must be 0 or more")
    for table in owned:
        if table not in CDM_TABLES:
            raise CommitError(f"{table!r} is not a clinical OMOP CDM table a connector may own")
    foreign = [t for t in area.tables() if t not in owned]
    if foreign:
        raise CommitError(
            f"staged table {foreign[0]!r} is not among the connector's tables ({', '.join(owned)})"
        )


def _assign_ids(
    store: EtlStore,
    staged: list[str],
    owned: list[str],
    *,
    mode: str,
    id_offset: int,
    run_id: int,
) -> None:
    """Fill ``__etl_ids`` (every key of the run, with its id; new keys written to the id
    map) and ``__etl_fk_ids`` (the keys foreign keys may name before this run's rows)."""
    work = store.workbench
    involved = {*owned, *staged, *(FK_TARGETS[fk] for t in staged for fk in fk_columns(t))}
    if involved & set(ROUTED_TABLES):
        # Routing may have put a key's row in any event table in an earlier run.
        involved |= set(ROUTED_TABLES)
    names = ", ".join(_literal(t) for t in sorted(involved))
    store.fetch(
        _IDS,
        f"SELECT table_name, source_key, id FROM {ID_MAP} WHERE table_name IN ({names})",
        ID_MAP_SCHEMA,
    )
    work.execute(
        f"CREATE OR REPLACE TEMP TABLE {_NEW_IDS} "
        "(table_name VARCHAR, source_key VARCHAR, id BIGINT)"
    )
    for table in staged:
        own = id_column(table)
        if own is not None:
            # Above the ids already in the table too: rows loaded by other means keep theirs.
            highest = store.scalar(f'SELECT MAX("{own}") FROM {store.writer.db.qualified(table)}')
            floor = max(id_offset, int(str(highest)) if highest is not None else 0)
            work.execute(
                f"INSERT INTO {_NEW_IDS} " + new_ids_sql(table, _stg(table), _IDS, floor, "duckdb")
            )
    work.execute(f"INSERT INTO {_IDS} SELECT * FROM {_NEW_IDS}")
    store.push(
        ID_MAP,
        ["table_name", "source_key", "id", "run_id"],
        f"SELECT table_name, source_key, id, {run_id} FROM {_NEW_IDS}",
    )
    # Replace mode: the owned tables are re-filled, so only this run's rows may be named;
    # incremental: the earlier rows stay, except those staged again (re-added when written).
    if mode == "replace":
        keep = f"table_name NOT IN ({', '.join(_literal(t) for t in owned)})"
    else:
        restaged = (
            " UNION ALL ".join(
                f"SELECT {_literal(t)} AS table_name, {KEY} AS source_key FROM {_stg(t)}"
                for t in staged
            )
            or "SELECT NULL AS table_name, NULL AS source_key WHERE false"
        )
        keep = f"(table_name, source_key) NOT IN (SELECT table_name, source_key FROM ({restaged}))"
    work.execute(
        f"CREATE OR REPLACE TEMP TABLE {_FK_IDS} AS SELECT table_name, source_key, id "
        f"FROM {_IDS} WHERE {keep}"
    )


def _map_codes(store: EtlStore, db: CdmDatabase, staged: list[str]) -> None:
    """``__etl_code_map``: every distinct source code of the run, resolved."""
    work = store.workbench
    work.execute(f"CREATE OR REPLACE TEMP TABLE {_CODES} (vocabulary_id VARCHAR, code VARCHAR)")
    for table in staged:
        sql = staged_codes_sql(table, _stg(table), "duckdb")
        if sql is not None:
            work.execute(f"INSERT INTO {_CODES} {sql}")
    if store.postgres is None:
        concept = db.qualified("concept")
        relationship = db.qualified("concept_relationship")
        stcm = db.qualified("source_to_concept_map")
    else:
        concept, relationship, stcm = _fetch_vocabulary(store, db)
    work.execute(
        f"CREATE OR REPLACE TEMP TABLE {_CODE_MAP} AS "
        + code_map_sql(
            _CODES,
            concept=concept,
            concept_relationship=relationship,
            source_to_concept_map=stcm,
            dialect="duckdb",
        )
    )


def _model_schema(table: str) -> pa.Schema:
    return pa.schema([(c.name, arrow_type(c)) for c in omop_table(table).columns])


def _fetch_vocabulary(store: EtlStore, db: CdmDatabase) -> tuple[str, str, str]:
    """Copy the vocabulary rows the run's codes need from PostgreSQL into the workbench."""
    store.writer.execute(
        f"CREATE TEMP TABLE {_CODES} (vocabulary_id TEXT, code TEXT) ON COMMIT DROP"
    )
    store.push(_CODES, ["vocabulary_id", "code"], f"SELECT DISTINCT * FROM {_CODES}")
    concept, relationship = db.qualified("concept"), db.qualified("concept_relationship")
    sources = (
        f"SELECT c.* FROM {concept} c JOIN {_CODES} k "
        "ON c.vocabulary_id = k.vocabulary_id AND c.concept_code = k.code"
    )
    maps = (
        f"SELECT r.* FROM {relationship} r JOIN ({sources}) s ON s.concept_id = r.concept_id_1 "
        "WHERE r.relationship_id = 'Maps to'"
    )
    targets = f"SELECT t.* FROM {concept} t JOIN ({maps}) m ON m.concept_id_2 = t.concept_id"
    store.fetch("__etl_concept", f"{sources} UNION {targets}", _model_schema("concept"))
    store.fetch("__etl_concept_relationship", maps, _model_schema("concept_relationship"))
    store.fetch(
        "__etl_stcm",
        f"SELECT m.* FROM {db.qualified('source_to_concept_map')} m JOIN {_CODES} k "
        "ON m.source_vocabulary_id = k.vocabulary_id AND m.source_code = k.code",
        _model_schema("source_to_concept_map"),
    )
    return "__etl_concept", "__etl_concept_relationship", "__etl_stcm"


def _resolve(store: EtlStore, table: str) -> None:
    """Resolve ``table``; its written keys become nameable by the tables after it. Its own
    keys are nameable while it resolves (a visit's preceding visit)."""
    work = store.workbench
    name = _literal(table)
    if id_column(table) is not None:
        work.execute(
            f"INSERT INTO {_FK_IDS} SELECT i.table_name, i.source_key, i.id FROM {_IDS} i "
            f"JOIN {_stg(table)} s ON i.table_name = {name} AND i.source_key = s.{KEY} "
            f"WHERE s.{RANK} = 1"
        )
    work.execute(
        f"CREATE OR REPLACE TEMP TABLE {_res(table)} AS "
        + resolve_sql(
            table,
            staged=_stg(table),
            ids=_IDS,
            fk_ids=_FK_IDS,
            code_map=_CODE_MAP,
            dialect="duckdb",
        )
    )
    if id_column(table) is not None:
        work.execute(
            f"DELETE FROM {_FK_IDS} WHERE table_name = {name} AND source_key IN "
            f"(SELECT {KEY} FROM {_res(table)} WHERE {REASON} IS NOT NULL AND {KEY} IS NOT NULL)"
        )


def _restaged(store: EtlStore, staged: list[str]) -> None:
    """``__etl_restaged``: every (table, key) a staged row may have had in an earlier run,
    before routing moves it: its key in its table and, for an event table, its routed key
    in each other event table (its domain may have changed with the vocabulary)."""
    work = store.workbench
    work.execute(
        f"CREATE OR REPLACE TEMP TABLE {_RESTAGED} (table_name VARCHAR, source_key VARCHAR)"
    )
    for table in staged:
        if id_column(table) is None:
            continue
        targets = [(table, "")]
        if table in ROUTED_TABLES:
            targets += [(t, routed_key_prefix(table)) for t in ROUTED_TABLES if t != table]
        for target, prefix in targets:
            work.execute(
                f"INSERT INTO {_RESTAGED} SELECT {_literal(target)}, {_literal(prefix)} || {KEY} "
                f"FROM {_stg(table)} WHERE {KEY} IS NOT NULL"
            )


def _deletable(staged: list[str]) -> list[str]:
    """The tables incremental mode deletes re-staged keys from."""
    if set(staged) & set(ROUTED_TABLES):
        return resolution_order(list({*staged, *ROUTED_TABLES}))
    return staged


def _route(store: EtlStore, db: CdmDatabase, staged: list[str], report: EtlReport) -> list[str]:
    """Move the staged rows whose standard concept's domain is another event table's to that
    table (``domains``); return the staged tables after the move."""
    origins = [t for t in staged if t in ROUTED_TABLES]
    if not origins:
        return staged
    concept = _domain_concepts(store, db, origins)
    work = store.workbench
    moves: list[tuple[str, str, int]] = []
    for table in origins:
        work.execute(
            f"CREATE OR REPLACE TEMP TABLE {_routed(table)} AS "
            + route_sql(
                table, staged=_stg(table), code_map=_CODE_MAP, concept=concept, dialect="duckdb"
            )
        )
        counts = work.execute(
            f"SELECT {ROUTE}, count(*) FROM {_routed(table)} WHERE {ROUTE} IS NOT NULL "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        moves += [(table, str(target), int(n)) for target, n in counts]
    for table in dict.fromkeys(origin for origin, _, _ in moves):
        work.execute(
            f"CREATE OR REPLACE TEMP TABLE {_stg(table)} AS "
            + kept_sql(table, _routed(table), "duckdb")
        )
    present = set(staged)
    for origin, target, n in moves:
        sql = moved_sql(origin, target, _routed(origin), "duckdb")
        if target in present:
            work.execute(f"INSERT INTO {_stg(target)} BY NAME {sql}")
        else:
            work.execute(f"CREATE OR REPLACE TEMP TABLE {_stg(target)} AS {sql}")
            present.add(target)
        report.routed.append(RoutedCounts(origin, target, n))
    return resolution_order(list(present))


def _domain_concepts(store: EtlStore, db: CdmDatabase, origins: list[str]) -> str:
    """A relation (concept_id, domain_id, standard_concept) holding at least the concepts the
    main concept columns of ``origins`` resolve to: the target's concept table for DuckDB,
    a copy of only those rows for PostgreSQL."""
    if store.postgres is None:
        return db.qualified("concept")
    given = [
        f"SELECT {quote(main_concept(t), 'duckdb')} AS concept_id FROM {_stg(t)}" for t in origins
    ]
    ids = " UNION ".join([f"SELECT concept_id FROM {_CODE_MAP}", *given])
    store.writer.execute(f"CREATE TEMP TABLE {_ROUTE_IDS} (concept_id BIGINT) ON COMMIT DROP")
    store.push(
        _ROUTE_IDS,
        ["concept_id"],
        f"SELECT DISTINCT concept_id FROM ({ids}) WHERE concept_id IS NOT NULL AND concept_id <> 0",
    )
    store.fetch(
        _DOMAINS,
        f"SELECT c.concept_id, c.domain_id, c.standard_concept FROM {db.qualified('concept')} c "
        f"JOIN {_ROUTE_IDS} k ON k.concept_id = c.concept_id",
        pa.schema(
            [
                ("concept_id", pa.int32()),
                ("domain_id", pa.string()),
                ("standard_concept", pa.string()),
            ]
        ),
    )
    return _DOMAINS


def _delete_routed_before(store: EtlStore, db: CdmDatabase, owned: list[str]) -> None:
    """Replace mode: the rows earlier runs routed out of the owned event tables into event
    tables this connector does not own (those it owns are re-filled anyway)."""
    origins = [t for t in owned if t in ROUTED_TABLES]
    for table in ROUTED_TABLES:
        if table in owned or not origins:
            continue
        own = id_column(table)
        if own is None:
            continue
        prefixes = " OR ".join(
            f"starts_with(source_key, {_literal(routed_key_prefix(o))})" for o in origins
        )
        ids = (
            f"SELECT id FROM {_IDS} WHERE table_name = {_literal(table)} AND ({prefixes}) "
            f"AND (table_name, source_key) NOT IN (SELECT table_name, source_key FROM {_NEW_IDS})"
        )
        store.delete_ids(db.qualified(table), own, ids)


def _delete_restaged(store: EtlStore, db: CdmDatabase, table: str) -> None:
    own = id_column(table)
    if own is not None:
        # Only keys committed before: a new key's id is above every id of the table.
        ids = (
            f"SELECT id FROM {_IDS} WHERE table_name = {_literal(table)} AND source_key IN "
            f"(SELECT source_key FROM {_RESTAGED} WHERE table_name = {_literal(table)}) "
            f"AND (table_name, source_key) NOT IN (SELECT table_name, source_key FROM {_NEW_IDS})"
        )
        store.delete_ids(db.qualified(table), own, ids)
    elif "person_id" in omop_columns(table):
        ids = f"SELECT DISTINCT person_id FROM {_res(table)} WHERE person_id IS NOT NULL"
        store.delete_ids(db.qualified(table), "person_id", ids)


def _quarantine(
    store: EtlStore, area: StagingArea, staged: list[str], run_id: int, source: str
) -> None:
    parts = area.parts(QUARANTINE_DIR)
    if parts:
        store.push(
            QUARANTINE,
            QUARANTINE_COLUMNS,
            f"SELECT {run_id}, NULL, source, location, record_type, record_key, reason, detail, "
            f"record FROM {_parquet(parts)}",
        )
    for table in staged:
        # The staged row (with its source keys and codes) is what an operator needs to fix.
        store.push(
            QUARANTINE,
            QUARANTINE_COLUMNS,
            f"SELECT {run_id}, {_literal(table)}, {_literal(source)}, "
            f"COALESCE(r.{SOURCE}, ''), {_literal(table)}, r.{KEY}, r.{REASON}, r.{DETAIL}, "
            f"CAST(to_json(s) AS VARCHAR) FROM {_res(table)} AS r JOIN {_stg(table)} AS s "
            f"ON s.{KEY} IS NOT DISTINCT FROM r.{KEY} AND s.{RANK} = r.{RANK} "
            f"WHERE r.{REASON} IS NOT NULL",
        )


def _count(store: EtlStore, area: StagingArea, staged: list[str], report: EtlReport) -> None:
    work = store.workbench
    for source_type, n in area.read_counts().items():
        report.sources[source_type] = SourceCounts(read=n)
    parts = area.parts(QUARANTINE_DIR)
    if parts:
        rows = work.execute(
            f"SELECT record_type, reason, count(*) FROM {_parquet(parts)} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        for record_type, reason, n in rows:
            counts = report.sources.setdefault(str(record_type), SourceCounts())
            counts.rejected[str(reason)] = int(n)
    for table in staged:
        res = _res(table)
        written = report.tables.setdefault(table, TableCounts())
        written.staged = _int(work, f"SELECT count(*) FROM {res}")
        written.written = _int(work, f"SELECT count(*) FROM {res} WHERE {REASON} IS NULL")
        for reason, n in work.execute(
            f"SELECT {REASON}, count(*) FROM {res} WHERE {REASON} IS NOT NULL GROUP BY ALL"
        ).fetchall():
            written.rejected[str(reason)] = int(n)
        for fk in fk_columns(table):
            flag = quote(UNRESOLVED_PREFIX + fk, "duckdb")
            if fk == "person_id":
                continue
            n = _int(work, f"SELECT count(*) FROM {res} WHERE {REASON} IS NULL AND {flag}")
            if n:
                written.fk_unresolved[fk_reason(fk)] = n
        for concept in concept_columns(table):
            stats = _concept_counts(work, table, concept)
            if stats.with_code:
                report.concepts.append(stats)


def _concept_counts(work: duckdb.DuckDBPyConnection, table: str, concept: str) -> ConceptCounts:
    res = _res(table)
    code = quote(concept + CODE_SUFFIX, "duckdb")
    vocab = quote(concept + VOCAB_SUFFIX, "duckdb")
    column = quote(concept, "duckdb")
    written = f"{REASON} IS NULL AND {code} IS NOT NULL"
    row = work.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {column} <> 0) FROM {res} WHERE {written}"
    ).fetchall()[0]
    top = work.execute(
        f"SELECT {vocab}, {code}, count(*) AS n FROM {res} WHERE {written} AND {column} = 0 "
        f"GROUP BY ALL ORDER BY n DESC, 1, 2 LIMIT {TOP_UNMAPPED}"
    ).fetchall()
    return ConceptCounts(
        table,
        concept,
        int(row[0]),
        int(row[1]),
        [UnmappedCode(None if v is None else str(v), str(c), int(n)) for v, c, n in top],
    )


def _int(work: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(work.execute(sql).fetchall()[0][0])
