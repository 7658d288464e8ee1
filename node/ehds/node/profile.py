"""What the node announces in `Hello`: software, CDM and vocabulary versions, engine, and the
analyses it will run.

Read again before every connection: an operator may have upgraded the software, loaded a new
vocabulary or changed the policy while the node was away, and the coordinator dispatches by
what the last Hello said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from importlib import metadata
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq
import sqlalchemy as sa

from ehds.analyses.registry import Registry
from ehds.federation.model import AnalysisRef, NodeProfile, SoftwareInfo
from ehds.node.policy import Policy
from ehds.omop.database import CdmDatabase
from ehds.omop.parquet_layout import is_layout, table_files

log = logging.getLogger(__name__)

DISTRIBUTION = "ehds-federation"
CDM_VERSIONS_REFRESH_S: Final = 60.0
CDM_VERSIONS_WAIT_S: Final = 5.0


def software_info() -> SoftwareInfo:
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return SoftwareInfo(DISTRIBUTION, version)


def capabilities(policy: Policy, registry: Registry) -> tuple[AnalysisRef, ...]:
    """Analyses the policy allows AND this software has: the coordinator should send nothing
    else (the node still checks every task; this is a hint, not a permission)."""
    known = set(registry.refs())
    return tuple(ref for ref in policy.capabilities() if ref in known)


CdmSource = CdmDatabase | Path
"""A node's CDM: a database (DuckDB, PostgreSQL), or the root of a Parquet layout (Spark)."""


def _describe(cdm: CdmSource) -> str:
    return f"the Parquet CDM {cdm}" if isinstance(cdm, Path) else cdm.describe()


def _parquet_versions(root: Path) -> tuple[str, str] | None:
    """The versions from ``cdm_source`` of a Parquet layout, read with pyarrow (two columns of
    one row of a table that describes the CDM, not its persons): no Spark start for a Hello.
    None when the table is absent or empty."""
    if not is_layout(root):
        raise FileNotFoundError(f"{root} is not a Parquet CDM layout")
    for file in table_files(root, "cdm_source"):
        table = pq.read_table(file, columns=["cdm_version", "vocabulary_version"])
        if table.num_rows:
            first = table.slice(0, 1).to_pylist()[0]
            return str(first["cdm_version"] or ""), str(first["vocabulary_version"] or "")
    return None


def cdm_versions(cdm: CdmSource) -> tuple[str, str] | None:
    """``(cdm_version, vocabulary_version)`` from the first row of ``cdm_source`` (``""`` for
    a missing value or an empty table), None when the CDM cannot be read. Raises nothing: the
    reason is logged here, without data."""
    if isinstance(cdm, Path):
        try:
            versions = _parquet_versions(cdm)
        except Exception as exc:
            log.warning(
                "cannot read cdm_source in %s (%s): announcing empty CDM and vocabulary versions",
                _describe(cdm),
                type(exc).__name__,
            )
            return None
        if versions is None:
            log.warning("cdm_source in %s is empty: announcing empty versions", _describe(cdm))
            return "", ""
        return versions
    try:
        source = cdm.table("cdm_source")
        with cdm.connect(read_only=True) as conn:
            row = conn.execute(
                sa.select(source.c.cdm_version, source.c.vocabulary_version).limit(1)
            ).first()
    except Exception as exc:  # whatever the driver raises, the node still connects
        log.warning(
            "cannot read cdm_source in %s (%s): announcing empty CDM and vocabulary versions",
            cdm.describe(),
            type(exc).__name__,
        )
        return None
    if row is None:
        log.warning("cdm_source in %s is empty: announcing empty versions", cdm.describe())
        return "", ""
    return str(row.cdm_version or ""), str(row.vocabulary_version or "")


def make_profile(
    versions: tuple[str, str], engine: str, policy: Policy, registry: Registry
) -> NodeProfile:
    cdm_version, vocabulary_version = versions
    return NodeProfile(
        software=software_info(),
        cdm_version=cdm_version,
        vocabulary_version=vocabulary_version,
        engine=engine,
        capabilities=capabilities(policy, registry),
        policy_version=policy.version,
    )


def engine_name(cdm: CdmSource) -> str:
    """The engine a node announces: duckdb, postgresql or spark."""
    return "spark" if isinstance(cdm, Path) else cdm.backend.value


def read_profile(cdm: CdmSource, policy: Policy, registry: Registry) -> NodeProfile:
    """The Hello profile. A CDM that cannot be read gives empty versions: the node still
    connects (it fails tasks with CDM_UNAVAILABLE), and researchers see the empty version."""
    return make_profile(cdm_versions(cdm) or ("", ""), engine_name(cdm), policy, registry)


class CdmVersions:
    """The CDM's versions for Hello: read again at most every `CDM_VERSIONS_REFRESH_S`, and
    never waited on for more than `CDM_VERSIONS_WAIT_S`.

    Why not simply read them before each Hello: a CDM that hangs (a PostgreSQL server behind a
    dead route, without a connect timeout) would keep the node from ever reaching the
    coordinator, where it could at least report CDM_UNAVAILABLE. The read runs on a daemon
    thread so that a hung one cannot delay the process' exit either; meanwhile the last versions
    read (empty at first) are announced.
    """

    def __init__(self, cdm: CdmSource) -> None:
        self._cdm = cdm
        self._value = ("", "")
        self._read_at: float | None = None
        self._pending: asyncio.Future[tuple[str, str] | None] | None = None

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[str, str] | None]:
        future: asyncio.Future[tuple[str, str] | None] = loop.create_future()

        def deliver(value: tuple[str, str] | None) -> None:
            if not future.done():
                future.set_result(value)

        def read() -> None:
            value = cdm_versions(self._cdm)  # logs and returns None on any failure
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(deliver, value)

        threading.Thread(target=read, name="ehds-node-cdm-versions", daemon=True).start()
        return future

    async def get(self) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        stale = self._read_at is None or now - self._read_at >= CDM_VERSIONS_REFRESH_S
        if self._pending is None and stale:
            self._pending = self._start(loop)
        if self._pending is not None:
            done, _ = await asyncio.wait({self._pending}, timeout=CDM_VERSIONS_WAIT_S)
            if done:
                value = self._pending.result()
                self._pending = None
                self._read_at = now
                if value is not None:
                    self._value = value
            else:
                log.warning(
                    "reading the CDM's versions takes over %.0f s; announcing the last known",
                    CDM_VERSIONS_WAIT_S,
                )
        return self._value

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
