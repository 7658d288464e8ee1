"""The site policy (`policy.yaml`): its rules, the admission checks the runner applies, and
`ehds node policy explain`, which must give the runner's verdict for the same task."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from node_harness import (
    OTHER_HDAB,
    TEST_HDAB,
    Pki,
    default_permit,
    write_node_config,
    write_policy,
)

from ehds.cli.main import main
from ehds.core.config import ConfigError
from ehds.federation.model import AnalysisRef, ErrorCode
from ehds.node.admission import admit
from ehds.node.policy import ReleaseMode, SitePolicy, load_policy, load_site_policy
from ehds.node.policy_explain import explain

NOW = datetime.now(UTC)


@pytest.fixture
def site(tmp_path: Path) -> SitePolicy:
    path = write_policy(
        tmp_path / "policy.yaml",
        (("person_count", "1.0.0"), ("test.gate", "1.0.0")),
        manual=("test.gate",),
        researchers=("alice", "carol"),
    )
    return load_site_policy(path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_release_defaults_to_manual_and_keys_are_pinned(tmp_path: Path, site: SitePolicy) -> None:
    assert site.policy.release_mode(AnalysisRef("person_count", "1.0.0")) is ReleaseMode.AUTO
    assert site.policy.release_mode(AnalysisRef("test.gate", "1.0.0")) is ReleaseMode.MANUAL
    path = TEST_HDAB.write_public_key(tmp_path / "keys")
    bare = _write(
        tmp_path,
        f"version: '1'\nhdab_keys:\n  - {{name: test-hdab, public_key: {path}}}\n"
        "analyses:\n  - {name: person_count, version: 1.0.0}\n",
    )
    loaded = load_site_policy(bare)
    assert loaded.policy.analyses[0].release is ReleaseMode.MANUAL  # a person looks by default
    assert [key.key_id for key in loaded.trusted] == [
        key.key_id for key in load_site_policy(write_policy(tmp_path / "p2.yaml")).trusted
    ]
    assert loaded.policy.retention_days is None
    assert loaded.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: '1'\n", "hdab_keys: required key is missing"),
        ("version: '1'\nhdab_keys: []\n", "hdab_keys"),
        (
            "version: '1'\nhdab_keys: [{name: Bad_Name, public_key: k.pem}]\n",
            "hdab_keys.0.name",
        ),
        (
            "version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\nresearchers: [Alice]\n",
            "researchers",
        ),
        (
            "version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\nretention_days: 0\n",
            "retention_days",
        ),
        (
            "version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\nanalyses:\n"
            "  - {name: counts, version: 1.0.0, release: maybe}\n",
            "analyses.0.release",
        ),
        (
            "version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\nanalyses:\n"
            "  - {name: counts, version: 1.0.0}\n  - {name: counts, version: 1.0.0}\n",
            "listed twice",
        ),
        ("version: '1'\nhdab_keys: [{name: a, public_key: k.pem}]\nbudget: 1\n", "budget"),
    ],
)
def test_malformed_policies_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_policy(_write(tmp_path, text))


def test_a_pinned_key_that_cannot_be_read_fails_the_site_policy(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: '1'\nhdab_keys: [{name: a, public_key: gone.pem}]\n")
    assert load_policy(path).hdab_keys[0].public_key == tmp_path / "gone.pem"  # shape only
    with pytest.raises(ConfigError, match=r"hdab_keys\.0\.public_key"):
        load_site_policy(path)


ADMISSION_CASES = {
    "allowed": ({}, None),
    "permit of another HDAB": ({"permit": OTHER_HDAB.permit()}, "permit.untrusted_issuer"),
    "researcher not on the list": (
        {"researcher": "bob", "permit": TEST_HDAB.permit(holders=("bob",))},
        "policy.researcher_not_allowed",
    ),
    "analysis version not listed": (
        {"analysis": AnalysisRef("person_count", "2.0.0")},
        "policy.analysis_not_allowed",
    ),
    "not a holder, not on the list: the permit answers first": (
        {"researcher": "bob"},
        "permit.not_holder",
    ),
    "other node": ({"node": "hospital-z"}, "permit.node_not_covered"),
    "expired": ({"now": NOW + timedelta(days=2)}, "permit.expired"),
}


@pytest.mark.parametrize("case", ADMISSION_CASES.values(), ids=ADMISSION_CASES.keys())
def test_admission_and_explain_agree(site: SitePolicy, case: tuple[dict[str, object], str]) -> None:
    changes, code = case
    request: dict[str, object] = {
        "node": "hospital-a",
        "analysis": AnalysisRef("person_count", "1.0.0"),
        "researcher": "alice",
        "permit": default_permit(),
        "now": NOW,
    }
    request.update(changes)
    refusal = admit(site, **request)  # type: ignore[arg-type]
    assert (refusal.rule if refusal else None) == code
    if refusal is not None:
        expected = (
            ErrorCode.PERMIT_REFUSED if code.startswith("permit.") else ErrorCode.POLICY_REFUSED
        )
        assert refusal.code is expected
        assert refusal.message.startswith(f"{code}: ")
    ref = request["analysis"]
    assert isinstance(ref, AnalysisRef)
    explained = explain(
        site,
        node=str(request["node"]),
        now=request["now"],  # type: ignore[arg-type]
        analysis=f"{ref.name}@{ref.version}",
        researcher=str(request["researcher"]),
        permit=request["permit"],  # type: ignore[arg-type]
    )
    assert explained.refusal == refusal
    assert explained.verdict == ("allowed" if refusal is None else "refused")


def _node(tmp_path: Path, pki: Pki, cdm: Path, **policy: object) -> Path:
    write_policy(
        tmp_path / "policy.yaml",
        (("person_count", "1.0.0"), ("test.gate", "1.0.0")),
        **policy,  # type: ignore[arg-type]
    )
    return write_node_config(tmp_path, pki=pki, cdm=cdm, address="127.0.0.1:1")


def test_explain_prints_what_the_policy_allows(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _node(tmp_path, pki, cdm, manual=("test.gate",), retention_days=30)
    assert main(["node", "policy", "explain", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    key = load_site_policy(tmp_path / "policy.yaml").trusted[0]
    assert f"test-hdab  key id {key.key_id}" in out
    assert "person_count 1.0.0  release auto" in out
    assert "test.gate 1.0.0  release manual" in out
    assert "researchers: any holder of a valid permit" in out
    assert "min_cell_count: 5" in out
    assert "30 day(s)" in out
    assert "verdict" not in out


def test_explain_gives_the_verdict_and_the_rule(
    tmp_path: Path, pki: Pki, cdm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _node(tmp_path, pki, cdm, researchers=("alice",))
    good = tmp_path / "permit.json"
    good.write_bytes(default_permit())
    expired = tmp_path / "expired.json"
    expired.write_bytes(
        TEST_HDAB.permit(valid_from=NOW - timedelta(days=3), valid_until=NOW - timedelta(days=1))
    )
    base = ["node", "policy", "explain", "--config", str(config)]
    task = ["--analysis", "person_count@1.0.0", "--researcher", "alice"]

    assert main([*base, *task, "--permit", str(good)]) == 0
    out = capsys.readouterr().out
    assert "verdict: allowed" in out
    assert "permit permit-7 from test-hdab" in out

    assert main([*base, *task, "--permit", str(expired)]) == 1
    out = capsys.readouterr().out
    assert "verdict: refused (PERMIT_REFUSED) by rule permit.expired" in out

    assert main([*base, "--analysis", "test.forbidden", "--researcher", "bob", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["refused_by"]["code"] == "policy.researcher_not_allowed"
    assert [r["answer"] for r in document["rules"]] == ["not checked", "refused", "refused"]
    assert document["rules"][2]["code"] == "policy.analysis_not_allowed"

    # No version: whether any version of the analysis is allowed.
    assert main([*base, "--analysis", "person_count"]) == 0
    out = capsys.readouterr().out
    assert "verdict: allowed by the rules checked" in out
    assert "any version" in out
