"""The typed form of a mapping file, every value carrying the file and line it came from.

A mapping is parsed once (``ehds.connectors.mapping.parser``) into these frozen objects; the
checker, the compiler and the runner read nothing else. Keeping the location on each value is
what lets every later error, even one found by DuckDB while binding an expression, name the file,
the line and the key path that the operator has to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ehds.core.errors import InputError

SourceFormat = Literal["csv", "parquet"]


@dataclass(frozen=True)
class Location:
    """Where a value was written: ``file:line`` plus its key path (``tables.person[0].key``)."""

    file: Path
    line: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a mapping (``error``) or worth the operator's attention
    (``warning``: the run still goes ahead).

    ``kind`` sorts errors for the runner: ``mapping`` (the file itself is wrong: nothing is
    written) and ``missing_column`` (a source file lacks a column the mapping reads: at run
    time that mapping's rows are quarantined as ``csv.missing_column`` and the rest loads)."""

    at: Location
    message: str
    severity: Literal["error", "warning"] = "error"
    kind: Literal["mapping", "missing_column"] = "mapping"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.at}: {prefix}{self.message}"


class MappingError(InputError):
    """The mapping file is wrong; ``problems`` lists every error found. Nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        lines = "\n".join(str(p) for p in errors)
        super().__init__(f"the mapping has {len(errors)} error(s):\n{lines}")


@dataclass(frozen=True)
class Expr:
    """A DuckDB SQL expression over the columns of one source (or a literal in SQL syntax)."""

    sql: str
    at: Location


@dataclass(frozen=True)
class SourceFile:
    """A file (or glob) to read as a relation named after the source.

    ``options`` are CSV reader settings in a dialect-neutral form (``delimiter``,
    ``null_values`` (a tuple), ``encoding``, ``quote``) that each engine translates to its own
    reader; every CSV has a header line.
    CSV columns are always read as text: a bad value then rejects one row at run time instead
    of failing the whole file while types are guessed.
    """

    path: Path
    format: SourceFormat
    options: dict[str, str | bool | tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """A named source of the mapping (``sources.<name>``)."""

    name: str
    file: SourceFile
    written: str  # the path as written in the mapping, for row locations (``file:row``)
    date_format: str | None
    datetime_format: str | None
    at: Location


@dataclass(frozen=True)
class ConceptLookup:
    """A concept column given by source code: the commit resolves ``vocabulary`` + ``code``
    through ``source_to_concept_map`` and 'Maps to'. ``vocabulary`` is a SQL expression too
    (a quoted literal when written as a plain vocabulary id)."""

    column: str
    vocabulary: Expr
    code: Expr
    at: Location


@dataclass(frozen=True)
class TableMapping:
    """One source mapped into one OMOP table (``tables.<table>[i]``)."""

    table: str
    index: int
    source: str
    source_at: Location
    key: Expr
    where: Expr | None
    columns: dict[str, Expr]
    concepts: dict[str, ConceptLookup]
    references: dict[str, Expr]
    at: Location

    def expressions(self) -> list[Expr]:
        """Every SQL expression of this mapping, in file order of kind."""
        exprs = [self.key]
        if self.where is not None:
            exprs.append(self.where)
        exprs.extend(self.references.values())
        exprs.extend(self.columns.values())
        for lookup in self.concepts.values():
            exprs.extend((lookup.vocabulary, lookup.code))
        return exprs


@dataclass(frozen=True)
class Mapping:
    """A whole mapping file: named sources and the table mappings that read them."""

    path: Path
    name: str
    sources: dict[str, Source]
    tables: tuple[TableMapping, ...]

    def table_names(self) -> list[str]:
        """OMOP tables written, in first-mention order."""
        return list(dict.fromkeys(t.table for t in self.tables))
