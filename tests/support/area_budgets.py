"""Time the suite spends per heavy area (PostgreSQL, Spark, Flower, Helm), against a budget.

Why: CI must stay under 20 minutes, and a slow area grows unnoticed one test at a time. At the
end of a run this prints each area's wall time beside its budget; an area over budget is named
in the summary (it is a regression to look at, not a failed test, since the machine's load moves
the figures). Areas are found by marker and fixture (a test that uses PostgreSQL or Spark) or by
folder (Flower, Helm); a test counts in the first area that claims it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Final

import pytest

BUDGETS_S: Final = {"postgresql": 240.0, "spark": 300.0, "flower": 240.0, "helm": 60.0}

_FLOWER_PATHS: Final = ("tests/fl/", "tests/federation/test_federation_fl.py")
_HELM_PATHS: Final = ("tests/operations/",)


def area_of(item: pytest.Item) -> str | None:
    path = item.nodeid.split("::", 1)[0]
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("postgres") or {"postgres_url", "fresh_postgres_url"} & fixtures:
        return "postgresql"
    if path.startswith(_HELM_PATHS):
        return "helm"
    if path.startswith(_FLOWER_PATHS):
        return "flower"
    if "spark" in fixtures or "spark" in item.nodeid.lower():
        return "spark"
    return None


class AreaBudgets:
    def __init__(self) -> None:
        self._areas: dict[str, str] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._tests: dict[str, int] = defaultdict(int)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            area = area_of(item)
            if area is not None:
                self._areas[item.nodeid] = area

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        area = self._areas.get(report.nodeid)
        if area is None:
            return
        self._seconds[area] += report.duration
        if report.when == "call":
            self._tests[area] += 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self._tests:
            return
        terminalreporter.write_sep("-", "time per area (budget)")
        for area, budget in BUDGETS_S.items():
            seconds = self._seconds.get(area, 0.0)
            verdict = "OVER BUDGET" if seconds > budget else "ok"
            terminalreporter.write_line(
                f"{area:<11} {self._tests.get(area, 0):>4} tests {seconds:7.1f} s "
                f"(budget {budget:.0f} s) {verdict}"
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(AreaBudgets(), "ehds-area-budgets")
