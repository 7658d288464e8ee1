"""Differential privacy for released counts: OpenDP's discrete Gaussian, charged to the node's
ledger before any noise is drawn.

Why differential privacy beside cell suppression: suppression protects one table, but answers
to many overlapping questions can be differenced (the release guard catches only the simplest
case). Noise calibrated to how much one person can change a release bounds what any sequence
of releases discloses, and the node's ledger (`PrivacyAccountant`) caps that sequence per
permit and per researcher.

Definitions, so the numbers in a result can be checked:

* Neighbouring data sets differ by adding or removing one person (every row of that person).
* Privacy loss is zero-concentrated DP (zCDP): ``rho`` adds up over releases, which is how the
  ledger sums charges. ``epsilon`` is reported for the request's ``delta`` through OpenDP's
  zCDP to approximate-DP conversion; it depends on ``rho`` alone.
* Each released vector of integer counts gets the discrete Gaussian mechanism
  (``make_gaussian`` over ``vector_domain(atom_domain(T="i64"))`` with ``l2_distance``): exact
  integers, no floating-point attack surface. Its scale is the smallest for which OpenDP's own
  privacy map says ``map(sensitivity) <= rho_share`` (``binary_search_param``).
* The analysis states each vector's L2 sensitivity and share of ``rho`` and is responsible for
  bounding each person's contribution so that the sensitivity holds (see person_count and
  incidence). The shares sum to 1, so the vectors together cost at most the request's ``rho``,
  which is what the ledger is charged (the request, an upper bound on what OpenDP reports).
* After the noise: values are clamped at 0 and the node's cell threshold is applied to the
  noisy value (a noisy value in ``1..threshold-1`` is suppressed). Both are post-processing
  and cost no privacy; the threshold keeps the results compatible with the disclosure checks
  every coordinator applies.

Order inside a task: build every measurement (errors here release nothing and charge
nothing), charge the ledger once with the whole ``rho``, then draw the noise. A refusal from
the ledger propagates as `DisclosureRefusedError`: no noise is drawn, nothing is released.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from ehds.analyses.base import PrivacyAccountant, canonical_json

MECHANISM: Final = "discrete_gaussian"
DEFINITION: Final = "zCDP, neighbours differ by one person (add/remove)"
_INTEGER: Final = "i64"
"""64-bit counts: a large node's person-days in one cell exceed 2**31."""
_SHARE_TOLERANCE: Final = 1e-9


class PrivacyRequest(BaseModel):
    """The researcher's differential-privacy request for one task's whole release.

    ``rho`` is the zCDP budget this task spends at each node (charged to the node's ledger);
    ``delta`` only chooses which ``(epsilon, delta)`` pair is reported beside it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rho: float = Field(gt=0.0, le=10.0, allow_inf_nan=False)
    delta: float = Field(default=1e-6, gt=0.0, le=1e-2, allow_inf_nan=False)


class PrivacyMechanismError(RuntimeError):
    """OpenDP could not build a mechanism for these figures (a bug in the caller's sensitivity
    or share, never the data); raised before the ledger is charged."""


@dataclass(frozen=True)
class CountVector:
    """One vector of exact integer counts to release with noise.

    ``sensitivity``: the L2 distance between the vector of two neighbouring data sets (one
    person added or removed), which the analysis guarantees by bounding contributions;
    ``share``: the fraction of the request's rho spent on this vector."""

    name: str
    values: Sequence[int]
    sensitivity: float
    share: float


@dataclass(frozen=True)
class NoisyVector:
    name: str
    values: list[int]
    """Noisy counts, clamped at 0 (not yet thresholded)."""
    scale: float
    sensitivity: float
    rho: float
    """What OpenDP's privacy map gives for this vector at its sensitivity (<= its share)."""


@dataclass(frozen=True)
class NoisyRelease:
    request: PrivacyRequest
    epsilon: float
    vectors: dict[str, NoisyVector]

    def as_json(self) -> dict[str, Any]:
        """The ``privacy`` block of a node's result: enough to check every figure."""
        return {
            "mechanism": MECHANISM,
            "definition": DEFINITION,
            "rho": self.request.rho,
            "epsilon": self.epsilon,
            "delta": self.request.delta,
            "vectors": {
                name: {
                    "scale": vector.scale,
                    "l2_sensitivity": vector.sensitivity,
                    "rho": vector.rho,
                }
                for name, vector in sorted(self.vectors.items())
            },
        }


def _opendp() -> Any:
    """OpenDP with its ``contrib`` features (a process-wide switch; idempotent), imported at
    use so that modules which never add noise do not load the library."""
    import opendp.prelude as dp  # noqa: PLC0415 - loaded only when noise is drawn

    dp.enable_features("contrib")
    return dp


def gaussian(scale: float) -> Any:
    """OpenDP's discrete Gaussian on a vector of 64-bit integers, L2 input metric."""
    dp = _opendp()
    return dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T=_INTEGER)), dp.l2_distance(T="f64"), scale=scale
    )


