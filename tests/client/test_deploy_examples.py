"""The example files under deploy/examples/ load with the models the processes use, and every
key those models accept is documented in them: an example cannot drift from the code."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from ehds.coordinator.client_config import ClientConfig, load_client_config
from ehds.coordinator.config import CoordinatorConfig, load_coordinator_config
from ehds.coordinator.study_file import StudyFile, load_study_file
from ehds.core.netconfig import TlsFiles
from ehds.federation.model import AnalysisRef
from ehds.node.config import NodeConfig, load_node_config
from ehds.node.policy import Policy, load_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The models in a field's type: ``X``, ``X | None``, ``tuple[X, ...]``, ..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key path the model accepts (``listen.host``, ...), nested models included."""
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        for nested in _models_in(field.annotation):
            keys.extend(_keys(nested, f"{path}."))
    return keys


def _documented(text: str, key: str) -> bool:
    """The key's last part appears as ``key:``, set or commented out."""
    name = key.rsplit(".", 1)[-1]
    return re.search(rf"^\s*(#\s*)?(- )?{re.escape(name)}:", text, re.MULTILINE) is not None


@pytest.mark.parametrize(
    ("file", "model"),
    [
        ("coordinator.yaml", CoordinatorConfig),
        ("node.yaml", NodeConfig),
        ("policy.yaml", Policy),
        ("researcher.yaml", ClientConfig),
        ("operator.yaml", ClientConfig),
        ("study-person-count.yaml", StudyFile),
    ],
)
def test_every_key_is_documented(file: str, model: type[BaseModel]) -> None:
    text = (EXAMPLES / file).read_text(encoding="utf-8")
    keys = _keys(model)
    assert len(keys) > 3
    missing = [key for key in keys if not _documented(text, key)]
    assert not missing, f"{file} does not document: {', '.join(missing)}"
    # Commented: every example explains itself.
    assert text.lstrip().startswith(f"# {file}:")


def test_coordinator_example_loads() -> None:
    config = load_coordinator_config(EXAMPLES / "coordinator.yaml")
    assert config.listen.port == 50051
    assert config.tls.ca == EXAMPLES / "certs" / "ca.pem"
    assert config.state.url == f"sqlite:///{(EXAMPLES / 'coordinator-state.db').resolve()}"
    assert config.revocation.crl == EXAMPLES / "pki" / "crl.pem"
    (hdab,) = config.permits.hdab_keys
    assert (hdab.name, hdab.public_key) == ("fi-hdab", EXAMPLES / "keys" / "fi-hdab.pub.pem")
    assert config.oidc is None  # commented out: certificates only
    assert config.token_listen is None
    assert config.retention.days is None


def test_node_example_loads_and_its_policy_too() -> None:
    config = load_node_config(EXAMPLES / "node.yaml")
    assert config.policy == EXAMPLES / "policy.yaml"
    assert config.cdm.url == str(EXAMPLES / "omop.duckdb")
    assert config.coordinator.address == "coordinator.example.org:50051"
    policy = load_policy(config.policy)
    assert policy.capabilities() == (AnalysisRef("person_count", "1.0.0"),)
    # The fault-test analyses are for test policies only.
    assert not any(ref.name.startswith("test.") for ref in policy.capabilities())


@pytest.mark.parametrize("file", ["researcher.yaml", "operator.yaml"])
def test_client_examples_load(file: str) -> None:
    config = load_client_config(EXAMPLES / file)
    assert config.coordinator.address == "coordinator.example.org:50051"
    assert isinstance(config.tls, TlsFiles)
    assert config.tls.certificate.parent == EXAMPLES / "certs"
    assert config.token_file is None


def test_study_example_loads() -> None:
    spec = load_study_file(EXAMPLES / "study-person-count.yaml")
    assert spec.analysis == AnalysisRef("person_count", "1.0.0")
    assert spec.parameters == b'{"age_band_edges":[0,18,45,65],"reference_year":2025}'
    assert spec.min_nodes == 2
    assert spec.deadline_seconds == 600
    assert spec.target_nodes == ()
