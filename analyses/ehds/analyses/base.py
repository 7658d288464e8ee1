"""What an analysis is: one module holding both halves of a federated computation.

Why both halves in one place: the node-side computation and the coordinator-side aggregation
must agree on the shape of what travels between them, and on the parameters. Keeping them in
one class, registered by name and version, means a researcher's parameters are validated by the
same model at submission (client and coordinator) and again at the node, and a new version of
an analysis is a new registry entry rather than an edit that old nodes would not know about.

The node and the coordinator both import this package; neither imports the other.

Privacy contract of :meth:`Analysis.compute`: it runs inside the node's engine (SQL), returns
only aggregates, and applies disclosure control itself (cells under ``ctx.min_cell_count`` are
suppressed, never released). What it returns leaves the node as JSON.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ehds.core.errors import InputError
from ehds.federation.model import AnalysisRef, TaskStage

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from ehds.analyses.engine import IbisCdm

JsonObject = dict[str, Any]
"""A JSON object as `json.loads` returns it: what a node releases and the coordinator pools."""


class AnalysisParameters(BaseModel):
    """Base of every analysis' parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


P = TypeVar("P", bound=AnalysisParameters)


class InvalidParametersError(InputError):
    """Parameters do not validate; the message names each field (never echoes its value)."""


class TaskCancelledError(Exception):
    """Raised inside :meth:`Analysis.compute` when the task was cancelled or ran past its
    deadline; the node turns it into the matching error code."""


