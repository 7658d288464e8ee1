"""``EtlReport``: what one ETL run read, wrote, rejected and could not map.

Three views, all counts: per **source type** (records read, rejections by reason, as the
connector staged them), per **OMOP table** (rows staged, written, rejected at commit by reason,
optional foreign keys left NULL by reason) and per **concept column** (rows with a source code,
rows mapped to a standard concept, the unmapped rate and the 20 most frequent unmapped
(vocabulary, code) pairs, which is what a partner's mapping team works through), plus the rows
moved to another table by the domain of their concept (``routed``, per origin and target;
a table's ``staged`` counts its rows after that move). Codes are
vocabulary codes, never patient values; the report holds no row-level data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TOP_UNMAPPED = 20


@dataclass
class SourceCounts:
    read: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class TableCounts:
    staged: int = 0
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    fk_unresolved: dict[str, int] = field(default_factory=dict)
    """Optional foreign keys whose source key named nothing: set NULL, counted here."""


@dataclass
class UnmappedCode:
    vocabulary_id: str | None
    code: str
    rows: int


@dataclass
class ConceptCounts:
    table: str
    column: str
    with_code: int
    mapped: int
    top_unmapped: list[UnmappedCode] = field(default_factory=list)

    @property
    def unmapped_rate(self) -> float:
        return 0.0 if self.with_code == 0 else (self.with_code - self.mapped) / self.with_code


@dataclass
class RoutedCounts:
    """Staged rows that the domain of their standard concept moved to another table."""

    from_table: str
    to_table: str
    rows: int


@dataclass
class EtlReport:
    run_id: int
    connector: str
    source: str
    target: str
    mode: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    concepts: list[ConceptCounts] = field(default_factory=list)
    routed: list[RoutedCounts] = field(default_factory=list)
    seconds: float = 0.0

    def rejected_total(self) -> int:
        staged = sum(sum(s.rejected.values()) for s in self.sources.values())
        return staged + sum(sum(t.rejected.values()) for t in self.tables.values())

    def written_total(self) -> int:
        return sum(t.written for t in self.tables.values())

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        for entry, concept in zip(data["concepts"], self.concepts, strict=True):
            entry["unmapped_rate"] = round(concept.unmapped_rate, 6)
        return data

    def render(self) -> str:
        lines = [
            f"ETL run {self.run_id}: {self.connector} ({self.mode}) {self.source} -> {self.target}",
            f"{self.written_total():,} rows written, {self.rejected_total():,} rejected "
            f"in {self.seconds:.1f} s",
            "",
        ]
        rows = [["source type", "read", "rejected", "reasons"]]
        for name, counts in sorted(self.sources.items()):
            rows.append(
                [
                    name,
                    f"{counts.read:,}",
                    f"{sum(counts.rejected.values()):,}",
                    _reasons(counts.rejected),
                ]
            )
        lines += [*_table(rows), ""]
        rows = [["OMOP table", "staged", "written", "rejected", "reasons"]]
        for name, table in sorted(self.tables.items()):
            reasons = {
                **table.rejected,
                **{f"{k} (NULL)": v for k, v in table.fk_unresolved.items()},
            }
            rows.append(
                [
                    name,
                    f"{table.staged:,}",
                    f"{table.written:,}",
                    f"{sum(table.rejected.values()):,}",
                    _reasons(reasons),
                ]
            )
        lines += _table(rows)
        if self.routed:
            lines.append(
                "routed by domain: "
                + ", ".join(f"{r.from_table} -> {r.to_table} {r.rows:,}" for r in self.routed)
            )
        mapped = [c for c in self.concepts if c.with_code]
        if mapped:
            lines.append("")
            rows = [["concept column", "with code", "mapped", "unmapped %"]]
            for c in mapped:
                rows.append(
                    [
                        f"{c.table}.{c.column}",
                        f"{c.with_code:,}",
                        f"{c.mapped:,}",
                        f"{100 * c.unmapped_rate:.1f}",
                    ]
                )
            lines += _table(rows)
            for c in mapped:
                if c.top_unmapped:
                    lines.append(
                        f"top unmapped {c.table}.{c.column}: "
                        + ", ".join(
                            f"{u.vocabulary_id}:{u.code} ({u.rows:,})" for u in c.top_unmapped
                        )
                    )
        return "\n".join(lines)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts.items()))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i in (0, len(row) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
