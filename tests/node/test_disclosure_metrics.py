"""The node's disclosure metrics: suppressed cells per analysis, refusals per analysis and rule.

Operators see how much a node withholds and why; each agent has its own registry, so two
`NodeMetrics` never share counts.
"""

from __future__ import annotations

import pytest

from ehds.federation.model import AnalysisRef
from ehds.node.metrics import NodeMetrics

COUNTS = AnalysisRef("counts", "1.0.0")


def test_suppressed_cells_and_refusals_are_counted_per_analysis_and_rule() -> None:
    metrics = NodeMetrics()
    metrics.cells_suppressed(COUNTS, 3)
    metrics.cells_suppressed(COUNTS, 2)
    metrics.cells_suppressed("incidence 1.0.0", 0)
    metrics.disclosure_refused(COUNTS, "differencing")
    sample = metrics.registry.get_sample_value
    assert sample("ehds_node_suppressed_cells_total", {"analysis": str(COUNTS)}) == 5
    # Zero creates the series: the analysis shows, with nothing withheld.
    assert sample("ehds_node_suppressed_cells_total", {"analysis": "incidence 1.0.0"}) == 0
    labels = {"analysis": str(COUNTS), "rule": "differencing"}
    assert sample("ehds_node_disclosure_refusals_total", labels) == 1
    assert (
        NodeMetrics().registry.get_sample_value("ehds_node_disclosure_refusals_total", labels)
        is None
    )


def test_a_negative_number_of_cells_is_a_bug() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        NodeMetrics().cells_suppressed(COUNTS, -1)
