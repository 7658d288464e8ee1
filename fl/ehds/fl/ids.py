"""Flower node ids for the federation's node names (stdlib only).

Why derived, not assigned: the coordinator (which addresses messages) and each node (whose
ClientApp context carries its id) must agree on the id without another exchange, and a node
keeps its id across coordinator restarts. Flower's ids are unsigned 64-bit; 63 bits keep
them positive in every language a researcher's tooling may use.
"""

from __future__ import annotations

import hashlib


def node_id_for(node_name: str) -> int:
    digest = hashlib.sha256(b"ehds-fl:" + node_name.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") & (2**63 - 1)) or 1


def run_id_for(study_id: str) -> int:
    """Flower's run id of a study, the same at the coordinator and at every node."""
    digest = hashlib.sha256(b"ehds-fl-run:" + study_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:7], "big") or 1
