"""What a load reads from: a folder or zip of CSV/Parquet files, the Parquet layout, or
another DuckDB file, opened as one ``CdmSource``.

OHDSI distributes CDMs with file names in any letter case (``PERSON.csv``), zipped on macOS
with ``__MACOSX/._*`` resource forks, next to READMEs: names are matched case-insensitively,
clutter (``__MACOSX/``, dot-files) is skipped silently, files that are not ``.csv`` or
``.parquet`` are listed as ignored. A *data* file whose name is not a table is an error
(``PERSONS.csv`` must not vanish silently). DuckDB reads neither zip members nor
streams, so a zip's data files are extracted to a temporary folder for the load's duration.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import duckdb

from ehds.omop import parquet_layout
from ehds.omop.loader import duckdb_source
from ehds.omop.loader.csv_reader import CsvDialect, read_header
from ehds.omop.loader.errors import Location, SourceError, UnknownTableError
from ehds.omop.loader.source_tables import CsvTable, ParquetTable, SourceColumn, SourceTable

_DATA_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class EmptyTable:
    """A table the source has but that holds no data to load."""

    origin: str
    rows: int
    """Rows it holds all the same (a placeholder's header line turned into a row)."""
    reason: str
    placeholder: bool = False


PLACEHOLDER = "placeholder (columns column0..N): treated as empty"


@dataclass
class CdmSource:
    """The tables found in a source, keyed by lower-case table name."""

    description: str
    tables: dict[str, SourceTable] = field(default_factory=dict)
    empty: dict[str, EmptyTable] = field(default_factory=dict)
    """Tables present but holding no data (Eunomia placeholders, 0-byte files)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Known tables deliberately not loaded -> why."""
    ignored: list[str] = field(default_factory=list)
    duckdb_file: Path | None = None

    def present(self, table: str) -> bool:
        return table in self.tables or table in self.empty

    def attach(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Make the source readable from ``conn`` (a DuckDB file must be attached)."""
        if self.duckdb_file is not None:
            duckdb_source.attach(conn, self.duckdb_file)


@dataclass(frozen=True)
class _DataFile:
    path: Path
    shown: str
    """The name in messages: relative to the folder, or ``archive.zip:member``."""


@contextmanager
def open_source(
    path: Path,
    *,
    dialect: CsvDialect,
    accept: Iterable[str],
    skip: Mapping[str, str],
    schemas: Iterable[str] = (),
    table_kind: str = "OMOP CDM v5.4 table",
) -> Iterator[CdmSource]:
    """Open ``path`` and find its tables. ``accept``: table names to load; ``skip``: known
    names to leave out (reason), anything else in a data file's name is an error that says
    it names no ``table_kind``."""
    accepted = frozenset(accept)
    naming = _Naming(accepted, skip, table_kind)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        if parquet_layout.is_layout(path):
            yield _layout_source(path, accepted, skip)
        else:
            source = _files_source(f"folder {path}", _folder_files(path), dialect, naming)
            source.ignored.extend(
                f"{child.name}/: a folder (only files directly in {path.name} are read)"
                for child in sorted(path.iterdir())
                if child.is_dir() and not _is_clutter([child.name])
            )
            yield source
        return
    if zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="ehds-load-") as scratch:
            files = _extract(path, Path(scratch))
            yield _files_source(f"zip {path}", files, dialect, naming)
        return
    if duckdb_source.is_duckdb_file(path):
        yield _duckdb_source(path, accepted, skip, schemas)
        return
    raise SourceError(f"{path}: expected a folder, a .zip or a DuckDB file")


def _duckdb_source(
    path: Path, accepted: frozenset[str], skip: Mapping[str, str], schemas: Iterable[str]
) -> CdmSource:
    found = duckdb_source.discover_duckdb(path, accepted | set(skip), schemas)
    source = CdmSource(f"DuckDB file {path}", duckdb_file=path, ignored=found.ignored)
    for table, (origin, rows) in found.placeholders.items():
        if table in skip:
            source.skipped[table] = f"{skip[table]}; {PLACEHOLDER}"
        else:
            source.empty[table] = EmptyTable(origin, rows, PLACEHOLDER, placeholder=True)
    for table, found_table in found.tables.items():
        if table in skip:
            source.skipped[table] = skip[table]
        else:
            source.tables[table] = found_table
    return source


def _is_clutter(parts: Iterable[str]) -> bool:
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _folder_files(root: Path) -> list[_DataFile]:
    return [
        _DataFile(child, child.name)
        for child in sorted(root.iterdir())
        if child.is_file() and not _is_clutter([child.name])
    ]


def _extract(archive: Path, scratch: Path) -> list[_DataFile]:
    """Extract the data members (any depth) under numbered names: member names never
    become paths, so a hostile archive cannot write outside ``scratch``."""
    files: list[_DataFile] = []
    try:
        with zipfile.ZipFile(archive) as zipped:
            for index, info in enumerate(zipped.infolist()):
                member = PurePosixPath(info.filename)
                if info.is_dir() or _is_clutter(member.parts):
                    continue
                shown = f"{archive.name}:{info.filename}"
                if member.suffix.lower() not in _DATA_SUFFIXES:
                    files.append(_DataFile(Path(member.name), shown))
                    continue
                target = scratch / f"{index:05d}{member.suffix.lower()}"
                with zipped.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                files.append(_DataFile(target, shown))
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(
            f"{archive.name}: unreadable zip archive ({type(exc).__name__})"
        ) from None
    return files


@dataclass(frozen=True)
class _Naming:
    accepted: frozenset[str]
    skip: Mapping[str, str]
    table_kind: str

    def table_of(self, shown: str) -> str:
        """The table a data file holds, from its name (``PERSON.csv`` -> ``person``)."""
        name = PurePosixPath(shown.rsplit(":", 1)[-1]).name
        table = name[: name.rfind(".")].lower()
        if table in self.accepted or table in self.skip:
            return table
        hint = difflib.get_close_matches(table, sorted(self.accepted), n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        raise UnknownTableError(
            f"the file name names no {self.table_kind}{suggestion}", location=Location(shown)
        )


def _files_source(
    description: str, files: list[_DataFile], dialect: CsvDialect, naming: _Naming
) -> CdmSource:
    skip = naming.skip
    source = CdmSource(description)
    seen: dict[str, str] = {}
    for data_file in files:
        suffix = PurePosixPath(data_file.shown).suffix.lower()
        if suffix not in _DATA_SUFFIXES:
            source.ignored.append(f"{data_file.shown}: not a .csv or .parquet file")
            continue
        table = naming.table_of(data_file.shown)
        if table in seen:
            raise SourceError(
                f"{seen[table]} and {data_file.shown} both hold table {table}: keep one"
            )
        seen[table] = data_file.shown
        if table in skip:
            source.skipped[table] = skip[table]
            continue
        if suffix == ".parquet":
            files_ = [(data_file.path, data_file.shown)]
            source.tables[table] = _parquet_table(table, data_file.shown, files_)
            continue
        header = read_header(data_file.path, dialect)
        if header is None:
            source.empty[table] = EmptyTable(data_file.shown, 0, "empty file: no header")
            continue
        source.tables[table] = CsvTable(table, data_file.shown, data_file.path, header, dialect)
    return source


def _layout_source(root: Path, accepted: frozenset[str], skip: Mapping[str, str]) -> CdmSource:
    source = CdmSource(f"Parquet layout {root}")
    for child in sorted(root.iterdir()):
        name = child.name
        if _is_clutter([name]) or name == parquet_layout.MARKER:
            continue
        if not child.is_dir() or name.lower() not in accepted | set(skip):
            source.ignored.append(f"{name}: not a table folder of the layout")
    for table in sorted(accepted | set(skip)):
        paths = parquet_layout.table_files(root, table)
        if not paths:
            continue
        if table in skip:
            source.skipped[table] = skip[table]
            continue
        files = [(p, str(p.relative_to(root))) for p in paths]
        source.tables[table] = _parquet_table(table, f"{table}/", files)
    return source


def _parquet_table(table: str, origin: str, files: list[tuple[Path, str]]) -> ParquetTable:
    conn = duckdb.connect()
    try:
        probe = ParquetTable(table, origin, files, [])
        described = conn.execute(f"DESCRIBE SELECT * FROM {probe.from_sql({}, None)}").fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"{origin}: not a readable Parquet file ({type(exc).__name__})") from None
    finally:
        conn.close()
    columns = [SourceColumn(str(row[0]), str(row[1])) for row in described]
    return ParquetTable(table, origin, files, columns)


def first_csv_line(path: Path, tables: Iterable[str]) -> str | None:
    """The first line of the first CSV file (in ``tables`` order) of a folder or zip, found
    by case-insensitive table name, or None (no such file, or another kind of source).
    Only that line is read: callers use it to tell CSV dialects apart."""
    wanted = [t.lower() for t in tables]
    found: dict[str, Path | tuple[Path, str]] = {}
    if path.is_dir() and not parquet_layout.is_layout(path):
        for child in _folder_files(path):
            stem, _, suffix = child.shown.lower().rpartition(".")
            if suffix == "csv" and stem in wanted:
                found.setdefault(stem, child.path)
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zipped:
            for info in zipped.infolist():
                member = PurePosixPath(info.filename)
                if info.is_dir() or _is_clutter(member.parts):
                    continue
                stem, _, suffix = member.name.lower().rpartition(".")
                if suffix == "csv" and stem in wanted:
                    found.setdefault(stem, (path, info.filename))
    for table in wanted:
        where = found.get(table)
        if where is None:
            continue
        if isinstance(where, Path):
            with where.open("rb") as handle:
                raw = handle.readline(1 << 20)
        else:
            with zipfile.ZipFile(where[0]) as zipped, zipped.open(where[1]) as handle:
                raw = handle.readline(1 << 20)
        return raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    return None
