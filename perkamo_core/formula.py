"""The formula and condition language of earning rules: values and the Decimal evaluator of a parsed tree.

The syntax (grammar, tokenizer, parser, compile-time limits, `FormulaSyntaxError`) is in
`perkamo_core.formula_syntax`; its public names are re-exported here. `compile_expression` parses
once and turns the tree into a chain of small closures; nothing is ever handed to ``eval``/``exec``.
Evaluation runs in a private Decimal context with a fixed precision and exponent range, and reads
context numbers only up to a bounded size. ``//`` and ``%`` follow Python (floor division, the
remainder takes the divisor's sign); ``round`` rounds half to even like Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from typing import Any, Final

from perkamo_core.formula_syntax import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_NUMBER_DIGITS,
    MAX_SOURCE_LENGTH,
    FormulaError,
    FormulaSyntaxError,
    parse,
)

__all__ = [
    "DECIMAL_CONTEXT",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_NUMBER_DIGITS",
    "MAX_SOURCE_LENGTH",
    "EvaluationError",
    "Expression",
    "FormulaError",
    "FormulaSyntaxError",
    "NumberRangeError",
    "Value",
    "compile_expression",
    "to_value",
]

MAX_CONTEXT_INT_BITS: Final = 200  # ~60 decimal digits; larger context integers are rejected
MAX_ROUND_PLACES: Final = 18

DECIMAL_CONTEXT: Final = Context(
    prec=34,
    rounding=ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
"""The only Decimal context evaluation uses: 34 significant digits, bounded exponents, traps on."""

Value = Decimal | str | bool
"""What an expression evaluates to."""

_Fn = Callable[[Mapping[str, Any]], Value]


class EvaluationError(FormulaError):
    """Evaluation failed (missing field, type error, division by zero, out of range)."""


class NumberRangeError(EvaluationError):
    """A number is beyond what evaluation holds exactly: a context number too large or not
    finite, or a result the Decimal context cannot represent (overflow, too many digits).

    Unlike a missing field, this is bad input rather than a rule that does not apply: the
    engine rejects the event instead of skipping the rule.
    """


# --- values and evaluation ---------------------------------------------------------------------


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, Decimal):
        return "number"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def to_value(raw: object, path: str = "value") -> Value:
    """Convert a JSON-ish context value to a language value; raise `EvaluationError` if unusable."""
    if isinstance(raw, bool) or isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        if raw.bit_length() > MAX_CONTEXT_INT_BITS:
            raise NumberRangeError(f"field {path!r} is too large a number")
        return Decimal(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise NumberRangeError(f"field {path!r} is not a finite number")
        return Decimal(repr(raw))
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            raise NumberRangeError(f"field {path!r} is not a finite number")
        if len(raw.as_tuple().digits) > 60 or abs(raw.adjusted()) > 100_000:
            raise NumberRangeError(f"field {path!r} is too large a number")
        return raw
    if raw is None:
        raise EvaluationError(f"field {path!r} is null")
    raise EvaluationError(f"field {path!r} is a {type(raw).__name__}, not a number, string or boolean")


def _lookup(path: tuple[str, ...], dotted: str) -> _Fn:
    if len(path) == 1:
        key = path[0]

        def get1(ctx: Mapping[str, Any]) -> Value:
            try:
                raw = ctx[key]
            except (KeyError, TypeError):
                raise EvaluationError(f"missing field {dotted!r}") from None
            return to_value(raw, dotted)

        return get1

    def get(ctx: Mapping[str, Any]) -> Value:
        cur: Any = ctx
        for seg in path:
            if isinstance(cur, Mapping):
                if seg not in cur:
                    raise EvaluationError(f"missing field {dotted!r}")
                cur = cur[seg]
            elif isinstance(cur, Sequence) and not isinstance(cur, (str, bytes)) and seg.isdigit():
                idx = int(seg)
                if idx >= len(cur):
                    raise EvaluationError(f"missing field {dotted!r}")
                cur = cur[idx]
            else:
                raise EvaluationError(f"missing field {dotted!r}")
        return to_value(cur, dotted)

    return get


def _num(v: Value, what: str) -> Decimal:
    if isinstance(v, Decimal):
        return v
    raise EvaluationError(f"{what} needs a number, got a {_type_name(v)}")


def _bool(v: Value, what: str) -> bool:
    if isinstance(v, bool):
        return v
    raise EvaluationError(f"{what} needs a boolean, got a {_type_name(v)}")


def _floordiv(a: Decimal, b: Decimal) -> Decimal:
    if not b:
        raise EvaluationError("division by zero")
    ctx = DECIMAL_CONTEXT
    q = ctx.divide_int(a, b)
    if (a < 0) != (b < 0) and ctx.remainder(a, b) != 0:
        q = ctx.subtract(q, Decimal(1))
    return q


def _mod(a: Decimal, b: Decimal) -> Decimal:
    if not b:
        raise EvaluationError("division by zero")
    ctx = DECIMAL_CONTEXT
    r = ctx.remainder(a, b)
    if r != 0 and (r < 0) != (b < 0):
        r = ctx.add(r, b)
    return r


_ARITH: Final[dict[str, Callable[[Decimal, Decimal], Decimal]]] = {
    "+": DECIMAL_CONTEXT.add,
    "-": DECIMAL_CONTEXT.subtract,
    "*": DECIMAL_CONTEXT.multiply,
    "/": DECIMAL_CONTEXT.divide,
    "//": _floordiv,
    "%": _mod,
}


def _compare(op: str, a: Value, b: Value) -> bool:
    same = type(a) is type(b)
    if op == "==":
        return same and a == b
    if op == "!=":
        return not (same and a == b)
    if not same or isinstance(a, bool):
        raise EvaluationError(f"cannot order a {_type_name(a)} and a {_type_name(b)} with {op!r}")
    if op == "<":
        return a < b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    return a >= b  # type: ignore[operator]


def _round(x: Decimal, places: Decimal | None) -> Decimal:
    if places is None:
        n = 0
    else:
        if places != places.to_integral_value() or not 0 <= places <= MAX_ROUND_PLACES:
            raise EvaluationError(f"round() places must be a whole number from 0 to {MAX_ROUND_PLACES}")
        n = int(places)
    return x.quantize(Decimal(1).scaleb(-n), rounding=ROUND_HALF_EVEN, context=DECIMAL_CONTEXT)


def _call(name: str, args: list[Decimal]) -> Decimal:
    ctx = DECIMAL_CONTEXT
    if name == "min":
        return min(args)
    if name == "max":
        return max(args)
    if name == "abs":
        return ctx.abs(args[0])
    if name == "floor":
        return args[0].to_integral_value(rounding=ROUND_FLOOR, context=ctx)
    if name == "ceil":
        return args[0].to_integral_value(rounding=ROUND_CEILING, context=ctx)
    return _round(args[0], args[1] if len(args) > 1 else None)


def _build(tree: tuple[Any, ...], fields: list[str]) -> _Fn:
    kind = tree[0]
    if kind == "const":
        value = tree[1]
        return lambda ctx: value
    if kind == "field":
        dotted = ".".join(tree[1])
        fields.append(dotted)
        return _lookup(tree[1], dotted)
    if kind == "bin":
        op, left, right = tree[1], _build(tree[2], fields), _build(tree[3], fields)
        fn, what = _ARITH[op], f"'{op}'"

        def arith(ctx: Mapping[str, Any]) -> Value:
            return fn(_num(left(ctx), what), _num(right(ctx), what))

        return arith
    if kind == "cmp":
        op, left, right = tree[1], _build(tree[2], fields), _build(tree[3], fields)
        return lambda ctx: _compare(op, left(ctx), right(ctx))
    if kind == "neg":
        operand = _build(tree[1], fields)
        return lambda ctx: DECIMAL_CONTEXT.minus(_num(operand(ctx), "'-'"))
    if kind == "pos":
        operand = _build(tree[1], fields)
        return lambda ctx: _num(operand(ctx), "'+'")
    if kind == "not":
        operand = _build(tree[1], fields)
        return lambda ctx: not _bool(operand(ctx), "'not'")
    if kind == "and":
        left, right = _build(tree[1], fields), _build(tree[2], fields)
        return lambda ctx: _bool(left(ctx), "'and'") and _bool(right(ctx), "'and'")
    if kind == "or":
        left, right = _build(tree[1], fields), _build(tree[2], fields)
        return lambda ctx: _bool(left(ctx), "'or'") or _bool(right(ctx), "'or'")
    if kind == "call":
        name = tree[1]
        arg_fns = [_build(a, fields) for a in tree[2]]
        what = f"{name}()"
        return lambda ctx: _call(name, [_num(f(ctx), what) for f in arg_fns])
    raise AssertionError(f"unknown node {kind!r}")  # pragma: no cover - the parser makes only the kinds above


# --- the fast path: the same values for the common case, or "undecided" ---------------------------
#
# `_build_fast` turns a tree made only of constants, one-segment fields, arithmetic, comparisons
# and `and`/`or`/`not` into a closure over a plain `dict` context that returns the value the
# general evaluator would return, or None ("undecided") whenever anything is not plain: the
# context is not a dict, a field is missing or is not an int / str / bool (or is too large an
# int), an operand has the wrong type, or a Decimal operation raises. An undecided evaluation is
# redone by the general evaluator, which then gives the value or raises the error. The fast path
# never raises (every operation that could is guarded and yields "undecided") and never has side
# effects beyond the Decimal operations the general path performs too.

_Fast = Callable[[Mapping[str, Any]], Value | None]


def _fast_field(key: str) -> _Fast:
    limit = MAX_CONTEXT_INT_BITS

    def field(ctx: Mapping[str, Any]) -> Value | None:
        if type(ctx) is not dict:
            return None
        raw: Any
        try:
            raw = ctx.get(key)
        except Exception:  # a key object with a hostile __eq__: let the general path decide
            return None
        kind = type(raw)
        if kind is int:
            return Decimal(raw) if raw.bit_length() <= limit else None
        if kind is str or kind is bool:
            return raw  # type: ignore[no-any-return]
        return None  # missing, null, float, Decimal, nested...: the general path decides

    return field


def _fast_arith(op: str, left: _Fast, right: _Fast) -> _Fast:
    fn = _ARITH[op]

    def arith(ctx: Mapping[str, Any]) -> Value | None:
        a = left(ctx)
        if type(a) is not Decimal:
            return None
        b = right(ctx)
        if type(b) is not Decimal:
            return None
        try:
            return fn(a, b)
        except ArithmeticError:
            return None

    return arith


def _fast_unary(kind: str, operand: _Fast) -> _Fast:
    minus = DECIMAL_CONTEXT.minus

    def neg(ctx: Mapping[str, Any]) -> Value | None:
        a = operand(ctx)
        if type(a) is not Decimal:
            return None
        try:
            return minus(a)
        except ArithmeticError:
            return None

    def pos(ctx: Mapping[str, Any]) -> Value | None:
        a = operand(ctx)
        return a if type(a) is Decimal else None

    def not_(ctx: Mapping[str, Any]) -> Value | None:
        a = operand(ctx)
        return (not a) if type(a) is bool else None

    return {"neg": neg, "pos": pos, "not": not_}[kind]


def _fast_compare(op: str, left: _Fast, right: _Fast) -> _Fast:
    def compare(ctx: Mapping[str, Any]) -> Value | None:
        a = left(ctx)
        if a is None:
            return None
        b = right(ctx)
        if b is None:
            return None
        if op != "==" and op != "!=" and (type(a) is not type(b) or type(a) is bool):
            return None  # the general path raises the ordering error
        return _compare(op, a, b)

    return compare


def _fast_logic(kind: str, left: _Fast, right: _Fast) -> _Fast:
    stop = kind == "or"  # the left value that decides without evaluating the right side

    def logic(ctx: Mapping[str, Any]) -> Value | None:
        a = left(ctx)
        if type(a) is not bool:
            return None
        if a is stop:
            return a
        b = right(ctx)
        return b if type(b) is bool else None

    return logic


def _build_fast(tree: tuple[Any, ...]) -> _Fast | None:
    """The fast closure for `tree`, or None when it uses anything else (dotted fields, calls)."""
    kind = tree[0]
    if kind == "const":
        value = tree[1]
        return lambda ctx: value
    if kind == "field":
        return _fast_field(tree[1][0]) if len(tree[1]) == 1 else None
    if kind in ("neg", "pos", "not"):
        operand = _build_fast(tree[1])
        return None if operand is None else _fast_unary(kind, operand)
    if kind in ("bin", "cmp"):
        left, right = _build_fast(tree[2]), _build_fast(tree[3])
        if left is None or right is None:
            return None
        return _fast_arith(tree[1], left, right) if kind == "bin" else _fast_compare(tree[1], left, right)
    if kind in ("and", "or"):
        left, right = _build_fast(tree[1]), _build_fast(tree[2])
        if left is None or right is None:
            return None
        return _fast_logic(kind, left, right)
    return None


class Expression:
    """A compiled expression; evaluate it against an event context as often as needed."""

    __slots__ = ("source", "fields", "node_count", "_fn", "_fast")

    def __init__(
        self, source: str, fn: _Fn, fields: tuple[str, ...], node_count: int, fast: _Fast | None = None
    ) -> None:
        self.source = source
        self.fields = fields
        self.node_count = node_count
        self._fn = fn
        self._fast = fast

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(self, context: Mapping[str, Any]) -> Value:
        """The value; raise `EvaluationError` (and nothing else) when it cannot be computed."""
        fast = self._fast
        if fast is not None:
            value = fast(context)
            if value is not None:
                return value
        return self._evaluate(context)

    def _evaluate(self, context: Mapping[str, Any]) -> Value:
        """The general evaluator (no fast path)."""
        try:
            return self._fn(context)
        except EvaluationError:
            raise
        except DivisionByZero:
            raise EvaluationError("division by zero") from None
        except ArithmeticError as exc:  # Overflow, too many digits (InvalidOperation) from the Decimal context
            if _is_zero_division(exc):  # 0/0, 0//0, x%0 signal DivisionUndefined/DivisionByZero inside InvalidOperation
                raise EvaluationError("division by zero") from None
            raise NumberRangeError(f"arithmetic error ({type(exc).__name__})") from None
        except Exception as exc:  # a last guard: evaluation of untrusted context must never crash ingest
            raise EvaluationError(f"evaluation failed ({type(exc).__name__})") from None

    def evaluate_number(self, context: Mapping[str, Any]) -> Decimal:
        """The value, which must be a number."""
        fast = self._fast
        if fast is not None:
            value = fast(context)
            if type(value) is Decimal:
                return value
        value = self._evaluate(context)
        if not isinstance(value, Decimal):
            raise EvaluationError(f"formula gave a {_type_name(value)}, not a number")
        return value

    def evaluate_condition(self, context: Mapping[str, Any]) -> bool:
        """The value, which must be a boolean."""
        fast = self._fast
        if fast is not None:
            value = fast(context)
            if type(value) is bool:
                return value
        value = self._evaluate(context)
        if not isinstance(value, bool):
            raise EvaluationError(f"condition gave a {_type_name(value)}, not true/false")
        return value


def _is_zero_division(exc: ArithmeticError) -> bool:
    if isinstance(exc, ZeroDivisionError):
        return True
    signals = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return any(isinstance(sig, type) and issubclass(sig, ZeroDivisionError) for sig in signals)


def compile_expression(text: str, *, fast: bool = True) -> Expression:
    """Parse `text` once; raise `FormulaSyntaxError` (with the position) if it is not valid.

    `fast=False` leaves out the fast path (same values and errors, slower): the reference it is tested against.
    """
    tree, node_count = parse(text)
    fields: list[str] = []
    fn = _build(tree, fields)
    return Expression(
        text, fn, tuple(dict.fromkeys(fields)), node_count, _build_fast(tree) if fast else None
    )
