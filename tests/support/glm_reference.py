"""The pooled-rows reference of the GLM tests: hand-written SQL over the union of the node
CDMs, and statsmodels' GLM on those rows (used by tests/analyses and tests/federation).

Independent of the product: nothing here imports `ehds.analyses.glm` or its features; the SQL
follows the definitions in `ehds.analyses.features` and `ehds.analyses.glm.parameters` words,
not their code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

JsonObject = dict[str, Any]

NODES = {"dk": 3_000_000, "fi": 2_000_000, "fr": 1_000_000}
PERSONS = 5000
HYPERTENSION = 320128
MI, AF = 4329847, 313217
SINUSITIS = 4283893  # never written itself: only its descendants are
SYSTOLIC_BP = 3004249
T2DM = 201826
RTOL = 1e-6


def cohort(name: str, *concepts: int, first: bool = True, descendants: bool = False) -> JsonObject:
    return {
        "name": name,
        "yaml": {
            "concept_sets": {
                name: {"include": [{"concept": c, "descendants": descendants} for c in concepts]}
            },
            "entry": {"events": [{"condition": name}], "first_occurrence": first},
            "exit": {"days_after_start": 0},
        },
    }


AGE = {"kind": "age", "name": "age10", "per_years": 10}
FEMALE = {"kind": "sex", "name": "female"}
SBP = {
    "kind": "measurement",
    "name": "sbp",
    "concept_ids": [SYSTOLIC_BP],
    "include_descendants": False,
    "start_day": -365,
    "end_day": 0,
}
PRIOR_T2DM = {
    "kind": "condition",
    "name": "t2dm",
    "concept_ids": [T2DM],
    "include_descendants": False,
    "start_day": -36500,
    "end_day": 0,
}

LOGISTIC: JsonObject = {
    "family": "binomial",
    "target": cohort("hypertension", HYPERTENSION),
    "outcome": {"cohort": cohort("mi_or_af", MI, AF), "start_day": 1, "end_day": 1825},
    "covariates": [AGE, FEMALE, SBP],
}
POISSON: JsonObject = {
    "family": "poisson",
    "target": cohort("hypertension", HYPERTENSION),
    "outcome": {
        "cohort": cohort("sinusitis", SINUSITIS, first=False, descendants=True),
        "start_day": 1,
        "end_day": 1825,
    },
    "covariates": [AGE, FEMALE],
}
LINEAR: JsonObject = {
    "family": "gaussian",
    "target": cohort("hypertension", HYPERTENSION),
    "outcome": {
        "measurement_concept_ids": [SYSTOLIC_BP],
        "include_descendants": False,
        "start_day": 1,
        "end_day": 730,
    },
    "covariates": [AGE, FEMALE, PRIOR_T2DM],
}


# --------------------------------------------------------------------------- reference


def pooled_sql(files: dict[str, Path], query: str) -> pd.DataFrame:
    """``query`` over views of the union of the node CDMs (hand-written SQL)."""
    with duckdb.connect() as con:
        for node, path in files.items():
            con.execute(f"ATTACH '{path}' AS n_{node} (READ_ONLY)")

        def union(select: str) -> str:
            return " UNION ALL ".join(select.format(db=f"n_{node}") for node in files)

        con.execute(
            "CREATE TEMP VIEW person AS "
            + union("SELECT person_id, gender_concept_id, year_of_birth FROM {db}.cdm.person")
        )
        con.execute(
            "CREATE TEMP VIEW op AS "
            + union(
                "SELECT person_id, observation_period_start_date AS op_start, "
                "observation_period_end_date AS op_end FROM {db}.cdm.observation_period"
            )
        )
        con.execute(
            "CREATE TEMP VIEW co AS "
            + union(
                "SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS day "
                "FROM {db}.cdm.condition_occurrence"
            )
        )
        con.execute(
            "CREATE TEMP VIEW meas AS "
            + union(
                "SELECT person_id, measurement_concept_id AS concept_id, measurement_date AS day, "
                "value_as_number AS value FROM {db}.cdm.measurement"
            )
        )
        first_db = f"n_{next(iter(files))}"
        con.execute(f"CREATE TEMP VIEW ca AS SELECT * FROM {first_db}.vocab.concept_ancestor")
        # target: first ever hypertension, if inside an observation period
        con.execute(
            f"""
            CREATE TEMP VIEW target AS
            WITH first AS (SELECT person_id, min(day) AS day FROM co
                           WHERE concept_id = {HYPERTENSION} GROUP BY person_id)
            SELECT f.person_id, f.day AS index_date FROM first f
            WHERE EXISTS (SELECT 1 FROM op WHERE op.person_id = f.person_id
                          AND f.day BETWEEN op.op_start AND op.op_end)
            """
        )
        return con.execute(query).df()


def _latest_measurement_sql(concept: int, lo: int, hi: int) -> str:
    """person_id, value: latest value of ``concept`` in [index+lo, index+hi], that day's mean."""
    return f"""
        (WITH mm AS (
            SELECT t.person_id, m.day, m.value FROM target t JOIN meas m
              ON m.person_id = t.person_id AND m.concept_id = {concept} AND m.value IS NOT NULL
             AND m.day BETWEEN t.index_date + ({lo}) AND t.index_date + ({hi}))
         SELECT person_id, avg(value) AS value FROM mm
         WHERE (person_id, day) IN (SELECT person_id, max(day) FROM mm GROUP BY person_id)
         GROUP BY person_id)
    """


