"""The safe formula and condition language of earning rules: tokenizer, parser and Decimal evaluator.

Grammar (lowest to highest precedence)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | cmp
    cmp     := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum)?      # no chaining
    sum     := term (("+" | "-") term)*
    term    := unary (("*" | "/" | "//" | "%") unary)*
    unary   := ("-" | "+") unary | primary
    primary := NUMBER | STRING | "true" | "false" | "{{" path "}}" | FUNC "(" args ")" | "(" expr ")"
    FUNC    := min | max | round | floor | ceil | abs

Nothing is ever handed to ``eval``/``exec``: source is tokenized and parsed by hand into a tree,
which is turned into a chain of small closures once. Work is bounded by construction: the source
length, the number of tree nodes, the nesting depth and literal sizes are capped at compile time;
evaluation runs in a private Decimal context with a fixed precision and exponent range, and reads
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

MAX_SOURCE_LENGTH: Final = 2000
MAX_NODES: Final = 256
MAX_DEPTH: Final = 32
MAX_NUMBER_DIGITS: Final = 30
MAX_STRING_LITERAL: Final = 256
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


class FormulaError(ValueError):
    """Base of the formula language's errors."""


class FormulaSyntaxError(FormulaError):
    """The source does not parse, or exceeds a size limit; `position` is the 0-based offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


class EvaluationError(FormulaError):
    """Evaluation failed (missing field, type error, division by zero, out of range)."""


class NumberRangeError(EvaluationError):
    """A number is beyond what evaluation holds exactly: a context number too large or not
    finite, or a result the Decimal context cannot represent (overflow, too many digits).

    Unlike a missing field, this is bad input rather than a rule that does not apply: the
    engine rejects the event instead of skipping the rule.
    """


# --- tokenizer --------------------------------------------------------------------------------

_NUM, _STR, _FIELD, _NAME, _OP, _END = "num", "str", "field", "name", "op", "end"
_OPS_2 = frozenset({"//", "==", "!=", "<=", ">="})
_OPS_1 = frozenset("+-*/%(),<>")
_FUNCS: Final = {"min": (1, 16), "max": (1, 16), "round": (1, 2), "floor": (1, 1), "ceil": (1, 1), "abs": (1, 1)}
_KEYWORDS: Final = frozenset({"and", "or", "not", "true", "false"})
_SEGMENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


def _tokenize(src: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
        elif c.isdigit() and c.isascii() or (c == "." and i + 1 < n and src[i + 1].isascii() and src[i + 1].isdigit()):
            start = i
            while i < n and src[i].isascii() and src[i].isdigit():
                i += 1
            if i < n and src[i] == ".":
                i += 1
                while i < n and src[i].isascii() and src[i].isdigit():
                    i += 1
            text = src[start:i]
            if sum(ch.isdigit() for ch in text) > MAX_NUMBER_DIGITS:
                raise FormulaSyntaxError(f"number longer than {MAX_NUMBER_DIGITS} digits", start)
            tokens.append((_NUM, Decimal(text), start))
        elif c in "'\"":
            start, quote, i = i, c, i + 1
            parts: list[str] = []
            while True:
                if i >= n:
                    raise FormulaSyntaxError("unterminated string", start)
                ch = src[i]
                if ch == quote:
                    i += 1
                    break
                if ch == "\\":
                    if i + 1 >= n or src[i + 1] not in _ESCAPES:
                        raise FormulaSyntaxError("invalid escape in string", i)
                    parts.append(_ESCAPES[src[i + 1]])
                    i += 2
                else:
                    parts.append(ch)
                    i += 1
                if len(parts) > MAX_STRING_LITERAL:
                    raise FormulaSyntaxError(f"string longer than {MAX_STRING_LITERAL} characters", start)
            tokens.append((_STR, "".join(parts), start))
        elif c == "{":
            start = i
            if not src.startswith("{{", i):
                raise FormulaSyntaxError("expected '{{'", i)
            end = src.find("}}", i + 2)
            if end < 0:
                raise FormulaSyntaxError("unterminated field reference, expected '}}'", start)
            inner = src[i + 2 : end].strip()
            segments = inner.split(".")
            if not inner or any(not seg or not set(seg) <= _SEGMENT_CHARS for seg in segments):
                raise FormulaSyntaxError(f"invalid field reference {{{{{inner[:40]}}}}}", start)
            tokens.append((_FIELD, tuple(segments), start))
            i = end + 2
        elif c.isascii() and (c.isalpha() or c == "_"):
            start = i
            while i < n and src[i].isascii() and (src[i].isalnum() or src[i] == "_"):
                i += 1
            word = src[start:i]
            if word not in _KEYWORDS and word not in _FUNCS:
                raise FormulaSyntaxError(f"unknown name {word[:40]!r} (fields are written {{{{name}}}})", start)
            tokens.append((_NAME, word, start))
        elif src[i : i + 2] in _OPS_2:
            tokens.append((_OP, src[i : i + 2], i))
            i += 2
        elif c in _OPS_1:
            tokens.append((_OP, c, i))
            i += 1
        else:
            raise FormulaSyntaxError(f"unexpected character {c!r}", i)
    tokens.append((_END, None, n))
    return tokens


# --- parser: tokens -> tree (nested tuples) ----------------------------------------------------

_CMP = frozenset({"==", "!=", "<", "<=", ">", ">="})


class _Parser:
    __slots__ = ("tokens", "pos", "nodes", "depth")

    def __init__(self, tokens: list[tuple[str, Any, int]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.nodes = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, Any, int]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def node(self, at: int, *parts: Any) -> tuple[Any, ...]:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FormulaSyntaxError(f"expression has more than {MAX_NODES} nodes", at)
        return parts

    def enter(self, at: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaSyntaxError(f"expression nested deeper than {MAX_DEPTH}", at)

    def is_op(self, *ops: str) -> bool:
        kind, val, _ = self.peek()
        return kind == _OP and val in ops

    def is_word(self, word: str) -> bool:
        kind, val, _ = self.peek()
        return kind == _NAME and val == word

    def parse(self) -> tuple[Any, ...]:
        tree = self.expr()
        kind, val, at = self.peek()
        if kind != _END:
            raise FormulaSyntaxError(f"unexpected {val!r}", at)
        return tree

    def expr(self) -> tuple[Any, ...]:
        at = self.peek()[2]
        self.enter(at)
        left = self.and_()
        while self.is_word("or"):
            at = self.take()[2]
            left = self.node(at, "or", left, self.and_())
        self.depth -= 1
        return left

    def and_(self) -> tuple[Any, ...]:
        left = self.not_()
        while self.is_word("and"):
            at = self.take()[2]
            left = self.node(at, "and", left, self.not_())
        return left

    def not_(self) -> tuple[Any, ...]:
        if self.is_word("not"):
            at = self.take()[2]
            self.enter(at)
            operand = self.not_()
            self.depth -= 1
            return self.node(at, "not", operand)
        return self.cmp()

    def cmp(self) -> tuple[Any, ...]:
        left = self.sum()
        if self.is_op(*_CMP):
            _, op, at = self.take()
            left = self.node(at, "cmp", op, left, self.sum())
            if self.is_op(*_CMP):
                raise FormulaSyntaxError("comparisons cannot be chained; use 'and'", self.peek()[2])
        return left

    def sum(self) -> tuple[Any, ...]:
        left = self.term()
        while self.is_op("+", "-"):
            _, op, at = self.take()
            left = self.node(at, "bin", op, left, self.term())
        return left

    def term(self) -> tuple[Any, ...]:
        left = self.unary()
        while self.is_op("*", "/", "//", "%"):
            _, op, at = self.take()
            left = self.node(at, "bin", op, left, self.unary())
        return left

    def unary(self) -> tuple[Any, ...]:
        if self.is_op("-", "+"):
            _, op, at = self.take()
            self.enter(at)
            operand = self.unary()
            self.depth -= 1
            return self.node(at, "neg", operand) if op == "-" else self.node(at, "pos", operand)
        return self.primary()

    def primary(self) -> tuple[Any, ...]:
        kind, val, at = self.take()
        if kind == _NUM:
            return self.node(at, "const", val)
        if kind == _STR:
            return self.node(at, "const", val)
        if kind == _FIELD:
            return self.node(at, "field", val)
        if kind == _NAME and val in ("true", "false"):
            return self.node(at, "const", val == "true")
        if kind == _NAME and val in _FUNCS:
            if not self.is_op("("):
                raise FormulaSyntaxError(f"expected '(' after {val}", self.peek()[2])
            self.take()
            args: list[tuple[Any, ...]] = []
            if not self.is_op(")"):
                args.append(self.expr())
                while self.is_op(","):
                    self.take()
                    args.append(self.expr())
            if not self.is_op(")"):
                raise FormulaSyntaxError("expected ')' or ','", self.peek()[2])
            self.take()
            lo, hi = _FUNCS[val]
            if not lo <= len(args) <= hi:
                want = str(lo) if lo == hi else f"{lo} to {hi}"
                raise FormulaSyntaxError(f"{val}() takes {want} arguments, got {len(args)}", at)
            return self.node(at, "call", val, tuple(args))
        if kind == _OP and val == "(":
            inner = self.expr()
            if not self.is_op(")"):
                raise FormulaSyntaxError("expected ')'", self.peek()[2])
            self.take()
            return inner
        if kind == _END:
            raise FormulaSyntaxError("unexpected end of expression", at)
        raise FormulaSyntaxError(f"unexpected {val!r}", at)


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
    if not isinstance(text, str):
        raise FormulaSyntaxError("expression must be a string", 0)
    if len(text) > MAX_SOURCE_LENGTH:
        raise FormulaSyntaxError(f"expression longer than {MAX_SOURCE_LENGTH} characters", MAX_SOURCE_LENGTH)
    parser = _Parser(_tokenize(text))
    tree = parser.parse()
    fields: list[str] = []
    fn = _build(tree, fields)
    return Expression(
        text, fn, tuple(dict.fromkeys(fields)), parser.nodes, _build_fast(tree) if fast else None
    )
