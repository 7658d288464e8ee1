"""What a load did, table by table: for the operator's terminal and for tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TableLoad:
    table: str
    origin: str
    """Where the rows came from ("-" when the source lacks the table)."""
    rows_read: int
    rows_loaded: int
    note: str = ""
    renamed: tuple[tuple[str, str], ...] = ()
    """(5.3 column, 5.4 column) renamed by the upgrade."""
    renumbered: int = 0
    """Rows that repeated an earlier row's primary key and were given a fresh id."""


@dataclass
class LoadReport:
    title: str
    source: str
    target: str
    declared_version: str | None = None
    """cdm_source.cdm_version as the source wrote it ("v5.3.1")."""
    detected_version: str | None = None
    version_evidence: str = ""
    upgraded_from: str | None = None
    tables: list[TableLoad] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    replaced_tiers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def loaded(self, table: str) -> int:
        for entry in self.tables:
            if entry.table == table:
                return entry.rows_loaded
        raise KeyError(table)

    @property
    def total_loaded(self) -> int:
        return sum(entry.rows_loaded for entry in self.tables)

    def render(self) -> str:
        lines = [
            f"{self.title}: {self.source} -> {self.target}",
        ]
        if self.detected_version:
            declared = f" (cdm_source.cdm_version {self.declared_version!r})"
            lines.append(
                f"CDM version: {self.detected_version}"
                f"{declared if self.declared_version else ''}, from {self.version_evidence}"
            )
        if self.upgraded_from:
            lines.append(
                f"upgraded from CDM {self.upgraded_from} to 5.4 "
                "(renamed columns, new columns NULL, cdm_source.cdm_version = '5.4')"
            )
        if self.replaced_tiers:
            lines.append(f"replaced: {', '.join(self.replaced_tiers)}")
        rate = self.total_loaded / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"{self.total_loaded:,} rows in {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        lines.append("")
        lines.extend(_table(self.tables))
        renamed = [
            f"  {entry.table}.{old} -> {new}" for entry in self.tables for old, new in entry.renamed
        ]
        if renamed:
            lines.append("")
            lines.append("renamed columns (5.3 -> 5.4):")
            lines.extend(renamed)
        if self.placeholders:
            lines.append("")
            lines.append("treated as empty (placeholders): " + ", ".join(self.placeholders))
        if self.skipped:
            lines.append("")
            lines.append("skipped:")
            lines.extend(f"  {name}: {why}" for name, why in sorted(self.skipped.items()))
        if self.ignored:
            lines.append("")
            lines.append("ignored:")
            lines.extend(f"  {what}" for what in self.ignored)
        return "\n".join(lines)


def _table(entries: list[TableLoad]) -> list[str]:
    header = ("table", "source", "read", "loaded", "note")
    rows = [(e.table, e.origin, f"{e.rows_read:,}", f"{e.rows_loaded:,}", e.note) for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def fmt(row: tuple[str, str, str, str, str]) -> str:
        left = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}"
        numbers = f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
        return f"{left}  {numbers}  {row[4]}".rstrip()

    rule = ("-" * widths[0], "-" * widths[1], "-" * widths[2], "-" * widths[3], "")
    return [fmt(header), fmt(rule), *map(fmt, rows)]
