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


# The expressions most templates are, which Solder evaluates without jsonata's tree walk,
# held to jsonata's own answers over values that take each of its rules.
DIRECT = [
    "trigger.n",
    "trigger.n + 1",
    "trigger.n - 2.5",
    "trigger.f * 3",
    "trigger.n + trigger.f",
    "2 * 3 + 1",
    "'text'",
    "7",
    "blocks.getProfile.id",
    "blocks.getProfile",
    "{'id': blocks.getProfile.id, 'next': trigger.n + 1}",
    "{'a': {'b': trigger.n}}",
    "trigger.deep.er.est",
    "trigger.n = 2",
    "trigger.n != trigger.f",
    "trigger.n = trigger.f",
    "trigger.n < 3",
    "trigger.n <= trigger.f",
    "trigger.f > trigger.n",
    "trigger.n >= 'b'",
    "blocks.getProfile.id = 'x'",
    "{'big': trigger.n > 100, 'same': trigger.n = trigger.f}",
]
VALUES: list[object] = [
    2,
    -7,
    3.0,
    2.5,
    0.1,
    2**60,
    2**70,
    1e308,
    True,
    False,
    None,
    "2",
    "",
    [],
    [4],
    [[1], [2]],
    {},
    {"er": {"est": 1}},
    {"er": [{"est": 1}, {"est": 2}]},
    {"er": {"est": None}},
]


def _jsonata(source: str, context: dict[str, object]) -> object:
    import jsonata

    expression = jsonata.Jsonata(source)
    expression.set_validate_input(False)
    try:
        return expression.evaluate(context)
    except Exception:
        return ExpressionError


@pytest.mark.parametrize("source", DIRECT)
def test_the_usual_expressions_give_jsonatas_answers_without_its_evaluator(source: str) -> None:
    expression = compile_expression(source)
    assert expression.direct is not None
    for value in VALUES:
        for other in (3, 2.5, 1, True, "x", "2", None, [1]):
            context: dict[str, object] = {
                "trigger": {"n": value, "f": other, "deep": value},
                "blocks": {"getProfile": {"id": value, "tags": ["a"]}},
            }
            try:
                answer: object = expression.evaluate(context)
            except ExpressionError:
                answer = ExpressionError
            expected = _jsonata(source, context)
            assert answer == expected, (source, context)
            assert type(answer) is type(expected), (source, context)


@pytest.mark.parametrize(
    "source",
    [
        "trigger.items[0]",
        "trigger.items[]",
        "$count(trigger.items)",
        "trigger.n = true",
        "trigger.n / 2",
        "trigger.n in [1, 2]",
        "{'a': 1, 'a': 2}",
    ],
)
def test_other_expressions_are_left_to_jsonata(source: str) -> None:
    assert compile_expression(source).direct is None
