"""`{{ ... }}` templates holding JSONata expressions: parsing, caching, resolving."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonata
import orjson

DEFAULT_TIMEOUT_MS = 1000

_Direct = Callable[[Mapping[str, Any]], Any]
"""An expression as plain Python: its value in a context (`_direct`)."""


class ExpressionError(Exception):
    """An expression does not parse or fails to evaluate."""


@dataclass(frozen=True, slots=True)
class Expression:
    source: str
    compiled: Any
    direct: _Direct | None = None
    """The expression as plain Python, for the few forms most templates are (`_direct`);
    it raises `_Evaluator` when a value calls for jsonata's own rules."""

    def evaluate(self, context: Mapping[str, Any], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Any:
        if self.direct is not None:
            try:
                return self.direct(context)
            except _Evaluator:
                pass
        # A fresh frame per evaluation carries the time bound: a runaway expression
        # (endless recursion, a huge range) fails instead of freezing the event loop.
        frame = self.compiled.create_frame()
        frame.set_runtime_bounds(timeout_ms, None)
        try:
            return self.compiled.evaluate(context, frame)
        except Exception as exc:  # jsonata raises RuntimeError subclasses and bare errors
            raise ExpressionError(f"{{{{ {self.source} }}}} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Template:
    """A string with `{{ }}` expressions; a lone expression keeps its result's type."""

    parts: tuple[str | Expression, ...]

    @property
    def expressions(self) -> Iterator[Expression]:
        return (p for p in self.parts if isinstance(p, Expression))

    def render(self, context: Mapping[str, Any], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
            return self.parts[0].evaluate(context, timeout_ms)
        return "".join(
            part if isinstance(part, str) else _as_text(part.evaluate(context, timeout_ms))
            for part in self.parts
        )


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


@lru_cache(maxsize=8192)
def compile_expression(source: str) -> Expression:
    """Compile a JSONata expression once; later calls hit the cache."""
    try:
        compiled = jsonata.Jsonata(source)
    except Exception as exc:
        raise ExpressionError(f"{{{{ {source} }}}} does not parse: {exc}") from exc
    # Skip jsonata's walk over the whole input before each evaluation, which checks it
    # holds JSON types only: Solder's contexts are parsed JSON, and the walk grew with
    # every block's output (half the engine's time on a workflow of 100 transforms).
    compiled.set_validate_input(False)
    return Expression(source, compiled, _direct(compiled.ast))


class _Evaluator(Exception):
    """A value outside what `_direct`'s functions decide alone: jsonata evaluates it."""


_MISSING = object()
_LEAF = {"type", "value"}


def _direct(node: Any) -> _Direct | None:
    """`node`, a parsed expression, as a Python function of the context, when it is one
    of the forms most templates are: a path of plain names (`blocks.fetch.data.id`), a
    number or string literal, `+`, `-` or `*` between those, a comparison of them (`=`,
    `!=`, `<`, `<=`, `>`, `>=`: a branch's condition), an object of them with literal
    keys (`{'id': blocks.fetch.data.id}`). None for anything else.

    jsonata evaluates each expression by walking its tree: 13 to 19 µs for
    `trigger.n + 1` in a loop, more among a run's other work (a fifth of a run's CPU in
    one process with two such expressions: bench/RESULTS.md); these take 0.25 to 1 µs.
    They give jsonata's answer or raise `_Evaluator`, so that jsonata answers
    (or raises its error): a list anywhere on a path (jsonata maps over it), a name
    missing or null where that changes the answer, anything but numbers around an
    arithmetic operator, anything but strings, numbers and booleans around a comparison
    (two of one kind for an order), a result out of range (tests/test_expressions.py
    holds them to jsonata's answers).
    """
    kind = getattr(node, "type", None)
    given = _given(node)
    if kind in ("number", "string") and given <= _LEAF:
        literal = node.value
        if kind == "number" and (
            isinstance(literal, bool)
            or not isinstance(literal, int | float)
            or not math.isfinite(literal)
        ):
            return None
        return lambda _context: literal
    if kind == "path" and given == {"type", "steps"}:
        steps = node.steps
        if not all(
            getattr(step, "type", None) == "name"
            and isinstance(step.value, str)
            and _given(step) <= _LEAF
            for step in steps
        ):
            return None
        return functools.partial(_path, tuple(step.value for step in steps))
    if kind == "binary" and given <= _LEAF | {"lhs", "rhs"}:
        operation = _OPERATORS.get(node.value)
        if operation is None:
            return None
        lhs, rhs = _direct(node.lhs), _direct(node.rhs)
        if lhs is None or rhs is None:
            return None
        return functools.partial(operation, lhs, rhs)
    if kind == "unary" and node.value == "{" and given <= _LEAF | {"lhs_object"}:
        pairs: list[tuple[str, _Direct]] = []
        for key, value in node.lhs_object:
            if getattr(key, "type", None) != "string" or not isinstance(key.value, str):
                return None
            direct = _direct(value)
            if direct is None:
                return None
            pairs.append((key.value, direct))
        if len({key for key, _ in pairs}) != len(pairs):
            return None  # jsonata's error for a key given twice
        return functools.partial(_object, tuple(pairs))
    return None


def _given(node: Any) -> set[str]:
    """The attributes the parser set on `node`, its bookkeeping aside: any beyond those
    `_direct` expects (a predicate, a stage, a sort, a focus, an index) make it jsonata's."""
    return {
        key
        for key, value in vars(node).items()
        if key not in _BOOKKEEPING
        and not key.startswith("_")
        and value is not None
        and value is not False
        and not (isinstance(value, list | dict) and not value)
    }


_BOOKKEEPING = {"id", "position", "bp", "lbp", "level"}


def _path(names: tuple[str, ...], context: Mapping[str, Any]) -> Any:
    value: Any = context
    for name in names:
        if type(value) is not dict:
            raise _Evaluator  # a list (mapped over), a scalar, another mapping
        value = value.get(name, _MISSING)
        if value is _MISSING or value is None:
            raise _Evaluator  # undefined and null differ inside operators and objects
    if type(value) is list:
        raise _Evaluator  # jsonata's sequences
    return value


def _arithmetic(
    op: Callable[[float, float], float], lhs: _Direct, rhs: _Direct, context: Mapping[str, Any]
) -> int | float:
    left, right = lhs(context), rhs(context)
    if type(left) not in (int, float) or type(right) not in (int, float):
        raise _Evaluator  # jsonata's type errors, strings, booleans
    try:
        result = op(float(left), float(right))  # as jsonata computes it, in floats
    except OverflowError:  # an integer beyond a float's range
        raise _Evaluator from None
    if not math.isfinite(result):
        raise _Evaluator  # jsonata's "number out of range"
    return int(result) if result.is_integer() else result


def _equality(equal: bool, lhs: _Direct, rhs: _Direct, context: Mapping[str, Any]) -> bool:
    """jsonata's `=` (`equal`) or `!=` between two strings, numbers or booleans: numbers
    compared as floats, a boolean equal to a boolean only."""
    left, right = _scalar(lhs(context)), _scalar(rhs(context))
    same = left == right and (type(left) is bool) == (type(right) is bool)
    return same if equal else not same


def _scalar(value: Any) -> str | float | bool:
    if type(value) is str or type(value) is bool:
        return value
    if type(value) in (int, float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond a float's range
            raise _Evaluator from None
    raise _Evaluator  # an object or a list (jsonata's deep equality)


def _order(
    op: Callable[[Any, Any], bool], lhs: _Direct, rhs: _Direct, context: Mapping[str, Any]
) -> bool:
    """jsonata's `<`, `<=`, `>` or `>=` between two numbers or two strings; numbers of
    different types compared as floats, as jsonata does."""
    left, right = lhs(context), rhs(context)
    kinds = type(left), type(right)
    if kinds in ((int, int), (float, float), (str, str)):
        return op(left, right)
    if kinds in ((int, float), (float, int)):
        try:
            return op(float(left), float(right))
        except OverflowError:
            raise _Evaluator from None
    raise _Evaluator  # jsonata's type errors


def _object(pairs: tuple[tuple[str, _Direct], ...], context: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value(context) for key, value in pairs}


# The binary operators `_direct` evaluates, each a function of its two sides and the context.
_OPERATORS: dict[str, Callable[..., Any]] = {
    "+": functools.partial(_arithmetic, operator.add),
    "-": functools.partial(_arithmetic, operator.sub),
    "*": functools.partial(_arithmetic, operator.mul),
    "=": functools.partial(_equality, True),
    "!=": functools.partial(_equality, False),
    "<": functools.partial(_order, operator.lt),
    "<=": functools.partial(_order, operator.le),
    ">": functools.partial(_order, operator.gt),
    ">=": functools.partial(_order, operator.ge),
}


@lru_cache(maxsize=8192)
def parse_template(text: str) -> Template:
    """Split `text` into literal text and compiled expressions."""
    parts: list[str | Expression] = []
    pos = 0
    while (start := text.find("{{", pos)) != -1:
        end = _closing_braces(text, start + 2)
        if start > pos:
            parts.append(text[pos:start])
        source = text[start + 2 : end].strip()
        if not source:
            raise ExpressionError("empty expression {{ }}")
        parts.append(compile_expression(source))
        pos = end + 2
    if pos < len(text) or not parts:
        parts.append(text[pos:])
    return Template(tuple(parts))


def _closing_braces(text: str, pos: int) -> int:
    """Index of the `}}` closing an expression, skipping braces inside it and its strings."""
    depth = 0
    quote = ""
    i = pos
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "{[(":
            depth += 1
        elif char in ")]" or (char == "}" and depth > 0):
            depth -= 1
        elif text.startswith("}}", i):
            return i
        i += 1
    # Unbalanced brackets: close at the first `}}` and let the parser name the problem.
    if (first := text.find("}}", pos)) != -1:
        return first
    raise ExpressionError(f"unclosed expression: {text[pos - 2 :]!r} has no closing }}}}")


def has_template(value: str) -> bool:
    return "{{" in value


def resolve(value: Any, context: Mapping[str, Any], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Any:
    """`value` with every template string in it rendered against `context`."""
    if isinstance(value, str):
        return parse_template(value).render(context, timeout_ms) if has_template(value) else value
    if isinstance(value, dict):
        return {key: resolve(item, context, timeout_ms) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, context, timeout_ms) for item in value]
    return value


def templates_in(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every template string inside `value`, with its JSON path."""
    if isinstance(value, str):
        if has_template(value):
            yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from templates_in(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from templates_in(item, f"{path}[{index}]")


def referenced_blocks(expression: Expression) -> set[str]:
    """Names of the blocks an expression reads through `blocks.<name>`."""
    names: set[str] = set()
    _collect_block_refs(getattr(expression.compiled, "ast", None), names, set())
    return names


def _collect_block_refs(node: Any, names: set[str], seen: set[int]) -> None:
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, list):
        for child in node:
            _collect_block_refs(child, names, seen)
        return
    if not hasattr(node, "type"):
        return
    steps = getattr(node, "steps", None)
    if getattr(node, "type", None) == "path" and isinstance(steps, list) and len(steps) >= 2:
        first, second = steps[0], steps[1]
        if (
            getattr(first, "type", None) == "name"
            and getattr(first, "value", None) == "blocks"
            and getattr(second, "type", None) == "name"
            and isinstance(second.value, str)
        ):
            names.add(second.value)
    for key, child in vars(node).items():
        if key.startswith("_") or key in ("environment", "input"):
            continue
        if isinstance(child, list) or hasattr(child, "type"):
            _collect_block_refs(child, names, seen)
