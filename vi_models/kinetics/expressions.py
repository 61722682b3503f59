"""Arithmetic expressions of species, parameters and conditions, parsed without ``eval``.

An observable such as ``A280 = eps_A * A + eps_B * B + base`` or ``C = Central / V`` is
written as text. The grammar, read by a hand-written tokenizer and recursive-descent
parser::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | power
    power  := atom ('^' unary)?          (also '**'; right-associative)
    atom   := NUMBER | NAME | NAME '(' expr ')' | '(' expr ')'

with the functions ``exp``, ``log``, ``sqrt`` and ``abs``. The parsed :class:`Expression`
knows the names it uses and turns into a pure :mod:`jax.numpy` function of a mapping from
names to arrays (broadcast together), so it can be jitted, vmapped and differentiated.
Errors are :class:`ExpressionError` with the column and a caret under the problem.

>>> e = Expression.parse("eps_A * A + base")
>>> e.names
('eps_A', 'A', 'base')
>>> float(e.evaluate({"eps_A": 2.0, "A": 0.5, "base": 0.1}))
1.1
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

__all__ = ["Expression", "ExpressionError", "FUNCTIONS"]

FUNCTIONS = {"exp": jnp.exp, "log": jnp.log, "sqrt": jnp.sqrt, "abs": jnp.abs}
"""Functions an expression may call."""

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|[-+*/^()]))"
)


class ExpressionError(ValueError):
    """An expression that cannot be parsed or names something unknown.

    The message quotes the expression with a caret under the problem and says the fix.
    """


def _caret(text: str, column: int) -> str:
    return f"\n    {text}\n    {' ' * column}^"


@dataclass(frozen=True)
class Expression:
    """A parsed arithmetic expression.

    Attributes
    ----------
    text : str
        The source text.
    tree : tuple
        Nested tuples: ``("num", value)``, ``("name", name)``, ``("neg", x)``,
        ``("call", function, x)`` and ``(op, left, right)`` with ``op`` one of ``+ - * / ^``.
    names : tuple of str
        The names it uses, in order of first appearance (function names excluded).
    """

    text: str
    tree: tuple
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, *, what: str = "expression") -> Expression:
        """Parse ``text``; ``what`` names it in error messages (e.g. ``"observable 'A280'"``)."""
        if not isinstance(text, str):
            raise ExpressionError(f"{what} must be text such as 'eps * A + base', got {text!r}")
        tokens = _tokenize(text, what)
        parser = _Parser(text, tokens, what)
        tree = parser.expr()
        if parser.peek()[0] != "end":
            kind, value, col = parser.peek()
            raise ExpressionError(
                f"{what}: unexpected {value!r} at column {col + 1}; expected an operator "
                f"(+ - * / ^) or the end{_caret(text, col)}"
            )
        names: list[str] = []
        _collect(tree, names)
        return cls(text=text, tree=tree, names=tuple(names))

    def check_names(
        self, known: Mapping[str, str], *, what: str = "expression", suggest: Iterable[str] = ()
    ) -> None:
        """Raise :class:`ExpressionError` for a name not in ``known`` (name -> kind, for the message).

        ``suggest`` adds names offered as "did you mean" without being known.
        """
        for name in self.names:
            if name in known:
                continue
            col = _find_name(self.text, name)
            close = difflib.get_close_matches(name, list(known) + list(suggest), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            kinds: dict[str, list[str]] = {}
            for n, k in known.items():
                kinds.setdefault(k, []).append(n)
            listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items()) or "nothing"
            raise ExpressionError(
                f"{what} names {name!r}, which is not a species, a parameter or a condition of "
                f"this model ({listing}){hint} A new parameter needs a prior: give one in "
                f"priors={{{name!r}: ...}}{_caret(self.text, col)}"
            )

    def evaluate(self, env: Mapping[str, Any]):
        """Value of the expression with ``env`` giving each name (arrays broadcast)."""
        return _eval(self.tree, env)

    def __str__(self) -> str:
        return self.text


def _find_name(text: str, name: str) -> int:
    m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    return m.start() if m else 0


def _tokenize(text: str, what: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m:
            col = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ExpressionError(
                f"{what}: unexpected character {text[col]!r} at column {col + 1}; an expression "
                f"has numbers, names, + - * / ^ and parentheses{_caret(text, col)}"
            )
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(("end", "the end", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list, what: str):
        self.text, self.tokens, self.what, self.i = text, tokens, what, 0

    def peek(self):
        return self.tokens[self.i]

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, expected: str):
        _, value, col = self.peek()
        raise ExpressionError(
            f"{self.what}: expected {expected} at column {col + 1}, found {value!r}{_caret(self.text, col)}"
        )

    def expr(self):
        left = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.take()[1]
            left = (op, left, self.term())
        return left

    def term(self):
        left = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op = self.take()[1]
            left = (op, left, self.unary())
        return left

    def unary(self):
        if self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            inner = self.unary()
            return ("neg", inner) if op == "-" else inner
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[0] == "op" and self.peek()[1] in ("^", "**"):
            self.take()
            return ("^", base, self.unary())
        return base

    def atom(self):
        kind, value, col = self.peek()
        if kind == "number":
            self.take()
            return ("num", float(value))
        if kind == "name":
            self.take()
            if self.peek()[1] == "(":
                if value not in FUNCTIONS:
                    raise ExpressionError(
                        f"{self.what}: unknown function {value!r} at column {col + 1}; the functions "
                        f"are {', '.join(FUNCTIONS)}{_caret(self.text, col)}"
                    )
                self.take()
                inner = self.expr()
                if self.peek()[1] != ")":
                    self.fail(f"')' closing {value}(")
                self.take()
                return ("call", value, inner)
            return ("name", value)
        if value == "(":
            self.take()
            inner = self.expr()
            if self.peek()[1] != ")":
                self.fail("')'")
            self.take()
            return inner
        self.fail("a number, a name or '('")


def _collect(tree: tuple, names: list[str]) -> None:
    tag = tree[0]
    if tag == "name":
        if tree[1] not in names:
            names.append(tree[1])
    elif tag == "neg":
        _collect(tree[1], names)
    elif tag == "call":
        _collect(tree[2], names)
    elif tag != "num":
        _collect(tree[1], names)
        _collect(tree[2], names)


def _eval(tree: tuple, env: Mapping[str, Any]):
    tag = tree[0]
    if tag == "num":
        return tree[1]
    if tag == "name":
        return env[tree[1]]
    if tag == "neg":
        return -_eval(tree[1], env)
    if tag == "call":
        return FUNCTIONS[tree[1]](_eval(tree[2], env))
    a, b = _eval(tree[1], env), _eval(tree[2], env)
    if tag == "+":
        return a + b
    if tag == "-":
        return a - b
    if tag == "*":
        return a * b
    if tag == "/":
        return a / b
    return jnp.power(a, b)


def used_names(expressions: Iterable[Expression]) -> tuple[str, ...]:
    """Names used by any of ``expressions``, in order of first appearance."""
    out: list[str] = []
    for e in expressions:
        for n in e.names:
            if n not in out:
                out.append(n)
    return tuple(out)
