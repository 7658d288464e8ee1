"""`glm`: federated generalised linear models (logistic, Poisson with offset, linear).

parameters.py  the study's parameters (family, target cohort, outcome, covariates, round)
design.py      the design table, built once per study in its workspace
sums.py        score, information, deviance and guard counts as ONE aggregate query
guards.py      the disclosure rules of a release
irls.py        Newton/IRLS steps from summed sums (node's local fit and the federated fit)
inference.py   Wald inference, per-node fits, meta-analysis, the CLI table
analysis.py    the `Glm` analysis (compute, advance)
"""

from .analysis import Glm
from .parameters import GlmOutcome, GlmParameters, GlmRound

__all__ = ["Glm", "GlmOutcome", "GlmParameters", "GlmRound"]
