"""Read a mapping file into :class:`~ehds.connectors.mapping.model.Mapping`.

The YAML is *composed* (not loaded) so that every scalar keeps its line; the node tree is then
walked by hand, which keeps the messages precise (``mapping.yaml:14: tables.person.key: ...``)
and lets one pass collect every structural error instead of stopping at the first. Checks that
need the OMOP model or the source files live in ``check.py``.

The file format (documented for operators in docs/connectors/mapping.md)::

    version: 1
    name: hospital-x                 # optional, default: the file name
    source_dir: extract/             # optional, relative to this file; --source-dir overrides
    sources:
      patients: {file: patients.csv, delimiter: ";", date_format: "%d/%m/%Y"}
      labs: {file: labs.parquet}
    tables:
      person:                        # one mapping, or a list of mappings into the same table
        source: patients
        key: patient_id              # SQL: the record's source key
        where: "status <> 'test'"    # SQL filter, optional
        columns: {year_of_birth: "year(birth_date::DATE)"}
        concepts: {gender_concept_id: {vocabulary: Gender, code: sex}}
        references: {care_site_id: site}
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ehds.connectors.mapping.model import (
    ConceptLookup,
    Expr,
    Location,
    Mapping,
    MappingError,
    Problem,
    Source,
    SourceFile,
    SourceFormat,
    TableMapping,
)

_NULL = "tag:yaml.org,2002:null"

_TOP_KEYS = ("version", "name", "source_dir", "sources", "tables")
_SOURCE_KEYS = (
    "file",
    "format",
    "delimiter",
    "null_values",
    "encoding",
    "quote",
    "date_format",
    "datetime_format",
)
_TABLE_KEYS = ("source", "key", "where", "columns", "concepts", "references")
_LOOKUP_KEYS = ("vocabulary", "vocabulary_sql", "code")
_FORMATS: dict[str, SourceFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".gz": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def load_mapping(path: Path, *, source_dir: Path | None = None) -> Mapping:
    """Parse ``path``; source files are relative to ``source_dir`` when given, else to the
    file's ``source_dir`` key (itself relative to the mapping file), else to the mapping file's
    folder. Raises :class:`MappingError` listing every structural problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(
            [Problem(Location(path, 0, "(file)"), f"cannot read ({exc.strerror})")]
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        at = Location(path, line, "(file)")
        raise MappingError([Problem(at, f"not valid YAML ({problem})")]) from None
    return _Reader(path, source_dir).read(root)


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal (the same in DuckDB and Spark)."""
    return "'" + text.replace("'", "''") + "'"


class _Reader:
    def __init__(self, path: Path, source_dir: Path | None) -> None:
        self.path = path
        self.source_dir = source_dir
        self.problems: list[Problem] = []

    # -- generic helpers -------------------------------------------------------------------

    def at(self, node: yaml.Node, key: str) -> Location:
        return Location(self.path, node.start_mark.line + 1, key)

    def error(self, node: yaml.Node, key: str, message: str) -> None:
        self.problems.append(Problem(self.at(node, key), message))

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The entries of a YAML mapping by key name (key node, value node); unknown and
        duplicate keys are reported."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, "expected a mapping (key: value)")
            return {}
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, key, "keys must be plain names")
                continue
            name = str(key_node.value)
            path = f"{key}.{name}" if key else name
            if name in entries:
                self.error(key_node, path, "duplicate key")
                continue
            if allowed is not None and name not in allowed:
                self.error(key_node, path, f"unknown key (expected one of: {', '.join(allowed)})")
                continue
            entries[name] = (key_node, value_node)
        return entries

    def text(self, node: yaml.Node, key: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.error(node, key, "expected a text value")
            return None
        return str(node.value)

    def sql(self, node: yaml.Node, key: str) -> Expr | None:
        """A scalar read as SQL text: numbers and booleans as written, null as NULL."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, key, "expected a SQL expression (a single text value)")
            return None
        if node.tag == _NULL:
            return Expr("NULL", self.at(node, key))
        value = str(node.value).strip()
        if not value:
            self.error(node, key, "empty SQL expression")
            return None
        return Expr(value, self.at(node, key))

    # -- sections ------------------------------------------------------------------------------

    def read(self, root: yaml.Node | None) -> Mapping:
        if root is None:
            raise MappingError([Problem(Location(self.path, 1, "(file)"), "the file is empty")])
        top = self.mapping(root, "", _TOP_KEYS)
        if "version" not in top:
            self.error(root, "version", "required key is missing (write version: 1)")
        else:
            node = top["version"][1]
            if not (isinstance(node, yaml.ScalarNode) and node.value == "1"):
                self.error(node, "version", "unsupported version (this program reads version 1)")
        name = self.path.stem
        if "name" in top:
            name = self.text(top["name"][1], "name") or name
        base = self.path.parent
        if "source_dir" in top:
            written = self.text(top["source_dir"][1], "source_dir")
            if written is not None:
                base = base / Path(written).expanduser()
        if self.source_dir is not None:
            base = self.source_dir
        sources: dict[str, Source] = {}
        if "sources" not in top:
            self.error(root, "sources", "required key is missing")
        else:
            for name_, (key_node, value) in self.mapping(
                top["sources"][1], "sources", None
            ).items():
                source = self.source(name_, key_node, value, base)
                if source is not None:
                    sources[name_] = source
        tables: list[TableMapping] = []
        if "tables" not in top:
            self.error(root, "tables", "required key is missing")
        else:
            for table, (key_node, value) in self.mapping(top["tables"][1], "tables", None).items():
                tables.extend(self.table(table, key_node, value))
            if not tables and not self.problems:
                self.error(top["tables"][1], "tables", "no table is mapped")
        for mapping in tables:
            if mapping.source and sources and mapping.source not in sources:
                known = ", ".join(sorted(sources))
                self.problems.append(
                    Problem(
                        mapping.source_at, f"unknown source {mapping.source!r} (sources: {known})"
                    )
                )
        if self.problems:
            raise MappingError(sorted(self.problems, key=lambda p: p.at.line))
        return Mapping(self.path, name, sources, tuple(tables))

    def source(self, name: str, key_node: yaml.Node, node: yaml.Node, base: Path) -> Source | None:
        key = f"sources.{name}"
        if not name.isidentifier():
            self.error(
                key_node, key, "a source name must be a plain identifier (letters, digits, _)"
            )
        entries = self.mapping(node, key, _SOURCE_KEYS)
        if "file" not in entries:
            self.error(node, f"{key}.file", "required key is missing")
            return None
        written = self.text(entries["file"][1], f"{key}.file")
        if written is None:
            return None
        path = Path(written).expanduser()
        path = path if path.is_absolute() else base / path
        fmt: SourceFormat | None = None
        if "format" in entries:
            value = self.text(entries["format"][1], f"{key}.format")
            fmt = _FORMATS.get(f".{value}") if value in ("csv", "parquet") else None
            if fmt is None:
                self.error(entries["format"][1], f"{key}.format", "expected csv or parquet")
        else:
            suffix = Path(written).suffix.lower()
            fmt = _FORMATS.get(suffix)
            if fmt is None:
                self.error(
                    entries["file"][1],
                    f"{key}.file",
                    "cannot tell the format from the file name; add format: csv or format: parquet",
                )
        options: dict[str, str | bool | tuple[str, ...]] = {}
        for option in ("delimiter", "encoding", "quote"):
            if option in entries:
                value = self.text(entries[option][1], f"{key}.{option}")
                if value is not None:
                    options[option] = value
        if "null_values" in entries:
            nulls = self.null_values(entries["null_values"][1], f"{key}.null_values")
            if nulls is not None:
                options["null_values"] = nulls
        if fmt == "parquet":
            for option in options:
                self.error(
                    entries[option][0], f"{key}.{option}", "only CSV sources take this option"
                )
        formats: dict[str, str | None] = {"date_format": None, "datetime_format": None}
        for option in formats:
            if option in entries:
                formats[option] = self.text(entries[option][1], f"{key}.{option}")
        if fmt is None:
            return None
        return Source(
            name=name,
            file=SourceFile(path, fmt, options),
            written=written,
            date_format=formats["date_format"],
            datetime_format=formats["datetime_format"],
            at=self.at(key_node, key),
        )

    def null_values(self, node: yaml.Node, key: str) -> tuple[str, ...] | None:
        if isinstance(node, yaml.ScalarNode):
            value = self.text(node, key)
            return None if value is None else (value,)
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, key, "expected a text or a list of texts")
            return None
        values = [self.text(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return tuple(v for v in values if v is not None)

    def table(self, table: str, key_node: yaml.Node, node: yaml.Node) -> list[TableMapping]:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.error(node, f"tables.{table}", "an empty list maps nothing")
            return [
                mapping
                for i, item in enumerate(node.value)
                if (mapping := self.table_mapping(table, i, item, f"tables.{table}[{i}]"))
                is not None
            ]
        mapping = self.table_mapping(table, 0, node, f"tables.{table}", key_node)
        return [] if mapping is None else [mapping]

    def table_mapping(
        self, table: str, index: int, node: yaml.Node, key: str, name: yaml.Node | None = None
    ) -> TableMapping | None:
        """One mapping; its own location is the table's name when it is not in a list."""
        entries = self.mapping(node, key, _TABLE_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        for required in ("source", "key"):
            if required not in entries:
                self.error(node, f"{key}.{required}", "required key is missing")
        source = self.text(entries["source"][1], f"{key}.source") if "source" in entries else None
        key_expr = self.sql(entries["key"][1], f"{key}.key") if "key" in entries else None
        where = self.sql(entries["where"][1], f"{key}.where") if "where" in entries else None
        columns = self.expressions(entries, "columns", key)
        references = self.expressions(entries, "references", key)
        concepts: dict[str, ConceptLookup] = {}
        if "concepts" in entries:
            for column, (key_node, value) in self.mapping(
                entries["concepts"][1], f"{key}.concepts", None
            ).items():
                lookup = self.lookup(column, key_node, value, f"{key}.concepts.{column}")
                if lookup is not None:
                    concepts[column] = lookup
        if source is None or key_expr is None:
            return None
        return TableMapping(
            table=table,
            index=index,
            source=source,
            source_at=self.at(entries["source"][1], f"{key}.source"),
            key=key_expr,
            where=where,
            columns=columns,
            concepts=concepts,
            references=references,
            at=self.at(name or node, key),
        )

    def expressions(
        self, entries: dict[str, tuple[yaml.Node, yaml.Node]], section: str, key: str
    ) -> dict[str, Expr]:
        found: dict[str, Expr] = {}
        if section not in entries:
            return found
        for column, (_, value) in self.mapping(
            entries[section][1], f"{key}.{section}", None
        ).items():
            expr = self.sql(value, f"{key}.{section}.{column}")
            if expr is not None:
                found[column] = expr
        return found

    def lookup(
        self, column: str, key_node: yaml.Node, node: yaml.Node, key: str
    ) -> ConceptLookup | None:
        entries = self.mapping(node, key, _LOOKUP_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        vocabulary: Expr | None = None
        if ("vocabulary" in entries) == ("vocabulary_sql" in entries):
            self.error(
                node,
                key,
                "give exactly one of vocabulary (a vocabulary id) or "
                "vocabulary_sql (an expression)",
            )
        elif "vocabulary" in entries:
            value_node = entries["vocabulary"][1]
            text = self.text(value_node, f"{key}.vocabulary")
            if text is not None:
                vocabulary = Expr(sql_string(text), self.at(value_node, f"{key}.vocabulary"))
        else:
            vocabulary = self.sql(entries["vocabulary_sql"][1], f"{key}.vocabulary_sql")
        if "code" not in entries:
            self.error(node, f"{key}.code", "required key is missing")
            return None
        code = self.sql(entries["code"][1], f"{key}.code")
        if vocabulary is None or code is None:
            return None
        return ConceptLookup(column, vocabulary, code, self.at(key_node, key))