class DisclosureRefusedError(Exception):
    """The node refuses to release: ``rule`` names the disclosure rule, ``message`` says what it
    requires (rule and threshold) and never the value that triggered it ("differs by 2 persons"
    would itself disclose). Both may leave the node."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class ReleaseGuard(Protocol):
    """The node's memory of what it released (the differencing guard).

    An analysis calls :meth:`check_population` with the persons its result describes, before it
    releases anything; the node refuses (`DisclosureRefusedError`) a population that differs
    from one already released under the same permit and researcher by 1 to threshold-1 persons.
    """

    def check_population(self, engine: IbisCdm, persons: ir.Table, *, fingerprint: str) -> None:
        """``persons``: one column ``person_id``, distinct. ``fingerprint``: what defines the
        population (canonical JSON of the cohort and parameters), so an identical re-run is
        recognised."""


class Workspace(Protocol):
    """A study-scoped place in the node's results database (never the CDM), for analyses of
    several rounds that would otherwise rebuild the same table every round (a GLM's design
    matrix). The node records every name it hands out and drops the tables once the study has
    been idle for its workspace time-to-live, so nothing row-level lingers."""

    def table_name(self, purpose: str) -> str:
        """The name of this study's table for ``purpose`` (``[a-z0-9_]``), recorded and
        marked used now; the analysis creates the table if it does not exist."""


class PrivacyAccountant(Protocol):
    """The node's privacy budget ledger, per permit and per researcher (zCDP, rho adds up).

    An analysis calls :meth:`charge` once per task, before it draws any noise, with the total
    rho of everything it will release; a charge that would exceed the permit's or the
    researcher's budget raises `DisclosureRefusedError` (rule ``privacy.budget.permit`` or
    ``privacy.budget.researcher``) and records nothing. A repeated charge for the same task
    (a re-run after a restart) is not charged twice."""

    def charge(self, *, rho: float, epsilon: float, delta: float) -> None: ...


class FlRuntime(Protocol):
    r"""The node's host of federated-learning clients (`ehds.node.fl_sessions`).

    An `fl` study's first task asks :meth:`check_app` before anything else (a bundle whose
    name, version or SHA-256 the node's policy does not list is refused, rule
    ``fl.app_not_allowed`` or ``fl.bundle_unknown``, and none of its code runs), builds the
    feature extract at :meth:`extract_path`, checks it against :attr:`min_rows` and
    :attr:`min_events`, then :meth:`start`\ s the study's long-lived, network-isolated
    ClientApp worker, which reads only that extract. Each later task hands one Flower message
    to :meth:`deliver` and releases the reply (metrics filtered by the node's policy)."""

    @property
    def min_rows(self) -> int: ...

    @property
    def min_events(self) -> int: ...

    def check_app(self, name: str, version: str, fab: bytes) -> None: ...

    def extract_path(self, study_id: str) -> Path: ...

    def start(
        self, study_id: str, *, fab: bytes, extract: Path, run_config: Mapping[str, Any]
    ) -> str:
        """Start (or find running) the study's worker; returns its isolation mode."""

    def deliver(self, study_id: str, message: bytes) -> bytes: ...


@dataclass
class ComputeContext:
    """What the node hands to :meth:`Analysis.compute`.

    ``cdm`` is the node's `ehds.omop.database.CdmDatabase` (typed loosely here so that the
    coordinator can import analyses without importing the OMOP layer's engines); ``engine`` is
    the same CDM as Ibis tables (`ehds.analyses.engine.IbisCdm`), through which every analysis
    written for all three engines reads. ``release_guard`` is ``None`` only in unit tests of an
    analysis; the node always sets it.
    """

    cdm: Any
    min_cell_count: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    report: Callable[[TaskStage, float], None] = field(default=lambda stage, fraction: None)
    engine: IbisCdm | None = None
    release_guard: ReleaseGuard | None = None
    workspace: Workspace | None = None
    privacy: PrivacyAccountant | None = None
    study_id: str = ""
    fl: FlRuntime | None = None

    def require_engine(self) -> IbisCdm:
        if self.engine is None:
            raise RuntimeError("this analysis needs the node's Ibis engine (ComputeContext.engine)")
        return self.engine

    def check_population(self, persons: ir.Table, *, fingerprint: str) -> None:
        """Ask the node's release guard whether this population may be described at all."""
        if self.release_guard is not None:
            self.release_guard.check_population(
                self.require_engine(), persons, fingerprint=fingerprint
            )

    def require_workspace(self) -> Workspace:
        if self.workspace is None:
            raise RuntimeError(
                "this analysis needs the node's workspace (ComputeContext.workspace)"
            )
        return self.workspace

    def require_fl(self) -> FlRuntime:
        if self.fl is None:
            raise RuntimeError("federated learning needs the node's FL host (ComputeContext.fl)")
        return self.fl

    def require_privacy(self) -> PrivacyAccountant:
        if self.privacy is None:
            raise RuntimeError(
                "differential privacy needs the node's ledger (ComputeContext.privacy)"
            )
        return self.privacy

    def check_cancelled(self) -> None:
        """Call between steps of a long computation: raises once the task is cancelled."""
        if self.cancelled.is_set():
            raise TaskCancelledError


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no insignificant whitespace: same value, same bytes,
    same digest in the audit logs of node and coordinator."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Analysis(ABC, Generic[P]):
    """One analysis at one version. Subclasses set ``name``, ``version``, ``parameters``."""

    name: ClassVar[str]
    version: ClassVar[str]
    parameters: ClassVar[type[AnalysisParameters]]
    description: ClassVar[str] = ""

    @classmethod
    def ref(cls) -> AnalysisRef:
        return AnalysisRef(cls.name, cls.version)

    def parse_parameters(self, raw: bytes | Mapping[str, Any]) -> P:
        """Validate canonical-JSON bytes (or an already parsed mapping) into the typed model.

        :class:`InvalidParametersError` names every bad field by its path and what was expected;
        values are never echoed (a parameter could be a concept list a researcher considers
        confidential, and the message may be logged).
        """
        try:
            data = json.loads(raw) if isinstance(raw, bytes) else dict(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidParametersError(f"{self.ref()}: parameters are not JSON") from None
        if not isinstance(data, dict):
            raise InvalidParametersError(f"{self.ref()}: parameters must be a JSON object")
        try:
            return self.parameters.model_validate(data)  # type: ignore[return-value]
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "(top level)"
                message = (
                    "unknown parameter" if error["type"] == "extra_forbidden" else error["msg"]
                )
                problems.append(f"parameters.{where}: {message}")
            raise InvalidParametersError(f"{self.ref()}: " + "; ".join(problems)) from None

    def encode_parameters(self, params: P) -> bytes:
        """The canonical JSON bytes of validated parameters (what travels and is hashed)."""
        return canonical_json(params.model_dump(mode="json"))

    @abstractmethod
    def compute(self, params: P, ctx: ComputeContext) -> JsonObject:
        """Node side: run inside the engine, return the released aggregate (disclosure applied)."""

    @abstractmethod
    def aggregate(self, params: P, node_results: Mapping[str, JsonObject]) -> JsonObject:
        """Coordinator side: pool the released aggregates of the contributing nodes.

        Must equal the same computation on the pooled rows wherever no node suppressed a cell.
        """

    def table(self, aggregate: JsonObject) -> tuple[list[str], list[list[Any]]]:
        """Header and rows of ``aggregate`` for `ehds study results --format table|csv`."""
        return ["result"], [[json.dumps(aggregate, sort_keys=True)]]
