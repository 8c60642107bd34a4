"""The formula fast path gives exactly what the general evaluator gives: the same values, the same errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perkamo_core.formula import EvaluationError, Expression, FormulaSyntaxError, compile_expression

_Method = Callable[[Expression, Mapping[str, Any]], object]
_METHODS: dict[str, _Method] = {
    "evaluate": Expression.evaluate,
    "evaluate_number": Expression.evaluate_number,
    "evaluate_condition": Expression.evaluate_condition,
}


def _result(method: _Method, expr: Expression, context: Mapping[str, Any]) -> tuple[str, object]:
    """("ok", type name, repr) or ("error", message): what a caller can observe of one evaluation."""
    try:
        value = method(expr, context)
    except EvaluationError as exc:
        return ("error", str(exc))
    return ("ok", (type(value).__name__, repr(value)))


def assert_same(source: str, context: Mapping[str, Any]) -> None:
    fast, general = compile_expression(source), compile_expression(source, fast=False)
    for name, method in _METHODS.items():
        assert _result(method, fast, context) == _result(method, general, context), (name, source, context)


class _Dict(dict[str, Any]):
    """A dict subclass (the fast path leaves anything but a plain dict to the general evaluator)."""


_BIG = 2**200  # the largest context int the language accepts has 200 bits

# the shipped migration program's expressions, and a few more shapes the fast path compiles
_SOURCES = [
    "{{amount}}",
    "0 - {{amount}}",
    "{{classification}} == 'EARN'",
    "{{classification}} != 'REDEEM'",
    "-{{amount}}",
    "+{{amount}}",
    "{{amount}} * 2 + 1",
    "{{amount}} / 3",
    "{{amount}} // 7",
    "{{amount}} % -7",
    "{{amount}} > 10 and {{flag}}",
    "{{flag}} or {{amount}} > 10",
    "not {{flag}}",
    "{{amount}} >= 10",
    "{{classification}} < 'F'",
    "{{amount}} == 10",
    "'EARN' == {{classification}}",
    "{{amount}}.5",
]
_CONTEXTS: list[tuple[str, Mapping[str, Any]]] = [
    ("perkville-earn", {"classification": "EARN", "amount": 10, "points": 10, "flag": True}),
    ("perkville-redeem", {"classification": "REDEEM", "amount": 250, "flag": False}),
    ("zero", {"classification": "EARN", "amount": 0, "flag": False}),
    ("negative", {"classification": "EARN", "amount": -35, "flag": True}),
    ("largest-int", {"amount": _BIG - 1, "classification": "EARN", "flag": True}),
    ("too-large-int", {"amount": _BIG, "classification": "EARN", "flag": True}),
    ("huge-negative-int", {"amount": -(2**300), "flag": True}),
    ("bool-amount", {"amount": True, "classification": True, "flag": 1}),
    ("string-amount", {"amount": "10", "classification": 7, "flag": "true"}),
    ("float-amount", {"amount": 10.25, "classification": "EARN", "flag": True}),
    ("decimal-amount", {"amount": Decimal("10.50"), "classification": "EARN", "flag": True}),
    ("nan", {"amount": Decimal("NaN"), "flag": float("nan")}),
    ("infinite", {"amount": float("inf"), "flag": Decimal("-Infinity")}),
    ("null", {"amount": None, "classification": None, "flag": None}),
    ("nested", {"amount": {"value": 10}, "classification": ["EARN"], "flag": {}}),
    ("missing", {}),
    ("dict-subclass", _Dict(amount=10, classification="EARN", flag=True)),
    ("mapping-proxy", MappingProxyType({"amount": 10, "classification": "EARN", "flag": True})),
]


@pytest.mark.parametrize("context", [c for _, c in _CONTEXTS], ids=[i for i, _ in _CONTEXTS])
@pytest.mark.parametrize("source", _SOURCES)
def test_fast_path_matches_the_general_evaluator(source: str, context: Mapping[str, Any]) -> None:
    try:
        assert_same(source, context)
    except FormulaSyntaxError:
        assert source == "{{amount}}.5"  # the one deliberately invalid source


@pytest.mark.parametrize(
    ("source", "context", "expected"),
    [
        ("{{amount}}", {"amount": 10}, Decimal(10)),
        ("0 - {{amount}}", {"amount": 10}, Decimal(-10)),
        ("0 - {{amount}}", {"amount": 0}, Decimal(0)),
        ("{{amount}}", {"amount": _BIG - 1}, Decimal(_BIG - 1)),
        ("0 - {{amount}}", {"amount": 10**40}, Decimal("-1.000000000000000000000000000000000E+40")),
    ],
    ids=["field", "zero-minus-field", "zero-minus-zero", "largest-int", "rounded-to-34-digits"],
)
def test_trivial_formulas_give_the_exact_decimal(source: str, context: dict[str, Any], expected: Decimal) -> None:
    value = compile_expression(source).evaluate_number(context)
    assert type(value) is Decimal and value == expected and str(value) == str(expected)


@pytest.mark.parametrize(
    ("source", "context", "message"),
    [
        ("{{amount}}", {}, "missing field 'amount'"),
        ("{{amount}}", {"amount": None}, "field 'amount' is null"),
        ("{{amount}}", {"amount": _BIG}, "field 'amount' is too large a number"),
        ("{{amount}}", {"amount": "10"}, "formula gave a string, not a number"),
        ("0 - {{amount}}", {"amount": True}, "'-' needs a number, got a boolean"),
        ("{{classification}} == 'EARN'", {}, "missing field 'classification'"),
        ("{{amount}} < 'x'", {"amount": 1}, "cannot order a number and a string with '<'"),
        ("{{amount}} / 0", {"amount": 1}, "division by zero"),
    ],
    ids=["missing", "null", "too-large", "string-result", "bool-operand", "missing-condition", "ordering", "div-zero"],
)
def test_errors_are_the_general_evaluators(source: str, context: dict[str, Any], message: str) -> None:
    expr = compile_expression(source)
    method = expr.evaluate_condition if "==" in source or "<" in source else expr.evaluate_number
    with pytest.raises(EvaluationError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        method(context)


def test_the_shipped_shapes_take_the_fast_path() -> None:
    for source in ("{{amount}}", "0 - {{amount}}", "{{classification}} == 'EARN'"):
        assert compile_expression(source)._fast is not None
    for source in ("{{order.total}}", "min({{a}}, 1)"):  # dotted fields and calls stay general-only
        assert compile_expression(source)._fast is None


# --- properties: arbitrary expressions over arbitrary (also hostile) contexts --------------------

_ALPHABET = st.sampled_from(
    list("0123456789.+-*/%()<>=!,' ")
    + ["{{a}}", "{{b}}", "{{c}}", "{{b.c}}", " and ", " or ", "not ", "min(", "abs(", "//", "=="]
    + ["true", "false", "'x'", "99999999999999999999", "0.000000001", "0"]
)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**199, max_value=2**202) | st.integers(min_value=-(2**202), max_value=-(2**199)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["x", "", "EARN", "10"]),
    st.decimals(allow_nan=True, allow_infinity=True),
)
_value = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=2) | st.dictionaries(st.sampled_from("cd"), kids, max_size=2), max_leaves=4)
_contexts = st.fixed_dictionaries({}, optional={"a": _value, "b": _value, "c": _value}) | st.builds(
    lambda d, kind: kind(d), st.fixed_dictionaries({}, optional={"a": _value, "b": _value}), st.sampled_from([_Dict, MappingProxyType])
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, min_size=1, max_size=12).map("".join), _contexts)
def test_fast_path_equals_general_evaluator_on_arbitrary_input(source: str, context: Mapping[str, Any]) -> None:
    try:
        assert_same(source, context)
    except FormulaSyntaxError:
        pass


_field_or_const = st.sampled_from(["{{a}}", "{{b}}", "0", "1", "7", "'x'", "true", "2.5"])


@st.composite
def _trees(draw: st.DrawFn, depth: int = 0) -> str:
    """Well-formed sources made only of what the fast path compiles (so it is exercised, not skipped)."""
    if depth >= 3 or draw(st.booleans()):
        return draw(_field_or_const)
    kind = draw(st.sampled_from(["bin", "cmp", "logic", "unary"]))
    if kind == "unary":
        return f"({draw(st.sampled_from(['-', '+', 'not ']))}({draw(_trees(depth + 1))}))"
    op = draw(
        st.sampled_from(
            {"bin": ["+", "-", "*", "/", "//", "%"], "cmp": ["==", "!=", "<", "<=", ">", ">="], "logic": ["and", "or"]}[kind]
        )
    )
    return f"({draw(_trees(depth + 1))} {op} {draw(_trees(depth + 1))})"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees(), _contexts)
def test_fast_compilable_expressions_equal_the_general_evaluator(source: str, context: Mapping[str, Any]) -> None:
    assert compile_expression(source)._fast is not None
    assert_same(source, context)
