"""`{{ ... }}` templates holding JSONata expressions: parsing, caching, resolving."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonata
import orjson

DEFAULT_TIMEOUT_MS = 1000


class ExpressionError(Exception):
    """An expression does not parse or fails to evaluate."""


@dataclass(frozen=True, slots=True)
class Expression:
    source: str
    compiled: Any

    def evaluate(self, context: Mapping[str, Any], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Any:
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
    return Expression(source, compiled)


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
