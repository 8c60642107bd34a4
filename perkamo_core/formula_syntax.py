"""The formula language's syntax: tokenizer and parser (source -> tree), compile-time limits, syntax errors.

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

Source is tokenized and parsed by hand into a tree of nested tuples, never handed to
``eval``/``exec``: ``("const", value)``, ``("field", segments)``, ``("bin", op, left, right)``,
``("cmp", op, left, right)``, ``("neg" | "pos" | "not", operand)``, ``("and" | "or", left, right)``
and ``("call", name, args)``. Work is bounded by construction: the source length, the number of
tree nodes, the nesting depth and literal sizes are capped here, at compile time. Evaluating a tree
is `perkamo_core.formula`'s job; this module does not import it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_NUMBER_DIGITS",
    "MAX_SOURCE_LENGTH",
    "MAX_STRING_LITERAL",
    "FormulaError",
    "FormulaSyntaxError",
    "parse",
]

MAX_SOURCE_LENGTH: Final = 2000
MAX_NODES: Final = 256
MAX_DEPTH: Final = 32
MAX_NUMBER_DIGITS: Final = 30
MAX_STRING_LITERAL: Final = 256


class FormulaError(ValueError):
    """Base of the formula language's errors."""


class FormulaSyntaxError(FormulaError):
    """The source does not parse, or exceeds a size limit; `position` is the 0-based offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


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


def parse(text: str) -> tuple[tuple[Any, ...], int]:
    """The tree of `text` and its node count; raise `FormulaSyntaxError` (with the position) if not valid."""
    if not isinstance(text, str):
        raise FormulaSyntaxError("expression must be a string", 0)
    if len(text) > MAX_SOURCE_LENGTH:
        raise FormulaSyntaxError(f"expression longer than {MAX_SOURCE_LENGTH} characters", MAX_SOURCE_LENGTH)
    parser = _Parser(_tokenize(text))
    tree = parser.parse()
    return tree, parser.nodes
