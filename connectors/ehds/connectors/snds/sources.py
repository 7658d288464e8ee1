"""Which files of an SNDS extract hold which table.

An extract is a folder (searched recursively) of CSV (optionally gzip-compressed) or Parquet
files named after their SNDS table: ``IR_BEN_R.csv``, ``ER_PRS_F.parquet``... PMSI tables carry
the year in their name (``T_MCO22B``: stays of 2022); ``aa`` in place of the two digits (the
generic name used by the SNDS documentation and its synthetic data) is accepted too. Every
year of a PMSI table is read, and the year stays part of the stay key because ``RSA_NUM`` is
only unique within one year's file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ehds.core.errors import InputError


class SndsSourceError(InputError):
    """The SNDS extract cannot be read (missing table, missing column, ambiguous files)."""


@dataclass(frozen=True)
class SourceSpec:
    """A logical SNDS table: the columns the connector reads (required ones must exist)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    pmsi: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


@dataclass(frozen=True)
class SourceFile:
    spec: SourceSpec
    path: Path
    relative: str  # path shown in `_source` and rejections, relative to the extract folder
    year: str  # PMSI year suffix ("22", or "aa"); "" for the other tables

    @property
    def is_parquet(self) -> bool:
        return self.path.name.lower().endswith(".parquet")


DCIR_KEYS: tuple[str, ...] = (
    "FLX_DIS_DTD",
    "FLX_TRT_DTD",
    "FLX_EMT_TYP",
    "FLX_EMT_NUM",
    "FLX_EMT_ORD",
    "ORG_CLE_NUM",
    "DCT_ORD_NUM",
    "PRS_ORD_NUM",
    "REM_TYP_AFF",
)
"""The 9 join keys of a DCIR line (ER_PRS_F and its detail tables ER_PHA_F, ER_CAM_F...)."""

DCIR_CLAIM_KEYS: tuple[str, ...] = DCIR_KEYS[:7]
"""The keys of a decompte (one claim): the line keys without PRS_ORD_NUM and REM_TYP_AFF."""

PMSI_RETURN_CODES: tuple[str, ...] = (
    "NIR_RET",
    "NAI_RET",
    "SEX_RET",
    "SEJ_RET",
    "FHO_RET",
    "PMS_RET",
    "DAT_RET",
    "COH_NAI_RET",
    "COH_SEX_RET",
)
"""T_MCOaaC quality codes; SNDS practice keeps a stay only when all of them are 0."""

