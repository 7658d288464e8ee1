"""What a generation run wrote: shown by ``ehds omop synth`` and used by the benchmark."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SynthReport:
    database: str
    profile: str
    country: str
    persons: int
    seed: int
    rows: Mapping[str, int]
    persons_by_sex: Mapping[str, int]
    elapsed_seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def render(self) -> str:
        width = max(len(name) for name in self.rows)
        lines = [
            f"synthetic CDM for profile {self.profile} ({self.country}), seed {self.seed}, "
            f"written to {self.database} in {self.elapsed_seconds:.1f} s",
            "persons by sex: "
            + ", ".join(f"{sex} {count:,}" for sex, count in self.persons_by_sex.items()),
            "rows per table:",
        ]
        lines += [f"  {name:<{width}}  {count:>12,}" for name, count in self.rows.items()]
        lines.append(f"  {'total':<{width}}  {self.total_rows:>12,}")
        return "\n".join(lines)
