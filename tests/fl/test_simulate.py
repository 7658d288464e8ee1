"""`ehds fl build / digest / simulate`: bundles, partitions, and one bounded run of the built-in
app on Flower's simulation engine (Ray) over a synthetic DuckDB CDM."""

from __future__ import annotations

import gc
import hashlib
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ehds.cli.main import main
from ehds.fl.builtin import builtin_app_dir, builtin_fab
from ehds.omop.database import CdmDatabase
from ehds.omop.synth import SynthOptions, generate
from glm_reference import AGE, FEMALE, LOGISTIC, SBP

with warnings.catch_warnings():
    # typer, which flwr's logger imports, re-exports click.utils helpers that click 8.5
    # deprecates: warned once, at import, by Flower's dependencies, not by this code.
    warnings.filterwarnings("ignore", r"'click\.utils\.\w+' is deprecated", DeprecationWarning)
    from ehds.fl.simulation import split_extract


def test_build_prints_the_digest_of_the_reproducible_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "logreg.fab"
    assert main(["fl", "build", str(builtin_app_dir("ehds-logreg")), "-o", str(output)]) == 0
    digest = hashlib.sha256(builtin_fab("ehds-logreg")).hexdigest()
    assert output.read_bytes() == builtin_fab("ehds-logreg")
    printed = capsys.readouterr().out
    assert "ehds-logreg 1.0.0" in printed
    assert f"sha256: {digest}" in printed
    assert main(["fl", "digest", str(output)]) == 0
    assert capsys.readouterr().out == f"ehds-logreg 1.0.0\nsha256: {digest}\n"


def test_digest_of_a_non_bundle_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "x.fab"
    bogus.write_bytes(b"not a zip")
    assert main(["fl", "digest", str(bogus)]) != 0
    assert "ehds: error:" in capsys.readouterr().err


def test_split_extract_partitions_every_row_once(tmp_path: Path) -> None:
    extract = tmp_path / "extract.parquet"
    pq.write_table(
        pa.table({"y": [float(i % 2) for i in range(10)], "a": list(range(10))}), extract
    )
    paths = split_extract(extract, 3, tmp_path / "parts", seed=1)
    tables = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in tables] == [4, 3, 3]
    assert sorted(v for t in tables for v in t.column("a").to_pylist()) == list(range(10))
    assert all(t.column_names == ["y", "a"] for t in tables)


@pytest.mark.slow
@pytest.mark.timeout(240)
# Ray's driver leaves its daemons' Popen objects and their /dev/null handles to the garbage
# collector (collected below, inside this test): Ray's leaks, not ours.
@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_simulate_runs_the_study_app_on_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cdm = tmp_path / "fi.duckdb"
    generate(CdmDatabase.parse(str(cdm)), SynthOptions(persons=2000, seed=5, profile="fi"))
    fab = builtin_fab("ehds-logreg")
    study = tmp_path / "study.yaml"
    parameters = {
        "app": {
            "name": "ehds-logreg",
            "version": "1.0.0",
            "sha256": hashlib.sha256(fab).hexdigest(),
        },
        "target": LOGISTIC["target"],
        "outcome": LOGISTIC["outcome"],
        "covariates": [AGE, FEMALE, SBP],
        "rounds": 2,
        "privacy": {"noise_multiplier": 1.0, "clipping_norm": 5.0},
    }
    study.write_text(
        yaml.safe_dump(
            {
                "title": "dry run",
                "analysis": {"name": "fl", "version": "1.0.0"},
                "data_permit_id": "P-1",
                "parameters": parameters,
            }
        ),
        encoding="utf-8",
    )
    code = main(
        ["fl", "simulate", str(study), "--cdm", str(cdm), "--nodes", "3", "--num-cpus", "2"]
    )
    gc.collect()
    out = capsys.readouterr().out
    print(out)
    assert code == 0
    assert "note:" not in out  # the built-in bundle is the one the study names
    assert "features: age10, female, sbp" in out
    for number in (1, 2):
        assert f"round   {number} train" in out
        assert f"round   {number} evaluate" in out
    assert "auc " in out
    assert "model: intercept" in out
    assert "privacy: node-level DP, epsilon" in out