SPECS: tuple[SourceSpec, ...] = (
    SourceSpec(
        "IR_BEN_R",
        ("BEN_NIR_PSA", "BEN_RNG_GEM", "BEN_NAI_ANN", "BEN_SEX_COD"),
        ("BEN_NAI_MOI", "BEN_IDT_ANO", "BEN_DCD_DTE", "BEN_DTE_MAJ"),
    ),
    SourceSpec(
        "ER_PRS_F",
        (*DCIR_KEYS, "BEN_NIR_PSA", "BEN_RNG_GEM", "EXE_SOI_DTD"),
        ("EXE_SOI_DTF", "DPN_QLF", "PRS_NAT_REF"),
    ),
    SourceSpec("ER_PHA_F", (*DCIR_KEYS, "PHA_PRS_C13", "PHA_ACT_QSN"), ("PHA_ORD_NUM",)),
    SourceSpec("ER_CAM_F", (*DCIR_KEYS, "CAM_PRS_IDE"), ("CAM_ORD_NUM", "CAM_ACT_COD")),
    SourceSpec(
        "IR_IMB_R",
        ("BEN_NIR_PSA", "BEN_RNG_GEM", "IMB_ALD_DTD", "MED_MTF_COD"),
        ("IMB_ALD_DTF", "IMB_ALD_NUM", "MED_NCL_IDT", "IMB_ETM_NAT"),
    ),
    SourceSpec(
        "KI_CCI_R", ("BEN_IDT_ANO", "BEN_DCD_DTE"), ("DCD_CIM_COD", "DCD_IDT_ENC", "FLX_PER_ANN")
    ),
    SourceSpec(
        "KI_ECD_R",
        ("BEN_IDT_ANO", "ECD_CIM_COD", "BEN_DCD_DTE"),
        ("DCD_IDT_ENC", "CER_LIG_NUM", "ECD_CAU_RNG"),
    ),
    SourceSpec(
        "T_MCOaaB",
        ("ETA_NUM", "RSA_NUM"),
        ("DGN_PAL", "DGN_REL", "ENT_MOD", "ENT_PRV", "SOR_MOD", "GRG_GHM"),
        pmsi=True,
    ),
    SourceSpec(
        "T_MCOaaC",
        ("ETA_NUM", "RSA_NUM", "NIR_ANO_17"),
        ("EXE_SOI_DTD", "EXE_SOI_DTF", "ENT_DAT", "SOR_DAT", *PMSI_RETURN_CODES),
        pmsi=True,
    ),
    SourceSpec("T_MCOaaD", ("ETA_NUM", "RSA_NUM", "ASS_DGN"), pmsi=True),
    SourceSpec(
        "T_MCOaaUM", ("ETA_NUM", "RSA_NUM"), ("DGN_PAL", "DGN_REL", "UM_ORD_NUM"), pmsi=True
    ),
    SourceSpec(
        "T_MCOaaA",
        ("ETA_NUM", "RSA_NUM", "CDC_ACT"),
        ("ENT_DAT_DEL", "NBR_EXE_ACT", "ACV_ACT", "PHA_ACT", "MOD_ACT"),
        pmsi=True,
    ),
)
SPECS_BY_NAME: Mapping[str, SourceSpec] = {spec.name: spec for spec in SPECS}

_SUFFIXES = (".csv", ".csv.gz", ".parquet")
_PMSI_NAME = re.compile(r"^T_MCO(?P<year>\d\d|AA)(?P<part>B|C|D|UM|A)$")


def _stem(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)].upper()
    return None


def _identify(stem: str) -> tuple[SourceSpec, str] | None:
    match = _PMSI_NAME.match(stem)
    if match:
        return SPECS_BY_NAME[f"T_MCOaa{match['part']}"], match["year"].lower()
    spec = SPECS_BY_NAME.get(stem)
    if spec is None or spec.pmsi:
        return None
    return spec, ""


def discover(source_dir: Path) -> dict[str, list[SourceFile]]:
    """The files of each logical table under ``source_dir`` (other files are ignored).

    Two files for the same table and year (say ``IR_BEN_R.csv`` and ``IR_BEN_R.parquet``)
    are an error: reading both would duplicate every record.
    """
    if not source_dir.is_dir():
        raise SndsSourceError(f"SNDS source {source_dir}: not a folder")
    found: dict[str, list[SourceFile]] = {spec.name: [] for spec in SPECS}
    seen: dict[tuple[str, str], str] = {}
    for path in sorted(source_dir.rglob("*")):
        stem = _stem(path)
        if stem is None or not path.is_file():
            continue
        identified = _identify(stem)
        if identified is None:
            continue
        spec, year = identified
        relative = path.relative_to(source_dir).as_posix()
        previous = seen.get((spec.name, year))
        if previous is not None:
            raise SndsSourceError(
                f"SNDS source {source_dir}: {previous} and {relative} both hold table "
                f"{spec.name}{' year ' + year if year else ''}; keep one"
            )
        seen[(spec.name, year)] = relative
        found[spec.name].append(SourceFile(spec, path, relative, year))
    if not found["IR_BEN_R"]:
        raise SndsSourceError(
            f"SNDS source {source_dir}: no IR_BEN_R file (.csv, .csv.gz or .parquet); "
            "the beneficiary table is needed to identify persons"
        )
    return found
