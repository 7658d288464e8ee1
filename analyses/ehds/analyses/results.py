"""One result format for every analysis: a long table of summarised results.

Why a long table: it is what DARWIN EU's ``omopgenerics`` uses ("summarised result"), so a
researcher reads every analysis the same way, filters it with the same code, and stacks the
results of several studies. One row is one estimate of one variable in one group and stratum
at one place (a node, or ``pooled``)::

    cdm_name  group_name   group_level  strata_name  strata_level  variable_name    ...
    fi        cohort_name  t2dm         sex          FEMALE        number subjects  ...
              ... variable_level  estimate_name  estimate_type  estimate_value  suppressed

A node releases only *additive* estimates (counts, sums, sums of squares, person-days, events,
histogram bins) with ``cdm_name`` empty (a node does not know its federation name); the
coordinator's ``aggregate`` labels each node's rows, pools the additive estimates with
`pool_additive` and then derives percentages, means, rates and intervals itself, for every
node and for the pool. Both halves travel as the same JSON document::

    {"format": "ehds-summarised-result/1", "min_cell_count": T, "rows": [ROW, ...]}

plus ``"suppressed_cells": {node: n}`` in what ``aggregate`` returns.

Disclosure is part of the format: a suppressed estimate has ``estimate_value: null`` and
``suppressed: true``, never a number; `validate_node_result` refuses a node result in which a
released count lies in ``1..T-1``. Counts are the integer estimates named ``count``,
``events`` or ``*_count`` (see `is_count`): analyses name their counts that way. A pooled
row built without some node's value (suppressed there, or absent) is a lower bound:
``complete: false`` and ``suppressed_at`` names those nodes.

Exports (`to_table` for pyarrow, `write` for JSON, CSV and Parquet, `render` for reading)
take an optional ``result_id`` (the study id), written as the first column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ehds.core.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "COLUMNS",
    "FORMAT",
    "OVERALL",
    "POOLED",
    "STRATA_SEPARATOR",
    "EstimateType",
    "ExportFormat",
    "InvalidNodeResultError",
    "Row",
    "RowKey",
    "SummarisedResult",
    "document_rows",
    "is_count",
    "is_summarised",
    "label_rows",
    "make_row",
    "pool_additive",
    "render",
    "row_key",
    "suppression_line",
    "suppression_summary",
    "to_arrow",
    "to_csv",
    "to_json_text",
    "to_records",
    "to_table",
    "validate_node_result",
    "write",
]

FORMAT: Final = "ehds-summarised-result/1"
POOLED: Final = "pooled"
OVERALL: Final = "overall"
STRATA_SEPARATOR: Final = " &&& "
"""How omopgenerics joins several strata names (``sex &&& age_group``) and their levels."""

EstimateType = Literal["integer", "numeric", "percentage"]
ExportFormat = Literal["json", "csv", "parquet"]

COLUMNS: Final = (
    "result_id",
    "cdm_name",
    "group_name",
    "group_level",
    "strata_name",
    "strata_level",
    "variable_name",
    "variable_level",
    "estimate_name",
    "estimate_type",
    "estimate_value",
    "suppressed",
    "complete",
    "suppressed_at",
)
"""Columns of every export, in order."""

RowKey = tuple[str, str, str, str, str, str, str]
"""``(group_name, group_level, strata_name, strata_level, variable_name, variable_level,
estimate_name)``: what identifies an estimate within one place."""


class InvalidNodeResultError(InputError):
    """A node's released result is not a well-formed summarised result, or breaks its own
    disclosure rule. The message names the analysis, the node and where, never a value."""


class Row(BaseModel):
    """One estimate. ``complete`` and ``suppressed_at`` belong to pooled rows only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    cdm_name: str
    group_name: str = OVERALL
    group_level: str = OVERALL
    strata_name: str = OVERALL
    strata_level: str = OVERALL
    variable_name: str
    variable_level: str = ""
    estimate_name: str
    estimate_type: EstimateType
    estimate_value: int | float | None = Field(allow_inf_nan=False)
    suppressed: bool = False
    complete: bool | None = None
    suppressed_at: list[str] | None = None

    def key(self) -> RowKey:
        return row_key(self)

    def to_json(self) -> dict[str, Any]:
        """The row as JSON; the pooled-only fields are left out of node rows."""
        data = self.model_dump(mode="json")
        if self.complete is None:
            del data["complete"]
        if self.suppressed_at is None:
            del data["suppressed_at"]
        return data


