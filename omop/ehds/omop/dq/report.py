"""The outcome of a data-quality run: per-check results, a text table, DQD's JSON.

``to_dqd_json`` writes the results file of the OHDSI Data Quality Dashboard (2.x): top-level
``startTimestamp``, ``endTimestamp``, ``executionTime``, ``CheckResults`` (one object per
check, upper-case keys as DQD's viewer reads them, plus DQD's lower-case ``checkId``),
``Metadata`` (the ``cdm_source`` row) and ``Overview`` (the counts of DQD's
``.summarizeResults``), so OHDSI's viewer opens our file as one of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from ehds.omop.dq.catalogue import Category
from ehds.omop.dq.check import CheckResult
from ehds.omop.dq.html_report import render_html

_TIMESTAMP = "%Y-%m-%d %H:%M:%S"


def _category(name: Category | str) -> Category:
    for category in Category:
        if str(name).lower() == category.value.lower():
            return category
    known = ", ".join(c.value.lower() for c in Category)
    raise ValueError(f"unknown check category {name!r}; known: {known}")


@dataclass(frozen=True)
class DqReport:
    results: tuple[CheckResult, ...]
    started: dt.datetime
    finished: dt.datetime
    database: str
    metadata: dict[str, object]

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        return self.results

    def failed(self, category: Category | str | None = None) -> list[CheckResult]:
        """Failed checks, of one category (``"conformance"``...) or all."""
        wanted = None if category is None else _category(category)
        return [r for r in self.results if r.failed and wanted in (None, r.category)]

    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if r.is_error]

    def result(self, name: str, table: str, field: str | None = None) -> CheckResult:
        """The result of one check (by DQD name), for tests and scripts."""
        for r in self.results:
            if r.check.dqd_name == name and r.check.table == table and r.check.field == field:
                return r
        raise KeyError(f"no {name} check on {table}{'.' + field if field else ''}")

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()

    def overview(self) -> dict[str, float | int]:
        """DQD's ``Overview`` block (its ``.summarizeResults``)."""
        results = self.results
        total = len(results)
        failed = sum(r.failed for r in results)
        errors = sum(r.is_error for r in results)
        passed = sum(r.passed for r in results)
        judged = passed + failed
        counts: dict[str, float | int] = {
            "countTotal": total,
            "countPassed": passed,
            "countErrorFailed": errors,
            "countThresholdFailed": failed,
            "countOverallFailed": failed + errors,
            "countNotApplicable": sum(r.not_applicable for r in results),
            "percentPassed": round(100 * passed / judged, 2) if judged else 0.0,
            "percentFailed": round(100 * failed / judged, 2) if judged else 0.0,
        }
        for category in Category:
            of = [r for r in results if r.category is category]
            counts[f"countTotal{category.value}"] = len(of)
            counts[f"countFailed{category.value}"] = sum(r.failed for r in of)
            counts[f"countPassed{category.value}"] = sum(r.passed for r in of)
        return counts

    def to_dqd_json(self) -> dict[str, object]:
        return {
            "startTimestamp": self.started.strftime(_TIMESTAMP),
            "endTimestamp": self.finished.strftime(_TIMESTAMP),
            "executionTime": f"{self.seconds:.0f} secs",
            "CheckResults": [_dqd_row(r) for r in self.results],
            "Metadata": [self.metadata],
            "Overview": self.overview(),
        }

    def summary(self) -> str:
        """One paragraph: what an ETL run prints after loading."""
        parts = []
        for category in Category:
            of = [r for r in self.results if r.category is category]
            parts.append(f"{category.value.lower()} {sum(r.passed for r in of)}/{len(of)} passed")
        line = f"data quality: {len(self.results)} checks; " + ", ".join(parts)
        failed = self.failed()
        if failed:
            names = sorted({f"{r.check.dqd_name} ({r.check.table})" for r in failed})
            line += f"; {len(failed)} failed: " + ", ".join(names[:10])
            line += " ..." if len(names) > 10 else ""
        if self.errors():
            line += f"; {len(self.errors())} could not run"
        return line

    def render_table(self) -> str:
        lines = [
            f"data-quality checks on {self.database} ({self.seconds:.1f} s)",
            "",
            f"{'category':<14}{'pass':>7}{'fail':>7}{'n/a':>7}{'error':>7}{'total':>7}",
        ]
        for category in Category:
            of = [r for r in self.results if r.category is category]
            lines.append(_counts_line(category.value.lower(), of))
        lines.append(_counts_line("all", self.results))
        shown = [r for r in self.results if r.failed or r.is_error]
        if shown:
            lines += ["", "failed checks and errors:"]
            lines.append(
                f"  {'status':<7}{'check':<36}{'table.field':<52}{'rows':>14}{'%':>8}{'max %':>7}"
            )
            for r in shown:
                where = r.check.table + (f".{r.check.field}" if r.check.field else "")
                if r.check.concept_id is not None:
                    where += f" [{r.check.concept_id}/{r.check.unit_concept_id}]"
                rows = f"{r.num_violated_rows}/{r.num_denominator_rows}"
                pct = f"{100 * r.pct_violated_rows:.2f}"
                lines.append(
                    f"  {r.status:<7}{r.check.dqd_name:<36}{where:<52}{rows:>14}{pct:>8}"
                    f"{r.check.threshold:>7g}"
                )
                if r.error:
                    lines.append(f"         {r.error}")
        else:
            lines += ["", "every check passed or was not applicable"]
        return "\n".join(lines)

    def render_html(self) -> str:
        return render_html(self)


def _counts_line(label: str, results: Iterable[CheckResult]) -> str:
    items = list(results)
    figures = (
        sum(r.passed for r in items),
        sum(r.failed for r in items),
        sum(r.not_applicable for r in items),
        sum(r.is_error for r in items),
        len(items),
    )
    return f"{label:<14}" + "".join(f"{n:>7}" for n in figures)


def _dqd_row(r: CheckResult) -> dict[str, object]:
    c = r.check
    return {
        "NUM_VIOLATED_ROWS": r.num_violated_rows,
        "PCT_VIOLATED_ROWS": round(r.pct_violated_rows, 6),
        "NUM_DENOMINATOR_ROWS": r.num_denominator_rows,
        "EXECUTION_TIME": f"{r.execution_seconds:.6f} secs",
        "QUERY_TEXT": c.query_text,
        "CHECK_NAME": c.dqd_name,
        "CHECK_LEVEL": c.kind.level.value,
        "CHECK_DESCRIPTION": c.description,
        "CDM_TABLE_NAME": c.table.upper(),
        "CDM_FIELD_NAME": c.field.upper() if c.field else None,
        "CONCEPT_ID": c.concept_id,
        "UNIT_CONCEPT_ID": c.unit_concept_id,
        "SQL_FILE": c.kind.sql_file,
        "CATEGORY": c.kind.category.value,
        "SUBCATEGORY": c.kind.subcategory,
        "CONTEXT": c.kind.context,
        "WARNING": None,
        "ERROR": r.error,
        "checkId": c.check_id,
        "FAILED": int(r.failed),
        "PASSED": int(r.passed),
        "IS_ERROR": int(r.is_error),
        "NOT_APPLICABLE": int(r.not_applicable),
        "NOT_APPLICABLE_REASON": r.not_applicable_reason,
        "THRESHOLD_VALUE": c.threshold,
        "NOTES_VALUE": None,
    }
