"""AuditLog on SQLite and PostgreSQL: append in the caller's transaction, head, lines, races."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ehds.audit import (
    GENESIS_PREV,
    AuditEntry,
    AuditFormatError,
    AuditLog,
    AuditRef,
    audit_table,
    verify_lines,
)
from ehds.audit.table import PAGE_SIZE
from ehds.core.signing import Signer, sha256_hex, verify_signature

MakeLog = Callable[..., AuditLog]
Fill = Callable[[sa.Engine, AuditLog, int], list[bytes]]
CHAIN = "node node-fr"
START = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


def test_append_head_lines_round_trip(engine: sa.Engine, make_log: MakeLog, signer: Signer) -> None:
    log = make_log()
    with engine.connect() as conn:
        assert log.head(conn) is None
        assert list(log.lines(conn)) == []
    anchor = AuditRef("coordinator coordinator", 4, "cd" * 32)
    with engine.begin() as conn:
        first = log.append(conn, actor="node node-fr", action="policy.loaded")
        second = log.append(
            conn,
            actor="researcher alice",
            action="assignment.received",
            subject="task t1",
            detail={"study": "s1", "ids": [1, 2], "ok": True, "none": None},
            digest="sha256:" + "ef" * 32,
            anchor=anchor,
        )
        assert log.head(conn) == second
    assert first.seq == 1
    assert second.seq == 2
    with engine.connect() as conn:
        lines = list(log.lines(conn))
        rows = conn.execute(sa.select(log.table).order_by(log.table.c.seq)).all()
    one, two = (AuditEntry.parse(line) for line in lines)
    assert one.prev == GENESIS_PREV
    assert two.prev == one.hash == first.hash
    assert two.hash == second.hash == sha256_hex(two.body_bytes())
    assert two.canonical() == lines[1]
    assert verify_signature(signer.public_key, two.body_bytes(), two.sig)
    assert two.key == signer.key_id
    assert two.anchor == anchor
    assert two.detail == {"study": "s1", "ids": [1, 2], "ok": True, "none": None}
    assert one.time == START
    assert [row.time for row in rows] == [
        "2026-11-25T10:00:00.123456Z",
        "2026-11-25T10:00:01.123456Z",
    ]
    assert [(row.action, row.subject) for row in rows] == [
        ("policy.loaded", ""),
        ("assignment.received", "task t1"),
    ]
    assert rows[1].entry.encode() == lines[1]
    report = verify_lines(lines, keys={signer.key_id: signer.public_key})
    assert report.ok, report.problem
    assert report.head == second
    assert report.signatures_checked == 2


def test_append_never_commits(engine: sa.Engine, make_log: MakeLog) -> None:
    log = make_log()
    with engine.connect() as conn:
        log.append(conn, actor="a", action="x")
        conn.rollback()
        assert log.head(conn) is None
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        log.append(conn, actor="a", action="x")
    with engine.connect() as conn:
        assert log.head(conn) is not None


def test_append_in_an_orm_session(engine: sa.Engine, make_log: MakeLog) -> None:
    log = make_log()
    with Session(engine) as session, session.begin():
        ref = log.append(session, actor="a", action="x")
        assert log.head(session) == ref
    with Session(engine) as session:
        assert [AuditEntry.parse(line).ref for line in log.lines(session)] == [ref]


def test_bad_fields_write_nothing(engine: sa.Engine, make_log: MakeLog) -> None:
    log = make_log()
    with engine.begin() as conn:
        with pytest.raises(AuditFormatError, match=r"^detail\.result: bytes is not allowed"):
            log.append(conn, actor="a", action="x", detail={"result": b"\x00" * 10})
        with pytest.raises(AuditFormatError, match=r"^subject: longer than 300"):
            log.append(conn, actor="a", action="x", subject="s" * 301)
        with pytest.raises(AuditFormatError, match=r"^digest: "):
            log.append(conn, actor="a", action="x", digest="md5:00")
        assert log.head(conn) is None
    with pytest.raises(AuditFormatError, match=r"^chain: must not be empty"):
        make_log(chain="")


def test_lines_pages_since_and_after_seq(engine: sa.Engine, make_log: MakeLog, fill: Fill) -> None:
    log = make_log()
    lines = fill(engine, log, PAGE_SIZE + 5)
    assert [AuditEntry.parse(line).seq for line in lines] == list(range(1, PAGE_SIZE + 6))
    with engine.connect() as conn:
        assert list(log.lines(conn, after_seq=PAGE_SIZE)) == lines[PAGE_SIZE:]
        # Entry n was written at START + (n - 1) seconds.
        since = datetime(2026, 11, 25, 10, 0, 10, tzinfo=UTC)
        assert list(log.lines(conn, since=since)) == lines[10:]
        assert list(log.lines(conn, since=since, after_seq=20)) == lines[20:]
        assert list(log.lines(conn, since=datetime(2030, 1, 1, tzinfo=UTC))) == []


def test_since_keeps_the_export_contiguous_when_the_clock_steps_back(
    engine: sa.Engine, signer: Signer
) -> None:
    times = iter(datetime(2026, 11, 25, 10, minute, tzinfo=UTC) for minute in (1, 5, 3, 7))
    log = AuditLog(audit_table(sa.MetaData()), signer, CHAIN, clock=lambda: next(times))
    with engine.begin() as conn:
        for _ in range(4):
            log.append(conn, actor="a", action="x")
    with engine.connect() as conn:
        lines = list(log.lines(conn))
        # From the first entry at or after 10:04 (entry 2), everything: entry 3 (10:03) too.
        since = list(log.lines(conn, since=datetime(2026, 11, 25, 10, 4, tzinfo=UTC)))
    assert since == lines[1:]
    assert verify_lines(since, partial=True).ok


def test_a_writer_continues_another_writers_chain(
    engine: sa.Engine, make_log: MakeLog, other_signer: Signer
) -> None:
    with engine.begin() as conn:
        make_log().append(conn, actor="a", action="x")
    with engine.begin() as conn:
        # After a restart, or with a renewed key: the chain goes on from the stored head.
        make_log(key=other_signer).append(conn, actor="a", action="y")
    with engine.connect() as conn:
        entries = [AuditEntry.parse(line) for line in make_log().lines(conn)]
    assert [entry.seq for entry in entries] == [1, 2]
    assert entries[1].prev == entries[0].hash
    assert entries[1].key == other_signer.key_id


def test_audit_table_is_declared_once_per_metadata() -> None:
    metadata = sa.MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_name)s"})
    table = audit_table(metadata)
    assert audit_table(metadata) is table
    assert [column.name for column in table.columns] == [
        "seq",
        "time",
        "action",
        "subject",
        "hash",
        "entry",
    ]
    assert table.c.seq.primary_key
    assert table.c.seq.autoincrement is False
    assert [index.name for index in table.indexes] == ["ix_audit_log_time"]


@pytest.mark.postgres
def test_a_concurrent_writer_loses_on_the_primary_key(
    fresh_postgres_url: str, make_log: MakeLog
) -> None:
    engine = sa.create_engine(fresh_postgres_url)
    metadata = sa.MetaData()
    audit_table(metadata)
    metadata.create_all(engine)
    log = make_log()
    errors: list[BaseException] = []
    try:
        with engine.connect() as first:
            first.begin()
            log.append(first, actor="a", action="first")

            def second_writer() -> None:
                try:
                    with engine.begin() as second:
                        log.append(second, actor="b", action="second")
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=second_writer)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting on the first writer's uncommitted seq 1
            first.commit()
            thread.join(10)
        assert len(errors) == 1
        assert isinstance(errors[0], sa.exc.IntegrityError)
        with engine.connect() as conn:
            lines = list(log.lines(conn))
        assert [AuditEntry.parse(line).action for line in lines] == ["first"]
    finally:
        engine.dispose()
