"""A readable account of a cohort definition, for ``ehds cohort check`` and reviewers.

Why circe's print-friendly text: it is the wording OHDSI users already know from ATLAS, and
it is generated from the very expression that runs, so it cannot disagree with execution.
"""

from __future__ import annotations

import html

from circe import CohortExpression
from circe.api import cohort_print_friendly

from .spec import CohortSpec, fingerprint, to_circe


def describe(spec: CohortSpec) -> str:
    """Name, format, fingerprint, circe's description and the concept sets."""
    expression = to_circe(spec)
    source = "YAML cohort language" if spec.yaml is not None else "ATLAS/Circe JSON"
    lines = [
        f"cohort: {spec.name}",
        f"format: {source}",
        f"fingerprint: {fingerprint(spec)}",
        "",
        html.unescape(cohort_print_friendly(expression)).strip(),
        "",
        "### Concept sets",
        *_concept_set_lines(expression),
    ]
    return "\n".join(lines) + "\n"


def _concept_set_lines(expression: CohortExpression) -> list[str]:
    lines: list[str] = []
    for concept_set in expression.concept_sets or []:
        lines.append(f"{concept_set.id}. {concept_set.name or ''}")
        items = concept_set.expression.items if concept_set.expression is not None else []
        for item in items or []:
            concept = item.concept
            flags = [
                flag
                for flag, on in (
                    ("excluded", item.is_excluded),
                    ("with descendants", item.include_descendants),
                    ("with mapped", item.include_mapped),
                )
                if on
            ]
            label = f" {concept.concept_name}" if concept and concept.concept_name else ""
            concept_id = concept.concept_id if concept else None
            suffix = f" ({', '.join(flags)})" if flags else ""
            lines.append(f"   - {concept_id}{label}{suffix}")
    return lines
