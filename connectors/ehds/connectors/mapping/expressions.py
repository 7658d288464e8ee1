"""Parse the SQL expressions of a mapping with sqlglot: syntax, column references, one
expression only.

Each expression is parsed alone and regenerated from its syntax tree before the compiler embeds
it, so that a value such as ``a) UNION (SELECT ...`` can never change the shape of the compiled
query: what is not exactly one expression is a mapping error at its line.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from ehds.connectors.mapping.model import Expr

_STATEMENTS = frozenset(
    {
        "alter", "attach", "command", "commit", "copy", "create", "delete", "describe", "detach",
        "drop", "insert", "merge", "pragma", "rollback", "set", "show", "transaction", "update",
        "use",
    }
)  # fmt: skip


class ExpressionSyntaxError(ValueError):
    """Not one valid DuckDB SQL expression; the message says why (no values)."""


@dataclass(frozen=True)
class ParsedExpr:
    expr: Expr
    tree: exp.Expr

    @property
    def duckdb(self) -> str:
        """The expression regenerated from its tree, parenthesised for embedding."""
        return f"({self.tree.sql(dialect='duckdb')})"

    def columns(self) -> list[str]:
        """Source columns the expression reads, in order, without duplicates (columns inside
        sub-queries belong to those and are left out)."""
        names: dict[str, None] = {}
        for column in self.tree.find_all(exp.Column):
            if column.find_ancestor(exp.Select) is None and column.name:
                names.setdefault(column.name, None)
        return list(names)


def parse_expression(expr: Expr) -> ParsedExpr:
    """Parse ``expr`` as one DuckDB expression or raise :class:`ExpressionSyntaxError`."""
    try:
        trees = sqlglot.parse(expr.sql, read="duckdb")
    except ParseError as exc:
        first = exc.errors[0]["description"] if exc.errors else "syntax error"
        if first.startswith("Required keyword"):
            first = "incomplete expression"
        raise ExpressionSyntaxError(f"not a valid SQL expression ({first})") from None
    except sqlglot.errors.SqlglotError as exc:
        raise ExpressionSyntaxError(f"not a valid SQL expression ({type(exc).__name__})") from None
    statements = [t for t in trees if t is not None]
    if len(statements) != 1:
        raise ExpressionSyntaxError("expected one SQL expression, found several statements")
    tree = statements[0]
    if (isinstance(tree, exp.Query) and not isinstance(tree, exp.Subquery)) or (
        tree.key in _STATEMENTS
    ):
        raise ExpressionSyntaxError(
            "expected an expression, found a statement (a sub-query must be in parentheses)"
        )
    return ParsedExpr(expr, tree)
