"""`policy.yaml`: the site's own rules on what runs and what leaves the node.

Separate from `node.yaml` and versioned (`version`), because it is a governance document: the
institution's data protection officer owns it, and every refusal and every released result is
traced to the policy version in force. Fail closed: a node with no policy file, or a policy
that allows nothing, runs nothing.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ehds.core.config import ConfigModel, load_config
from ehds.federation.model import AnalysisRef


class AllowedAnalysis(ConfigModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)

    def ref(self) -> AnalysisRef:
        return AnalysisRef(self.name, self.version)


class Policy(ConfigModel):
    version: str = Field(min_length=1, description="the policy document's own version")
    # Smallest count released in any cell; the coordinator can only raise it per study.
    min_cell_count: int = Field(default=10, ge=1)
    analyses: tuple[AllowedAnalysis, ...] = ()

    def allows(self, ref: AnalysisRef) -> bool:
        return any(allowed.ref() == ref for allowed in self.analyses)

    def capabilities(self) -> tuple[AnalysisRef, ...]:
        return tuple(sorted({allowed.ref() for allowed in self.analyses}))


def load_policy(path: Path) -> Policy:
    return load_config(Policy, path)