class SummarisedResult(BaseModel):
    """What a node releases and what ``aggregate`` returns."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["ehds-summarised-result/1"] = FORMAT
    min_cell_count: int = Field(ge=1)
    rows: list[Row]
    suppressed_cells: dict[str, int] | None = None
    # How the values were made differentially private (`ehds.analyses.privacy`), if they were:
    # a reader of noisy counts must be told so, next to the counts.
    privacy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": self.format,
            "min_cell_count": self.min_cell_count,
            "rows": [row.to_json() for row in self.rows],
        }
        if self.suppressed_cells is not None:
            data["suppressed_cells"] = dict(self.suppressed_cells)
        if self.privacy is not None:
            data["privacy"] = dict(self.privacy)
        return data

    def by_key(self) -> dict[RowKey, Row]:
        """Rows by `row_key` (within one place each key occurs once)."""
        return {row.key(): row for row in self.rows}

    def value(self, key: RowKey) -> int | float | None:
        """The released value of ``key``; None if suppressed or absent."""
        row = self.by_key().get(key)
        return None if row is None else row.estimate_value


def row_key(row: Row) -> RowKey:
    return (
        row.group_name,
        row.group_level,
        row.strata_name,
        row.strata_level,
        row.variable_name,
        row.variable_level,
        row.estimate_name,
    )


def make_row(
    variable_name: str,
    estimate_name: str,
    value: int | float | None,
    *,
    estimate_type: EstimateType | None = None,
    variable_level: str = "",
    group: tuple[str, str] = (OVERALL, OVERALL),
    strata: tuple[str, str] | Sequence[tuple[str, str]] = (OVERALL, OVERALL),
    suppressed: bool = False,
    cdm_name: str = "",
    complete: bool | None = None,
    suppressed_at: Sequence[str] | None = None,
) -> Row:
    """A row with omopgenerics' defaults (``overall``); node rows keep ``cdm_name=""``.

    ``strata`` is one ``(name, level)`` pair or a sequence of them (joined with `` &&& ``);
    ``estimate_type`` defaults to integer for an int and numeric otherwise. A suppressed row
    must pass ``value=None``.
    """
    if strata and isinstance(strata[0], tuple | list):
        pairs = [tuple(p) for p in strata]
        strata_name = STRATA_SEPARATOR.join(str(p[0]) for p in pairs)
        strata_level = STRATA_SEPARATOR.join(str(p[1]) for p in pairs)
    elif strata:
        strata_name, strata_level = str(strata[0]), str(strata[1])
    else:
        strata_name = strata_level = OVERALL
    if estimate_type is None:
        estimate_type = "numeric" if isinstance(value, float) else "integer"
    if suppressed != (value is None):
        raise ValueError("a row is suppressed exactly when its value is None")
    return Row(
        cdm_name=cdm_name,
        group_name=group[0],
        group_level=group[1],
        strata_name=strata_name,
        strata_level=strata_level,
        variable_name=variable_name,
        variable_level=variable_level,
        estimate_name=estimate_name,
        estimate_type=estimate_type,
        estimate_value=value,
        suppressed=suppressed,
        complete=complete,
        suppressed_at=None if suppressed_at is None else list(suppressed_at),
    )


def is_count(row: Row) -> bool:
    """Whether the disclosure threshold applies to this estimate: integer counts of persons,
    records or events (``count``, ``events``, ``*_count``)."""
    name = row.estimate_name
    return row.estimate_type == "integer" and (
        name in ("count", "events") or name.endswith("_count")
    )


def is_summarised(document: object) -> bool:
    """Whether a JSON value (a node's result, or ``aggregate``'s) is in this format."""
    return isinstance(document, Mapping) and document.get("format") == FORMAT


# --------------------------------------------------------------------------- node results


def validate_node_result(
    analysis: object,
    node: str,
    result: Mapping[str, Any],
    *,
    min_cell_count: int | None = None,
) -> SummarisedResult:
    """Parse a node's released result and check that it keeps the disclosure rule.

    ``analysis`` (an `AnalysisRef` or any printable name) and ``node`` name the source in the
    error. Checks: the shape; node rows carry no name and no pooled-only fields; each key
    occurs once; ``suppressed`` exactly when the value is null; no released count (`is_count`)
    in ``1..T-1`` where T is the node's ``min_cell_count``, which must be at least
    ``min_cell_count`` (the study's) when given. A result breaking these means the node runs
    other code under this analysis' name and version, and pooling it would be wrong.
    """
    where = f"{analysis}: result of node {node!r}"
    try:
        parsed = SummarisedResult.model_validate(result)
    except ValidationError as exc:
        places = ", ".join(
            ".".join(str(p) for p in error["loc"]) or "(top level)" for error in exc.errors()
        )
        raise InvalidNodeResultError(f"{where} is malformed at {places}") from None
    if parsed.suppressed_cells is not None:
        raise InvalidNodeResultError(f"{where}: suppressed_cells belongs to pooled results")
    threshold = parsed.min_cell_count
    if min_cell_count is not None and threshold < min_cell_count:
        raise InvalidNodeResultError(
            f"{where}: min_cell_count {threshold} is below the study's {min_cell_count}"
        )
    seen: set[RowKey] = set()
    for index, row in enumerate(parsed.rows):
        place = f"{where}, rows.{index}"
        if row.cdm_name or row.complete is not None or row.suppressed_at is not None:
            raise InvalidNodeResultError(
                f"{place}: a node row has no cdm_name, complete or suppressed_at"
            )
        key = row.key()
        if key in seen:
            raise InvalidNodeResultError(f"{place}: the same estimate occurs twice")
        seen.add(key)
        if row.suppressed != (row.estimate_value is None):
            raise InvalidNodeResultError(f"{place}: suppressed and a null value must go together")
        value = row.estimate_value
        if is_count(row) and value is not None:
            if isinstance(value, float) and not value.is_integer():
                raise InvalidNodeResultError(f"{place}: a count must be a whole number")
            if 0 < value < threshold or value < 0:
                raise InvalidNodeResultError(
                    f"{place}: breaks the node's disclosure rule (a released count must be "
                    f"0 or at least min_cell_count {threshold})"
                )
    return parsed


def label_rows(node: str, result: SummarisedResult) -> list[Row]:
    """The node's rows with ``cdm_name`` set to the node's name."""
    return [row.model_copy(update={"cdm_name": node}) for row in result.rows]


def suppression_summary(node_results: Mapping[str, SummarisedResult]) -> dict[str, int]:
    """Suppressed cells per node (every node, zeros included), sorted by node name."""
    return {
        node: sum(1 for row in node_results[node].rows if row.suppressed)
        for node in sorted(node_results)
    }


def suppression_line(suppressed_cells: Mapping[str, int]) -> str:
    """E.g. ``"3 cells suppressed at fi, 1 cell at dk"``; ``"no cell suppressed"``."""
    parts = [
        f"{n} cell{'s' if n != 1 else ''}" + (" suppressed" if not index else "") + f" at {node}"
        for index, (node, n) in enumerate(
            sorted(
                ((node, n) for node, n in suppressed_cells.items() if n),
                key=lambda item: (-item[1], item[0]),
            )
        )
    ]
    return ", ".join(parts) if parts else "no cell suppressed"


# --------------------------------------------------------------------------- pooling


def _every_row(row: Row) -> bool:
    del row
    return True


def pool_additive(
    node_results: Mapping[str, SummarisedResult],
    *,
    select: Callable[[Row], bool] = _every_row,
    absent_is_zero: bool | Callable[[str, RowKey], bool] = False,
    cdm_name: str = POOLED,
) -> list[Row]:
    """Pooled rows: per key, the sum of the nodes' released values.

    ``select`` chooses the rows to pool (default: every row, as nodes release additive
    estimates only: counts, sums, sums of squares, person-days, bins). A node that
    suppressed the key, or whose result lacks it, is in ``suppressed_at`` and makes the row
    ``complete: false`` (a lower bound), unless
    ``absent_is_zero`` says that a missing key means 0 there (True for every node and key, or
    a function ``(node, key)``: e.g. for a node that reports no suppressed concept). If no
    node released a value, the pooled row is suppressed too (value null): the sum of
    suppressed cells is unknown. Rows come in the order of their first appearance over the
    nodes taken by name; nodes that disagree on a key's estimate type are an error.
    """
    nodes = sorted(node_results)
    order: list[RowKey] = []
    types: dict[RowKey, EstimateType] = {}
    values: dict[RowKey, dict[str, int | float | None]] = {}
    for node in nodes:
        for row in node_results[node].rows:
            if not select(row):
                continue
            key = row.key()
            if key not in values:
                order.append(key)
                types[key] = row.estimate_type
                values[key] = {}
            elif types[key] != row.estimate_type:
                raise InvalidNodeResultError(
                    f"node {node!r} gives estimate {key[6]!r} of {key[4]!r} another type"
                )
            values[key][node] = row.estimate_value
    pooled: list[Row] = []
    for key in order:
        total: int | float = 0
        contributed = False
        missing: list[str] = []
        for node in nodes:
            if node in values[key]:
                value = values[key][node]
            elif absent_is_zero is True or (callable(absent_is_zero) and absent_is_zero(node, key)):
                value = 0
            else:
                value = None
            if value is None:
                missing.append(node)
            else:
                total += value
                contributed = True
        pooled.append(
            Row(
                cdm_name=cdm_name,
                group_name=key[0],
                group_level=key[1],
                strata_name=key[2],
                strata_level=key[3],
                variable_name=key[4],
                variable_level=key[5],
                estimate_name=key[6],
                estimate_type=types[key],
                estimate_value=total if contributed else None,
                suppressed=not contributed,
                complete=not missing,
                suppressed_at=missing,
            )
        )
    return pooled


# --------------------------------------------------------------------------- documents


def document_rows(document: Mapping[str, Any]) -> list[Row]:
    """Every row of a study's result document: ``aggregate``'s rows (nodes and pooled), plus
    the released rows of any contributing node that ``aggregate`` did not already list.

    Empty when the study's analysis does not produce summarised results.
    """
    pooled = document.get("pooled")
    if not is_summarised(pooled):
        return []
    assert isinstance(pooled, Mapping)
    rows = [Row.model_validate(row) for row in pooled.get("rows", [])]
    named = {row.cdm_name for row in rows}
    for entry in document.get("nodes", []):
        node, result = entry.get("node"), entry.get("result")
        if isinstance(node, str) and node not in named and is_summarised(result):
            assert isinstance(result, Mapping)
            rows.extend(
                Row.model_validate({**row, "cdm_name": node}) for row in result.get("rows", [])
            )
    return rows


# --------------------------------------------------------------------------- exports


def to_records(rows: Iterable[Row], result_id: str | None = None) -> list[dict[str, Any]]:
    """Rows as flat dicts with every column of `COLUMNS` (``result_id`` first if given)."""
    records = []
    for row in rows:
        record: dict[str, Any] = {} if result_id is None else {"result_id": result_id}
        record.update(row.model_dump(mode="json"))
        records.append(record)
    return records


def _schema(with_result_id: bool) -> pa.Schema:
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only for exports

    fields = [
        pa.field("cdm_name", pa.string(), nullable=False),
        pa.field("group_name", pa.string(), nullable=False),
        pa.field("group_level", pa.string(), nullable=False),
        pa.field("strata_name", pa.string(), nullable=False),
        pa.field("strata_level", pa.string(), nullable=False),
        pa.field("variable_name", pa.string(), nullable=False),
        pa.field("variable_level", pa.string(), nullable=False),
        pa.field("estimate_name", pa.string(), nullable=False),
        pa.field("estimate_type", pa.string(), nullable=False),
        pa.field("estimate_value", pa.float64()),
        pa.field("suppressed", pa.bool_(), nullable=False),
        pa.field("complete", pa.bool_()),
        pa.field("suppressed_at", pa.list_(pa.string())),
    ]
    if with_result_id:
        fields.insert(0, pa.field("result_id", pa.string(), nullable=False))
    return pa.schema(fields)


def to_arrow(rows: Iterable[Row], result_id: str | None = None) -> pa.Table:
    """A pyarrow table of the rows (``estimate_value`` as float64; ``complete`` and
    ``suppressed_at`` null on node rows)."""
    import pyarrow as pa  # noqa: PLC0415 - pyarrow only for exports

    records = to_records(rows, result_id)
    for record in records:
        value = record["estimate_value"]
        record["estimate_value"] = None if value is None else float(value)
    return pa.Table.from_pylist(records, schema=_schema(result_id is not None))


to_table = to_arrow
"""The contract's name for `to_arrow`."""


def _csv_value(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if column == "suppressed_at":
        return ";".join(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(rows: Iterable[Row], result_id: str | None = None) -> str:
    """CSV text (RFC 4180): integers stay integers, null is empty, ``suppressed_at`` joined
    with ``;``, booleans as TRUE/FALSE (how R's readr reads them)."""
    columns = [c for c in COLUMNS if result_id is not None or c != "result_id"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for record in to_records(rows, result_id):
        writer.writerow([_csv_value(c, record[c]) for c in columns])
    return buffer.getvalue()


def to_json_text(rows: Iterable[Row], result_id: str | None = None) -> str:
    """A JSON array of row objects (every column, null where not applicable)."""
    return json.dumps(to_records(rows, result_id), indent=1, ensure_ascii=False) + "\n"


def write(
    rows: Iterable[Row],
    path: str | Path,
    fmt: ExportFormat,
    *,
    result_id: str | None = None,
) -> Path:
    """Write the rows to ``path`` as ``json``, ``csv`` or ``parquet``; returns the path."""
    target = Path(path)
    rows = list(rows)
    if fmt == "json":
        target.write_text(to_json_text(rows, result_id), encoding="utf-8")
    elif fmt == "csv":
        target.write_text(to_csv(rows, result_id), encoding="utf-8", newline="")
    elif fmt == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - pyarrow only for exports

        pq.write_table(to_arrow(rows, result_id), target)
    else:
        raise InputError(f"unknown export format {fmt!r} (json, csv or parquet)")
    return target


# --------------------------------------------------------------------------- reading


def _number(value: int | float | None, estimate_type: str) -> str:
    if value is None:
        return "suppressed"
    if isinstance(value, int) or (estimate_type == "integer" and float(value).is_integer()):
        return f"{int(value):,}"
    if estimate_type == "percentage":
        return f"{value:.2f}%"
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _group_text(name: str, level: str) -> str:
    if name == OVERALL and level == OVERALL:
        return OVERALL
    names, levels = name.split(STRATA_SEPARATOR), level.split(STRATA_SEPARATOR)
    if len(names) != len(levels):
        return f"{name}={level}"
    return ", ".join(f"{n}={lv}" for n, lv in zip(names, levels, strict=True))


def render(rows: Sequence[Row], suppressed_cells: Mapping[str, int] | None = None) -> str:
    """A readable text table: place, group, strata, variable, estimate, value and flags
    (``suppressed``, ``lower bound (suppressed at fi)``), then the suppression line."""
    header = ["cdm_name", "group", "strata", "variable", "estimate", "value", "flags"]
    lines: list[list[str]] = []
    for row in rows:
        variable = row.variable_name + (f" [{row.variable_level}]" if row.variable_level else "")
        flags = ""
        if row.complete is False and row.estimate_value is not None:
            flags = "lower bound (suppressed at " + ", ".join(row.suppressed_at or []) + ")"
        elif row.suppressed and row.suppressed_at:
            flags = "suppressed at " + ", ".join(row.suppressed_at)
        lines.append(
            [
                row.cdm_name or "-",
                _group_text(row.group_name, row.group_level),
                _group_text(row.strata_name, row.strata_level),
                variable,
                row.estimate_name,
                _number(row.estimate_value, row.estimate_type),
                flags,
            ]
        )
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    right = {5}

    def text(values: Sequence[str]) -> str:
        cells = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [text(header), text(["-" * w for w in widths]), *(text(line) for line in lines)]
    if suppressed_cells is not None:
        out += ["", suppression_line(suppressed_cells)]
    return "\n".join(out) + "\n"


def validated_results(
    analysis: object, node_results: Mapping[str, Any]
) -> dict[str, SummarisedResult]:
    """Every node's result checked for shape and disclosure (`validate_node_result`), by node
    name in order."""
    return {
        node: validate_node_result(analysis, node, node_results[node])
        for node in sorted(node_results)
    }


def summarised_document(
    released: Mapping[str, SummarisedResult], rows: Sequence[Row]
) -> dict[str, Any]:
    """What ``aggregate`` returns: node and pooled rows, the strictest node threshold, and the
    suppressed cells per node."""
    threshold = max((r.min_cell_count for r in released.values()), default=1)
    return SummarisedResult(
        min_cell_count=threshold,
        rows=list(rows),
        suppressed_cells=suppression_summary(released),
    ).to_json()


def summarised_table(aggregate: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for `ehds study results --format table|csv` (one row per estimate)."""
    header = ["cdm_name", "group", "strata", "variable", "estimate", "value", "flags"]
    lines: list[list[Any]] = []
    for raw in aggregate.get("rows", []):
        row = Row.model_validate(raw)
        flags = ""
        if row.suppressed:
            flags = "suppressed" + (
                f" at {', '.join(row.suppressed_at)}" if row.suppressed_at else ""
            )
        elif row.complete is False:
            flags = "lower bound (suppressed at " + ", ".join(row.suppressed_at or []) + ")"
        variable = row.variable_name + (f" [{row.variable_level}]" if row.variable_level else "")
        lines.append(
            [
                row.cdm_name,
                f"{row.group_name}={row.group_level}",
                f"{row.strata_name}={row.strata_level}",
                variable,
                row.estimate_name,
                row.estimate_value,
                flags,
            ]
        )
    return header, lines
