"""Finding and streaming FHIR sources: NDJSON blocks (plain, gzip), Bundles entry by entry,
and the scale-up that makes larger bulk exports."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from ehds.connectors.fhir.reader import (
    BundleFormatError,
    FhirSourceError,
    NotABundleError,
    SourceFile,
    find_sources,
    iter_bundle_entries,
    iter_entry_blocks,
    iter_line_blocks,
    split_lines,
)
from ehds.connectors.fhir.scaleup import replicate

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"


def _lines(source: SourceFile, block_bytes: int) -> list[tuple[int, bytes]]:
    return [pair for block in iter_line_blocks(source, block_bytes) for pair in split_lines(block)]


@pytest.mark.parametrize("block_bytes", [7, 100, 1 << 20])
def test_line_blocks_keep_every_line_and_its_number(tmp_path: Path, block_bytes: int) -> None:
    text = (FIXTURES / "observations.ndjson").read_bytes()
    plain = tmp_path / "o.ndjson"
    plain.write_bytes(
        text + b"\n\n" + b'{"resourceType": "Patient"}'
    )  # blank lines, no final newline
    packed = tmp_path / "o.ndjson.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    expected = [(n, line) for n, line in enumerate(plain.read_bytes().split(b"\n"), 1) if line]
    for path in (plain, packed):
        assert _lines(SourceFile(path, path.name, "ndjson"), block_bytes) == expected


def test_find_sources_in_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.ndjson", "sub/b.ndjson.gz", "c.json", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = find_sources([tmp_path])
    assert [(s.name, s.kind) for s in found] == [
        ("a.ndjson", "ndjson"),
        ("c.json", "bundle"),
        ("sub/b.ndjson.gz", "ndjson"),
    ]
    with pytest.raises(FhirSourceError, match=r"notes\.txt"):
        find_sources([tmp_path / "notes.txt"])
    with pytest.raises(FhirSourceError, match="no such file"):
        find_sources([tmp_path / "missing"])


@pytest.mark.parametrize("block_chars", [3, 64, 1 << 20])
def test_bundle_entries_stream_in_order(block_chars: int) -> None:
    text = (FIXTURES / "bundle.json").read_text(encoding="utf-8")
    entries = list(iter_bundle_entries(io.StringIO(text), block_chars))
    assert entries == list(enumerate(json.loads(text)["entry"]))


def test_bundle_errors() -> None:
    with pytest.raises(NotABundleError):
        list(iter_bundle_entries(io.StringIO('{"resourceType": "Patient", "id": "x"}')))
    good = '{"resourceType": "Bundle", "entry": [{"resource": {"id": "1"}}, '
    stream = iter_bundle_entries(io.StringIO(good + '{"resource": '), 16)
    assert next(stream) == (0, {"resource": {"id": "1"}})
    with pytest.raises(BundleFormatError) as error:
        next(stream)
    assert error.value.where == "entry/1"
    assert (
        list(iter_bundle_entries(io.StringIO('{"resourceType": "Bundle", "total": 12345}'), 2))
        == []
    )


def test_entry_blocks_locate_entries_and_report_a_truncated_bundle(tmp_path: Path) -> None:
    text = (FIXTURES / "bundle.json").read_text(encoding="utf-8")
    path = tmp_path / "b.json.gz"
    path.write_bytes(gzip.compress(text[: len(text) // 2].encode()))
    [block] = list(iter_entry_blocks(SourceFile(path, "b.json.gz", "bundle")))
    assert [location for location, _ in block.entries] == ["b.json.gz:entry/0", "b.json.gz:entry/1"]
    assert block.entries[0][1]["resourceType"] == "Patient"
    assert block.failure is not None
    assert block.failure[0] == "b.json.gz:entry/2"


def test_replicate_gives_new_ids_and_consistent_references(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    patient = {"resourceType": "Patient", "id": "11111111-2222-3333-4444-555555555555"}
    condition = {
        "resourceType": "Condition",
        "id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "subject": {"reference": "Patient/11111111-2222-3333-4444-555555555555"},
    }
    (src / "Patient.000.ndjson").write_text(json.dumps(patient) + "\n")
    (src / "Condition.000.ndjson.gz").write_bytes(gzip.compress(json.dumps(condition).encode()))
    written = replicate(src, tmp_path / "out", 3)
    assert [p.name for p in written] == ["Condition.000.ndjson.gz", "Patient.000.ndjson.gz"]
    with gzip.open(written[1], "rt") as stream:
        patients = [json.loads(line) for line in stream]
    with gzip.open(written[0], "rt") as stream:
        conditions = [json.loads(line) for line in stream]
    assert patients[0] == patient
    assert conditions[0] == condition
    assert len({p["id"] for p in patients}) == 3
    assert len({c["id"] for c in conditions}) == 3
    assert [c["subject"]["reference"] for c in conditions] == [
        f"Patient/{p['id']}" for p in patients
    ]
    again = replicate(src, tmp_path / "again", 3, compress=False)
    with again[1].open() as stream:
        assert [json.loads(line) for line in stream] == patients  # deterministic
