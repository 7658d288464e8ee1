"""A cohort as analyses receive it: a name and one definition (YAML language or ATLAS JSON).

Why both formats in one model: a study may carry either, and everything after validation
(compilation to circe, execution, fingerprint) is shared, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Self

import yaml as pyyaml
from circe import CohortExpression
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .atlas import describe_validation_error, parse_atlas
from .compile import to_atlas_json
from .errors import CohortDefinitionError
from .language import CohortDocument


class CohortSpec(BaseModel):
    """``name`` plus exactly one of ``yaml`` (a YAML cohort document as a mapping) or
    ``circe`` (ATLAS/Circe cohort JSON as a mapping); validated when constructed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    yaml: dict[str, Any] | None = None
    circe: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_valid_definition(self) -> Self:
        if (self.yaml is None) == (self.circe is None):
            raise ValueError("give exactly one of yaml, circe")
        try:
            to_circe(self)
        except CohortDefinitionError as exc:
            # pydantic reports ValueError under this model's path (e.g. ``cohort``)
            raise ValueError(str(exc)) from None
        return self


def parse_document(document: dict[str, Any]) -> CohortDocument:
    """The typed YAML document; :class:`CohortDefinitionError` names every bad path."""
    try:
        return CohortDocument.model_validate(document)
    except ValidationError as exc:
        raise CohortDefinitionError(
            "invalid cohort definition: " + describe_validation_error(exc)
        ) from None


def atlas_json(spec: CohortSpec) -> dict[str, Any]:
    """The ATLAS JSON of a spec (compiled from YAML, or as given)."""
    if spec.yaml is not None:
        return to_atlas_json(parse_document(spec.yaml))
    assert spec.circe is not None  # validated: exactly one is set
    return spec.circe


def to_circe(spec: CohortSpec) -> CohortExpression:
    """The circe expression every cohort executes as (both formats pass the ATLAS checks)."""
    return parse_atlas(atlas_json(spec))


def fingerprint(spec: CohortSpec) -> str:
    """sha256 (hex) of the canonical JSON of the normalised definition.

    Only what decides the population counts: the spec's name, the title, concept and rule
    names are left out, so renaming a cohort does not make it a "different" population for
    the differencing guard, and a YAML cohort and its ATLAS equivalent agree.
    """
    data = BaseModel.model_dump(to_circe(spec), by_alias=True, exclude_none=True, mode="json")
    data.pop("Title", None)
    for concept_set in data.get("ConceptSets", []):
        concept_set.pop("name", None)
        for item in (concept_set.get("expression") or {}).get("items", []):
            item["concept"] = {"CONCEPT_ID": item["concept"].get("CONCEPT_ID")}
    for rule in data.get("InclusionRules", []):
        rule.pop("name", None)
        rule.pop("description", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_cohort_file(path: Path | str) -> CohortSpec:
    """A spec from a YAML cohort file (``.yaml``/``.yml``) or an ATLAS JSON file (``.json``:
    a bare expression, or a WebAPI cohort definition with ``name`` and ``expression``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CohortDefinitionError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        return _from_atlas_file(path, text)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise CohortDefinitionError(f"{path}: expected a .yaml, .yml or .json cohort file")
    try:
        document = pyyaml.safe_load(text)
    except pyyaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CohortDefinitionError(f"{path}: not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise CohortDefinitionError(f"{path}: expected a mapping at the top level")
    name = document.get("name") if isinstance(document.get("name"), str) else path.stem
    return make_spec(str(name), yaml=document, source=str(path))


def _from_atlas_file(path: Path, text: str) -> CohortSpec:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CohortDefinitionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CohortDefinitionError(f"{path}: expected a JSON object")
    name = path.stem
    if "expression" in data and "PrimaryCriteria" not in data:  # WebAPI cohort definition
        name = str(data.get("name") or name)
        expression = data["expression"]
        if isinstance(expression, str):
            try:
                expression = json.loads(expression)
            except ValueError as exc:
                raise CohortDefinitionError(
                    f"{path}: expression is not valid JSON ({exc})"
                ) from None
        data = expression
    elif isinstance(data.get("Title"), str) and data["Title"]:
        name = data["Title"]
    if not isinstance(data, dict):
        raise CohortDefinitionError(f"{path}: expected a JSON object")
    return make_spec(name, circe=data, source=str(path))


def make_spec(
    name: str,
    *,
    yaml: dict[str, Any] | None = None,
    circe: dict[str, Any] | None = None,
    source: str = "cohort",
) -> CohortSpec:
    """Construct a spec; errors are :class:`CohortDefinitionError` (or its subclass
    :class:`UnsupportedCohortError`) naming the path."""
    if (yaml is None) != (circe is None):
        # the same checks the model runs, outside pydantic so the error keeps its type
        try:
            to_circe(CohortSpec.model_construct(name=name, yaml=yaml, circe=circe))
        except CohortDefinitionError as exc:
            raise type(exc)(f"{source}: {exc}") from None
    try:
        return CohortSpec(name=name, yaml=yaml, circe=circe)
    except ValidationError as exc:
        messages = [str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()]
        raise CohortDefinitionError(f"{source}: " + "; ".join(messages)) from None
