"""`{{ }}` templates: types kept, text interpolated, errors named, compiled once."""

from __future__ import annotations

import pytest

from solder.expressions import (
    ExpressionError,
    compile_expression,
    parse_template,
    referenced_blocks,
    resolve,
)

CONTEXT = {
    "trigger": {"email": "ada@example.com", "items": [1, 2, 3], "n": 2},
    "blocks": {"getProfile": {"id": "P1", "tags": ["a", "b"]}},
    "user": {"userId": "u1", "username": "ada"},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ trigger.items }}", [1, 2, 3]),
        ("{{ trigger.n * 2 }}", 4),
        ("{{ blocks.getProfile }}", {"id": "P1", "tags": ["a", "b"]}),
        ("{{ $count(blocks.getProfile.tags) = 2 }}", True),
        ("{{ trigger.missing }}", None),
        ("Hello {{ user.username }}!", "Hello ada!"),
        ("n={{ trigger.n }} items={{ trigger.items }}", "n=2 items=[1,2,3]"),
        ("{{ {'a': {'b': trigger.n}} }}", {"a": {"b": 2}}),
        ("{{ '}}' & trigger.n }}", "}}2"),
        ("no expression at all", "no expression at all"),
    ],
)
def test_a_template_renders(template: str, expected: object) -> None:
    assert resolve(template, CONTEXT) == expected


def test_resolve_walks_objects_and_lists() -> None:
    config = {"url": "https://x/{{ blocks.getProfile.id }}", "q": ["{{ trigger.n }}", 5]}
    assert resolve(config, CONTEXT) == {"url": "https://x/P1", "q": [2, 5]}


@pytest.mark.parametrize("bad", ["{{ foo[ }}", "{{ }}", "{{ unclosed", "{{ 1 + }}"])
def test_a_bad_template_is_an_error_that_names_it(bad: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_template(bad)
    assert "{{" in str(caught.value)


def test_an_expression_is_compiled_once() -> None:
    assert compile_expression("trigger.n + 41") is compile_expression("trigger.n + 41")


def test_block_references_are_found_anywhere_in_an_expression() -> None:
    expression = compile_expression(
        "blocks.a.x & $string(blocks.`b c`.y) & $map(trigger.items, function($v){ blocks.d })"
    )
    assert referenced_blocks(expression) == {"a", "b c", "d"}
    assert referenced_blocks(compile_expression("trigger.blocks.x")) == set()
