"""Pieces of the node agent on their own: backoff, fixed outcome texts, metrics labels, the
profile read from the CDM."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from node_harness import LocalAnalyses

from ehds.analyses.base import TaskCancelledError
from ehds.federation.limits import MAX_OUTCOME_MESSAGE_CHARS
from ehds.federation.model import AnalysisRef, ErrorCode
from ehds.node import profile
from ehds.node.backoff import Backoff
from ehds.node.cdm_access import QueryGuard, SharedCdm, TaskCdm, is_cdm_unavailable
from ehds.node.errors import OUTCOME_MESSAGES, outcome
from ehds.node.metrics import outcome_label
from ehds.node.policy import AllowedAnalysis, Policy
from ehds.node.profile import CdmVersions, capabilities, cdm_versions
from ehds.omop.database import CdmDatabase
from ehds.permits import HdabKeyConfig


def test_backoff_is_full_jitter_capped_and_reset() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    caps = []
    for _ in range(8):
        cap = backoff.cap()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= cap
        caps.append(cap)
    assert caps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.cap() == 0.5
    for _ in range(200):  # never overflows, however long the outage
        backoff.next_delay()
    assert backoff.cap() == 4.0
    with pytest.raises(ValueError, match="positive"):
        Backoff(0, 1)


def test_every_code_has_a_short_fixed_message() -> None:
    assert set(OUTCOME_MESSAGES) == set(ErrorCode)
    for code, text in OUTCOME_MESSAGES.items():
        assert 0 < len(text) <= MAX_OUTCOME_MESSAGE_CHARS
        assert outcome("t", code).message == text


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (None, "done"),
        (ErrorCode.POLICY_REFUSED, "refused"),
        (ErrorCode.ANALYSIS_UNKNOWN, "refused"),
        (ErrorCode.CANCELLED, "cancelled"),
        (ErrorCode.DEADLINE_EXCEEDED, "failed"),
        (ErrorCode.INTERNAL, "failed"),
        (ErrorCode.CDM_UNAVAILABLE, "failed"),
    ],
)
def test_outcome_labels(code: ErrorCode | None, label: str) -> None:
    assert outcome_label(code) == label


HDAB_KEYS = (HdabKeyConfig(name="fi-hdab", public_key=Path("fi-hdab.pub.pem")),)


def test_capabilities_are_what_the_policy_allows_and_the_software_has() -> None:
    policy = Policy(
        version="1",
        hdab_keys=HDAB_KEYS,
        analyses=(
            AllowedAnalysis(name="person_count", version="1.0.0"),
            AllowedAnalysis(name="person_count", version="0.9.0"),
            AllowedAnalysis(name="not.shipped", version="1.0.0"),
        ),
    )
    assert capabilities(policy, LocalAnalyses().registry()) == (
        AnalysisRef("person_count", "1.0.0"),
    )
    empty = Policy(version="empty", hdab_keys=HDAB_KEYS)
    assert capabilities(empty, LocalAnalyses().registry()) == ()


def test_cdm_versions_from_cdm_source(tmp_path: Path, cdm: Path) -> None:
    versions = cdm_versions(CdmDatabase.parse(str(cdm)))
    assert versions is not None
    assert versions[0] == "5.4"
    assert versions[1]
    empty = CdmDatabase.parse(str(tmp_path / "empty.duckdb"))
    with empty.connect() as conn:
        for statement in empty.ddl(["cdm_source"]):
            conn.execute(sa.text(statement))
        conn.commit()
    assert cdm_versions(empty) == ("", "")
    assert cdm_versions(CdmDatabase.parse(str(tmp_path / "absent.duckdb"))) is None


def test_cdm_unavailable_is_recognised_through_wrapping(tmp_path: Path) -> None:
    missing = CdmDatabase.parse(str(tmp_path / "absent.duckdb"))
    with pytest.raises(sa.exc.DBAPIError) as caught, missing.connect(read_only=True) as conn:
        conn.execute(sa.text("SELECT 1"))
    assert is_cdm_unavailable(caught.value)
    wrapped = RuntimeError("an analysis wrapped it")
    wrapped.__cause__ = caught.value
    assert is_cdm_unavailable(wrapped)
    assert not is_cdm_unavailable(ValueError("a bug"))


def test_a_hung_cdm_does_not_hold_up_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_versions(cdm: object) -> tuple[str, str]:
        release.wait(5)
        return ("5.4", "v5.0 30-AUG-24")

    monkeypatch.setattr(profile, "cdm_versions", slow_versions)
    monkeypatch.setattr(profile, "CDM_VERSIONS_WAIT_S", 0.1)
    versions = CdmVersions(CdmDatabase.parse("hung.duckdb"))

    async def main() -> None:
        assert await versions.get() == ("", "")  # announced at once, without the versions
        release.set()
        await asyncio.sleep(0.1)
        assert await versions.get() == ("5.4", "v5.0 30-AUG-24")

    asyncio.run(main())


def test_shared_cdm_interrupts_one_task_and_not_another(cdm: Path) -> None:
    """Tasks share one read-only engine, each with its own connection: interrupting one task's
    statement leaves the other's running, and the interrupted connection is not pooled."""
    base = CdmDatabase.parse(str(cdm))
    shared = SharedCdm(base)
    slow, quick = QueryGuard(), QueryGuard()
    slow_cdm, quick_cdm = TaskCdm.of(base, slow, shared), TaskCdm.of(base, quick, shared)
    assert slow_cdm.table("person") is base.table("person")  # definitions built once
    failure: list[BaseException] = []
    started = threading.Event()

    def run_slow() -> None:
        try:
            with slow_cdm.connect(read_only=True) as conn:
                started.set()
                conn.execute(
                    sa.text("SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3")
                )
        except BaseException as exc:
            failure.append(exc)

    try:
        thread = threading.Thread(target=run_slow)
        thread.start()
        assert started.wait(10)
        with quick_cdm.connect(read_only=True) as conn:
            # An interrupt that lands before the statement starts is lost (DuckDB): repeat it.
            for _ in range(200):
                slow.interrupt()
                thread.join(0.05)
                if not thread.is_alive():
                    break
            assert not thread.is_alive()
            assert failure
            persons = conn.execute(sa.text("SELECT count(*) FROM cdm.person")).scalar_one()
        assert persons == 500
        with pytest.raises(TaskCancelledError), slow_cdm.connect(read_only=True):
            pass
        with quick_cdm.connect(read_only=True) as conn:  # the pool still serves others
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        shared.close()
