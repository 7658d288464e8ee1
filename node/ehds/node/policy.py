"""`policy.yaml`: the site's own rules on what runs and what leaves the node.

Separate from `node.yaml` and versioned (`version`), because it is a governance document: the
institution's data protection officer owns it, and every refusal and every released result is
traced to the policy version in force (and the digest of its bytes, in the node's audit
chain). Fail closed: a node with no policy file, a policy that pins no HDAB key, or a policy
that allows nothing, runs nothing.

    version           the document's own version
    min_cell_count    smallest count released in any cell
    hdab_keys         the health data access bodies whose permits this node honours (required)
    researchers       researchers allowed here (empty: any holder of a valid permit)
    analyses          name, exact version and release mode (manual: a person releases each
                      result; auto: results leave when computed)
    retention_days    ended tasks and their results are deleted after this many days
    privacy           differential privacy: the analyses that must add noise (required_for)
                      and the zCDP budget (rho) per data permit and per researcher under it
    workspace_ttl_hours  a study's workspace tables (multi-round analyses) are dropped after
                      this many hours unused
    fl                federated learning: the Flower app bundles allowed (name, version,
                      SHA-256), the smallest extract, and whether training metrics leave

`load_policy` checks the document's shape only (paths are resolved, not read), so that an
example can be validated without its key files; `load_site_policy` also reads the pinned keys
and the digest of the bytes, which is what a running node needs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from pydantic import Field, field_validator, model_validator

from ehds.audit import payload_digest
from ehds.core.config import ConfigError, ConfigModel, load_config
from ehds.core.errors import EhdsError
from ehds.federation.model import AnalysisRef
from ehds.permits import HdabKey, HdabKeyConfig
from ehds.pki.identity import NAME_PATTERN

LOAD_ATTEMPTS: Final = 3
"""Reads of a policy file that changes while it is read, before giving up."""


class ReleaseMode(enum.StrEnum):
    """Who lets a computed result leave the node."""

    # A person (the node's operator) reviews each result: `ehds node review release`.
    MANUAL = "manual"
    # The result leaves as soon as it is computed (after disclosure control).
    AUTO = "auto"


def _participant_name(value: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"not a valid {what} name (1 to 63 characters from a-z, 0-9 and '-', starting "
            "with a letter or digit)"
        )
    return value


class AllowedAnalysis(ConfigModel):
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    # Default manual: releasing a result without a person's look is an explicit choice.
    release: ReleaseMode = ReleaseMode.MANUAL

    def ref(self) -> AnalysisRef:
        return AnalysisRef(self.name, self.version)


class PrivacyBudget(ConfigModel):
    """The zCDP budget (rho adds up over releases) this node grants.

    ``permit_rho`` is shared by every researcher of one data permit; ``researcher_rho`` caps
    each of them under that permit, so that one researcher cannot spend a whole project's
    budget alone. A charge that would exceed either is refused (`ehds.node.privacy_ledger`)."""

    permit_rho: float = Field(gt=0, allow_inf_nan=False)
    researcher_rho: float = Field(gt=0, allow_inf_nan=False)


class PrivacyPolicy(ConfigModel):
    """Differential privacy at this site.

    ``required_for``: analyses (by name, any version) that run here only with a ``privacy``
    parameter (noise added before release); others without one are refused with rule
    ``privacy.required``. ``budget``: none means the node grants no budget, so every
    differentially private release is refused (``privacy.budget.unset``): fail closed."""

    required_for: tuple[str, ...] = ()
    budget: PrivacyBudget | None = None

    @field_validator("required_for")
    @classmethod
    def _unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(values)) != len(values):
            raise ValueError("an analysis is listed twice")
        if any(not value for value in values):
            raise ValueError("an analysis name is empty")
        return values

    def requires(self, analysis: str) -> bool:
        return analysis in self.required_for


class AllowedFlApp(ConfigModel):
    """A Flower app bundle this site runs: its name, version and the SHA-256 of its bytes
    (`ehds fl digest`). Flower itself checks no digest; the node does, before any of the
    bundle's code runs."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class FlPolicy(ConfigModel):
    """Federated learning at this site (analysis ``fl``; it must also be listed under
    ``analyses``).

    ``apps``: the bundles allowed (empty: none). ``min_rows`` / ``min_events``: the smallest
    feature extract, and the fewest persons with and without the outcome, a node trains on
    (refused below, rules ``fl.min_rows`` / ``fl.min_events``). ``release_metrics``: whether
    the node's own training and evaluation metrics (loss, AUC, ...) leave it beside the
    model update; off, only the example count the strategy weights by leaves. Neither the
    metrics nor their count is covered by node-level differential privacy.
    ``message_timeout_seconds``: how long a ClientApp may take over one message."""

    apps: tuple[AllowedFlApp, ...] = ()
    min_rows: int = Field(default=100, ge=1)
    min_events: int = Field(default=10, ge=1)
    release_metrics: bool = False
    message_timeout_seconds: float = Field(default=600.0, gt=0, allow_inf_nan=False)

    def allows(self, name: str, version: str) -> bool:
        return any(app.name == name and app.version == version for app in self.apps)

    def allows_bundle(self, name: str, version: str, sha256: str) -> bool:
        return any(
            app.name == name and app.version == version and app.sha256 == sha256
            for app in self.apps
        )


