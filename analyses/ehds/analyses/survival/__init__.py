"""Survival analyses: Kaplan-Meier on a grid the nodes agree on (``kaplan_meier``).

parameters.py  the parameters and the fine grid they define
times.py       survival times and interval counts as Ibis expressions (node side)
grid.py        risk tables, the greedy coarsening, the agreed grid (pure)
estimates.py   survival, Greenwood, bands, log-rank (pure, coordinator side)
kaplan_meier.py the analysis: two rounds, node and coordinator halves
"""

from ehds.analyses.survival.kaplan_meier import KaplanMeier
from ehds.analyses.survival.parameters import KaplanMeierParameters, KmRound

__all__ = ["KaplanMeier", "KaplanMeierParameters", "KmRound"]
