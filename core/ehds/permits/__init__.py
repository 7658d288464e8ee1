"""Data permits: the signed decision of a health data access body (HDAB) that lets named
researchers run named analyses on named nodes, for a stated purpose, for a period.

Under the EHDS a node may only compute on its data for a request covered by a data permit.
Permits are granted outside this software; an HDAB signs each as a small JSON document with
its own key (not a federation certificate), researchers register it at the coordinator, and
every node checks it again against the HDAB keys its own policy pins.

    model.py      Permit: the content and the rules that make it well-formed
    document.py   the signed document: parse_permit, issue_permit, SignedPermit
    keys.py       HDAB keys: create_hdab_key, load_hdab_key, HdabKey
    check.py      check_permit: the ordered rules and their reason codes
    config.py     HdabKeyConfig: the ``hdab_keys`` entry of coordinator.yaml and policy.yaml
    errors.py     PermitRefusal codes and the errors raised
"""

from __future__ import annotations

from ehds.permits.check import check_permit
from ehds.permits.config import HdabKeyConfig, load_trusted_keys
from ehds.permits.document import ALGORITHM, FORMAT, SignedPermit, issue_permit, parse_permit
from ehds.permits.errors import (
    HdabKeyError,
    HdabKeyExistsError,
    PermitFormatError,
    PermitRefusal,
    PermitRefusedError,
)
from ehds.permits.keys import HdabKey, create_hdab_key, hdab_key_paths, load_hdab_key
from ehds.permits.model import Permit, format_time, parse_time

__all__ = [
    "ALGORITHM",
    "FORMAT",
    "HdabKey",
    "HdabKeyConfig",
    "HdabKeyError",
    "HdabKeyExistsError",
    "Permit",
    "PermitFormatError",
    "PermitRefusal",
    "PermitRefusedError",
    "SignedPermit",
    "check_permit",
    "create_hdab_key",
    "format_time",
    "hdab_key_paths",
    "issue_permit",
    "load_hdab_key",
    "load_trusted_keys",
    "parse_permit",
    "parse_time",
]
