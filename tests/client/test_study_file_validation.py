"""A bad study file is refused before anything is sent, with the file, line and key named.

The "nothing is sent" tests run `ehds study submit` with a valid client configuration whose
coordinator address is a plain TCP listener that counts connections: a bad file must leave it
at zero, while a good file does reach it (the control).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehds.cli.main import main as cli_main
from ehds.coordinator.study_file import StudyFileError, load_study_file
from ehds.federation.model import AnalysisRef
from ehds.pki.authority import init_authority
from ehds.pki.identity import Role
from ehds.pki.issue import issue_certificate

GOOD = """\
title: Persons by sex and age band
analysis:
  name: person_count
  version: 1.0.0
parameters:
  age_band_edges: [0, 18, 45, 65]
  reference_year: 2025
min_nodes: 2
data_permit_id: FI-2026-042
"""


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(StudyFileError) as caught:
        load_study_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    return message


def test_a_good_file_becomes_the_spec(tmp_path: Path) -> None:
    spec = load_study_file(_write(tmp_path, GOOD))
    assert spec.title == "Persons by sex and age band"
    assert spec.analysis == AnalysisRef("person_count", "1.0.0")
    assert spec.parameters == b'{"age_band_edges":[0,18,45,65],"reference_year":2025}'
    assert (spec.min_nodes, spec.deadline_seconds, spec.target_nodes) == (2, 600, ())
    # Left-out parameters take the analysis' defaults, canonically encoded.
    minimal = "title: t\nanalysis: {name: person_count, version: 1.0.0}\ndata_permit_id: p\n"
    assert load_study_file(_write(tmp_path, minimal)).parameters == spec.parameters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # malformed YAML
        ("title: [oops\nanalysis: {}\n", "line 2: not valid YAML"),
        ("title: a\ntitle: b\n", "line 2: not valid YAML (duplicate key 'title')"),
        # unknown analysis, unknown version
        (
            GOOD.replace("name: person_count", "name: person_cuont"),
            "line 3: analysis.name: unknown analysis 'person_cuont' (known: characterization, "
            "counts,",
        ),
        (
            GOOD.replace("version: 1.0.0", "version: 9.9.9"),
            "line 4: analysis.version: analysis 'person_count' has no version '9.9.9' "
            "(available: 1.0.0)",
        ),
        # parameters of the wrong type, or invalid for the analysis
        (
            GOOD.replace("reference_year: 2025", "reference_year: twenty"),
            "line 7: parameters.reference_year: Input should be a valid integer "
            "(person_count 1.0.0)",
        ),
        (
            GOOD.replace("[0, 18, 45, 65]", "[0, 18, eighteen]"),
            "line 6: parameters.age_band_edges.2: Input should be a valid integer",
        ),
        (
            GOOD.replace("[0, 18, 45, 65]", "[18, 45]"),
            "line 6: parameters.age_band_edges: Value error, must start at 0",
        ),
        # unknown keys, at the top and among the parameters
        (GOOD + "min_node: 3\n", "line 10: min_node: unknown key"),
        (
            GOOD.replace("  reference_year: 2025\n", "  reference_year: 2025\n  sex: F\n"),
            "line 8: parameters.sex: unknown key (person_count 1.0.0)",
        ),
        # other keys
        (
            GOOD.replace("title: Persons by sex and age band\n", ""),
            "title: required key is missing",
        ),
        (
            GOOD.replace("min_nodes: 2", "min_nodes: 0"),
            "line 8: min_nodes: Input should be greater",
        ),
        (
            GOOD + "target_nodes: [fr]\n",
            "min_nodes is 2 but target_nodes names only 1 node(s)",
        ),
        (
            GOOD + "target_nodes: [fr, FR]\n",
            "line 10: target_nodes: Value error, 'FR' is not a node",
        ),
        (GOOD + "target_nodes: [fr, fr]\n", "line 10: target_nodes: Value error, a node is named"),
        ("- a list\n", "(top level): Input should be a valid dictionary"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("min_nodes: 2", "min_nodes: many").replace(
        "reference_year: 2025", "reference_year: 2025.5"
    )
    message = _error(tmp_path, text)
    assert "line 8: min_nodes: Input should be a valid integer" in message
    assert "line 7: parameters.reference_year: Input should be a valid integer" in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match=r"nope\.yaml: cannot read the file"):
        load_study_file(tmp_path / "nope.yaml")


def test_parameter_values_are_not_echoed(tmp_path: Path) -> None:
    """A parameter could be a concept list the researcher considers confidential."""
    message = _error(tmp_path, GOOD.replace("reference_year: 2025", "reference_year: secret-x"))
    assert "secret-x" not in message


# --------------------------------------------------------------------------- nothing is sent


class CountingListener:
    """Accepts TCP connections on 127.0.0.1, counts them and closes them at once."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    try:
        yield counting
    finally:
        counting.close()


@pytest.fixture
def researcher_config(tmp_path: Path, listener: CountingListener) -> Path:
    pki = tmp_path / "pki"
    init_authority(pki, "test-federation")
    issue_certificate(pki, Role.RESEARCHER, "alice")
    issued = pki / "issued"
    return _write(
        tmp_path,
        f"coordinator: {{address: '127.0.0.1:{listener.port}'}}\n"
        f"tls: {{certificate: '{issued}/alice.pem', key: '{issued}/alice.key', "
        f"ca: '{issued}/ca.pem'}}\n",
        "researcher.yaml",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("title: Persons", "title: [Persons"), "not valid YAML"),
        (("name: person_count", "name: nope"), "line 3: analysis.name: unknown analysis 'nope'"),
        (("reference_year: 2025", "reference_year: '2025'"), "line 7: parameters.reference_year"),
        (("min_nodes: 2", "min_nodes: 2\ncolour: blue"), "line 9: colour: unknown key"),
    ],
)
def test_cli_sends_nothing_for_a_bad_file(
    listener: CountingListener,
    researcher_config: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    expected: str,
) -> None:
    study = _write(researcher_config.parent, GOOD.replace(*change))
    code = cli_main(["study", "--config", str(researcher_config), "submit", str(study)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"ehds: error: {study}: ")
    assert expected in err
    assert listener.accepted == 0


def test_cli_does_connect_for_a_good_file(
    tmp_path: Path,
    listener: CountingListener,
    researcher_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The control: the same set-up with a good file reaches the listener (which is not a
    coordinator, so the submission fails as unavailable)."""
    study = _write(tmp_path, GOOD)
    code = cli_main(["study", "--config", str(researcher_config), "submit", str(study)])
    assert code == 2
    assert f"coordinator at 127.0.0.1:{listener.port} is unavailable" in capsys.readouterr().err
    assert listener.accepted >= 1


def test_cli_needs_a_client_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EHDS_CLIENT_CONFIG", raising=False)
    assert cli_main(["study", "submit", str(_write(tmp_path, GOOD))]) == 2
    assert "pass --config FILE.yaml or set EHDS_CLIENT_CONFIG" in capsys.readouterr().err
