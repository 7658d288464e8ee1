"""A self-contained HTML page of a data-quality report: no script, font or style from the
network, so it opens on an air-gapped node. Failed checks and errors first, then every check
in a collapsible section per category, each with its query."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ehds.omop.dq.catalogue import Category
from ehds.omop.dq.check import CheckResult

if TYPE_CHECKING:
    from ehds.omop.dq.report import DqReport

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #20425a; color: #fff; }
td.n { text-align: right; }
.FAIL { color: #b00; font-weight: bold; } .ERROR { color: #a60; font-weight: bold; }
.PASS { color: #070; } .NA { color: #777; }
pre { white-space: pre-wrap; font-size: 0.85em; margin: 0; }
details { margin: 0.5em 0; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _row(r: CheckResult) -> str:
    c = r.check
    where = c.table + (f".{c.field}" if c.field else "")
    if c.concept_id is not None:
        where += f" [{c.concept_id} / {c.unit_concept_id}]"
    note = r.error or r.not_applicable_reason or ""
    return (
        f"<tr><td class='{r.status}'>{r.status}</td><td>{_e(c.kind.category.value)}</td>"
        f"<td>{_e(c.dqd_name)}</td><td>{_e(where)}</td><td>{_e(c.description)}</td>"
        f"<td class='n'>{r.num_violated_rows}</td><td class='n'>{r.num_denominator_rows}</td>"
        f"<td class='n'>{100 * r.pct_violated_rows:.2f}</td><td class='n'>{c.threshold:g}</td>"
        f"<td>{_e(note)}<details><summary>query</summary><pre>{_e(c.query_text)}</pre>"
        "</details></td></tr>"
    )


def _table(results: list[CheckResult]) -> str:
    head = (
        "<tr><th>status</th><th>category</th><th>check</th><th>table.field</th>"
        "<th>description</th><th>violated</th><th>denominator</th><th>%</th>"
        "<th>max %</th><th>detail</th></tr>"
    )
    return "<table>" + head + "".join(_row(r) for r in results) + "</table>"


def render_html(report: DqReport) -> str:
    overview = "".join(
        f"<tr><td>{_e(category.value)}</td>"
        + "".join(
            f"<td class='n'>{n}</td>"
            for n in (
                sum(r.passed for r in report.results if r.category is category),
                sum(r.failed for r in report.results if r.category is category),
                sum(r.not_applicable for r in report.results if r.category is category),
                sum(r.is_error for r in report.results if r.category is category),
                sum(1 for r in report.results if r.category is category),
            )
        )
        + "</tr>"
        for category in Category
    )
    bad = [r for r in report.results if r.failed or r.is_error]
    sections = "".join(
        f"<details><summary>{_e(category.value)}: all checks</summary>"
        + _table([r for r in report.results if r.category is category])
        + "</details>"
        for category in Category
    )
    name = report.metadata.get("CDM_SOURCE_NAME") or report.database
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Data quality: {_e(name)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Data quality: {_e(name)}</h1>"
        f"<p>{_e(report.database)}; started {_e(report.started.isoformat(timespec='seconds'))}"
        f", {report.seconds:.1f} s; {len(report.results)} checks</p>"
        "<table><tr><th>category</th><th>pass</th><th>fail</th><th>n/a</th><th>error</th>"
        f"<th>total</th></tr>{overview}</table>"
        f"<h2>Failed checks and errors ({len(bad)})</h2>"
        + (_table(bad) if bad else "<p>None.</p>")
        + f"<h2>All checks</h2>{sections}</body></html>"
    )
