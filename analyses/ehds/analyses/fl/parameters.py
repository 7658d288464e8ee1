"""The parameters of a federated-learning (`fl`) study.

Why the population, outcome and features are the GLM's own models: a node builds an FL
study's feature matrix with the same definitions as a regression's design table, so a
researcher who compares a federated model with a pooled GLM compares the same columns.

What Flower sees: ``app`` is a Flower App Bundle (FAB, the zip ``flwr build`` makes), carried
inside the parameters so that its digest is part of what the coordinator signs and both sides
audit. ``rounds``, ``local_epochs``, ``strategy`` and ``privacy`` become the app's run config
(`run_config`), under the keys the built-in apps read; ``run_config`` passes anything else an
app declares, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Annotated, Final, Literal, Self

from pydantic import Field, field_validator, model_validator

from ehds.analyses.base import AnalysisParameters
from ehds.analyses.cohorts import CohortSpec
from ehds.analyses.features import Features
from ehds.analyses.glm.parameters import MAX_COVARIATES, GlmOutcome

MAX_FAB_BYTES: Final = 640 * 1024
"""A FAB travels base64-encoded in the study's parameters (at most 1 MiB in all)."""
MAX_ROUNDS: Final = 200
SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
RUN_CONFIG_KEY: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

Strategy = Literal["fedavg", "fedprox", "fedadam"]
RunConfigValue = bool | int | float | str


class FlApp(AnalysisParameters):
    """The Flower app: its name and version (what a node's policy allows) and its bundle."""

    name: str = Field(min_length=1, max_length=100)
    version: str = Field(min_length=1, max_length=40)
    # Hex SHA-256 of the FAB's bytes: stated by the researcher, checked by the coordinator on
    # submission and recomputed by every node against its own allow-list before any code runs.
    sha256: str
    # The FAB, base64. Absent from the parameters of rounds >= 1 (a node keeps the bundle it
    # checked when it joined).
    fab: str | None = Field(default=None, max_length=(MAX_FAB_BYTES * 4) // 3 + 4)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not SHA256_HEX.fullmatch(value):
            raise ValueError("app.sha256 is 64 lower-case hex digits (SHA-256 of the FAB)")
        return value

    @model_validator(mode="after")
    def _digest_matches(self) -> Self:
        if self.fab is not None:
            data = self.fab_bytes()
            if hashlib.sha256(data).hexdigest() != self.sha256:
                raise ValueError("app.fab does not have the SHA-256 stated in app.sha256")
        return self

    def fab_bytes(self) -> bytes:
        if self.fab is None:
            raise ValueError("app.fab is absent (rounds >= 1 carry no bundle)")
        try:
            return base64.b64decode(self.fab, validate=True)
        except binascii.Error:
            raise ValueError("app.fab is not valid base64") from None


class FlPrivacy(AnalysisParameters):
    """Node-level differential privacy (Flower's central DP: each node's update clipped to
    ``clipping_norm``, Gaussian noise of ``noise_multiplier * clipping_norm`` added to the
    sum at the server). It protects a whole node's contribution, not a patient; epsilon at
    ``delta`` comes from Flower's RDP accountant."""

    mode: Literal["node-level"] = "node-level"
    noise_multiplier: float = Field(gt=0, le=100)
    clipping_norm: float = Field(gt=0, le=1e6)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class FlRound(AnalysisParameters):
    """Set by the coordinator in rounds >= 1: the Flower message for each node (base64 of
    `ehds.fl.codec.encode_message`); a node reads only its own."""

    number: int = Field(ge=1)
    messages: dict[str, str] = Field(min_length=1)


class FlParameters(AnalysisParameters):
    app: FlApp
    target: CohortSpec
    outcome: GlmOutcome
    covariates: Annotated[Features, Field(max_length=MAX_COVARIATES)] = Field(min_length=1)
    rounds: int = Field(default=5, ge=1, le=MAX_ROUNDS)
    local_epochs: int = Field(default=1, ge=1, le=100)
    strategy: Strategy = "fedavg"
    privacy: FlPrivacy | None = None
    run_config: dict[str, RunConfigValue] = Field(default_factory=dict, max_length=100)
    round: FlRound | None = None

    @model_validator(mode="after")
    def _binary_outcome(self) -> Self:
        if self.outcome.cohort is None or self.outcome.measurement_concept_ids is not None:
            raise ValueError("an fl study's outcome is outcome.cohort (a binary outcome)")
        if "y" in self.feature_names:
            raise ValueError("a feature may not be called 'y' (the extract's outcome column)")
        for key in self.run_config:
            if not RUN_CONFIG_KEY.fullmatch(key):
                raise ValueError(f"run_config key {key!r} is not a Flower config key")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.covariates]

    def app_run_config(self) -> dict[str, RunConfigValue]:
        """What the app's ``context.run_config`` holds beyond the FAB's own defaults."""
        config: dict[str, RunConfigValue] = {
            "num-server-rounds": self.rounds,
            "local-epochs": self.local_epochs,
            "strategy": self.strategy,
        }
        if self.privacy is not None:
            config |= {
                "dp-mode": self.privacy.mode,
                "dp-noise-multiplier": self.privacy.noise_multiplier,
                "dp-clipping-norm": self.privacy.clipping_norm,
                "dp-delta": self.privacy.delta,
            }
        return config | dict(self.run_config)

    def without_bundle(self) -> FlParameters:
        return self.model_copy(update={"app": self.app.model_copy(update={"fab": None})})