def calibrated_scale(sensitivity: float, rho: float) -> float:
    """The smallest scale whose privacy map, by OpenDP, is at most ``rho`` at ``sensitivity``."""
    if not (math.isfinite(sensitivity) and sensitivity > 0 and math.isfinite(rho) and rho > 0):
        raise PrivacyMechanismError("a sensitivity and a rho must be positive and finite")
    dp = _opendp()
    try:
        scale = dp.binary_search_param(gaussian, d_in=float(sensitivity), d_out=float(rho), T=float)
    except (ValueError, dp.OpenDPException) as exc:
        raise PrivacyMechanismError(f"OpenDP found no Gaussian scale: {exc}") from None
    return float(scale)


def approx_dp_epsilon(rho: float, delta: float) -> float:
    """``epsilon`` of a rho-zCDP release at ``delta``, by OpenDP's conversion.

    The conversion depends on rho alone, so it is taken on OpenDP's reference zCDP
    measurement (a Gaussian of scale 1 at distance sqrt(2 rho), whose map is exactly rho);
    for a single vector this equals converting that vector's own measurement (tested)."""
    dp = _opendp()
    reference = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0
    )
    profile = dp.c.make_zCDP_to_approxDP(reference).map(math.sqrt(2.0 * rho))
    return float(profile.epsilon(delta))


def release(
    request: PrivacyRequest, accountant: PrivacyAccountant, vectors: Sequence[CountVector]
) -> NoisyRelease:
    """Noisy counts for every vector: mechanisms built, ledger charged once, then noise.

    Raises `PrivacyMechanismError` (nothing charged) for bad sensitivities or shares, and
    whatever the accountant raises (`DisclosureRefusedError`: nothing drawn, nothing
    released)."""
    names = [v.name for v in vectors]
    if not vectors or len(set(names)) != len(names):
        raise PrivacyMechanismError("a release needs vectors with distinct names")
    if any(not (0 < v.share <= 1) for v in vectors) or (
        abs(math.fsum(v.share for v in vectors) - 1.0) > _SHARE_TOLERANCE
    ):
        raise PrivacyMechanismError("the vectors' shares of rho must be in (0, 1] and sum to 1")
    planned = []
    for vector in vectors:
        scale = calibrated_scale(vector.sensitivity, request.rho * vector.share)
        measurement = gaussian(scale)
        spent = float(measurement.map(float(vector.sensitivity)))
        planned.append((vector, measurement, scale, spent))
    epsilon = approx_dp_epsilon(request.rho, request.delta)
    accountant.charge(rho=request.rho, epsilon=epsilon, delta=request.delta)
    noisy: dict[str, NoisyVector] = {}
    for vector, measurement, scale, spent in planned:
        drawn = measurement([int(v) for v in vector.values]) if vector.values else []
        noisy[vector.name] = NoisyVector(
            name=vector.name,
            values=[max(0, int(v)) for v in drawn],
            scale=scale,
            sensitivity=float(vector.sensitivity),
            rho=spent,
        )
    return NoisyRelease(request=request, epsilon=epsilon, vectors=noisy)


def thresholded(value: int, threshold: int) -> int | None:
    """A noisy (clamped) count as released: ``None`` (suppressed) in ``1..threshold-1``."""
    return None if 0 < value < threshold else value


class ReleasedPrivacy(BaseModel):
    """The ``privacy`` block of a node's result as the coordinator checks it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mechanism: str
    definition: str
    rho: float = Field(gt=0.0)
    epsilon: float = Field(ge=0.0)
    delta: float = Field(gt=0.0)
    vectors: dict[str, dict[str, float]]


def privacy_mismatch(
    released: ReleasedPrivacy | None, requested: PrivacyRequest | None
) -> str | None:
    """Why a node's ``privacy`` block does not match the study's request (``None``: it does).

    A node's result carries the block exactly when the study requested DP, with the requested
    rho and delta: otherwise the node ran other code, and exact and noisy counts (or two
    budgets) would be mixed in one pooled value."""
    if requested is None:
        return None if released is None else "is noisy, but the study requested no privacy"
    if released is None:
        return "has no privacy block, but the study requested one"
    if released.rho != requested.rho or released.delta != requested.delta:
        return "spent another rho or delta than the study requested"
    return None


def encode_without_unset_privacy(params: BaseModel) -> bytes:
    """Canonical parameters without ``privacy`` when it is not requested: a study without
    differential privacy travels as the same bytes as before the parameter existed (nodes of
    an earlier release accept it; a DP study is refused by them as an unknown parameter)."""
    data = params.model_dump(mode="json")
    if data.get("privacy", 0) is None:
        del data["privacy"]
    return canonical_json(data)


def node_privacy_summary(released: dict[str, ReleasedPrivacy]) -> dict[str, Any]:
    """The ``privacy`` section of a pooled result: every pooled value is a sum of noisy
    values (``noisy``), and what each node spent (its ``epsilon`` at its ``delta``)."""
    return {
        "noisy": True,
        "mechanism": MECHANISM,
        "definition": DEFINITION,
        "nodes": {
            node: {
                "rho": block.rho,
                "epsilon": block.epsilon,
                "delta": block.delta,
                "vectors": block.vectors,
            }
            for node, block in sorted(released.items())
        },
    }


__all__ = [
    "CountVector",
    "NoisyRelease",
    "NoisyVector",
    "PrivacyMechanismError",
    "PrivacyRequest",
    "ReleasedPrivacy",
    "approx_dp_epsilon",
    "calibrated_scale",
    "encode_without_unset_privacy",
    "gaussian",
    "node_privacy_summary",
    "privacy_mismatch",
    "release",
    "thresholded",
]
