"""Data-quality checks of an OMOP CDM, in the spirit of the OHDSI Data Quality Dashboard.

``run_dq(db) -> DqReport``; ``report.to_dqd_json()`` writes DQD's results format.

Modules, in the order data flows: :mod:`.rules` and the generated :mod:`.field_rules` (what
the specification says of each field), :mod:`.catalogue` (the named checks, thresholds and
measurement ranges), :mod:`.live_schema` (what the database holds), :mod:`.sql` and
:mod:`.builder` (checks as SQL aggregates), :mod:`.runner` (one scan per table, thresholds),
:mod:`.check` and :mod:`.report` (results, text, JSON), :mod:`.html_report`.
"""

from ehds.omop.dq.catalogue import Category
from ehds.omop.dq.check import Check, CheckResult
from ehds.omop.dq.report import DqReport
from ehds.omop.dq.runner import UnknownCheckError, known_check_names, run_dq

__all__ = [
    "Category",
    "Check",
    "CheckResult",
    "DqReport",
    "UnknownCheckError",
    "known_check_names",
    "run_dq",
]