class Policy(ConfigModel):
    version: str = Field(min_length=1, description="the policy document's own version")
    # Smallest count released in any cell; the coordinator can only raise it per study.
    min_cell_count: int = Field(default=10, ge=1)
    # Required, never empty: a node honours only permits signed by a body it names itself.
    # The same name may appear twice: an HDAB rolling over to a new key keeps the old one
    # pinned until the permits it signed have expired.
    hdab_keys: tuple[HdabKeyConfig, ...] = Field(min_length=1)
    researchers: tuple[str, ...] = ()
    analyses: tuple[AllowedAnalysis, ...] = ()
    # None: keep ended tasks and results; N: delete them N days after they ended.
    retention_days: int | None = Field(default=None, ge=1)
    privacy: PrivacyPolicy = PrivacyPolicy()
    # Hours a study's workspace tables (row-level, in the results place) may stay unused.
    workspace_ttl_hours: float = Field(default=48.0, gt=0, allow_inf_nan=False)
    fl: FlPolicy = FlPolicy()

    @field_validator("researchers")
    @classmethod
    def _researchers(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            _participant_name(value, "researcher")
        return values

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        refs = [allowed.ref() for allowed in self.analyses]
        if len(set(refs)) != len(refs):
            raise ValueError("analyses: the same name and version is listed twice")
        if len(set(self.researchers)) != len(self.researchers):
            raise ValueError("researchers: a name is listed twice")
        return self

    def allowed(self, ref: AnalysisRef) -> AllowedAnalysis | None:
        """The entry that allows ``ref`` (exact name and version), if any."""
        return next((allowed for allowed in self.analyses if allowed.ref() == ref), None)

    def allows(self, ref: AnalysisRef) -> bool:
        return self.allowed(ref) is not None

    def release_mode(self, ref: AnalysisRef) -> ReleaseMode:
        """How a result of ``ref`` leaves; MANUAL for anything the policy does not list."""
        allowed = self.allowed(ref)
        return ReleaseMode.MANUAL if allowed is None else allowed.release

    def allows_researcher(self, name: str) -> bool:
        return not self.researchers or name in self.researchers

    def capabilities(self) -> tuple[AnalysisRef, ...]:
        return tuple(sorted({allowed.ref() for allowed in self.analyses}))


def load_policy(path: Path) -> Policy:
    """The document at ``path``, shape checked (`ConfigError`); key files are not read."""
    return load_config(Policy, path)


def trusted_keys(policy: Policy, source: Path) -> tuple[HdabKey, ...]:
    """The pinned HDAB public keys, read; `ConfigError` naming ``source`` and the key."""
    keys = []
    for index, pinned in enumerate(policy.hdab_keys):
        try:
            keys.append(pinned.load())
        except EhdsError as exc:
            raise ConfigError(source, [f"hdab_keys.{index}.public_key: {exc}"]) from None
    return tuple(keys)


@dataclass(frozen=True)
class SitePolicy:
    """The policy in force: the document, its pinned keys (read) and the digest of its bytes
    (``sha256:<hex>``, what the audit chain records)."""

    policy: Policy
    trusted: tuple[HdabKey, ...]
    digest: str
    path: Path

    @property
    def version(self) -> str:
        return self.policy.version


def load_site_policy(path: Path) -> SitePolicy:
    """Read, validate and pin the policy at ``path``; `ConfigError` if any of it fails.

    The digest is of the very bytes validated: the file is read before and after, and read
    again if it changed in between (an editor saving it at that moment).
    """
    for _ in range(LOAD_ATTEMPTS):
        try:
            before = path.read_bytes()
        except OSError as exc:
            raise ConfigError(path, [f"cannot read the file ({exc.strerror})"]) from None
        policy = load_policy(path)
        try:
            after = path.read_bytes()
        except OSError as exc:
            raise ConfigError(path, [f"cannot read the file ({exc.strerror})"]) from None
        if before == after:
            return SitePolicy(policy, trusted_keys(policy, path), payload_digest(before), path)
    raise ConfigError(path, ["the file keeps changing while it is read"])
