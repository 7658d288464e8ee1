"""One check instance (a named check on a table, field or concept) and its evaluated result.

A check is two SQL aggregate expressions over the rows of one scanned table (alias ``t``):
the violating rows and the denominator. Expressing every check this way lets the runner
evaluate all checks of a table in a single scan, and still show each check's own query
(``query_text``) in the report, as DQD does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehds.omop.dq.catalogue import DQD_NAME, Category, CheckKind


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    table: str  # the table the check is about (CDM_TABLE_NAME)
    field: str | None
    threshold: float  # percent of violating rows tolerated
    description: str
    scan: str  # the table whose rows the expressions aggregate
    violated: str  # SQL aggregate expression; "" for a check decided without a query
    denominator: str
    query_text: str
    concept_id: int | None = None
    unit_concept_id: int | None = None
    static: tuple[int, int] | None = None  # (violated, denominator) known without a query
    static_error: str | None = None

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def dqd_name(self) -> str:
        return DQD_NAME.get(self.kind.name, self.kind.name)

    @property
    def check_id(self) -> str:
        """DQD's ``checkId``: level, name, table, field, concept, unit, lower case, joined by
        underscores, empty parts left out."""
        parts: list[object] = [self.kind.level.value, self.dqd_name, self.table, self.field]
        parts += [self.concept_id, self.unit_concept_id]
        return "_".join(str(p).replace(" ", "") for p in parts if p not in (None, "")).lower()

    @property
    def needs_query(self) -> bool:
        return self.static is None and self.static_error is None


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome, with DQD's status rules: an error is neither passed nor failed; a
    check with no rows to judge (empty table, no applicable value) is not applicable; with a
    threshold of 0 any violating row fails, otherwise the violating percentage must not
    exceed the threshold."""

    check: Check
    num_violated_rows: int
    num_denominator_rows: int
    execution_seconds: float
    error: str | None = None
    not_applicable_reason: str | None = None

    @property
    def pct_violated_rows(self) -> float:
        if self.num_denominator_rows == 0:
            return 0.0
        return self.num_violated_rows / self.num_denominator_rows

    @property
    def is_error(self) -> bool:
        return self.error is not None

    @property
    def failed(self) -> bool:
        if self.is_error or self.not_applicable:
            return False
        if self.check.threshold == 0:
            return self.num_violated_rows > 0
        return self.pct_violated_rows * 100 > self.check.threshold

    @property
    def not_applicable(self) -> bool:
        return self.not_applicable_reason is not None and not self.is_error

    @property
    def passed(self) -> bool:
        return not (self.failed or self.is_error or self.not_applicable)

    @property
    def category(self) -> Category:
        return self.check.kind.category

    @property
    def status(self) -> str:
        if self.is_error:
            return "ERROR"
        if self.not_applicable:
            return "NA"
        return "FAIL" if self.failed else "PASS"