def reference_logistic(files: dict[str, Path]) -> pd.DataFrame:
    return pooled_sql(
        files,
        f"""
        WITH first AS (SELECT person_id, min(day) AS day FROM co
                       WHERE concept_id IN ({MI}, {AF}) GROUP BY person_id),
        outcome AS (SELECT f.* FROM first f WHERE EXISTS (
            SELECT 1 FROM op WHERE op.person_id = f.person_id
            AND f.day BETWEEN op.op_start AND op.op_end))
        SELECT t.person_id,
               CASE WHEN EXISTS (SELECT 1 FROM outcome o WHERE o.person_id = t.person_id
                    AND o.day BETWEEN t.index_date + 1 AND t.index_date + 1825)
                    THEN 1.0 ELSE 0.0 END AS y,
               (year(t.index_date) - p.year_of_birth) / 10.0 AS age10,
               CASE WHEN p.gender_concept_id = 8532 THEN 1.0 ELSE 0.0 END AS female,
               s.value AS sbp
        FROM target t JOIN person p USING (person_id)
        JOIN {_latest_measurement_sql(SYSTOLIC_BP, -365, 0)} s USING (person_id)
        ORDER BY t.person_id
        """,
    )


def reference_poisson(files: dict[str, Path]) -> pd.DataFrame:
    return pooled_sql(
        files,
        f"""
        WITH outcome AS (
            SELECT DISTINCT c.person_id, c.day FROM co c
            WHERE c.concept_id IN (SELECT descendant_concept_id FROM ca
                                   WHERE ancestor_concept_id = {SINUSITIS})
              AND EXISTS (SELECT 1 FROM op WHERE op.person_id = c.person_id
                          AND c.day BETWEEN op.op_start AND op.op_end)),
        risk AS (
            SELECT t.person_id, t.index_date, t.index_date + 1 AS risk_start,
                   least(t.index_date + 1825, op.op_end) AS risk_end
            FROM target t JOIN op ON op.person_id = t.person_id
             AND t.index_date BETWEEN op.op_start AND op.op_end)
        SELECT r.person_id,
               (SELECT count(*) FROM outcome o WHERE o.person_id = r.person_id
                AND o.day BETWEEN r.risk_start AND r.risk_end)::DOUBLE AS y,
               ln((r.risk_end - r.risk_start + 1) / 365.25) AS log_exposure,
               (year(r.index_date) - p.year_of_birth) / 10.0 AS age10,
               CASE WHEN p.gender_concept_id = 8532 THEN 1.0 ELSE 0.0 END AS female
        FROM risk r JOIN person p USING (person_id)
        WHERE r.risk_start <= r.risk_end
        ORDER BY r.person_id
        """,
    )


def reference_linear(files: dict[str, Path]) -> pd.DataFrame:
    return pooled_sql(
        files,
        f"""
        SELECT t.person_id, s.value AS y,
               (year(t.index_date) - p.year_of_birth) / 10.0 AS age10,
               CASE WHEN p.gender_concept_id = 8532 THEN 1.0 ELSE 0.0 END AS female,
               CASE WHEN EXISTS (SELECT 1 FROM co WHERE co.person_id = t.person_id
                    AND co.concept_id = {T2DM}
                    AND co.day BETWEEN t.index_date - 36500 AND t.index_date)
                    THEN 1.0 ELSE 0.0 END AS t2dm
        FROM target t JOIN person p USING (person_id)
        JOIN {_latest_measurement_sql(SYSTOLIC_BP, 1, 730)} s USING (person_id)
        ORDER BY t.person_id
        """,
    )


def statsmodels_fit(frame: pd.DataFrame, family: str, covariates: list[str]) -> Any:
    families = {
        "binomial": sm.families.Binomial(),
        "poisson": sm.families.Poisson(),
        "gaussian": sm.families.Gaussian(),
    }
    x = sm.add_constant(frame[covariates].to_numpy(dtype=float), has_constant="add")
    offset = frame["log_exposure"].to_numpy() if "log_exposure" in frame else None
    model = sm.GLM(frame["y"].to_numpy(dtype=float), x, family=families[family], offset=offset)
    return model.fit(tol=1e-13, maxiter=100)


def assert_matches(result: JsonObject, reference: Any, n: int) -> None:
    estimates = np.array([c["estimate"] for c in result["coefficients"]])
    se = np.array([c["se"] for c in result["coefficients"]])
    ci = np.array([[c["ci_lower"], c["ci_upper"]] for c in result["coefficients"]])
    np.testing.assert_allclose(estimates, reference.params, rtol=RTOL)
    np.testing.assert_allclose(se, reference.bse, rtol=RTOL)
    np.testing.assert_allclose(ci, reference.conf_int(alpha=0.05), rtol=RTOL)
    np.testing.assert_allclose(
        [c["p"] for c in result["coefficients"]], reference.pvalues, rtol=1e-4, atol=1e-12
    )
    np.testing.assert_allclose(np.array(result["covariance"]), reference.cov_params(), rtol=RTOL)
    assert result["n"] == n == reference.nobs
    assert result["df_resid"] == reference.df_resid
    assert result["deviance"] == pytest.approx(reference.deviance, rel=RTOL)
    assert result["scale"] == pytest.approx(reference.scale, rel=RTOL)
    assert result["converged"] is True
