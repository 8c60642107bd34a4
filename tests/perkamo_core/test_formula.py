"""Tests of the formula/condition language: values, syntax errors with positions, limits and safety."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perkamo_core.formula import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_SOURCE_LENGTH,
    EvaluationError,
    FormulaSyntaxError,
    NumberRangeError,
    compile_expression,
)

CTX: dict[str, Any] = {
    "amount": 12900,
    "price": 19.99,
    "qty": 3,
    "currency": "CZK",
    "member": True,
    "zero": 0,
    "none": None,
    "order": {"total": {"net": 250}, "items": [{"price": 5}, {"price": 7}]},
    "big": 10**70,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{amount}} / 100 * 2", Decimal(258)),
        ("1 + 2 * 3", Decimal(7)),
        ("(1 + 2) * 3", Decimal(9)),
        ("10 - 4 - 3", Decimal(3)),
        ("7 // 2", Decimal(3)),
        ("-7 // 2", Decimal(-4)),
        ("7 // -2", Decimal(-4)),
        ("-7 % 3", Decimal(2)),
        ("7 % -3", Decimal(-2)),
        ("7.5 % 2", Decimal("1.5")),
        ("{{price}} * {{qty}}", Decimal("59.97")),
        ("{{order.total.net}} / 10", Decimal(25)),
        ("{{order.items.1.price}}", Decimal(7)),
        ("{{ amount }}", Decimal(12900)),
        ("-{{qty}}", Decimal(-3)),
        ("+{{qty}}", Decimal(3)),
        ("min(3, 1, 2)", Decimal(1)),
        ("max({{qty}}, 10)", Decimal(10)),
        ("round(2.5)", Decimal(2)),
        ("round(3.5)", Decimal(4)),
        ("round(2.345, 2)", Decimal("2.34")),
        ("floor(-1.5)", Decimal(-2)),
        ("ceil(1.2)", Decimal(2)),
        ("abs(-4)", Decimal(4)),
        (".5 + 1.", Decimal("1.5")),
        ("{{currency}} == 'CZK'", True),
        ('{{currency}} != "EUR"', True),
        ("{{currency}} == 5", False),
        ("{{currency}} != 5", True),
        ("{{amount}} >= 100 and {{currency}} == 'CZK'", True),
        ("{{amount}} < 100 or {{member}}", True),
        ("not {{member}}", False),
        ("not not {{member}}", True),
        ("{{member}} == true", True),
        ("false or {{qty}} > 2", True),
        ("'abc' < 'abd'", True),
        ("'it\\'s' == \"it's\"", True),
        ("1 == 1.0", True),
    ],
    ids=lambda v: str(v),
)
def test_evaluates(source: str, expected: object) -> None:
    assert compile_expression(source).evaluate(CTX) == expected


def test_short_circuit_skips_the_failing_side() -> None:
    assert compile_expression("{{member}} or {{missing}} > 1").evaluate(CTX) is True
    assert compile_expression("not {{member}} and {{missing}} > 1").evaluate(CTX) is False


def test_fields_lists_references_once() -> None:
    expr = compile_expression("{{a}} + {{b.c}} * {{a}}")
    assert expr.fields == ("a", "b.c")


@pytest.mark.parametrize(
    ("source", "position"),
    [
        ("1 +", 3),
        ("(1 + 2", 6),
        ("1 + 2)", 5),
        ("amount * 2", 0),
        ("{{amount} * 2", 0),
        ("{{}}", 0),
        ("{{a..b}}", 0),
        ("2 ** 3", 3),
        ("__import__('os')", 0),
        ("{{a}}.__class__", 5),
        ("'open", 0),
        ("1 < 2 < 3", 6),
        ("pow(2, 3)", 0),
        ("min()", 0),
        ("round(1, 2, 3)", 0),
        ("abs 1", 4),
        ("1e5", 1),
        ("[1]", 0),
        ("1 ; 2", 2),
        ("", 0),
        ("'\\x'", 1),
        ("1" * 31, 0),
    ],
    ids=lambda v: str(v)[:30],
)
def test_syntax_errors_carry_the_position(source: str, position: int) -> None:
    with pytest.raises(FormulaSyntaxError) as info:
        compile_expression(source)
    assert info.value.position == position
    assert f"position {position}" in str(info.value)


@pytest.mark.parametrize(
    "source",
    [
        "x" * (MAX_SOURCE_LENGTH + 1),
        "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
        "-" * (MAX_DEPTH + 2) + "1",
        "not " * (MAX_DEPTH + 2) + "true",
        "+".join(["1"] * (MAX_NODES // 2 + 2)),
    ],
    ids=["too-long", "too-deep-parens", "too-deep-unary", "too-deep-not", "too-many-nodes"],
)
def test_limits_are_syntax_errors(source: str) -> None:
    with pytest.raises(FormulaSyntaxError):
        compile_expression(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{missing}} * 2", "missing field 'missing'"),
        ("{{order.nope}}", "missing field 'order.nope'"),
        ("{{order.items.9.price}}", "missing field"),
        ("{{amount.x}}", "missing field"),
        ("{{none}} + 1", "is null"),
        ("{{order}} + 1", "is a dict"),
        ("1 / {{zero}}", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("{{currency}} + 1", "needs a number"),
        ("{{currency}} < 1", "cannot order"),
        ("{{member}} < true", "cannot order"),
        ("{{qty}} and true", "needs a boolean"),
        ("not 1", "needs a boolean"),
        ("-'a'", "needs a number"),
        ("min('a')", "needs a number"),
        ("round(1, 0.5)", "places"),
        ("round(1, 99)", "places"),
        ("{{big}}", "too large"),
        ("round(99999999999999999999999999999 * 99999999999999999999999999999, 2)", "arithmetic error"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_evaluation_errors(source: str, message: str) -> None:
    with pytest.raises(EvaluationError) as info:
        compile_expression(source).evaluate(CTX)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("source", "context", "out_of_range"),
    [
        pytest.param("{{n}}", {"n": 10**400}, True, id="huge-int"),
        pytest.param("{{n}}", {"n": Decimal("1e200000")}, True, id="huge-decimal"),
        pytest.param("{{n}} * {{n}} * {{n}}", {"n": Decimal("1e400000")}, True, id="overflow"),
        pytest.param("round({{n}} * {{n}}, 2)", {"n": 10**40}, True, id="too-many-digits"),
        pytest.param("{{n}} / 0", {"n": 1}, False, id="division-by-zero"),
        pytest.param("{{n}} / {{n}}", {"n": 0}, False, id="zero-by-zero"),
        pytest.param("{{n}} // 0", {"n": 0}, False, id="floor-division-by-zero"),
        pytest.param("{{n}} % 0", {"n": 1}, False, id="modulo-zero"),
        pytest.param("{{missing}}", {}, False, id="missing"),
    ],
)
def test_only_numbers_beyond_range_are_number_range_errors(
    source: str, context: dict[str, object], out_of_range: bool
) -> None:
    for fast in (True, False):
        with pytest.raises(EvaluationError) as info:
            compile_expression(source, fast=fast).evaluate(context)
        assert isinstance(info.value, NumberRangeError) is out_of_range, info.value


def test_number_and_condition_helpers_check_the_type() -> None:
    with pytest.raises(EvaluationError, match="not a number"):
        compile_expression("{{currency}}").evaluate_number(CTX)
    with pytest.raises(EvaluationError, match="not true/false"):
        compile_expression("{{qty}}").evaluate_condition(CTX)
    assert compile_expression("{{qty}} * 2").evaluate_number(CTX) == 6
    assert compile_expression("{{qty}} > 2").evaluate_condition(CTX) is True


def test_float_context_values_are_read_exactly_as_written() -> None:
    assert compile_expression("{{x}} * 3").evaluate({"x": 0.1}) == Decimal("0.3")


def test_non_finite_context_numbers_are_errors() -> None:
    with pytest.raises(EvaluationError):
        compile_expression("{{x}}").evaluate({"x": float("nan")})
    with pytest.raises(EvaluationError):
        compile_expression("{{x}}").evaluate({"x": Decimal("Infinity")})


# --- safety properties --------------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    list("0123456789.+-*/%()<>=!,'\" {}_abc")
    + ["{{a}}", "{{b.c}}", " and ", " or ", "not ", "min(", "max(", "round(", "floor(", "ceil(", "abs(", "//"]
    + ["true", "false", "99999999999999999999", "0.000000001"]
)

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.decimals(allow_nan=True, allow_infinity=True),
)
_json = st.recursive(_json_leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=8)
_contexts = st.fixed_dictionaries({}, optional={"a": _json, "b": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80) | st.lists(_ALPHABET, max_size=30).map("".join))
def test_arbitrary_source_raises_only_syntax_errors(source: str) -> None:
    try:
        compile_expression(source)
    except FormulaSyntaxError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, min_size=1, max_size=30).map("".join), _contexts)
def test_compiled_expressions_raise_only_evaluation_errors(source: str, context: dict[str, Any]) -> None:
    try:
        expr = compile_expression(source)
    except FormulaSyntaxError:
        return
    try:
        value = expr.evaluate(context)
    except EvaluationError:
        return
    assert isinstance(value, (Decimal, str, bool))


# arithmetic against an exact reference (Fraction), on small integers where the result is exact

_ints = st.integers(min_value=-10**6, max_value=10**6)


@st.composite
def _arith(draw: st.DrawFn, depth: int = 0) -> tuple[str, Fraction]:
    if depth >= 3 or draw(st.booleans()):
        n = draw(_ints)
        return (f"({n})" if n < 0 else str(n)), Fraction(n)
    op = draw(st.sampled_from(["+", "-", "*", "//", "%"]))
    left_src, left = draw(_arith(depth + 1))
    right_src, right = draw(_arith(depth + 1))
    if op in ("//", "%") and right == 0:
        right_src, right = "1", Fraction(1)
    if op == "+":
        value = left + right
    elif op == "-":
        value = left - right
    elif op == "*":
        value = left * right
    elif op == "//":
        value = Fraction(left // right)
    else:
        value = left - right * (left // right)
    return f"({left_src} {op} {right_src})", value


@settings(max_examples=200, deadline=None)
@given(_arith())
def test_integer_arithmetic_matches_python(case: tuple[str, Fraction]) -> None:
    source, expected = case
    assert Fraction(compile_expression(source).evaluate_number({})) == expected


@settings(max_examples=200, deadline=None)
@given(_ints, st.integers(min_value=1, max_value=10**4))
def test_division_matches_exact_quotient(a: int, b: int) -> None:
    value = compile_expression("{{a}} / {{b}}").evaluate_number({"a": a, "b": b})
    assert abs(Fraction(value) - Fraction(a, b)) <= Fraction(1, 10**25)
