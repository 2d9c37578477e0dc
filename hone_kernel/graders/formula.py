"""A multi grader's `calculate_output`: arithmetic over its graders' scores, by name.

`+ - * /`, `^` (or `**`) for powers, parentheses, numbers, and the functions min, max, abs, floor, ceil, exp,
sqrt and log, as OpenAI's multigraders allow. The formula is parsed by Python's `ast` and only those nodes are
walked: nothing else of Python (attributes, calls of other names, subscripts) is reachable."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_CHARS = 1000


class FormulaError(Exception):
    """The formula could not be computed for these scores (a division by zero, a log of 0, ...)."""


def _parse(text: str) -> ast.expr:
    if len(text) > MAX_CHARS:
        raise ValueError(f"calculate_output is over {MAX_CHARS} characters")
    try:
        return ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError:
        raise ValueError(f"calculate_output does not parse: {text!r}") from None


def _walk(node: ast.expr, names: set[str]) -> None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(
                f"calculate_output names '{node.id}', which is not one of the graders ({', '.join(sorted(names))})"
            )
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _walk(node.left, names)
        _walk(node.right, names)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _walk(node.operand, names)
        return
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
    ):
        if not node.args:
            raise ValueError(f"{node.func.id}() needs an argument")
        for arg in node.args:
            _walk(arg, names)
        return
    raise ValueError(
        f"calculate_output may use only numbers, grader names, + - * / ^, parentheses and "
        f"{', '.join(FUNCTIONS)}; found {ast.unparse(node)!r}"
    )


def check(text: str, names: set[str]) -> None:
    """ValueError saying what is wrong with the formula."""
    _walk(_parse(text), names)


def evaluate(text: str, scores: dict[str, float]) -> float:
    node = _parse(text)
    _walk(node, set(scores))

    def value(n: ast.expr) -> float:
        if isinstance(n, ast.Constant):
            assert isinstance(n.value, (int, float))  # _walk let no other constant through
            return float(n.value)
        if isinstance(n, ast.Name):
            return float(scores[n.id])
        if isinstance(n, ast.BinOp):
            return _BINARY[type(n.op)](value(n.left), value(n.right))
        if isinstance(n, ast.UnaryOp):
            return _UNARY[type(n.op)](value(n.operand))
        assert isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        return float(FUNCTIONS[n.func.id](*(value(a) for a in n.args)))

    try:
        result = value(node)
    except (ZeroDivisionError, ValueError, OverflowError) as exc:
        raise FormulaError(f"calculate_output failed for scores {scores}: {exc}") from None
    if isinstance(result, complex) or not math.isfinite(result):
        raise FormulaError(f"calculate_output is not a finite number for scores {scores}")
    return float(result)
